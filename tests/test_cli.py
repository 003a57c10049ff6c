"""zipjax.cli: exit statuses and one-line messages (usage errors, Ctrl-C) in a real subprocess."""
import os
import signal
import subprocess
import sys
import time

from zipjax import cli
from zipjax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def _env(tmp_path):
  return dict(os.environ, PYTHONPATH=ROOT, ZIPJAX_CACHE=str(tmp_path / "cache"), ZIPJAX_XLA_CACHE="0",
              JAX_PLATFORMS="cpu", XLA_FLAGS="")


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
  """SIGINT while the models are being built: exit 130, `zipjax segment: interrupted`, no traceback."""
  cmd = [sys.executable, "-m", "zipjax", "segment", os.path.join(ROOT, "examples", "oranges.png"), "--classes",
         "orange", "--random-init", "--config", SMOKE, "--out", str(tmp_path / "out")]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
  try:
    first = proc.stderr.readline()  # "NOTE: RANDOM WEIGHTS ..." is printed just before the models are built
    assert first.startswith("NOTE:"), first
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 130, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert [ln for ln in err.splitlines() if ln.strip()] == ["zipjax segment: interrupted"]


def test_input_error_is_one_line_exit_2(monkeypatch, capsys):
  def boom(args):
    raise InputError("the reason")
  import zipjax.commands.convert as convert_cmd  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(convert_cmd, "run", boom)
  assert cli.main(["convert", "clip", "a", "b"]) == cli.EXIT_USAGE == 2
  assert capsys.readouterr().err == "zipjax convert: error: the reason\n"


def test_help_documents_exit_status(capsys):
  try:
    cli.main(["--help"])
  except SystemExit as e:
    assert e.code == 0
  out = capsys.readouterr().out
  assert "1 nothing processed" in out and "130 interrupted" in out
