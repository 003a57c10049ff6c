"""`zipjax train` and `zipjax self-train` on two real processes (localhost coordinator, gloo CPU collectives, 4 CPU
devices each) against one process with 8 devices:

- training: the same metrics (every step's losses, the final evaluation) and the same final parameters, FSDP over
  the 8 devices of the two processes;
- one self-training round (round 0 trains, predicts and is evaluated, round 1 merges, trains, predicts and is
  evaluated): the same labels, predictions, evaluations and detector parameters;
- preemption: SIGTERM to process 1 only; both processes finish the same step, save one checkpoint at it and exit
  143 (the stop is a collective decision, `trainer._Preemption`); rerunning both resumes there (each process its
  data iterator) and logs every remaining step once.
All three are marked slow (about 2-4 minutes each on 2 busy cores: every process
starts JAX, compiles, and gloo spins while the others run).

Floating-point sums over the 8 devices run in another order across processes (gloo) than within one process, so
losses and parameters are compared to a tolerance (rtol 1e-4 on the losses, atol 1e-4 on the parameters: the
attention's key biases have an exactly zero gradient, softmax ignores them, and Adam turns the rounding noise of
each run into steps of up to the learning rate, 1e-5-scale differences after a few steps); labels, step counts
and everything discrete exactly. The runs are tiny (48-64 px images, a 1-block detector of width 32,
a few steps) and share a persistent XLA cache.
"""
import json
import os
import signal
import socket
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
TINY = ["--config.model.input_size=64", "--config.model.patch_size=16", "--config.model.width=32",
        "--config.model.layers=1", "--config.model.heads=1", "--config.model.embed_dim=32",
        "--config.model.mask_dim=16", "--config.model.pixel_width=16", "--config.model.stem_width=8",
        "--config.model.top_k=10", "--config.text.arch.transformer_width=32", "--config.data.max_instances=4",
        "--config.batch_size=8", "--config.optim.warmup_steps=2", "--config.fsdp_min_size=64",
        "--config.xla_opt_level=0", "--config.eval.batch_size=8", "--config.eval.every=0",
        "--config.checkpoint.asynchronous=False"]
TRAIN_STEPS = 8


def _port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(cache, devices, **extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", ZIPJAX_CACHE=str(cache), ZIPJAX_XLA_CACHE="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  for k in ("ZIPJAX_COORDINATOR", "ZIPJAX_NUM_PROCESSES", "ZIPJAX_PROCESS_ID"):
    env.pop(k, None)
  env.update(extra)
  return env


def _start(args, cache, processes: int):
  """`python -m zipjax ARGS` as `processes` processes (8 devices in all) -> Popen list (process 0 first)."""
  cmd = [sys.executable, "-m", "zipjax"] + args
  if processes == 1:
    return [subprocess.Popen(cmd, cwd=ROOT, env=_env(cache, 8), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)]
  port = _port()
  return [subprocess.Popen(cmd + ["--config.distributed=True"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=_env(cache, 8 // processes, ZIPJAX_COORDINATOR=f"localhost:{port}",
                                    ZIPJAX_NUM_PROCESSES=str(processes), ZIPJAX_PROCESS_ID=str(k)))
          for k in range(processes)]


def _wait(procs, timeout=600):
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append((p.returncode, out, err))
  return outs


def _run(args, cache, processes):
  outs = _wait(_start(args, cache, processes))
  for k, (rc, _, err) in enumerate(outs):
    assert rc == 0, f"process {k}/{processes}: exit {rc}\n{err[-4000:]}"
  return outs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("multiprocess")
  shapes = dict(min_side=48, max_side=64, max_objects=3)
  synthetic.generate(d / "train", 16, seed=31, **shapes)
  synthetic.generate(d / "noisy", 16, seed=31, drop_fraction=0.4, jitter=0.15, score=True, **shapes)
  synthetic.generate(d / "val", 8, seed=32, **shapes)
  return d


def _train_args(d, workdir, steps=TRAIN_STEPS, extra=()):
  return ["train", "--config", "configs/train_smoke.py", "--train-json", str(d / "train" / "annotations.json"),
          "--images-root", str(d / "train" / "images"), "--workdir", str(workdir), "--val-json",
          str(d / "val" / "annotations.json"), "--val-images-root", str(d / "val" / "images"), "--no-progress",
          f"--config.total_steps={steps}", f"--config.checkpoint.every={steps}"] + TINY + list(extra)


def _params(workdir):
  config = task.load_run_config(str(workdir))
  params, step = checkpoints.load_params(str(workdir), config, parallel.create_mesh([("data", 1)]))
  return jax.tree_util.tree_map(np.asarray, jax.device_get(params)), step


def _same_metrics(a, b):
  assert [m["step"] for m in a] == [m["step"] for m in b]
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y), (x, y)
    for k in x:
      if k.startswith("eval/") and k.endswith("num_pred") or k in ("step", "num_matched"):
        assert x[k] == y[k], (k, x[k], y[k])
      elif not k.startswith("lr/"):
        np.testing.assert_allclose(x[k], y[k], rtol=1e-4, atol=1e-6, err_msg=f"step {x['step']} {k}")
      else:
        assert x[k] == y[k], k


def _same_params(a, b):
  """Equal to atol 1e-4, except the key third of each attention's in_proj_bias (q | k | v): its gradient is zero
  in exact arithmetic (it adds the same q . b_k to every logit of a query, which softmax ignores), so Adam turns
  each run's rounding noise into steps of up to the learning rate in a random direction; it is only bounded."""
  fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (path, x), (_, y) in zip(fa, fb):
    name = jax.tree_util.keystr(path)
    x, y = np.asarray(x), np.asarray(y)
    if name.endswith("in_proj_bias']"):
      d = x.shape[-1] // 3
      np.testing.assert_allclose(x[..., d:2 * d], y[..., d:2 * d], rtol=0, atol=1e-2, err_msg=name + " (keys)")
      x, y = np.concatenate([x[..., :d], x[..., 2 * d:]], -1), np.concatenate([y[..., :d], y[..., 2 * d:]], -1)
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-4, err_msg=name)


