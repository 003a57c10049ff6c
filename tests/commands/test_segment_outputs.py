"""Issue 12 regressions of `zipjax segment`'s outputs, on real subprocesses of the real CLI and writer (the models
replaced by a fast deterministic stand-in, tests/commands/segment_runner.py):

- SIGKILL between the output replaces: the files present all describe one run; the next run completes them;
- SIGKILL mid-run: the lock of the dead run is taken over and the rerun resumes to the uninterrupted result;
- two concurrent runs into one --out: the second exits 2 with a clear message, the first is unharmed;
- a rerun with fewer images leaves no stale overlays, and no leftover `.*.tmp-*` files of killed runs.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(ROOT, "tests", "commands", "segment_runner.py")
OUTPUTS = ("results.json", "annotations.json", "errors.json", "run.json")


def _images(folder, n, seed=0):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    img = rng.integers(0, 256, (40 + 3 * i, 48, 3), dtype=np.uint8)
    Image.fromarray(img).save(folder / f"im{i:02d}.png")
  (folder / "zz_bad.png").write_text("not an image")
  return folder


def run_cli(runner, args, fault=None, sleep=None, wait=True):
  """`python RUNNER ARGS...` in ROOT with the fault injection (ZIPJAX_FAULT) and fake-model delay asked for;
  wait=False: the Popen of a run left going."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", ZIPJAX_XLA_CACHE="0")
  env.pop("ZIPJAX_FAULT", None)
  if fault:
    env["ZIPJAX_FAULT"] = fault
  if sleep:
    env["ZIPJAX_FAKE_SLEEP"] = str(sleep)
  cmd = [sys.executable, runner, *map(str, args)]
  if not wait:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _run(inputs, out, fault=None, sleep=None, wait=True):
  return run_cli(RUNNER, ["segment", *inputs, "--classes", "r,g,b", "--random-init", "--out", out, "--batch-size",
                          "2"], fault, sleep, wait)


def _state(out):
  files = {n: (out / n).read_bytes() for n in OUTPUTS if (out / n).exists()}
  overlays = sorted(os.listdir(out / "overlays")) if (out / "overlays").exists() else []
  return files, overlays


def _no_volatile(files):
  """run.json holds timings; compare it without them."""
  out = dict(files)
  if "run.json" in out:
    run = json.loads(out["run.json"])
    run.pop("seconds")
    out["run.json"] = json.dumps(run, sort_keys=True).encode()
  return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  base = tmp_path_factory.mktemp("segout")
  a = _images(base / "A", 5, seed=1)
  b = _images(base / "B", 3, seed=2)
  refs = {}
  for name, folder in (("A", a), ("B", b)):
    out = base / f"ref{name}"
    r = _run([folder], out)
    assert r.returncode == 0, r.stderr
    refs[name] = _state(out)
  return base, a, b, refs


@pytest.mark.parametrize("nth", [1, 3])
def test_sigkill_between_output_replaces(sets, tmp_path, nth):
  base, a, b, refs = sets
  out = tmp_path / "out"
  shutil.copytree(base / "refA", out)  # a complete earlier run with other images
  r = _run([b], out, fault=f"commit.file@{nth}")
  assert r.returncode == -signal.SIGKILL
  files, overlays = _state(out)
  assert len(files) == nth  # the old files went first, then the new ones one by one
  for name, data in files.items():  # every file present is from the new run; none is left from the old one
    if name != "run.json":
      assert data == refs["B"][0][name], name
  assert overlays == refs["B"][1]  # overlays of the new run only, in place before its JSON appears
  r = _run([b], out)  # the next run finishes the commit (or recomputes): same outputs as uninterrupted
  assert r.returncode == 0, r.stderr
  assert _no_volatile(_state(out)[0]) == _no_volatile(refs["B"][0]) and _state(out)[1] == refs["B"][1]


def test_sigkill_mid_run_resumes_and_takes_over_the_lock(sets, tmp_path):
  base, a, _, refs = sets
  out = tmp_path / "out"
  r = _run([a], out, fault="segment.batch@2")
  assert r.returncode == -signal.SIGKILL
  assert not any((out / n).exists() for n in OUTPUTS) and not (out / "overlays").exists()  # nothing half-done
  r = _run([a], out)
  assert r.returncode == 0, r.stderr
  assert "took over the stale lock" in r.stdout and "4 of 6 images already done" in r.stdout
  assert _no_volatile(_state(out)[0]) == _no_volatile(refs["A"][0]) and _state(out)[1] == refs["A"][1]
  assert sorted(os.listdir(out / ".zipjax")) == ["job.json", "merged.json"] or not (out / ".zipjax/shards").exists()


def test_two_concurrent_runs_second_exits_2(sets, tmp_path):
  _, a, _, refs = sets
  out = tmp_path / "out"
  first = _run([a], out, sleep=120, wait=False)  # holds the directory for as long as the test needs
  try:
    deadline = time.time() + 120
    while not (out / ".zipjax" / "lock").exists() and time.time() < deadline:
      time.sleep(0.05)
    second = _run([a], out)
    assert second.returncode == 2
    assert f"is in use by zipjax segment (pid {first.pid}" in second.stderr
    assert first.poll() is None  # the first run goes on, unharmed
  finally:
    first.kill()
    first.wait()
  r = _run([a], out)  # the killed first run's lock is stale now: taken over, the run completes
  assert r.returncode == 0, r.stderr
  assert "took over the stale lock" in r.stdout
  assert _no_volatile(_state(out)[0]) == _no_volatile(refs["A"][0])


def test_rerun_removes_stale_overlays_and_tmp_files(sets, tmp_path):
  base, _, b, refs = sets
  out = tmp_path / "out"
  shutil.copytree(base / "refA", out)
  assert len(_state(out)[1]) == 5
  junk = [out / ".errors.json.tmp-k1ll3d", out / ".annotations.json.tmp-abc", out / "overlays" / ".000001_x.png.tmp-1"]
  for j in junk:
    j.write_text("partial")
  r = _run([b], out)
  assert r.returncode == 0, r.stderr
  assert not any(j.exists() for j in junk)
  assert _state(out)[1] == refs["B"][1] and len(refs["B"][1]) == 3
  assert _no_volatile(_state(out)[0]) == _no_volatile(refs["B"][0])
