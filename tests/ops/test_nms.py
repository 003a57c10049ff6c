"""Mask-to-box, IoU and greedy NMS vs NumPy."""
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from zipjax.ops import nms as nms_ops


def np_mask_to_box(m):
  ys, xs = np.nonzero(m)
  if len(ys) == 0:
    return np.zeros(4), False
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float), True


def np_box_iou(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = iw * ih
      union = (max(p[2] - p[0], 0) * max(p[3] - p[1], 0) + max(q[2] - q[0], 0) * max(q[3] - q[1], 0) - inter)
      out[i, j] = inter / union if union > 0 else 0.0
  return out


def np_nms(iou, scores, valid, thr):
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  kept = []
  for i in order:
    if valid[i] and all(iou[i, j] <= thr for j in kept):
      kept.append(i)
  return kept


def random_masks(rng, n, h=12, w=15):
  masks = np.zeros((n, h, w), bool)
  for i in range(n):
    if rng.random() < 0.15:
      continue  # empty mask
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
    masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.8
  return masks


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_mask_to_box_and_mask_iou(seed):
  rng = np.random.default_rng(seed)
  a, b = random_masks(rng, 6), random_masks(rng, 5)
  boxes, valid = nms_ops.mask_to_box(jnp.asarray(a))
  boxes_inc, _ = nms_ops.mask_to_box(jnp.asarray(a), inclusive_max=True)
  for i in range(len(a)):
    ref, ok = np_mask_to_box(a[i])
    assert bool(valid[i]) == ok
    np.testing.assert_array_equal(np.asarray(boxes[i]), ref)
    if ok:
      np.testing.assert_array_equal(np.asarray(boxes_inc[i]), ref - [0, 0, 1, 1])
  fa, fb = a.reshape(6, -1), b.reshape(5, -1)
  inter = (fa[:, None] & fb[None]).sum(-1)
  union = (fa[:, None] | fb[None]).sum(-1)
  ref = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
  np.testing.assert_allclose(np.asarray(nms_ops.mask_iou(jnp.asarray(a), jnp.asarray(b))), ref, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_box_iou(seed):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 20, (7, 4)).astype(np.float32)
  b = rng.integers(0, 20, (4, 4)).astype(np.float32)
  a[:, 2:] = a[:, :2] + rng.integers(0, 8, (7, 2))  # some empty boxes too
  b[:, 2:] = b[:, :2] + rng.integers(1, 8, (4, 2))
  np.testing.assert_allclose(np.asarray(nms_ops.box_iou(jnp.asarray(a), jnp.asarray(b))), np_box_iou(a, b),
                             rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.3, 0.5, 0.7]), st.sampled_from([3, 16]))
def test_box_nms_matches_numpy(seed, thr, max_output):
  rng = np.random.default_rng(seed)
  n = 16
  xy = rng.integers(0, 30, (n, 2)).astype(np.float32)
  boxes = np.concatenate([xy, xy + rng.integers(1, 15, (n, 2))], 1)
  scores = rng.integers(0, 6, n).astype(np.float32)  # many ties: visiting order by index
  valid = rng.random(n) < 0.85
  idx, ok = nms_ops.box_nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), threshold=thr,
                            max_output=max_output)
  ref = np_nms(np_box_iou(boxes, boxes), scores, valid, thr)[:max_output]
  assert int(np.asarray(ok).sum()) == len(ref)
  np.testing.assert_array_equal(np.asarray(idx)[:len(ref)], ref)
  assert not np.asarray(ok)[len(ref):].any()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.2, 0.5]))
def test_mask_nms_matches_numpy(seed, thr):
  rng = np.random.default_rng(seed)
  masks = random_masks(rng, 10)
  scores = rng.random(10).astype(np.float32)
  idx, ok = nms_ops.mask_nms(jnp.asarray(masks), jnp.asarray(scores), threshold=thr, max_output=10)
  f = masks.reshape(10, -1)
  inter = (f[:, None] & f[None]).sum(-1)
  union = (f[:, None] | f[None]).sum(-1)
  iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
  ref = np_nms(iou, scores, np.ones(10, bool), thr)
  np.testing.assert_array_equal(np.asarray(idx)[:len(ref)], ref)
  assert int(np.asarray(ok).sum()) == len(ref)
