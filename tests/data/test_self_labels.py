"""Self-training label merging against a NumPy reference (decoded masks, IoU by pixel counts, the greedy rule of
the module docstring written out plainly): random scenes with ties, exact-threshold IoUs, crowd and polygon
labels, both modes; plus categories, determinism and errors."""
import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zipjax.data.self_labels import calibrate, mask_iou, merge_labels
from zipjax.errors import InputError
from zipjax.io.geometry import encode_rle


def _decode(seg, h, w):
  if isinstance(seg, list):
    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
  else:
    rle = dict(seg, counts=seg["counts"].encode("ascii"))
  return mask_utils.decode(rle).astype(bool)


def _np_iou(a, b):
  u = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum()) / float(u) if u else 0.0


def reference(labels, preds, threshold, max_dets, mode, dedup, min_area, support=None, rescore=False):
  """[(image_id, category name, score or None, mask)] in output order."""
  name_of = {c["id"]: c["name"] for c in labels["categories"]}
  pname = {c["id"]: c["name"] for c in preds["categories"]}
  out = []
  for img in labels["images"]:
    h, w = img["height"], img["width"]
    cand = []
    for p in preds["annotations"]:
      if p["image_id"] != img["id"]:
        continue
      m = _decode(p["segmentation"], h, w)
      if p["score"] >= threshold and m.sum() >= min_area:
        cand.append((p, m))
    cand.sort(key=lambda pm: -pm[0]["score"])  # stable
    kept = []
    for p, m in cand:
      if len(kept) == max_dets:
        break
      if all(_np_iou(m, k) < dedup for _, k in kept):
        kept.append((p, m))
    out += [(img["id"], pname[p["category_id"]], p["score"], m) for p, m in kept]
    if mode == "union":
      for a in labels["annotations"]:
        if a["image_id"] != img["id"]:
          continue
        m = _decode(a["segmentation"], h, w)
        if a.get("iscrowd", 0):
          out.append((img["id"], name_of[a["category_id"]], a.get("score"), m))
          continue
        if any(_np_iou(m, k) >= dedup for _, k in kept):
          continue  # replaced
        agree = [p["score"] for p in preds["annotations"] if p["image_id"] == img["id"]
                 and _np_iou(m, _decode(p["segmentation"], h, w)) >= dedup]
        if support is not None and (not agree or max(agree) < support):
          continue  # unsupported
        out.append((img["id"], name_of[a["category_id"]], max(agree) if rescore and agree else a.get("score"), m))
  return out


def _rect(h, w, x0, y0, x1, y1):
  m = np.zeros((h, w), bool)
  m[y0:y1, x0:x1] = True
  return m


def _scene(seed, n_images=4, h=40, w=48):
  rng = np.random.default_rng(seed)
  images = [{"id": 10 + i, "file_name": f"{i}.png", "height": h, "width": w} for i in range(n_images)]
  labels = {"images": images, "categories": [{"id": 3, "name": "Shape"}, {"id": 7, "name": "ring"}],
            "annotations": []}
  preds = {"images": images, "categories": [{"id": 1, "name": "shape"}, {"id": 2, "name": "object"}],
           "annotations": []}

  def rand_mask():
    x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
    return _rect(h, w, x0, y0, x0 + rng.integers(3, 20), y0 + rng.integers(3, 20))

  for img in images:
    objs = [rand_mask() for _ in range(3)]
    for m in objs:
      if rng.random() < 0.7:  # a label near each object
        labels["annotations"].append({"id": 100 + len(labels["annotations"]), "image_id": img["id"],
                                      "category_id": int(rng.choice([3, 7])), "segmentation": encode_rle(m),
                                      "iscrowd": 0, "score": round(float(rng.uniform(0.3, 1)), 2)})
      for _ in range(int(rng.integers(1, 4))):  # predictions: the object, shifted copies (duplicates)
        dy, dx = rng.integers(-2, 3, 2)
        pm = np.roll(np.roll(m, dy, 0), dx, 1)
        preds["annotations"].append({"id": len(preds["annotations"]) + 1, "image_id": img["id"],
                                     "category_id": int(rng.integers(1, 3)), "segmentation": encode_rle(pm),
                                     "score": float(rng.choice([0.3, 0.5, 0.5, 0.7, 0.9]))})  # ties
    preds["annotations"].append({"id": len(preds["annotations"]) + 1, "image_id": img["id"], "category_id": 2,
                                 "segmentation": encode_rle(rand_mask()), "score": 0.95})
  return labels, preds


