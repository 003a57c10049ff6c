"""Predictor geometry: detections on the padded canvas map back to the original image (boxes divided by the
resize factor, mask logits resampled over the image's part of the canvas), checked on hand-made outputs; the
host refinement (box_source='mask': window, contour box; score='class_mask'; mask_nms) on hand-made logits."""
import numpy as np

from zipjax import parallel
from zipjax.train import predict
from zipjax.train.predict import DetectorPredictor
from zipjax.train.task import detector_config
from zipjax.commands.segment import apply_overrides, load_config_file


def _predictor(score_threshold=0.5, *extra):
  config = apply_overrides(load_config_file("configs/train_smoke.py"), [
      "--config.model.input_size=64", "--config.model.mask_stride=4", "--config.model.patch_size=16",
      "--config.model.box_source=head", *extra])
  return DetectorPredictor(detector_config(config), parallel.create_mesh([("data", 1)]), 2,
                           score_threshold=score_threshold)


def test_instances_map_back_to_image_pixels():
  pred = _predictor()
  h, w = 50, 100  # longer side 100 -> 64: factor 0.64, canvas image region 64 x 32
  g = pred.prepare(np.zeros((h, w, 3), np.uint8))[1]
  assert (g.rw, g.rh) == (64, 32)
  logits = np.full((3, 16, 16), -10.0, np.float32)
  logits[0, 2:6, 4:12] = 10.0     # canvas rows 8..24, cols 16..48 -> image rows 12.5..37.5, cols 25..75
  logits[1, 0:8, 0:16] = 10.0     # the whole image part of the canvas (rows 0..32 of 64)
  out = {"boxes": np.array([[16, 8, 48, 24], [0, 0, 64, 40], [0, 0, 1, 1]], np.float32),
         "scores": np.array([0.9, 0.8, 0.1], np.float32), "classes": np.array([1, 0, 0], np.int32),
         "mask_logits": logits}
  insts = pred.instances(out, g, h, w)
  assert len(insts) == 2  # score 0.1 < threshold
  np.testing.assert_allclose(insts[0]["box"], [25, 12.5, 75, 37.5], atol=1e-4)
  np.testing.assert_allclose(insts[1]["box"], [0, 0, 100, 50], atol=1e-4)  # clipped to the image
  assert insts[0]["category"] == 1 and abs(insts[0]["score"] - 0.9) < 1e-6
  want = np.zeros((h, w), bool)
  want[13:37, 25:75] = True  # pixel centres (i + 0.5) inside (12.5, 37.5) x (25, 75)
  got = insts[0]["mask"]
  assert got.shape == (h, w)
  inter, union = (got & want).sum(), (got | want).sum()
  assert inter / union > 0.97, inter / union  # bilinear edges may move a boundary by a pixel
  assert insts[1]["mask"].all()


