"""Geometry bounded by the image before rasterisation (zipjax/io/coco.py): huge polygon coordinates cost memory
that follows the image, clipped polygons rasterise as accurately as unclipped ones, boxes far outside the
image count as false positives instead of being ignored, absurd coordinates are refused naming the record."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.path import Path
from pycocotools import mask as mask_utils

from tests.eval import synth
from zipjax.errors import InputError
from zipjax.eval import evaluate
from zipjax.io.coco import clip_bbox, clip_polygons

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, W = synth.H, synth.W  # 120 x 160

_MEMORY_SCRIPT = r"""
import json, sys, time
from zipjax.eval import evaluate


def peak_rss_mb():
  # VmHWM: this process image's peak RSS (getrusage's ru_maxrss would include the forking parent's)
  with open("/proc/self/status") as f:
    return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


def metrics(far):
  wide = [10.0, 10.0, far, 10.0, far, 50.0, 10.0, 50.0]  # a rectangle reaching x = far
  gt = {"images": [{"id": 1, "height": 120, "width": 160}], "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [wide]},
                        {"id": 2, "image_id": 1, "category_id": 1,
                         "segmentation": [[20.0, 60.0, 60.0, 60.0, 60.0, 100.0, 20.0, 100.0]]}]}
  preds = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": [wide],
            "bbox": [10.0, 10.0, far - 10.0, 40.0]},
           {"image_id": 1, "category_id": 1, "score": 0.8, "segmentation": [[0.0, 60.0, far, 60.0, 0.0, 70.0]]},
           {"image_id": 1, "category_id": 1, "score": 0.7,
            "segmentation": [[24.0, 60.0, 60.0, 60.0, 60.0, 100.0, 24.0, 100.0]]}]
  m = evaluate(gt, preds)
  return {t: {k: m[t][k] for k in ("AP", "AP50", "AP75", "AR100")} for t in ("bbox", "segm")}


edge = metrics(161.0)  # the image edge (+1 px): nothing to clip
t = time.perf_counter()
far = metrics(float(sys.argv[1]))
print(json.dumps({"rss_mb": peak_rss_mb(),
                  "seconds": time.perf_counter() - t, "edge": edge, "far": far}))
"""


def test_huge_polygon_memory_follows_the_image():
  """Polygons and boxes reaching x = 1e9 on a 160 x 120 image (before: SIGSEGV in pycocotools after a failed
  34 GB allocation), in ground truth and predictions: peak RSS of the evaluating process < 500 MB, and every
  metric equals that of the same shapes ending at the image edge (what is inside the image is the same)."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, "1e9"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["rss_mb"] < 500, out
  assert out["seconds"] < 20, out
  assert out["far"] == out["edge"], out
  assert 0.5 < out["edge"]["segm"]["AP"] < 1.0, out  # one false positive ranked above a true positive


def test_polygons_near_the_image_are_left_unchanged():
  seg = [[-1.0, -0.5, 161.0, 0.0, 160.0, 121.0], [3.0, 4.0, 5.0, 6.0, 7.0, 2.0]]
  assert clip_polygons(seg, H, W) is seg


def _exact(poly):
  """Pixels whose centre lies inside the (convex) polygon, in exact float64 geometry."""
  yy, xx = np.mgrid[0:H, 0:W]
  pts = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)  # [H*W, 2]
  return Path(np.asarray(poly).reshape(-1, 2)).contains_points(pts).reshape(H, W)  # [H, W]


