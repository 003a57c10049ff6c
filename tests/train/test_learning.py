"""The tiny detector learns: plain SGD steps lower the set loss on a fixed batch (fails if gradients are
wrong), and a few hundred Adam steps fit generated rectangles (boxes and masks) with IoU > 0.5.

The batch is generated here: 1-3 coloured rectangles on noise per 128 px image, exact masks at stride 4.
All under the slow marker: the default suite's learning check is test_trainer_learns.py (the whole trainer on
generated shapes, evaluated with COCO AP), and test_losses.py checks the gradients against finite differences.
"""
import numpy as np
import optax
import pytest
from PIL import Image

import jax
import jax.numpy as jnp

from zipjax.models.detector import Detector, init_variables, mask_logits, postprocess
from zipjax.ops import box_ops
from zipjax.train.config_parts import SMOKE_MODEL
from zipjax.train.losses import LossConfig, set_loss
from zipjax.train.predict import refine

CFG = SMOKE_MODEL
LOSS = LossConfig()


def make_batch(seed: int, b: int = 4, t: int = 3) -> dict:
  rng = np.random.default_rng(seed)
  s, hm = CFG.input_size, CFG.mask_size
  img = rng.integers(0, 256, (b, s, s, 3)).astype(np.float32) * 0.3 + 60.0
  boxes = np.zeros((b, t, 4), np.float32)
  masks = np.zeros((b, t, hm, hm), bool)
  valid = np.zeros((b, t), bool)
  for i in range(b):
    for j in range(rng.integers(1, t + 1)):
      w, h = rng.integers(24, 64, 2)
      x0, y0 = rng.integers(0, s - w), rng.integers(0, s - h)
      img[i, y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
      boxes[i, j] = [(x0 + w / 2) / s, (y0 + h / 2) / s, w / s, h / s]
      full = np.zeros((s, s), bool)
      full[y0:y0 + h, x0:x0 + w] = True
      masks[i, j] = full.reshape(hm, CFG.mask_stride, hm, CFG.mask_stride).mean((1, 3)) >= 0.5
      valid[i, j] = True
  queries = np.zeros((b, 1, CFG.embed_dim), np.float32)
  queries[..., 0] = 1.0  # one class-agnostic query
  return {"image": np.clip(img, 0, 255).astype(np.uint8), "queries": queries, "query_valid": np.ones((b, 1), bool),
          "boxes": boxes, "labels": np.zeros((b, t), np.int32), "masks": masks, "valid": valid}


@pytest.fixture(scope="module")
def setup():
  model = Detector(CFG)

  def loss_fn(params, batch):
    out = model.apply({"params": params}, batch["image"], batch["queries"], batch["query_valid"])
    return set_loss(out, batch, LOSS)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  params = jax.tree_util.tree_map(jnp.asarray, init_variables(CFG, 0)["params"])
  return model, grad_fn, params, make_batch(0)


@pytest.mark.slow  # the default suite shows learning end to end (test_trainer_learns.py)
def test_sgd_steps_lower_the_loss(setup):
  _, grad_fn, params, batch = setup
  sgd = jax.jit(lambda p, g: jax.tree_util.tree_map(lambda a, b: a - 0.005 * b, p, g))
  losses = []
  for _ in range(8):
    (loss, _), grads = grad_fn(params, batch)
    losses.append(float(loss))
    params = sgd(params, grads)
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses
  assert sum(b < a for a, b in zip(losses, losses[1:])) >= 6, losses  # (almost) monotone descent


@pytest.mark.slow  # the default suite shows learning end to end (test_trainer_learns.py)
def test_adam_fits_rectangles_boxes_and_masks(setup):
  model, grad_fn, params, batch = setup
  opt = optax.adam(1e-3)
  state = opt.init(params)
  update = jax.jit(lambda p, g, s: (lambda u, s2: (optax.apply_updates(p, u), s2))(*opt.update(g, s, p)))
  first = None
  for _ in range(300):  # 150 fit every rectangle with 1 host device, not with 8 (another summation order)
    (loss, metrics), grads = grad_fn(params, batch)
    first = float(loss) if first is None else first
    params, state = update(params, grads, state)
  (loss, metrics), _ = grad_fn(params, batch)
  assert float(loss) < first / 8, (first, float(loss))
  assert float(metrics["matched_iou"]) > 0.8, metrics
  out = model.apply({"params": params}, batch["image"], batch["queries"], batch["query_valid"])
  det = postprocess(out, CFG, top_k=5)
  s = CFG.input_size
  for i in range(batch["image"].shape[0]):
    v = batch["valid"][i]
    k = int(v.sum())
    tgt = np.asarray(box_ops.cxcywh_to_xyxy(jnp.asarray(batch["boxes"][i][v]))) * s
    top = np.asarray(det["boxes"][i][:k])  # the k best-scored detections
    iou = np.asarray(box_ops.pairwise_iou(jnp.asarray(tgt), jnp.asarray(top)))  # [k, k]
    assert np.all(iou.max(axis=1) > 0.5), (i, iou)  # every target is hit by one of the top-k
    # masks of the best-matching top detections: IoU > 0.5 with the exact rectangles
    best = iou.argmax(axis=1)
    ml = np.asarray(det["mask_logits"][i])[best] > 0  # [k, Hm, Hm]
    gt = batch["masks"][i][v]
    miou = (ml & gt).sum((1, 2)) / np.maximum((ml | gt).sum((1, 2)), 1)
    assert np.all(miou > 0.5), (i, miou)
  # mask_logits gathers the same maps as postprocess
  np.testing.assert_allclose(np.asarray(mask_logits(out, det["tokens"])), np.asarray(det["mask_logits"]),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_generalises_to_held_out_images(setup):
  """Fresh generated batches every step (no memorisation), 1500 Adam steps (~6 minutes on 2 busy cores), then 32
  held-out images: most rectangles are found (box IoU > 0.5 among the k + 2 best detections for k targets)
  with masks of IoU > 0.5. An untrained model finds none: its boxes are 16 px grid cells, the rectangles are
  24-64 px, so no IoU reaches 0.5. Measured: 0.76 of the rectangles found with the box head's boxes, 0.91 with
  the masks' tight boxes (box_source='mask', before its host refinement
  existed); the host refinement of zipjax.train.predict is what the 'mask' boxes are now."""
  model, grad_fn, params, _ = setup
  opt = optax.adam(optax.warmup_cosine_decay_schedule(1e-4, 2e-3, 50, 1500, 1e-4))
  state = opt.init(params)
  update = jax.jit(lambda p, g, s: (lambda u, s2: (optax.apply_updates(p, u), s2))(*opt.update(g, s, p)))
  for step in range(1500):
    (_, metrics), grads = grad_fn(params, make_batch(1000 + step))
    params, state = update(params, grads, state)
  hits, masks_ok, total = {"head": 0, "mask": 0}, 0, 0
  fwd = jax.jit(lambda p, b: postprocess(model.apply({"params": p}, b["image"], b["queries"], b["query_valid"]),
                                         CFG, top_k=10))
  s, stride = CFG.input_size, CFG.mask_stride

  def mask_box(box, logits):
    """box_source='mask' as zipjax.train.predict makes it on the host (logits upsampled to the input)."""
    up = Image.fromarray(np.ascontiguousarray(logits, np.float32), "F").resize(
        (s, s), Image.BILINEAR, box=(0.0, 0.0, s / stride, s / stride))
    return refine([float(v) for v in box], np.asarray(up), "mask")[0]

  for seed in range(8):
    batch = make_batch(seed + 10 ** 6)
    det = fwd(params, batch)
    for source in ("head", "mask"):
      for i in range(batch["image"].shape[0]):
        v = batch["valid"][i]
        tgt = np.asarray(box_ops.cxcywh_to_xyxy(jnp.asarray(batch["boxes"][i][v]))) * s
        k = int(v.sum())
        boxes = np.asarray(det["boxes"][i][:k + 2])  # [k + 2, 4] the box head's
        if source == "mask":
          boxes = np.array([mask_box(b, m) for b, m in zip(boxes, np.asarray(det["mask_logits"][i][:k + 2]))])
        iou = np.asarray(box_ops.pairwise_iou(jnp.asarray(tgt), jnp.asarray(boxes, jnp.float32)))  # [k, k + 2]
        found = iou.max(axis=1) > 0.5
        hits[source] += int(found.sum())
        if source == "head":
          ml = np.asarray(det["mask_logits"][i])[iou.argmax(axis=1)] > 0
          gt = batch["masks"][i][v]
          miou = (ml & gt).sum((1, 2)) / np.maximum((ml | gt).sum((1, 2)), 1)
          masks_ok += int((found & (miou > 0.5)).sum())
          total += k
  assert hits["head"] / total >= 0.6, (hits, total)
  assert hits["mask"] / total >= 0.8, (hits, total)
  assert masks_ok / total >= 0.5, (masks_ok, total)