@pytest.fixture(scope="module")
def single(data):
  """The reference: one process, 8 devices."""
  w = data / "single"
  _run(_train_args(data, w), data / "cache", 1)
  return w


@pytest.mark.slow  # about 95 s with its one-process reference run
def test_two_processes_train_like_one(data, single):
  w = data / "two"
  outs = _run(_train_args(data, w), data / "cache", 2)
  assert "loss=" in outs[0][1]  # process 0 reports; both exit 0
  ref, got = read_metrics(str(single)), read_metrics(str(w))
  assert len(ref) == TRAIN_STEPS and "eval/agnostic/segm_AP50" in ref[-1]
  _same_metrics(ref, got)
  (pa, sa), (pb, sb) = _params(single), _params(w)
  assert sa == sb == TRAIN_STEPS
  _same_params(pa, pb)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(data, tmp_path):
  steps = 100  # long enough that the signal lands mid-run
  w = tmp_path / "preempted"
  args = _train_args(data, w, steps=steps, extra=["--config.log_every=1"])
  procs = _start(args, data / "cache", 2)
  try:
    deadline = time.time() + 300
    while time.time() < deadline:
      recs = read_metrics(str(w)) if (w / "metrics.jsonl").exists() else []
      if recs and recs[-1]["step"] >= 3:
        break
      assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
    outs = _wait(procs, timeout=300)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for k, (rc, _, err) in enumerate(outs):
    assert rc == 143, f"process {k}: exit {rc}\n{err[-3000:]}"
  stopped = [int(err.split("stopped by SIGTERM at step ")[1].split("/")[0]) for _, _, err in outs]
  assert stopped[0] == stopped[1] and 3 <= stopped[0] < steps, stopped
  ck = sorted(int(n) for n in os.listdir(w / "checkpoints") if n.isdigit())
  assert ck == [stopped[0]]
  assert max(m["step"] for m in read_metrics(str(w))) == stopped[0]
  outs = _run(args, data / "cache", 2)  # both resume at the step they stopped at and finish
  assert all(f"resumed {w} at step {stopped[0]}" in err for _, _, err in outs)
  assert [m["step"] for m in read_metrics(str(w))] == list(range(1, steps + 1))


def _selftrain_args(d, workdir):
  return ["self-train", "--config", "configs/selftrain_smoke.py", "--pseudo-json", str(d / "noisy" /
          "annotations.json"), "--images-root", str(d / "noisy" / "images"), "--gt-json",
          str(d / "train" / "annotations.json"), "--workdir", str(workdir), "--no-progress",
          "--config.selftrain.rounds=1", "--config.selftrain.steps=[6,4]", "--config.selftrain.predict_chunk=4",
          "--config.selftrain.thresholds=[0.0]", "--config.checkpoint.every=100"] + TINY


@pytest.mark.slow
def test_two_processes_self_train_like_one(data):
  a, b = data / "st_single", data / "st_two"
  _run(_selftrain_args(data, a), data / "cache", 1)
  _run(_selftrain_args(data, b), data / "cache", 2)
  for r in (0, 1):
    la = json.loads((a / f"round_{r}" / "annotations.json").read_text())
    lb = json.loads((b / f"round_{r}" / "annotations.json").read_text())
    pa = json.loads((a / f"round_{r}" / "predictions" / "annotations.json").read_text())
    pb = json.loads((b / f"round_{r}" / "predictions" / "annotations.json").read_text())
    for x, y in ((la, lb), (pa, pb)):
      assert [(i["image_id"], i["segmentation"]) for i in x["annotations"]] == \
          [(i["image_id"], i["segmentation"]) for i in y["annotations"]]
      np.testing.assert_allclose([i.get("score", 1.0) for i in x["annotations"]],
                                 [i.get("score", 1.0) for i in y["annotations"]], rtol=0, atol=1e-4)
    _same_metrics(read_metrics(str(a / f"round_{r}")), read_metrics(str(b / f"round_{r}")))
    _same_params(_params(a / f"round_{r}")[0], _params(b / f"round_{r}")[0])
  ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
  for ra, rb in zip(ma["rounds"], mb["rounds"]):
    for part in ("labels", "detector"):
      for t in ("bbox", "segm"):
        np.testing.assert_allclose(ra[part]["agnostic"][t]["AP50"], rb[part]["agnostic"][t]["AP50"], atol=1e-6)
