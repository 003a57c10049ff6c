"""Kill -9 during `zipjax train`, rerun the same command (and stop that one with SIGTERM, which saves a
checkpoint and exits 143, and rerun again): the metrics of every step (including the final evaluation) and the
final parameters equal those of an uninterrupted run. A rerun after completion says so and exits 0. The runs
are real subprocesses on 2 simulated devices with FSDP; they share a persistent XLA cache so only the first one
compiles."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from zipjax.data import synthetic
from zipjax import parallel
from zipjax.train import checkpoints
from zipjax.train import task
from zipjax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL, EVERY = 24, 6
OVERRIDES = ["--config.model.input_size=64", "--config.model.width=32", "--config.model.layers=1",
             "--config.model.heads=1", "--config.model.embed_dim=32", "--config.model.mask_dim=16",
             "--config.model.pixel_width=16", "--config.model.stem_width=8", "--config.model.top_k=10",
             "--config.text.arch.transformer_width=32",
             "--config.data.max_instances=4", "--config.batch_size=4", f"--config.total_steps={TOTAL}",
             "--config.optim.warmup_steps=4", "--config.fsdp_min_size=64", "--config.xla_opt_level=0",
             f"--config.checkpoint.every={EVERY}", "--config.checkpoint.keep=2", "--config.eval.every=0",
             "--config.eval.batch_size=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("resume")
  synthetic.generate(d / "train", 12, seed=21, min_side=48, max_side=72, max_objects=3)
  synthetic.generate(d / "val", 4, seed=22, min_side=48, max_side=72, max_objects=3)
  return d


def _cmd(d, workdir):
  return [sys.executable, "-m", "zipjax", "train", "--config", "configs/train_smoke.py",
          "--train-json", str(d / "train" / "annotations.json"), "--images-root", str(d / "train" / "images"),
          "--workdir", str(workdir), "--val-json", str(d / "val" / "annotations.json"),
          "--val-images-root", str(d / "val" / "images"), "--no-progress"] + OVERRIDES


def _env(d):
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", ZIPJAX_CACHE=str(d / "cache"),
              ZIPJAX_XLA_CACHE="1", XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _run(d, workdir, timeout=600):
  return subprocess.run(_cmd(d, workdir), cwd=ROOT, env=_env(d), capture_output=True, text=True, timeout=timeout)


def _interrupt(d, workdir, sig, after_step):
  """Starts the run and sends `sig` once a checkpoint exists and a step after `after_step` was logged."""
  proc = subprocess.Popen(_cmd(d, workdir), cwd=ROOT, env=_env(d), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  try:
    while time.time() < deadline:
      steps = [m["step"] for m in read_metrics(str(workdir))]
      if (workdir / "checkpoints" / str(EVERY)).is_dir() and steps and max(steps) > after_step:
        break
      assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stderr.read()[-3000:]
      time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return proc.returncode, err


def _final_params(workdir):
  config = task.load_run_config(str(workdir))
  mesh = parallel.create_mesh([("data", 1)])
  params, step = checkpoints.load_params(str(workdir), config, mesh)
  return jax.device_get(params), step


def test_kill_and_resume_equals_uninterrupted(data, tmp_path):
  full = tmp_path / "full"
  r = _run(data, full)
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(os.listdir(data / "cache" / "xla")) > 0  # ZIPJAX_XLA_CACHE=1: the run filled <ZIPJAX_CACHE>/xla

  killed = tmp_path / "killed"
  rc, _ = _interrupt(data, killed, signal.SIGKILL, EVERY + 1)
  assert rc == -signal.SIGKILL
  before = read_metrics(str(killed))
  assert EVERY + 1 < max(m["step"] for m in before) < TOTAL  # lines written after the checkpoint exist

  # the rerun resumes at step EVERY; SIGTERM after step 2 * EVERY + 1: it finishes its step, saves, exits 143
  rc, err = _interrupt(data, killed, signal.SIGTERM, 2 * EVERY + 1)
  assert rc == 143, err[-3000:]
  assert "resumed" in err and "SIGTERM" in err
  stopped = max(m["step"] for m in read_metrics(str(killed)))
  assert 2 * EVERY + 1 < stopped < TOTAL
  assert (killed / "checkpoints" / str(stopped)).is_dir()  # saved at the step it stopped at

  r = _run(data, killed)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed {killed} at step {stopped}" in r.stderr
  # metrics.jsonl: byte for byte, every step 1..TOTAL once, the final evaluation included
  assert (killed / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
  recs = read_metrics(str(full))
  assert [m["step"] for m in recs] == list(range(1, TOTAL + 1))
  assert "eval/agnostic/bbox_AP50" in recs[-1] and "eval/class/segm_AP" in recs[-1]
  assert recs[-1]["loss"] < recs[0]["loss"]
  p_full, s_full = _final_params(full)
  p_killed, s_killed = _final_params(killed)
  assert s_full == s_killed == TOTAL
  for a, b in zip(jax.tree_util.tree_leaves(p_full), jax.tree_util.tree_leaves(p_killed)):
    np.testing.assert_array_equal(a, b)
  assert sorted(os.listdir(killed / "checkpoints")) == [str(TOTAL - EVERY), str(TOTAL)]  # keep = 2

  # a rerun after completion: nothing to do, exit 0, nothing changed
  r = _run(data, full)
  assert r.returncode == 0 and "nothing to do" in r.stderr
  assert (full / "metrics.jsonl").read_bytes() == (killed / "metrics.jsonl").read_bytes()