def _as_tuples(data):
  name_of = {c["id"]: c["name"] for c in data["categories"]}
  out = []
  for a in data["annotations"]:
    img = next(i for i in data["images"] if i["id"] == a["image_id"])
    out.append((a["image_id"], name_of[a["category_id"]], a.get("score"), _decode(a["segmentation"], img["height"],
                                                                                  img["width"])))
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["union", "replace"])
@pytest.mark.parametrize("threshold,max_dets,dedup,min_area", [(0.5, 30, 0.5, 1), (0.3, 2, 0.3, 20),
                                                               (0.0, 30, 0.9, 0)])
def test_matches_numpy_reference(seed, mode, threshold, max_dets, dedup, min_area):
  labels, preds = _scene(seed)
  before = copy.deepcopy((labels, preds))
  data, stats = merge_labels(labels, preds, threshold=threshold, max_dets=max_dets, mode=mode, dedup_iou=dedup,
                             min_area=min_area)
  assert (labels, preds) == before  # inputs untouched
  got, want = _as_tuples(data), reference(labels, preds, threshold, max_dets, mode, dedup, min_area)
  assert len(got) == len(want)
  for g, r in zip(got, want):
    assert g[:2] == (r[0], {"shape": "Shape"}.get(r[1], r[1]))  # 'shape' is the labels' 'Shape' by name
    assert g[2] == r[2]
    np.testing.assert_array_equal(g[3], r[3])
  assert [a["id"] for a in data["annotations"]] == list(range(1, len(got) + 1))
  assert stats["labels"] == len(got) == stats["added"] + stats["kept"]
  n_old = len(labels["annotations"])
  assert stats["kept"] + stats["replaced"] + stats["dropped"] == n_old
  assert (stats["dropped"] == n_old) if mode == "replace" else (stats["dropped"] == 0)
  # 'object' (not a label category) is appended with a new id; 'shape' maps onto 'Shape' (id 3)
  assert data["categories"] == labels["categories"] + [{"id": 8, "name": "object", "supercategory": "object"}]
  new = [a for a in data["annotations"] if "area" in a]  # the scene's labels have no area
  assert len(new) == stats["added"]
  for a in new:  # area and box follow the mask
    img = next(i for i in data["images"] if i["id"] == a["image_id"])
    m = _decode(a["segmentation"], img["height"], img["width"])
    ys, xs = np.nonzero(m)
    assert a["area"] == m.sum() and a["iscrowd"] == 0
    assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
  # byte-identical when repeated
  again, _ = merge_labels(labels, preds, threshold=threshold, max_dets=max_dets, mode=mode, dedup_iou=dedup,
                          min_area=min_area)
  assert json.dumps(again) == json.dumps(data)


def test_exact_threshold_iou_counts_as_duplicate():
  h, w = 20, 30
  big, small = _rect(h, w, 0, 0, 20, 10), _rect(h, w, 0, 0, 10, 10)  # IoU exactly 0.5
  assert mask_iou([encode_rle(big)], [encode_rle(small)])[0, 0] == 0.5
  img = [{"id": 1, "file_name": "a.png", "height": h, "width": w}]
  labels = {"images": img, "categories": [{"id": 1, "name": "object"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": encode_rle(small),
                             "iscrowd": 0}]}
  preds = {"images": img, "categories": [{"id": 1, "name": "object"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_rle(big), "score": .9},
                           {"id": 2, "image_id": 1, "category_id": 1, "segmentation": encode_rle(small),
                            "score": .8}]}
  data, stats = merge_labels(labels, preds, threshold=0.5, mode="union", dedup_iou=0.5)
  assert stats == {"predicted": 2, "added": 1, "kept": 0, "replaced": 1, "dropped": 0, "unsupported": 0, "labels": 1}
  data, stats = merge_labels(labels, preds, threshold=0.5, mode="union", dedup_iou=0.51)
  assert stats["added"] == 2 and stats["replaced"] == 1  # the label equals the second prediction


