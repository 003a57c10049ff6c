"""One training step of the real detector on 8 simulated devices (data parallel + FSDP of parameters and
optimizer state) equals the single-device step: loss, gradient norm and every parameter at relative error
< 1e-5 in float32. The step runs under `jax.transfer_guard("disallow")`: no implicit host transfer."""
import jax
import numpy as np
import pytest

from zipjax.commands.segment import apply_overrides, load_config_file
from zipjax.data import coco_train, synthetic
from zipjax.train import task
from zipjax.train import trainer as tr

TINY = ["--config.model.input_size=64", "--config.model.width=32", "--config.model.layers=1",
        "--config.model.heads=1", "--config.model.embed_dim=32", "--config.model.mask_dim=16",
        "--config.model.pixel_width=16", "--config.model.stem_width=8", "--config.model.top_k=20",
        "--config.data.max_instances=4", "--config.batch_size=8", "--config.total_steps=10",
        "--config.optim.warmup_steps=0", "--config.fsdp_min_size=64", "--config.xla_opt_level=0",
        # Adam maps a mathematically zero gradient (e.g. of an attention key bias) to +-lr * sign(float noise);
        # an eps above that noise keeps every parameter comparable leaf by leaf
        "--config.optim.eps=1e-3"]


def tiny_config(*extra):
  config = load_config_file("configs/train_smoke.py")
  return apply_overrides(config, TINY + list(extra))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
  d = tmp_path_factory.mktemp("shapes")
  synthetic.generate(d, 8, seed=11, min_side=48, max_side=80, max_objects=3)
  ts = coco_train.load_train_set(d / "annotations.json", d / "images")
  config = tiny_config()
  b = next(coco_train.make_iterator(coco_train.make_dataset(ts, coco_train.augment_params(config), 8, 0)))
  q = np.random.default_rng(0).normal(size=(len(ts.names), 32)).astype(np.float32)
  b["queries"] = np.broadcast_to(q / np.linalg.norm(q, axis=-1, keepdims=True), (8,) + q.shape).copy()
  b["query_valid"] = np.ones((8, len(ts.names)), bool)
  assert b["valid"].sum() >= 8
  return b


def _one_step(config, batch, params=None):
  trainer = tr.Trainer(config, task.detector_task(config))
  state = trainer.init_state(None if params is None else trainer.place_params(params))
  before = jax.device_get(state["params"])
  gb = trainer.global_batch(batch)
  with jax.transfer_guard("disallow"):
    state, metrics = trainer.step(state, gb)
  return trainer, before, jax.device_get(state), jax.device_get(metrics)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_sharded_step_equals_single_device(batch):
  single = tiny_config("--config.mesh=[('data', 1)]")
  multi = tiny_config("--config.mesh=[('data', -1)]")
  t1, p0_1, s1, m1 = _one_step(single, batch)
  t8, p0_8, s8, m8 = _one_step(multi, batch, p0_1)  # same initial parameters, placed in shards
  assert t8.mesh.devices.size == 8
  # FSDP really shards: some parameters and Adam moments are split over the 8 devices
  specs = [s.spec for s in jax.tree_util.tree_leaves(t8.state_shardings["params"])]
  assert sum(any(a is not None for a in sp) for sp in specs) >= 5
  opt_specs = [s.spec for s in jax.tree_util.tree_leaves(t8.state_shardings["opt_state"])]
  assert sum(any(a is not None for a in sp) for sp in opt_specs) >= 10
  for a, b in zip(jax.tree_util.tree_leaves(p0_1), jax.tree_util.tree_leaves(p0_8)):
    np.testing.assert_array_equal(a, b)
  assert _rel(m8["loss"], m1["loss"]) < 1e-5
  assert _rel(m8["grad_norm"], m1["grad_norm"]) < 1e-5
  assert m1["loss"] > 0 and np.isfinite(m1["loss"]) and m1["grad_norm"] > 0
  leaves1 = jax.tree_util.tree_leaves_with_path(s1["params"])
  leaves8 = jax.tree_util.tree_leaves(s8["params"])
  flat1 = np.concatenate([np.ravel(a) for _, a in leaves1])
  flat8 = np.concatenate([np.ravel(b) for b in leaves8])
  assert _rel(flat8, flat1) < 1e-5  # the whole parameter vector
  lr = float(m1["lr/default"])
  moved = 0
  for (path, a), b, p0 in zip(leaves1, leaves8, jax.tree_util.tree_leaves(p0_1)):
    # each leaf: relative error < 1e-5 of its scale, the scale counting the step size for zero-initialised leaves
    scale = max(np.abs(a).max(), lr)
    assert np.abs(np.asarray(b, np.float64) - a).max() < 1e-5 * scale, jax.tree_util.keystr(path)
    moved += int(not np.array_equal(a, p0))
  assert moved >= len(leaves1) // 2  # the step changed the parameters
  for a, b in zip(jax.tree_util.tree_leaves(s1["opt_state"]), jax.tree_util.tree_leaves(s8["opt_state"])):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)  # Adam moments (and counts)
    assert np.abs(a - b).max() <= 1e-5 * max(np.abs(a).max(), 1e-12) + 1e-12
  assert int(s1["step"]) == int(s8["step"]) == 1
