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


def _sigint_default():
  """In the child, before exec: SIGINT as a terminal delivers it (a disposition an earlier test or library left
  ignored in this pytest process would be inherited and hide the behaviour under test)."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
  """SIGINT while the models are being built: exit 130, `zipjax segment: interrupted`, no traceback."""
  cmd = [sys.executable, "-m", "zipjax", "segment", os.path.join(ROOT, "examples", "oranges.png"), "--classes",
         "orange", "--random-init", "--config", SMOKE, "--out", str(tmp_path / "out")]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, preexec_fn=_sigint_default)
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


def test_the_console_script_reaches_its_handler_before_jax_is_imported(tmp_path):
  """The `zipjax` console script runs `from zipjax.cli import main; main()`: if that import (the package
  `__init__` included) or the parser pulled in jax, a Ctrl-C during jax's import would escape main's handler
  with a traceback. Neither imports jax (nor flax), so every Ctrl-C lands in main (exit 130, one line)."""
  code = ("import sys; from zipjax.cli import build_parser; build_parser(); "
          "print(sorted(m for m in ('jax', 'flax', 'numpy', 'zipjax.clip') if m in sys.modules))")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  assert "'jax'" not in r.stdout and "'flax'" not in r.stdout and "zipjax.clip" not in r.stdout, r.stdout
  # the public names still resolve (on first use)
  r = subprocess.run([sys.executable, "-c", "import zipjax; print(zipjax.load_clip.__module__, "
                      "zipjax.ClipModel.__name__, zipjax.discover_instances.__module__, zipjax.engine.__name__)"],
                     cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert r.stdout.split() == ["zipjax.clip", "ClipModel", "zipjax.pipeline.discover", "zipjax.engine"], r.stderr


def test_ctrl_c_dropped_by_a_gc_callback_still_stops_the_command(monkeypatch, capsys):
  """A KeyboardInterrupt raised inside a `__del__` / gc callback (where a real Ctrl-C can land, e.g. in jax's
  `_xla_gc_callback`) is dropped by Python; main delivers it again: exit 130, not a command that runs on."""
  import gc  # pylint: disable=import-outside-toplevel

  import zipjax.commands.convert as convert_cmd  # pylint: disable=import-outside-toplevel

  class InterruptedFinaliser:
    def __del__(self):
      raise KeyboardInterrupt

  steps = []

  def long_run(args):
    obj = InterruptedFinaliser()
    del obj
    gc.collect()
    for _ in range(400):  # 4 s of "work" unless interrupted
      steps.append(1)
      time.sleep(0.01)
    return 0

  monkeypatch.setattr(convert_cmd, "run", long_run)
  # `_thread.interrupt_main` does nothing while SIGINT is ignored: give this test the disposition of a terminal
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    rc = cli.main(["convert", "clip", "a", "b"])
  finally:
    signal.signal(signal.SIGINT, before)
  assert rc == cli.EXIT_INTERRUPTED, f"SIGINT handler of this process before the test: {before}"
  assert len(steps) < 400
  assert capsys.readouterr().err.strip().splitlines()[-1] == "zipjax convert: interrupted"


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