def test_clipped_polygons_rasterise_as_accurately_as_unclipped():
  """Random convex polygons reaching up to 2e4 px past the image: against exact geometry, pycocotools' mask of
  the clipped polygon is as accurate as its mask of the original (both differ only at boundary pixels)."""
  rng = np.random.default_rng(0)
  err_orig, err_clip = [], []
  for _ in range(200):
    n = int(rng.integers(3, 8))
    scale = float(rng.choice([100, 1000, 20000]))
    xy = np.stack([rng.uniform(-scale, W + scale, n), rng.uniform(-scale, H + scale, n)], 1)  # [n, 2]
    c = xy.mean(0)
    xy = xy[np.argsort(np.arctan2(xy[:, 1] - c[1], xy[:, 0] - c[0]))]  # convex hull order for points
    poly = [float(v) for v in xy.reshape(-1)]
    exact = _exact(poly)
    orig = mask_utils.decode(mask_utils.frPyObjects([poly], H, W))[..., 0]
    clipped = clip_polygons([poly], H, W)
    assert all(-1.0 - 1e-9 <= v <= W + 1.0 + 1e-9 for p in clipped for v in p[0::2])
    assert all(-1.0 - 1e-9 <= v <= H + 1.0 + 1e-9 for p in clipped for v in p[1::2])
    clip = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(clipped, H, W))) if clipped else \
        np.zeros((H, W), np.uint8)
    err_orig.append(int((orig != exact).sum()))
    err_clip.append(int((clip != exact).sum()))
  # measured: mean 4.0 (orig) vs 3.6 (clipped) pixels, max 32 vs 32
  assert np.mean(err_clip) <= np.mean(err_orig) + 1.0, (np.mean(err_clip), np.mean(err_orig))
  assert max(err_clip) <= 48


def test_polygon_entirely_outside_is_an_empty_mask():
  gt = synth.dataset(n_images=1)
  synth.add_gt(gt, 1, 10, 10, 10, 40, 40)
  pred = synth.perfect_predictions(gt)
  pred[0]["score"] = 0.5
  far = [1e6, 1e6, 2e6, 1e6, 2e6, 2e6]
  pred.append({"image_id": 1, "category_name": "cat", "score": 0.9, "segmentation": [far]})
  m = evaluate(gt, pred, iou_type="segm")
  assert m["segm"]["AP"] < 1.0  # the empty mask is a false positive ranked first, not an error or a crash


def test_boxes_are_clipped_and_huge_false_positives_count():
  """Before: a 1e30 x 1e30 false positive was ignored (area over COCO's 1e10 range): box AP stayed 1.0."""
  gt = synth.dataset(n_images=1)
  synth.add_gt(gt, 1, 10, 10, 10, 40, 40)
  base = synth.perfect_predictions(gt)
  base[0]["score"] = 0.5
  results = {}
  for side in (1000.0, 1e30):
    fp = {"image_id": 1, "category_name": "cat", "score": 0.9, "bbox": [60.0, 60.0, side, side]}
    results[side] = evaluate(gt, base + [fp], iou_type="bbox")["bbox"]["AP"]
  assert results[1e30] == pytest.approx(results[1000.0]) and results[1e30] < 1.0
  assert clip_bbox([60.0, 60.0, 1e30, 1e30], H, W) == [60.0, 60.0, 100.0, 60.0]
  assert clip_bbox([-5.0, 10.0, 20.0, 5.0], H, W) == [0.0, 10.0, 15.0, 5.0]
  assert clip_bbox([10.0, 10.0, 20.0, 30.0], H, W) == [10.0, 10.0, 20.0, 30.0]
  assert clip_bbox([1e9, -1e9, 5.0, 5.0], H, W) == [160.0, 0.0, 0.0, 0.0]


def test_absurd_coordinates_refused_naming_the_record():
  gt = synth.dataset(n_images=2)
  synth.add_gt(gt, 2, 10, 10, 10, 40, 40)
  pred = synth.perfect_predictions(gt)
  pred.append({"image_id": 2, "category_name": "cat", "score": 0.3, "segmentation": [[0, 0, 1e13, 0, 5, 5]]})
  with pytest.raises(InputError, match=r"<memory>: prediction 1 \(image_id 2\): polygon 0 has a coordinate "
                                       r"beyond \+-1e\+12 px \(1e\+13\) on a 160x120 image"):
    evaluate(gt, pred)
  gt["annotations"][0]["segmentation"] = [[0, 0, -2e12, 0, 5, 5]]
  with pytest.raises(InputError, match=r"annotation 0 \(id 1, image_id 2\): polygon 0 has a coordinate beyond"):
    evaluate(gt, pred)