def test_crowd_and_polygon_labels():
  h, w = 32, 32
  img = [{"id": 1, "file_name": "a.png", "height": h, "width": w}]
  square = [[4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]]  # polygon label
  labels = {"images": img, "categories": [{"id": 1, "name": "object"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": square, "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1,
                             "segmentation": encode_rle(_rect(h, w, 4, 4, 20, 20))}]}
  poly_mask = _decode(square, h, w)
  preds = {"images": img, "categories": [{"id": 1, "name": "object"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_rle(poly_mask),
                            "score": 0.9}]}
  data, stats = merge_labels(labels, preds, threshold=0.5, mode="union")
  # the polygon label is replaced by the identical prediction; the crowd region is always kept, as it was
  assert stats == {"predicted": 1, "added": 1, "kept": 1, "replaced": 1, "dropped": 0, "unsupported": 0,
                   "labels": 2}
  assert data["annotations"][1] == dict(labels["annotations"][1], id=2)
  assert data["annotations"][0]["score"] == 0.9 and data["annotations"][0]["area"] == poly_mask.sum()


def test_errors():
  labels, preds = _scene(0, n_images=1)
  with pytest.raises(InputError, match="mode"):
    merge_labels(labels, preds, threshold=0.5, mode="intersect")
  with pytest.raises(InputError, match="dedup_iou"):
    merge_labels(labels, preds, threshold=0.5, dedup_iou=0.0)
  with pytest.raises(InputError, match="threshold"):
    merge_labels(labels, preds, threshold=1.5)
  bad = copy.deepcopy(preds)
  bad["annotations"][0]["image_id"] = 999
  with pytest.raises(InputError, match="image_id 999"):
    merge_labels(labels, bad, threshold=0.5)
  bad = copy.deepcopy(preds)
  bad["annotations"][0]["category_id"] = 42
  with pytest.raises(InputError, match="category_id 42"):
    merge_labels(labels, bad, threshold=0.5)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("support,rescore", [(0.5, True), (0.8, False), (0.0, True)])
def test_support_and_rescore_match_numpy_reference(seed, support, rescore):
  labels, preds = _scene(seed)
  data, stats = merge_labels(labels, preds, threshold=0.7, mode="union", dedup_iou=0.5, support=support,
                             rescore=rescore)
  want = reference(labels, preds, 0.7, 30, "union", 0.5, 1, support=support, rescore=rescore)
  got = _as_tuples(data)
  assert [(i, c, s) for i, c, s, _ in got] == [(i, {"shape": "Shape"}.get(c, c), s) for i, c, s, _ in want]
  assert all(np.array_equal(a[3], b[3]) for a, b in zip(got, want))
  plain = merge_labels(labels, preds, threshold=0.7, mode="union", dedup_iou=0.5)[1]
  assert stats["kept"] + stats["unsupported"] == plain["kept"] and plain["unsupported"] == 0
  if support == 0.8:
    assert stats["unsupported"] > 0


