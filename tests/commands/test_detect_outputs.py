"""`zipjax detect` on the shared folder-run writer (zipjax/jobs/folder_run.py), the issue-12 regressions of
`zipjax segment` repeated for it, on real subprocesses of the real CLI and writer (the detector replaced by a
fast deterministic stand-in, tests/commands/detect_runner.py):

- SIGKILL between the output replaces: the files present all describe one run; the next run completes them;
- SIGKILL mid-run: the lock of the dead run is taken over and the rerun resumes to the uninterrupted result;
- two concurrent runs into one --out: the second exits 2 with a clear message, the first is unharmed;
- in process: `--out` is checked before the detector is loaded, refused inputs are listed in errors.json.
"""
import json
import os
import shutil
import signal
import time

import pytest

from tests.commands import detect_runner
from tests.commands.test_segment_outputs import _images, _no_volatile, _state, run_cli
from zipjax import cli
from zipjax.commands.segment import load_config_file
from zipjax.io.atomic import atomic_write_json
from zipjax.train.task import config_to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(ROOT, "tests", "commands", "detect_runner.py")


def _run(inputs, out, workdir, fault=None, sleep=None, wait=True):
  return run_cli(RUNNER, ["detect", *inputs, "--workdir", workdir, "--classes", "r,g,b", "--out", out,
                          "--config.detect.overlay_max_side=64"], fault, sleep, wait)


def _holder(out) -> str:
  try:
    return (out / ".zipjax" / "lock").read_text()
  except FileNotFoundError:
    return ""


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  base = tmp_path_factory.mktemp("detout")
  workdir = base / "w"
  workdir.mkdir()
  atomic_write_json(str(workdir / "config.json"), config_to_dict(load_config_file(
      os.path.join(ROOT, "configs", "train_smoke.py"))))
  a = _images(base / "A", 5, seed=1)
  b = _images(base / "B", 3, seed=2)
  refs = {}
  for name, folder in (("A", a), ("B", b)):
    out = base / f"ref{name}"
    r = _run([folder], out, workdir)
    assert r.returncode == 0, r.stderr
    refs[name] = _state(out)
  return base, workdir, a, b, refs


def test_reference_outputs(sets):
  base, _, a, _, refs = sets
  files, overlays = refs["A"]
  run = json.loads(files["run.json"])
  assert run["detected"] == 5 and run["skipped"] == 1 and run["info"]["checkpoint_step"] == 6
  assert run["images_root"] == ROOT  # the working directory (relative input paths are relative to it)
  assert run["input_roots"] == [str(a)]  # where `zipjax gallery` may read this run's images from
  assert len(overlays) == 5 and len(json.loads(files["annotations.json"])["images"]) == 5
  assert [e["path"] for e in json.loads(files["errors.json"])] == [str(a / "zz_bad.png")]


def test_sigkill_between_output_replaces(sets, tmp_path):
  base, workdir, _, b, refs = sets
  out = tmp_path / "out"
  shutil.copytree(base / "refA", out)  # a complete earlier run with other images
  r = _run([b], out, workdir, fault="commit.file@2")
  assert r.returncode == -signal.SIGKILL
  files, overlays = _state(out)
  assert len(files) == 2  # the old files went first, then the new ones one by one
  for name, data in files.items():  # every file present is from the new run; none is left from the old one
    assert data == refs["B"][0][name], name
  assert overlays == refs["B"][1]
  r = _run([b], out, workdir)  # the next run finishes the commit: same outputs as uninterrupted
  assert r.returncode == 0, r.stderr
  assert _no_volatile(_state(out)[0]) == _no_volatile(refs["B"][0]) and _state(out)[1] == refs["B"][1]


def test_sigkill_mid_run_then_concurrent_run_refused_and_resume(sets, tmp_path):
  _, workdir, a, _, refs = sets
  out = tmp_path / "out"
  r = _run([a], out, workdir, fault="detect.batch@2")  # killed after 2 batches of 2 images
  assert r.returncode == -signal.SIGKILL
  assert not (out / "annotations.json").exists() and not (out / "overlays").exists()  # nothing half-done
  first = _run([a], out, workdir, sleep=120, wait=False)  # takes over the dead run's lock, then holds it
  try:
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and f'"pid": {first.pid}' not in _holder(out):
      time.sleep(0.05)
    second = _run([a], out, workdir)
    assert second.returncode == 2, second.stderr
    assert f"is in use by zipjax detect (pid {first.pid}" in second.stderr
    assert first.poll() is None  # the first run goes on, unharmed
  finally:
    first.kill()
    first.wait()
  r = _run([a], out, workdir)
  assert r.returncode == 0, r.stderr
  assert "took over the stale lock" in r.stdout and "4 of 6 images already done" in r.stdout
  assert _no_volatile(_state(out)[0]) == _no_volatile(refs["A"][0]) and _state(out)[1] == refs["A"][1]


def test_out_checked_before_the_detector_loads_and_refused_inputs_listed(sets, tmp_path, capsys, monkeypatch):
  _, workdir, a, _, _ = sets
  from zipjax.commands import detect  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(detect, "checkpoint_step", lambda w: 6)
  monkeypatch.setattr(detect, "build_detector", lambda *a, **k: pytest.fail("the detector was loaded"))
  (tmp_path / "file").write_text("x")
  rc = cli.main(["detect", str(a), "--workdir", str(workdir), "--classes", "r", "--out", str(tmp_path / "file")])
  assert rc == 2 and "--out" in capsys.readouterr().err
  monkeypatch.setattr(detect, "build_detector", lambda config, w, step, names: detect_runner.FakeDetector(names))
  out = tmp_path / "o"
  rc = cli.main(["detect", str(a / "im00.png"), str(tmp_path / "missing.png"), str(a / "im00.png"), "--workdir",
                 str(workdir), "--classes", "r", "--out", str(out), "--no-overlays"])
  assert rc == 0
  printed = capsys.readouterr().out
  assert "zipjax gallery" in printed
  errors = json.loads((out / "errors.json").read_text())
  assert [os.path.basename(e["path"]) for e in errors] == ["missing.png", "im00.png"]
  assert "not found" in errors[0]["reason"] and "duplicate" in errors[1]["reason"]
