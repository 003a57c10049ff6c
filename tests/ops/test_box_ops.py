"""Box conversions, IoU and GIoU against hand-computed values and a NumPy reference."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from zipjax.ops import box_ops


def _np_giou(a, b):
  """Reference GIoU of two xyxy boxes in float64."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
  union = area(a) + area(b) - inter
  enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
  return inter / union, inter / union - (enclosing - union) / enclosing


@pytest.mark.parametrize("a,b,iou,giou", [
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0, 1.0),                       # identical
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, -1.0 / 3.0),                # disjoint: enclosing 3, union 2
    ([0, 0, 1, 1], [5, 5, 6, 6], 0.0, 2.0 / 36.0 - 1.0),          # far apart: -> -1
    ([0, 0, 4, 4], [1, 1, 2, 2], 1.0 / 16.0, 1.0 / 16.0),         # contained: enclosing = union
    ([0, 0, 2, 2], [1, 1, 3, 3], 1.0 / 7.0, 1.0 / 7.0 - 2.0 / 9.0),  # overlap 1, union 7, enclosing 9
    ([0, 0, 2, 1], [1, 0, 3, 1], 1.0 / 3.0, 1.0 / 3.0),           # side by side, overlapping
])
def test_iou_giou_hand_checked(a, b, iou, giou):
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  assert float(box_ops.elementwise_iou(a32, b32)) == pytest.approx(iou, abs=1e-6)
  assert float(box_ops.elementwise_giou(a32, b32)) == pytest.approx(giou, abs=1e-6)
  assert float(box_ops.elementwise_giou(b32, a32)) == pytest.approx(giou, abs=1e-6)  # symmetric


def test_pairwise_matches_numpy_reference():
  rng = np.random.default_rng(0)
  def boxes(n):
    xy = rng.random((n, 2))
    return np.concatenate([xy, xy + 0.05 + rng.random((n, 2)) * 0.5], 1)
  a, b = boxes(7), boxes(5)
  iou = np.asarray(box_ops.pairwise_iou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
  giou = np.asarray(box_ops.pairwise_giou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
  assert iou.shape == giou.shape == (7, 5)
  for i in range(7):
    for j in range(5):
      ref_iou, ref_giou = _np_giou(a[i], b[j])
      assert iou[i, j] == pytest.approx(ref_iou, abs=1e-5)
      assert giou[i, j] == pytest.approx(ref_giou, abs=1e-5)


def test_conversions_round_trip_and_area():
  c = jnp.array([[0.5, 0.4, 0.2, 0.6], [0.1, 0.9, 0.0, 0.1]], jnp.float32)
  x = box_ops.cxcywh_to_xyxy(c)
  np.testing.assert_allclose(np.asarray(x), [[0.4, 0.1, 0.6, 0.7], [0.1, 0.85, 0.1, 0.95]], atol=1e-7)
  np.testing.assert_allclose(np.asarray(box_ops.xyxy_to_cxcywh(x)), np.asarray(c), atol=1e-7)
  np.testing.assert_allclose(np.asarray(box_ops.area(x)), [0.12, 0.0], atol=1e-7)


def test_degenerate_boxes_have_finite_gradients():
  """Zero-area boxes (a collapsed prediction) give finite GIoU values and gradients."""
  a = jnp.array([0.3, 0.3, 0.3, 0.3], jnp.float32)
  b = jnp.array([0.3, 0.3, 0.3, 0.3], jnp.float32)
  val, grad = jax.value_and_grad(lambda p: box_ops.elementwise_giou(p, b))(a)
  assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(grad)))
