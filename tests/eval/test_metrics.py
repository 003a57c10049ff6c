"""Known-answer COCO metrics on synthetic data, through both evaluators."""
import copy

import numpy as np
import pytest

from tests.eval import synth
from zipjax.eval import STAT_NAMES, compare, evaluate

BACKENDS = ("pycocotools", "faster-coco-eval")


def _perfect_gt():
  gt = synth.dataset(n_images=3)
  synth.add_gt(gt, 1, 10, 2, 2, 20, 20)      # small (400)
  synth.add_gt(gt, 1, 11, 40, 10, 50, 40)    # medium (2000)
  synth.add_gt(gt, 2, 10, 0, 0, 120, 110)    # large (13200)
  synth.add_gt(gt, 2, 11, 125, 60, 30, 30)   # medium (900 -> small? 900 < 1024: small)
  synth.add_gt(gt, 3, 10, 60, 60, 40, 50)    # medium
  return gt


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions_give_ap_one(backend):
  gt = _perfect_gt()
  before = copy.deepcopy(gt)
  preds = synth.perfect_predictions(gt)
  preds_before = copy.deepcopy(preds)
  for agnostic in (False, True):
    r = evaluate(gt, preds, class_agnostic=agnostic, backend=backend)
    for t in ("bbox", "segm"):
      for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert r[t][name] == pytest.approx(1.0), (t, name, agnostic)
      assert all(p == pytest.approx(1.0) for p in r[t]["pr_curve"]["iou_0.50:0.95"])
    assert r["num_gt"] == 5 and r["num_pred"] == 5 and r["num_images"] == 3
  assert gt == before and preds == preds_before  # inputs untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_three_detections(backend):
  # two gts; detections by score: TP, FP (disjoint), TP. Recall 1/2 at precision 1, then 1 at 2/3.
  gt = synth.dataset(n_images=1, categories=("cat",))
  synth.add_gt(gt, 1, 10, 0, 0, 40, 40)
  synth.add_gt(gt, 1, 10, 100, 60, 40, 40)
  preds = [synth.pred(1, 0, 0, 40, 40, 0.9, category_name="cat"),
           synth.pred(1, 50, 0, 40, 40, 0.8, category_name="cat"),
           synth.pred(1, 100, 60, 40, 40, 0.7, category_name="cat")]
  expected = (51 * 1.0 + 50 * (2 / 3)) / 101  # 101-point interpolation by hand
  r = evaluate(gt, preds, backend=backend)
  for t in ("bbox", "segm"):
    assert r[t]["AP"] == pytest.approx(expected, abs=1e-12)
    assert r[t]["AP50"] == pytest.approx(expected, abs=1e-12)
    assert r[t]["APm"] == pytest.approx(expected, abs=1e-12)  # 1600 px: medium
    assert r[t]["APs"] is None and r[t]["APl"] is None        # no gt in those ranges
    assert r[t]["AR100"] == pytest.approx(1.0)
    assert r[t]["AR1"] == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_dependent_case_matches_numpy_reference(backend):
  # Detections shifted from their gt by dx (IoU (40-dx)/(40+dx)), plus misses and false positives.
  gt = synth.dataset(n_images=2, categories=("cat",))
  specs = [(1, 0, 0), (1, 60, 0), (1, 0, 60), (1, 100, 70), (2, 0, 0), (2, 60, 10), (2, 110, 70)]
  for img, x, y in specs:
    synth.add_gt(gt, img, 10, x, y, 40, 40)
  shifts = [0, 2, 5, 8, 11, None, 3]  # None: gt missed
  scores = [0.91, 0.85, 0.62, 0.77, 0.55, None, 0.3]
  preds, det_scores, det_ious = [], [], []
  for (img, x, y), dx, s in zip(specs, shifts, scores):
    if dx is None:
      continue
    preds.append(synth.pred(img, x + dx, y, 40, 40, s, category_name="cat"))
    det_scores.append(s)
    det_ious.append((40 - dx) / (40 + dx))
  for img, x, y, s in [(1, 140, 0, 0.95), (2, 140, 0, 0.5), (2, 120, 20, 0.2)]:  # false positives
    preds.append(synth.pred(img, x, y, 15, 15, s, category_name="cat"))
    det_scores.append(s)
    det_ious.append(0.0)
  ref = synth.coco_ap_101(det_scores, det_ious, n_gt=len(specs))
  assert len(set(np.round(ref, 6))) > 2  # the case exercises several IoU thresholds
  r = evaluate(gt, preds, backend=backend)
  for t in ("bbox", "segm"):
    assert r[t]["AP"] == pytest.approx(ref.mean(), abs=1e-9)
    assert r[t]["AP50"] == pytest.approx(ref[0], abs=1e-9)
    assert r[t]["AP75"] == pytest.approx(ref[5], abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_predictions(backend):
  gt = _perfect_gt()
  for preds in ([], {"images": gt["images"], "annotations": [], "categories": gt["categories"]}):
    r = evaluate(gt, preds, backend=backend)
    assert r["num_pred"] == 0
    for t in ("bbox", "segm"):
      for name in STAT_NAMES:
        assert r[t][name] == 0.0, (t, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_without_annotations(backend):
  gt = synth.dataset(n_images=3, categories=("cat",))  # image 3 has no annotations
  synth.add_gt(gt, 1, 10, 0, 0, 40, 40)
  synth.add_gt(gt, 2, 10, 50, 50, 40, 40)
  good = [synth.pred(1, 0, 0, 40, 40, 0.9, category_name="cat"),
          synth.pred(2, 50, 50, 40, 40, 0.8, category_name="cat")]
  assert evaluate(gt, good, backend=backend)["bbox"]["AP"] == pytest.approx(1.0)
  # A detection on the empty image is a false positive: ranked last it costs nothing, ranked first it
  # drops precision to 1/2 and 2/3 at the two recall steps (envelope 2/3 everywhere).
  low = good + [synth.pred(3, 10, 10, 40, 40, 0.1, category_name="cat")]
  high = good + [synth.pred(3, 10, 10, 40, 40, 0.95, category_name="cat")]
  assert evaluate(gt, low, backend=backend)["segm"]["AP"] == pytest.approx(1.0)
  r = evaluate(gt, high, backend=backend)
  assert r["segm"]["AP"] == pytest.approx(2 / 3)
  assert r["bbox"]["AP"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crowd_regions_are_ignored(backend):
  gt = synth.dataset(n_images=1, categories=("person",))
  synth.add_gt(gt, 1, 10, 0, 0, 60, 60, iscrowd=1)
  synth.add_gt(gt, 1, 10, 100, 60, 40, 40)
  preds = [synth.pred(1, 5, 5, 20, 20, 0.99, category_name="person"),  # inside the crowd region
           synth.pred(1, 100, 60, 40, 40, 0.5, category_name="person")]
  r = evaluate(gt, preds, backend=backend)
  assert r["num_gt"] == 1 and r["num_crowd"] == 1
  for t in ("bbox", "segm"):
    assert r[t]["AP"] == pytest.approx(1.0)
  # The same region as an ordinary instance: the top detection becomes a false positive and it is missed.
  gt["annotations"][0]["iscrowd"] = 0
  r = evaluate(gt, preds, backend=backend)
  for t in ("bbox", "segm"):
    assert r[t]["AP"] < 0.6


def test_class_aware_matches_names_and_agnostic_merges():
  gt = synth.dataset(n_images=1)
  synth.add_gt(gt, 1, 10, 0, 0, 40, 40)
  synth.add_gt(gt, 1, 11, 60, 60, 40, 40)
  # Own categories list with other ids and spelling: mapped to the gt categories by name.
  swapped = {"images": [{"id": 7, "file_name": "img1.jpg", "height": synth.H, "width": synth.W}],
             "categories": [{"id": 1, "name": " DOG"}, {"id": 2, "name": "Cat "}],
             "annotations": [dict(synth.pred(7, 0, 0, 40, 40, 0.9), category_id=1),
                             dict(synth.pred(7, 60, 60, 40, 40, 0.8), category_id=2)]}
  right = copy.deepcopy(swapped)
  right["annotations"][0]["category_id"], right["annotations"][1]["category_id"] = 2, 1
  assert evaluate(gt, right)["segm"]["AP"] == pytest.approx(1.0)
  wrong = evaluate(gt, swapped)
  assert wrong["segm"]["AP"] == 0.0 and wrong["bbox"]["AP"] == 0.0
  assert evaluate(gt, swapped, class_agnostic=True)["segm"]["AP"] == pytest.approx(1.0)
  # category_name on a record wins over its category_id; plain results lists use gt category ids.
  named = copy.deepcopy(swapped)
  named["annotations"][0]["category_name"] = "cat"
  named["annotations"][1]["category_name"] = "dog"
  assert evaluate(gt, named)["bbox"]["AP"] == pytest.approx(1.0)
  ids = [dict(synth.pred(1, 0, 0, 40, 40, 0.9), category_id=10),
         dict(synth.pred(1, 60, 60, 40, 40, 0.9), category_id=11)]
  r = evaluate(gt, ids)
  assert r["bbox"]["AP"] == pytest.approx(1.0)
  assert r["bbox"]["per_category"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_only_pred_images_restricts_the_image_set():
  gt = synth.dataset(n_images=2, categories=("cat",))
  synth.add_gt(gt, 1, 10, 0, 0, 40, 40)
  synth.add_gt(gt, 2, 10, 0, 0, 40, 40)
  preds = {"images": [{"id": 1, "file_name": "dir/img1.jpg"}], "categories": [{"id": 1, "name": "cat"}],
           "annotations": [dict(synth.pred(1, 0, 0, 40, 40, 0.9), category_id=1)]}
  full = evaluate(gt, preds)
  only = evaluate(gt, preds, only_pred_images=True)
  assert full["num_images"] == 2 and full["bbox"]["AR100"] == pytest.approx(0.5)
  assert only["num_images"] == 1 and only["bbox"]["AP"] == pytest.approx(1.0)


def _random_case(seed):
  rng = np.random.default_rng(seed)
  gt = synth.dataset(n_images=6, categories=("a", "b", "c"))
  preds = []
  for img in range(1, 7):
    if img == 6:
      continue  # an image without annotations (but with predictions below)
    for _ in range(int(rng.integers(1, 6))):
      w, h = (int(v) for v in rng.integers(4, 70, 2))
      x, y = int(rng.integers(0, synth.W - w)), int(rng.integers(0, synth.H - h))
      synth.add_gt(gt, img, int(rng.integers(10, 13)), x, y, w, h, iscrowd=int(rng.random() < 0.1))
  names = ("a", "b", "c")
  for a in gt["annotations"]:
    if rng.random() < 0.8:  # a jittered detection, sometimes with the wrong class
      x, y, w, h = (int(v) for v in a["bbox"])
      dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
      x, y = min(max(x + dx, 0), synth.W - w), min(max(y + dy, 0), synth.H - h)
      cls = names[a["category_id"] - 10] if rng.random() < 0.8 else names[int(rng.integers(0, 3))]
      preds.append(synth.pred(a["image_id"], x, y, w, h, float(rng.random()), category_name=cls))
  for _ in range(15):  # false positives, some on the empty image
    img = int(rng.integers(1, 7))
    w, h = (int(v) for v in rng.integers(4, 50, 2))
    x, y = int(rng.integers(0, synth.W - w)), int(rng.integers(0, synth.H - h))
    # a blob mask whose box differs from the rectangle: mask AP and box AP disagree
    m = synth.rect_mask(x, y, w, h)
    m[y:y + h // 2, x:x + w // 2] = 0
    p = synth.pred(img, x, y, w, h, float(rng.random()), category_name=names[int(rng.integers(0, 3))])
    p["segmentation"] = synth.rle(m)
    preds.append(p)
  return gt, preds


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("agnostic", [False, True])
def test_backends_agree(seed, agnostic):
  gt, preds = _random_case(seed)
  a = evaluate(gt, preds, class_agnostic=agnostic, backend="pycocotools")
  b = evaluate(gt, preds, class_agnostic=agnostic, backend="faster-coco-eval")
  assert 0.05 < a["segm"]["AP"] < 0.95  # a non-trivial case
  for t in ("bbox", "segm"):
    for name in STAT_NAMES:
      if a[t][name] is None:
        assert b[t][name] is None, (t, name)
      else:
        assert abs(a[t][name] - b[t][name]) <= 1e-6, (t, name, a[t][name], b[t][name])
    for key, curve in a[t]["pr_curve"].items():
      np.testing.assert_allclose(np.array(curve, float), np.array(b[t]["pr_curve"][key], float), atol=1e-6)
    for name, ap in a[t]["per_category"].items():
      assert (ap is None) == (b[t]["per_category"][name] is None)
      if ap is not None:
        assert abs(ap - b[t]["per_category"][name]) <= 1e-6


def test_compare_runs_side_by_side():
  gt = _perfect_gt()
  perfect = synth.perfect_predictions(gt)
  result = compare(gt, {"zip": perfect, "half": perfect[:2], "none": []}, iou_type="segm")
  assert [r["name"] for r in result["runs"]] == ["zip", "half", "none"]
  aps = [r["metrics"]["segm"]["AP"] for r in result["runs"]]
  assert aps[0] == pytest.approx(1.0) and 0.0 < aps[1] < 1.0 and aps[2] == 0.0
  assert "bbox" not in result["runs"][0]["metrics"]
  assert result["settings"]["iou_types"] == ["segm"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_area_ranges_use_the_mask_area(backend):
  # A false positive with a small mask but a large box: for mask AP it is small (counts against APs);
  # for box AP it is large (ignored in the small range, as COCO ignores unmatched out-of-range detections).
  gt = synth.dataset(n_images=1, categories=("cat",))
  synth.add_gt(gt, 1, 10, 0, 0, 20, 20)
  fp = synth.pred(1, 100, 50, 20, 20, 0.9, category_name="cat")
  fp["bbox"] = [60.0, 10.0, 100.0, 100.0]
  r = evaluate(gt, [synth.pred(1, 0, 0, 20, 20, 0.5, category_name="cat"), fp], backend=backend)
  assert r["segm"]["APs"] == pytest.approx(0.5)
  assert r["bbox"]["APs"] == pytest.approx(1.0)