def test_calibrate_quantiles_of_agreeing_scores():
  labels, preds = _scene(3)
  name = {i["id"]: i for i in labels["images"]}
  agree = []
  for p in preds["annotations"]:
    img = name[p["image_id"]]
    m = _decode(p["segmentation"], img["height"], img["width"])
    ious = [_np_iou(m, _decode(a["segmentation"], img["height"], img["width"])) for a in labels["annotations"]
            if a["image_id"] == p["image_id"]]
    if ious and max(ious) >= 0.5:
      agree.append(p["score"])
  assert 0 < len(agree) < len(preds["annotations"])
  cal = calibrate(labels, preds, quantile=0.5, support_quantile=0.1, dedup_iou=0.5)
  assert cal["agreeing"] == len(agree) and cal["predictions"] == len(preds["annotations"])
  assert cal["threshold"] == pytest.approx(float(np.quantile(agree, 0.5)))
  assert cal["support"] == pytest.approx(float(np.quantile(agree, 0.1)))
  assert calibrate(labels, preds, quantile=0.5, floor=0.99)["threshold"] == 0.99
  none = dict(preds, annotations=[])
  assert calibrate(labels, none, quantile=0.5, floor=0.2) == {"threshold": 0.2, "support": 0.0, "agreeing": 0,
                                                              "predictions": 0}
  with pytest.raises(InputError, match="quantiles"):
    calibrate(labels, preds, quantile=1.0)


def test_protect_keeps_labels_made_by_an_earlier_round():
  """With protect, a label carrying self_round (made by an earlier round's detector) is kept as it is and the
  prediction agreeing with it is dropped ('confirmed'); an original pseudo-label is replaced as without protect;
  new labels carry the round index."""
  h, w = 30, 40
  img = [{"id": 1, "file_name": "a.png", "height": h, "width": w}]
  made, pseudo = _rect(h, w, 0, 0, 10, 10), _rect(h, w, 20, 10, 30, 20)
  labels = {"images": img, "categories": [{"id": 1, "name": "object"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_rle(made), "iscrowd": 0,
                             "score": 0.4, "self_round": 1},
                            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": encode_rle(pseudo),
                             "iscrowd": 0, "score": 0.9}]}
  preds = {"images": img, "categories": [{"id": 1, "name": "object"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "score": 0.8,
                            "segmentation": encode_rle(_rect(h, w, 0, 0, 10, 9))},
                           {"id": 2, "image_id": 1, "category_id": 1, "score": 0.7,
                            "segmentation": encode_rle(_rect(h, w, 20, 10, 30, 19))}]}
  data, stats = merge_labels(labels, preds, threshold=0.5, dedup_iou=0.5, protect=True, round_index=2)
  assert stats["confirmed"] == 1 and stats["replaced"] == 1 and stats["added"] == 1 and stats["kept"] == 1
  new, kept = data["annotations"]
  assert new["self_round"] == 2 and _decode(new["segmentation"], h, w).sum() == 90  # the pseudo-label repaired
  assert kept == dict(labels["annotations"][0], id=2)  # the earlier round's label, untouched
  data, stats = merge_labels(labels, preds, threshold=0.5, dedup_iou=0.5)
  assert stats["replaced"] == 2 and "confirmed" not in stats and all("self_round" not in a for a in data["annotations"])


def test_a_new_label_keeps_its_predictions_box():
  """A new label's box is the prediction's own (the detector's final box, e.g. without a stray piece of the mask);
  a prediction without a usable box (missing, not 4 finite numbers, zero size) gets its mask's tight box."""
  h, w = 20, 30
  m = np.zeros((h, w), bool)
  m[2:8, 3:12] = True
  m[15:17, 25:27] = True   # a stray piece: the mask's tight box spans it
  labels = {"images": [{"id": 1, "height": h, "width": w, "file_name": "a.png"}], "annotations": [],
            "categories": [{"id": 1, "name": "object"}]}
  boxes = [[3.0, 2.0, 9.0, 6.0], None, [1.0, 1.0, 0.0, 5.0], [1.0, float("nan"), 2.0, 2.0], [1, 2, 3]]
  want = [[3.0, 2.0, 9.0, 6.0]] + [[3.0, 2.0, 24.0, 15.0]] * 4
  for box, expect in zip(boxes, want):
    p = {"image_id": 1, "category_id": 1, "segmentation": encode_rle(m), "score": 0.9}
    if box is not None:
      p["bbox"] = box
    out, _ = merge_labels(labels, {"annotations": [p], "categories": [{"id": 1, "name": "object"}]}, threshold=0.5)
    assert out["annotations"][0]["bbox"] == expect, (box, out["annotations"][0]["bbox"])