def test_refine_mask_box_window_and_contour():
  """box_source='mask': pieces of the mask outside the head's box widened by half its size are dropped; the box is
  the extent of the regions of logits above BOX_CONTOUR_LOGIT there that hold the mask's largest piece (a faint
  thin part joined to it counts; a smaller piece of the mask or a faint blob apart from it does not, though the
  smaller piece stays in the mask); an empty mask keeps the head's box; the quality is the mean probability of
  the mask's pixels."""
  logits = np.full((60, 80), -8.0, np.float32)
  logits[20:40, 20:40] = 4.0     # the object
  logits[28:31, 40:50] = -1.0    # a thin faint arm (p 0.27): below the mask threshold, above the contour's
  logits[5:8, 70:78] = 4.0       # a stray piece far from the head box
  head = [21.0, 19.0, 41.0, 41.0]  # window: x 11..51, y 8..52
  box, mask, q = predict.refine(head, logits, "mask")
  assert box == [20.0, 20.0, 50.0, 40.0]
  assert mask.sum() == 400 and not mask[5:8, 70:78].any()
  np.testing.assert_allclose(q, 1 / (1 + np.exp(-4.0)), rtol=1e-6)
  box, mask, q = predict.refine(head, logits, "head")  # the head's box, the whole mask
  assert box == head and mask.sum() == 400 + 24
  assert predict.BOX_CONTOUR_LOGIT < -2.5
  apart = logits.copy()
  apart[10:13, 12:16] = 4.0      # a smaller piece of the mask inside the window, apart from the object
  apart[44:50, 30:34] = -2.5     # a faint blob apart from the object (a neighbour's halo)
  apart[40:42, 24:28] = -2.5     # a faint edge joined to the object
  box, mask, q = predict.refine(head, apart, "mask")
  assert box == [20.0, 20.0, 50.0, 42.0], box
  assert mask.sum() == 400 + 12 and mask[10:13, 12:16].all()
  both = apart.copy()
  both[13:20, 13:15] = -2.8      # a faint bridge joins the smaller piece to the object: its region counts
  both[18:20, 13:21] = -2.8
  assert predict.refine(head, both, "mask")[0] == [12.0, 10.0, 50.0, 42.0]
  box, mask, q = predict.refine(head, np.full((60, 80), -8.0, np.float32), "mask")
  assert box == head and not mask.any() and q == 0.0
  assert predict._window([0.0, 0.0, 10.0, 4.0], 60, 80) == (0, 6, 0, 15)


def test_mask_nms_greedy_per_group():
  a = np.zeros((10, 10), bool)
  a[0:5, 0:5] = True
  b = np.zeros((10, 10), bool)
  b[0:5, 1:5] = True   # IoU 0.8 with a
  c = np.zeros((10, 10), bool)
  c[0:5, 3:8] = True   # IoU 0.25 with a
  assert predict.mask_nms([a, b, c], 0.6) == [0, 2]
  assert predict.mask_nms([a, b, c], 0.9) == [0, 1, 2]
  assert predict.mask_nms([a, b, c], 0.2) == [0]
  assert predict.mask_nms([a, b, c], 0.6, groups=[0, 1, 0]) == [0, 1, 2]  # b is another category


def test_class_mask_score_reorders_and_nms_drops_duplicates():
  pred = _predictor(0.05, "--config.model.score=class_mask", "--config.model.mask_nms=0.5",
                    "--config.model.box_source=mask")
  h = w = 64
  g = pred.prepare(np.zeros((h, w, 3), np.uint8))[1]
  logits = np.full((3, 16, 16), -10.0, np.float32)
  logits[0, 2:6, 2:6] = 0.5     # confident class, faint mask: quality ~0.6
  logits[1, 2:6, 2:6] = 8.0     # a duplicate of it with a crisp mask
  logits[2, 10:14, 10:14] = 8.0
  out = {"boxes": np.array([[8, 8, 24, 24], [8, 8, 24, 24], [40, 40, 56, 56]], np.float32),
         "scores": np.array([0.9, 0.6, 0.5], np.float32), "classes": np.zeros(3, np.int32), "mask_logits": logits}
  insts = pred.instances(out, g, h, w)
  # the faint mask's pixels have p in (0.5, 0.63): 0.9 * q^2 < 0.36, under the crisp duplicate's 0.6 * q^2 (q > 0.9
  # where the bilinear edges blur the crisp one), which then suppresses it (mask IoU > 0.5)
  assert len(insts) == 2, [(i["score"], i["box"]) for i in insts]
  assert 0.6 * 0.9 ** 2 < insts[0]["score"] < 0.6 and 0.5 * 0.9 ** 2 < insts[1]["score"] < 0.5
  assert insts[0]["mask"][8:24, 8:24].mean() > 0.8 and insts[1]["mask"][40:56, 40:56].mean() > 0.8
  # without the duplicate (under the threshold), the faint one stays, ranked below the crisp third one
  insts = pred.instances(dict(out, scores=np.array([0.9, 0.04, 0.5], np.float32)), g, h, w)
  assert len(insts) == 2 and insts[1]["mask"][8:24, 8:24].any() and 0.9 * 0.5 ** 2 < insts[1]["score"] < 0.36
