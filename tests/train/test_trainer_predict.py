"""Predictor geometry: detections on the padded canvas map back to the original image (boxes divided by the
resize factor, mask logits resampled over the image's part of the canvas), checked on hand-made outputs."""
import numpy as np

from zipjax import parallel
from zipjax.train.predict import DetectorPredictor
from zipjax.train.trainer import detector_config
from zipjax.commands.segment import apply_overrides, load_config_file


def _predictor(score_threshold=0.5):
  config = apply_overrides(load_config_file("configs/train_smoke.py"), [
      "--config.model.input_size=64", "--config.model.mask_stride=4", "--config.model.patch_size=16"])
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
