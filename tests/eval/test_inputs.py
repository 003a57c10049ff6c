"""Bad ground truth and predictions are refused with messages that name the record."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.eval import synth
from zipjax.errors import InputError
from zipjax.eval import evaluate
from zipjax.io.coco import rle_counts_from_string, segmentation_problem


def _gt():
  gt = synth.dataset(n_images=2)
  synth.add_gt(gt, 1, 10, 0, 0, 40, 40)
  synth.add_gt(gt, 2, 11, 10, 10, 40, 40)
  return gt


def _preds():
  return [synth.pred(1, 0, 0, 40, 40, 0.9, category_name="cat"),
          synth.pred(2, 10, 10, 40, 40, 0.8, category_name="dog")]


def _raises(gt, preds, *fragments, **kw):
  with pytest.raises(InputError) as e:
    evaluate(gt, preds, **kw)
  for f in fragments:
    assert f in str(e.value), (f, str(e.value))
  return str(e.value)


def test_unknown_image_id():
  preds = _preds()
  preds[1]["image_id"] = 99
  _raises(_gt(), preds, "prediction 1", "image_id 99", "not in the ground-truth images")


def test_unknown_category_name_and_id():
  preds = _preds()
  preds[1]["category_name"] = "zebra"
  _raises(_gt(), preds, "prediction 1", "image_id 2", "'zebra'")
  # class-agnostic evaluation ignores classes altogether
  assert evaluate(_gt(), preds, class_agnostic=True)["bbox"]["AP"] == pytest.approx(1.0)
  preds = _preds()
  del preds[0]["category_name"]
  preds[0]["category_id"] = 3
  _raises(_gt(), preds, "prediction 0", "image_id 1", "category_id 3")
  preds[0]["category_id"] = [10]  # unhashable junk is an InputError too, not a TypeError
  _raises(_gt(), preds, "prediction 0", "category_id [10]")


@pytest.mark.parametrize("counts, why", [
    ("0", "runs cover 0 pixels"),          # too short for the image
    ("ab~", "outside the RLE alphabet"),   # '~' is not an RLE character
    ("Q", "truncated"),                    # continuation bit set on the last character
    ([100, 5], "runs cover 105 pixels"),   # uncompressed, wrong total
    ([-5, 19205], "negative run length"),
])
def test_malformed_rle(counts, why):
  preds = _preds()
  preds[1]["segmentation"] = {"size": [synth.H, synth.W], "counts": counts}
  msg = _raises(_gt(), preds, "prediction 1", "image_id 2", why)
  assert "RLE" in msg


def test_mask_size_mismatch():
  preds = _preds()
  preds[0]["segmentation"] = synth.rle(np.ones((synth.H, synth.W + 1), np.uint8))
  _raises(_gt(), preds, "prediction 0", "image_id 1", f"[{synth.H}, {synth.W + 1}]", "does not match")


def test_bad_scores_boxes_and_missing_masks():
  preds = _preds()
  preds[1]["score"] = float("nan")
  _raises(_gt(), preds, "prediction 1", "score")
  preds = _preds()
  preds[0]["bbox"] = [0, 0, -3, 4]
  _raises(_gt(), preds, "prediction 0", "negative width")
  preds = _preds()
  del preds[1]["segmentation"]
  _raises(_gt(), preds, "prediction 1", "no segmentation")
  assert evaluate(_gt(), preds, iou_type="bbox")["bbox"]["AP"] == pytest.approx(1.0)
  preds = _preds()
  preds[0]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]  # pycocotools would read this as a box
  _raises(_gt(), preds, "prediction 0", "polygon 0 has 4 coordinates")


def test_polygon_and_uncompressed_predictions_are_accepted():
  preds = _preds()
  preds[0]["segmentation"] = [[0, 0, 40, 0, 40, 40, 0, 40]]
  m = synth.rect_mask(10, 10, 40, 40).ravel(order="F")
  change = np.flatnonzero(np.diff(m)) + 1
  preds[1]["segmentation"] = {"size": [synth.H, synth.W],
                              "counts": np.diff(np.r_[0, change, m.size]).tolist()}
  r = evaluate(_gt(), preds)
  assert r["segm"]["AP50"] == pytest.approx(1.0)


def test_prediction_dataset_images_matched_by_file_name():
  preds = {"images": [{"id": 5, "file_name": "elsewhere/img2.jpg"}],
           "categories": [{"id": 1, "name": "dog"}],
           "annotations": [dict(synth.pred(5, 10, 10, 40, 40, 0.9), category_id=1)]}
  r = evaluate(_gt(), preds, only_pred_images=True)
  assert r["segm"]["AP"] == pytest.approx(1.0)
  preds["images"][0]["file_name"] = "img3.jpg"
  _raises(_gt(), preds, "image 0 (id 5)", "'img3.jpg'")
  preds["images"][0].update(file_name="img2.jpg", height=7)
  _raises(_gt(), preds, "image 0 (id 5)", "height 7")
  preds["images"][0].pop("height")
  preds["annotations"][0]["image_id"] = 6
  _raises(_gt(), preds, "prediction 0", "image_id 6")


def test_bad_ground_truth():
  gt = _gt()
  gt["annotations"][1]["category_id"] = 12
  _raises(gt, [], "annotation 1", "image_id 2", "category_id 12")
  gt = _gt()
  gt["images"][1]["id"] = 1
  _raises(gt, [], "image 1 (id 1)", "duplicate")
  gt = _gt()
  gt["annotations"][0]["segmentation"] = {"size": [10, 10], "counts": "0"}
  _raises(gt, [], "annotation 0", "image_id 1", "does not match")
  gt = _gt()
  gt["categories"][1]["name"] = "CAT"
  _raises(gt, [], "category 1", "repeats")
  with pytest.raises(InputError, match="no 'images' list"):
    evaluate({"annotations": []}, [])


def test_gt_annotation_id_zero_is_safe():
  # pycocotools marks "unmatched" with gt id 0; zipjax renumbers ground truth so id 0 still matches.
  gt = _gt()
  gt["annotations"][0]["id"] = 0
  assert evaluate(gt, _preds())["segm"]["AP"] == pytest.approx(1.0)


def test_files_and_json_errors(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(InputError, match="bad.json: ground-truth file is not valid JSON"):
    evaluate(str(bad), [])
  with pytest.raises(InputError, match="missing.json: prediction file not found"):
    evaluate(_gt(), str(tmp_path / "missing.json"))
  with pytest.raises(InputError, match="unknown evaluator backend"):
    evaluate(_gt(), [], backend="detectron")


def test_rle_decoder_matches_pycocotools():
  rng = np.random.default_rng(0)
  for t in range(60):
    h, w = (int(v) for v in rng.integers(1, 50, 2))
    m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    if t % 5 == 0:
      m[:] = t % 2
    counts = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
    flat = m.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, flat.size]).tolist()
    if flat[0]:
      runs = [0] + runs
    assert rle_counts_from_string(counts).tolist() == runs
    assert segmentation_problem({"size": [h, w], "counts": counts}, h, w) is None
  big = np.zeros((1000, 3000), np.uint8)  # a run of a million pixels takes several characters
  big[500:, 1000:] = 1
  counts = mask_utils.encode(np.asfortranarray(big))["counts"].decode()
  assert rle_counts_from_string(counts).tolist() == [1000 * 1000 + 500] + [500, 500] * 1999 + [500]


def test_preloaded_predictions_must_match_the_mode():
  from zipjax.io.coco import load_ground_truth, load_predictions
  gt = load_ground_truth(_gt())
  preds = load_predictions(_preds(), gt, class_agnostic=True, need_segm=False)
  assert evaluate(gt, preds, class_agnostic=True)["segm"]["AP"] == pytest.approx(1.0)
  with pytest.raises(InputError, match="class_agnostic=True"):
    evaluate(gt, preds)
