"""Host post-processing of the engine (zipjax/pipeline/post.py): full-size masks from SAM logits and from
feature-grid labels, boxes, RLE, against the old device path (`zipjax.sam.postprocess_masks`) and NumPy."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zipjax import sam as sam_lib
from zipjax.ops import nms, resize
from zipjax.pipeline import post


@pytest.mark.parametrize("size", [(90, 130), (256, 200), (600, 450), (64, 64)])
def test_sam_masks_match_postprocess_masks(size, monkeypatch):
  """Same masks as SAM's postprocessing except where the logit is within 1e-5 of the threshold (NumPy's float32
  multiply-adds vs XLA's dots)."""
  rng = np.random.default_rng(size[0])
  low = rng.normal(0, 1, (3, 64, 64)).astype(np.float32)
  low = np.stack([np.kron(rng.normal(0, 1, (8, 8)), np.ones((8, 8))) + 0.1 * x for x in low]).astype(np.float32)
  ih, iw = sam_lib.get_preprocess_shape(*size, 256)
  logits = np.asarray(sam_lib.postprocess_masks(low, (ih, iw), size, 256, return_logits=True))  # [3, H, W]
  plan = post.sam_plan(64, 256, (ih, iw), size)
  monkeypatch.setattr(post, "CHUNK_ELEMENTS", 1000)  # several column chunks
  for i in range(3):
    got = post.sam_mask_t(low[i], plan, 0.0).T
    want = logits[i] > 0
    assert got.shape == size
    bad = got != want
    assert np.all(np.abs(logits[i][bad]) < 1e-5), np.abs(logits[i][bad]).max()
    assert want.any() and (~want).any()


def test_nearest_masks_and_boxes():
  labels = np.random.default_rng(0).integers(0, 4, (6, 8))
  for size in [(6, 8), (37, 53), (13, 100)]:
    iy, ix = resize.nearest_indices(6, size[0]), resize.nearest_indices(8, size[1])
    for k in range(1, 4):
      got = post.nearest_mask_t(labels == k, size).T
      np.testing.assert_array_equal(got, labels[iy][:, ix] == k)
      box, valid = nms.mask_to_box(got)
      assert bool(valid) and post.box_of(got.T) == [float(v) for v in np.asarray(box)]
  assert post.box_of(np.zeros((5, 4), bool)) is None


def _out(n_keep=3, sam=True):
  rng = np.random.default_rng(5)
  out = {"probs": np.array([0.2, 0.8], np.float32), "present": np.array([1, 0], np.int32),
         "present_valid": np.array([True, False]), "labels": rng.integers(0, 3, (2, 6, 8)).astype(np.int32),
         "dropped": np.int32(0), "keep_valid": np.array([True, True, False][:n_keep]),
         "keep_category": np.array([1, 1, 0], np.int32), "keep_slot": np.array([0, 0, 0], np.int32),
         "keep_label": np.array([1, 2, 1], np.int32), "keep_score": np.array([0.9, 0.5, 0.1], np.float32),
         "keep_box": np.array([[1, 2, 30, 40], [0, 0, 5, 5], [0, 0, 1, 1]], np.float32)}
  if sam:
    low = rng.normal(0, 1, (3, 16, 16)).astype(np.float32)
    low[1] = -10.0  # an empty mask keeps its prompt box
    out["keep_logits"] = low
  return out


def test_postprocess_rle_and_bool_agree():
  for sam in (True, False):
    kw = dict(sam_frame=64, sam_size=(48, 64)) if sam else {}
    a = post.postprocess(_out(sam=sam), (45, 60), masks="bool", **kw)
    b = post.postprocess(_out(sam=sam), (45, 60), masks="rle", **kw)
    assert list(a["present"]) == [1] and a["labels"].shape == (1, 6, 8) and a["grid"] == (6, 8)
    assert len(a["instances"]) == len(b["instances"]) == 2
    for x, y in zip(a["instances"], b["instances"]):
      m = mask_utils.decode({"size": y["mask"]["size"], "counts": y["mask"]["counts"].encode()}).astype(bool)
      np.testing.assert_array_equal(x["mask"], m)
      assert y["area"] == m.sum() and x["box"] == y["box"] and x["category"] == 1
    if sam:
      assert not a["instances"][1]["mask"].any() and a["instances"][1]["box"] == [0.0, 0.0, 5.0, 5.0]
      assert a["instances"][0]["box"] == post.box_of(a["instances"][0]["mask"].T)
    else:
      assert a["instances"][0]["box"] == [1.0, 2.0, 30.0, 40.0]
  with pytest.raises(ValueError):
    post.postprocess(_out(), (45, 60), masks="png")


@pytest.mark.parametrize("size", [(90, 130), (600, 450)])
def test_sam2_direct_masks_match_a_single_bilinear_resize(size, monkeypatch):
  """SAM 2's postprocessing (`direct`): the low-res logits resized straight to the image size, as
  `zipjax.sam.postprocess_masks_direct` (and SAM2Transforms) does, up to float noise at the threshold."""
  rng = np.random.default_rng(size[1])
  low = np.stack([np.kron(rng.normal(0, 1, (8, 8)), np.ones((8, 8))) + 0.1 * rng.normal(0, 1, (64, 64))
                  for _ in range(2)]).astype(np.float32)
  logits = np.asarray(sam_lib.postprocess_masks_direct(low, size, return_logits=True))  # [2, H, W]
  plan = post.sam_plan(64, 256, (256, 256), size, direct=True)
  monkeypatch.setattr(post, "CHUNK_ELEMENTS", 1000)
  for i in range(2):
    got = post.sam_mask_t(low[i], plan, 0.0).T
    want = logits[i] > 0
    assert got.shape == size
    bad = got != want
    assert np.all(np.abs(logits[i][bad]) < 1e-5)
    assert want.any() and (~want).any()
