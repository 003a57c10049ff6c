"""match_image (pycocotools mask IoU, greedy by score) against an independent dense NumPy matcher on random
scenes: identical per-instance decisions and counts. Also the box-IoU fallback and the class rule."""
import numpy as np
import pytest

from tests.gallery.synth import ellipse, rle
from zipjax.gallery.match import match_image
from zipjax.gallery.render import Instance


def _inst(k, mask, cat, score=None, crowd=False, with_mask=True):
  ys, xs = np.nonzero(mask)
  box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
  return Instance(k=k, category_id=cat, score=score, area=float(mask.sum()), bbox=box,
                  rle=rle(mask) if with_mask else None, iscrowd=crowd)


def reference(pm, pc, ps, gm, gc, gcrowd, agnostic=False, thr=0.5):
  """Dense masks: IoU = |a & b| / |a | b|; crowd: |a & b| / |a|. Greedy in decreasing score (ties: index)."""
  order = sorted(range(len(pm)), key=lambda i: (-ps[i], i))
  taken, pred, fn = set(), [None] * len(pm), 0
  for i in order:
    best = None
    for j in range(len(gm)):
      if gcrowd[j] or j in taken or (not agnostic and gc[j] != pc[i]):
        continue
      v = (pm[i] & gm[j]).sum() / (pm[i] | gm[j]).sum()
      if v >= thr and (best is None or v > best[1]):
        best = (j, v)
    if best:
      taken.add(best[0])
      pred[i] = ("tp", best[0])
      continue
    crowd = [j for j in range(len(gm)) if gcrowd[j] and (agnostic or gc[j] == pc[i])
             and (pm[i] & gm[j]).sum() / pm[i].sum() >= thr]
    pred[i] = ("ignored", crowd[0]) if crowd else ("fp", None)
  fn = sum(1 for j in range(len(gm)) if not gcrowd[j] and j not in taken)
  return pred, fn


@pytest.mark.parametrize("agnostic", [False, True])
def test_matches_dense_numpy_reference(agnostic):
  rng = np.random.default_rng(3)
  h, w = 60, 80
  totals = np.zeros(4, int)
  for _ in range(40):
    gm, gc, gcrowd = [], [], []
    for _ in range(int(rng.integers(0, 6))):
      gm.append(ellipse(h, w, rng.integers(10, 50), rng.integers(10, 70), rng.integers(4, 15), rng.integers(4, 20)))
      gc.append(int(rng.integers(0, 2)))
      gcrowd.append(bool(rng.random() < 0.15))
    pm, pc, ps = [], [], []
    for _ in range(int(rng.integers(0, 7))):
      if gm and rng.random() < 0.7:  # a perturbed copy of a ground-truth instance
        j = int(rng.integers(0, len(gm)))
        m = np.roll(gm[j], (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), (0, 1))
        c = gc[j] if rng.random() < 0.8 else 1 - gc[j]
      else:
        m = ellipse(h, w, rng.integers(10, 50), rng.integers(10, 70), rng.integers(4, 15), rng.integers(4, 20))
        c = int(rng.integers(0, 2))
      if not m.any():
        continue
      pm.append(m)
      pc.append(c)
      ps.append(float(rng.choice([0.5, 0.7, rng.random()])))  # repeated scores: ties by file order
    names = ["cat", "Dog"]
    got = match_image([_inst(i, m, c, s) for i, (m, c, s) in enumerate(zip(pm, pc, ps))], [names[c] for c in pc],
                      [_inst(j, m, c, crowd=cr) for j, (m, c, cr) in enumerate(zip(gm, gc, gcrowd))],
                      [names[c].upper() for c in gc], class_agnostic=agnostic)
    ref_pred, ref_fn = reference(pm, pc, ps, gm, gc, gcrowd, agnostic)
    assert [(s[0], s[1]) if s[0] != "fp" else ("fp", None) for s in got.pred] == ref_pred
    assert got.fn == ref_fn
    assert got.tp == sum(p[0] == "tp" for p in ref_pred) and got.fp == sum(p[0] == "fp" for p in ref_pred)
    assert got.iou_type == "mask"
    for s, m_i in zip(got.pred, pm):  # reported IoUs are the dense ones (to float rounding)
      if s[0] == "tp":
        g = gm[s[1]]
        assert s[2] == pytest.approx((m_i & g).sum() / (m_i | g).sum(), abs=1e-9)
    totals += [got.tp, got.fp, got.fn, got.ignored]
  assert (totals > 0).all(), totals  # every outcome was exercised


def test_box_iou_when_a_mask_is_missing():
  h, w = 50, 50
  a = np.zeros((h, w), bool)
  a[10:30, 10:30] = True
  b = np.zeros((h, w), bool)
  b[10:30, 14:34] = True  # box IoU 16*20 / (24*20) = 0.667
  c = np.zeros((h, w), bool)
  c[10:30, 22:42] = True  # box IoU 8/32 = 0.25
  m = match_image([_inst(0, a, 1, 0.9, with_mask=False), _inst(1, c, 1, 0.8, with_mask=False)], ["x", "x"],
                  [_inst(0, b, 1)], ["x"])
  assert m.iou_type == "box"
  assert m.pred[0][0] == "tp" and m.pred[0][2] == pytest.approx(16 / 24)
  assert m.pred[1][0] == "fp" and (m.tp, m.fp, m.fn) == (1, 1, 0)


def test_class_names_must_match_unless_agnostic():
  m = np.zeros((20, 20), bool)
  m[2:12, 2:12] = True
  aware = match_image([_inst(0, m, 1, 0.9)], ["traffic  Light"], [_inst(0, m, 5)], ["Traffic light"])
  assert (aware.tp, aware.fp, aware.fn) == (1, 0, 0)  # whitespace and case normalised
  other = match_image([_inst(0, m, 1, 0.9)], ["cat"], [_inst(0, m, 5)], ["dog"])
  assert (other.tp, other.fp, other.fn) == (0, 1, 1)
  agn = match_image([_inst(0, m, 1, 0.9)], ["cat"], [_inst(0, m, 5)], ["dog"], class_agnostic=True)
  assert (agn.tp, agn.fp, agn.fn) == (1, 0, 0)
