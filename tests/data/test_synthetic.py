"""The synthetic shapes dataset: determinism by seed, masks/boxes/areas consistent, pycocotools loads it,
label corruptions (drop, jitter, score) leave the images alone."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from zipjax.data import synthetic
from zipjax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(d):
  with open(os.path.join(d, "annotations.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  d = tmp_path_factory.mktemp("syn")
  synthetic.generate(d, 12, seed=3)
  return d


def test_cli_deterministic_and_prefix(tmp_path, clean):
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = tmp_path / "cli"
  r = subprocess.run([sys.executable, "-m", "zipjax.data.synthetic", "--out", str(out), "--num-images", "5",
                      "--seed", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  a, b = _read(out), _read(clean)
  # a 5-image dataset is the first 5 images of the 12-image one with the same seed, byte for byte
  assert a["images"] == b["images"][:5]
  assert a["annotations"] == [x for x in b["annotations"] if x["image_id"] <= 5]
  for im in a["images"]:
    assert (out / "images" / im["file_name"]).read_bytes() == (clean / "images" / im["file_name"]).read_bytes()
  other = synthetic.generate(tmp_path / "other", 5, seed=4)
  assert other["annotations"] != a["annotations"]


def test_masks_boxes_areas_consistent(clean):
  data = _read(clean)
  coco = COCO(os.path.join(clean, "annotations.json"))
  assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(synthetic.CATEGORIES)
  assert len(data["annotations"]) >= 12
  for im in data["images"]:
    img = np.asarray(Image.open(os.path.join(clean, "images", im["file_name"])))
    assert img.shape == (im["height"], im["width"], 3) and img.dtype == np.uint8
    masks = []
    for a in coco.loadAnns(coco.getAnnIds(imgIds=im["id"])):
      m = coco.annToMask(a).astype(bool)
      ys, xs = np.nonzero(m)
      assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
      assert a["area"] == m.sum() >= synthetic.SyntheticConfig.min_area
      assert a["iscrowd"] == 0 and "score" not in a
      masks.append(m)
    # visible parts: no pixel belongs to two objects
    if masks:
      assert np.stack(masks).sum(0).max() <= 1


def test_visible_masks_match_rendering():
  """render_image is a function of (seed, index); visible masks are disjoint and non-empty."""
  img, objects = synthetic.render_image(5, 0)
  again, objects2 = synthetic.render_image(5, 0)
  np.testing.assert_array_equal(img, again)
  assert len(objects) == len(objects2) >= 1
  union = np.zeros(img.shape[:2], bool)
  for (c, m), (c2, m2) in zip(objects, objects2):
    assert c == c2 and (m == m2).all()
    assert m.any() and not (union & m).any()
    union |= m


def test_corruptions(tmp_path, clean):
  base = _read(clean)
  noisy = synthetic.generate(tmp_path / "noisy", 12, seed=3, drop_fraction=0.4, jitter=0.2, score=True)
  for im in base["images"]:  # images unchanged
    assert (tmp_path / "noisy" / "images" / im["file_name"]).read_bytes() == \
        (clean / "images" / im["file_name"]).read_bytes()
  assert 0.3 * len(base["annotations"]) < len(noisy["annotations"]) < 0.9 * len(base["annotations"])
  assert all(0.0 < a["score"] < 1.0 for a in noisy["annotations"])
  for a in noisy["annotations"]:  # still consistent after the shift
    rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
    assert a["area"] == mask_utils.area(rle)
    assert a["bbox"] == list(mask_utils.toBbox(rle))
  # every jittered annotation is a shifted copy of a clean one of the same image (same area unless clipped)
  shifted = [a for a in noisy["annotations"]
             if not any(b["segmentation"] == a["segmentation"] for b in base["annotations"])]
  assert shifted
  dropped = synthetic.generate(tmp_path / "drop_all", 3, seed=3, drop_fraction=1.0)
  assert dropped["annotations"] == []


def test_bad_options(tmp_path):
  with pytest.raises(InputError, match="drop_fraction"):
    synthetic.generate(tmp_path, 1, drop_fraction=1.5)
  with pytest.raises(InputError, match="categories"):
    synthetic.generate(tmp_path, 1, categories=("hexagon",))
  with pytest.raises(InputError, match="num_images"):
    synthetic.generate(tmp_path, 0)
