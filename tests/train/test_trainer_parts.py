"""Trainer building blocks: the optimizer against a NumPy AdamW, the metrics log (the mesh and FSDP rules are
zipjax.parallel's: tests/parallel/test_parallel.py)."""
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from zipjax.errors import InputError
from zipjax.train import metrics as metrics_lib
from zipjax.train.optim import make_optimizer


def _optim(**kw):
  base = dict(lr=0.1, end_factor=0.1, warmup_steps=2, weight_decay=0.01, b1=0.9, b2=0.99, eps=1e-8,
              clip_norm=1.5, lr_multipliers=[("^backbone/", 0.25), ("^frozen/", 0.0)])
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _np_reference(params, grads_seq, o, total):
  """AdamW with warm-up + cosine, global-norm clipping, group multipliers and the decay mask, in NumPy."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for t, g in enumerate(grads_seq):
    g = {k: np.array(x, np.float64) for k, x in g.items()}
    norm = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
    scale = min(1.0, o.clip_norm / norm)
    if t < o.warmup_steps:
      lr = o.lr * t / o.warmup_steps
    else:
      frac = (t - o.warmup_steps) / (total - o.warmup_steps)
      lr = o.lr * (o.end_factor + (1 - o.end_factor) * 0.5 * (1 + math.cos(math.pi * frac)))
    for k in p:
      mult = 0.25 if k.startswith("backbone/") else 0.0 if k.startswith("frozen/") else 1.0
      if mult == 0.0:
        continue
      gk = g[k] * scale
      m[k] = o.b1 * m[k] + (1 - o.b1) * gk
      v2[k] = o.b2 * v2[k] + (1 - o.b2) * gk ** 2
      mh, vh = m[k] / (1 - o.b1 ** (t + 1)), v2[k] / (1 - o.b2 ** (t + 1))
      upd = mh / (np.sqrt(vh) + o.eps)
      if p[k].ndim >= 2:
        upd = upd + o.weight_decay * p[k]
      p[k] = p[k] - lr * mult * upd
  return p


def test_optimizer_matches_numpy_adamw():
  rng = np.random.default_rng(0)
  flat = {"backbone/k": rng.normal(size=(3, 4)), "backbone/b": rng.normal(size=(4,)),
          "head/k": rng.normal(size=(4, 2)), "head/b": rng.normal(size=(2,)), "frozen/k": rng.normal(size=(2, 2))}
  params = {"backbone": {"k": flat["backbone/k"], "b": flat["backbone/b"]},
            "head": {"k": flat["head/k"], "b": flat["head/b"]}, "frozen": {"k": flat["frozen/k"]}}
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
  o = _optim()
  total = 6
  tx, schedules = make_optimizer(o, total, params)
  assert set(schedules) == {"default", "group0", "group1"}
  assert float(schedules["group0"](2)) == pytest.approx(0.025)
  state = tx.init(params)
  update = jax.jit(tx.update)  # one compile instead of one per operation
  grads_seq = [{k: rng.normal(size=v.shape) for k, v in flat.items()} for _ in range(total)]
  p = params
  for g in grads_seq:
    gt = {"backbone": {"k": g["backbone/k"], "b": g["backbone/b"]}, "head": {"k": g["head/k"], "b": g["head/b"]},
          "frozen": {"k": g["frozen/k"]}}
    gt = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), gt)
    upd, state = update(gt, state, p)
    p = jax.tree_util.tree_map(np.add, p, upd)
  want = _np_reference(flat, grads_seq, o, total)
  got = {"/".join(path): np.asarray(x) for path, x in
         [((a, b), p[a][b]) for a in p for b in p[a]]}
  for k in flat:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)
  np.testing.assert_array_equal(got["frozen/k"], np.float32(flat["frozen/k"]))
  with pytest.raises(InputError, match="warmup"):
    make_optimizer(_optim(warmup_steps=10), 5, params)
  with pytest.raises(InputError, match="regex"):
    make_optimizer(_optim(lr_multipliers=[("(", 1.0)]), 5, params)


def test_metrics_writer_truncates_on_resume(tmp_path):
  w = metrics_lib.MetricsWriter(str(tmp_path))
  for s in range(1, 6):
    w.write(s, {"loss": 1.0 / s, "nan": float("nan")}, {"steps_per_s": 2.0})
  w.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5]
  assert json.loads(lines[2]) == {"step": 3, "loss": 1.0 / 3, "nan": None}
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 6, "lo')  # a torn line, as a kill mid-write leaves it
  w = metrics_lib.MetricsWriter(str(tmp_path), resume_step=3)
  w.write(4, {"loss": 0.25})
  w.close()
  recs = metrics_lib.read_metrics(str(tmp_path))
  assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[-1]["loss"] == 0.25
  assert [json.loads(x)["step"] for x in (tmp_path / "perf.jsonl").read_text().splitlines()] == [1, 2, 3]
  assert list((tmp_path / "tb").iterdir())  # TensorBoard event files


def test_checkpoint_cadence_is_multiples_of_every(tmp_path):
  """The manager owns the cadence: steps that are multiples of `checkpoint.every`, not also the first step it
  sees (orbax's default policy saves that one too; a preempted multi-process run then held two checkpoints)."""
  from zipjax.train.checkpoints import Checkpoints  # pylint: disable=import-outside-toplevel
  ck = Checkpoints(str(tmp_path / "checkpoints"), every=3, keep=10, asynchronous=False)
  try:
    assert [s for s in range(1, 10) if ck.should_save(s)] == [3, 6, 9]
  finally:
    ck.close()
