"""zipjax.io.geometry, the one module that rasterises masks: every consumer (evaluation, the gallery, training
targets, self-training label merging) hands pycocotools only geometry bounded by its image, whatever the
coordinates in the file; `sample_mask` reads a mask grid from the runs without a full-resolution array; image
records claiming absurd sizes are named."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zipjax.data import coco_train
from zipjax.data.self_labels import merge_labels
from zipjax.gallery.render import normalize_instances
from zipjax.io import coco as coco_io
from zipjax.io import geometry

H, W = 48, 64
FAR = [[-2e7, -2e7, 2e7, -2e7, 2e7, 2e7, -2e7, 2e7]]  # a square far larger than the image: the whole image


def _rect_rle():
  m = np.zeros((H, W), np.uint8)
  m[10:30, 20:50] = 1
  r = mask_utils.encode(np.asfortranarray(m))
  return {"size": [H, W], "counts": r["counts"].decode("ascii")}


@pytest.fixture()
def spy(monkeypatch):
  """Records the largest |coordinate| of every polygon handed to pycocotools' rasteriser."""
  seen = []
  real = mask_utils.frPyObjects

  def checked(obj, h, w):
    if isinstance(obj, list):
      worst = max(abs(v) for poly in obj for v in poly)
      seen.append(worst)
      assert worst <= max(h, w) + 2, f"an unclipped polygon reached pycocotools ({worst:g} px on {w}x{h})"
    return real(obj, h, w)

  monkeypatch.setattr(mask_utils, "frPyObjects", checked)
  return seen


def test_every_consumer_rasterises_bounded_polygons(spy):
  # self-training: a previous label with coordinates of 2e7 meets a kept prediction (mask IoU de-duplication)
  labels = {"images": [{"id": 1, "height": H, "width": W, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": FAR, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}
  preds = {"images": labels["images"], "categories": [{"id": 1, "name": "thing"}],
           "annotations": [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": _rect_rle()}]}
  data, stats = merge_labels(labels, preds, threshold=0.5)
  assert stats["added"] == 1 and stats["kept"] == 1  # IoU(rectangle, whole image) < 0.5: both stay
  # training targets
  p = coco_train.AugmentParams(image_size=32, mask_stride=4, max_instances=2, train=False)
  t = coco_train.make_targets(np.zeros((H, W, 3), np.uint8), [(0, FAR)], p, None)
  assert t["valid"].sum() == 1 and t["masks"][0].sum() == 6 * 8  # the whole (padded) 24 x 32 image
  # the gallery
  insts, problems = normalize_instances([{"segmentation": FAR, "category_id": 1}], H, W, "x")
  assert not problems and geometry.rle_area(dict(insts[0].rle, counts=insts[0].rle["counts"].encode())) == H * W
  # evaluation
  gt = coco_io.load_ground_truth({"images": labels["images"], "categories": labels["categories"],
                                  "annotations": [dict(labels["annotations"][0], bbox=[0, 0, W, H])]})
  coco_io.load_predictions([{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": FAR}], gt)
  assert geometry.decode_mask(FAR, H, W).all()
  assert len(spy) >= 4  # each consumer went through the rasteriser, each time bounded


def test_sample_mask_reads_the_runs_like_a_dense_decode():
  rng = np.random.default_rng(0)
  for h, w, tw, th in ((37, 53, 10, 7), (8, 8, 8, 8), (100, 3, 2, 40), (1, 1, 5, 5)):
    m = rng.random((h, w)) < 0.3
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    got = geometry.sample_mask({"size": [h, w], "counts": r["counts"].decode()}, tw, th)
    yi = np.minimum(((np.arange(th) + 0.5) * h / th).astype(np.int64), h - 1)
    xi = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(np.int64), w - 1)
    np.testing.assert_array_equal(got, m[yi][:, xi])
  # a 60000 x 60000 mask of one run: no 3.35 GiB array
  huge = mask_utils.frPyObjects({"size": [60000, 60000], "counts": [0, 60000 * 60000]}, 60000, 60000)
  assert geometry.sample_mask({"size": [60000, 60000], "counts": huge["counts"].decode()}, 4, 4).all()


def test_image_size_limit():
  assert geometry.image_size_problem(8192, 8192) is None
  assert "claims 60000x60000 px" in geometry.image_size_problem(60000, 60000)
  assert geometry.image_size_problem(10, geometry.MAX_SIDE + 1) is not None
