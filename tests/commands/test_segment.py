"""`zipjax segment` with --random-init and configs/smoke.py: COCO outputs load with pycocotools, masks decode
to each image's size, overlays exist, bad files land in errors.json with their reason and the run goes on."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from zipjax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")
CLASSES = "orange,Äpfel 🍎,table"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  base = tmp_path_factory.mktemp("segment")
  inputs = base / "in"
  inputs.mkdir()
  shutil.copy(os.path.join(ROOT, "examples", "oranges.png"), inputs / "a_oranges.png")
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
  Image.fromarray(rgb[..., 0], "L").save(inputs / "b_gray.png")
  Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), "RGBA").save(inputs / "c_rgba.png")
  img = Image.fromarray(rgb)
  exif = img.getexif()
  exif[0x0112] = 6
  img.save(inputs / "d_rotated.jpg", exif=exif)
  (inputs / "e_not_an_image.png").write_text("hello")
  Image.new("RGB", (20, 50)).save(inputs / "f_tiny.png")
  Image.fromarray(rgb).save(inputs / "g_trunc.jpg")
  data = (inputs / "g_trunc.jpg").read_bytes()
  (inputs / "g_trunc.jpg").write_bytes(data[:len(data) // 2])
  out = base / "out"
  env = {"ZIPJAX_CACHE": str(base / "cache")}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    rc = cli.main(["segment", str(inputs), str(base / "missing.png"), "--classes", CLASSES, "--random-init",
                   "--config", SMOKE, "--out", str(out), "--batch-size", "3",
                   "--config.discover.min_instance_cells=4"])
  finally:
    for k, v in old.items():
      os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
  return rc, inputs, out, base


def test_exit_code_and_files(run):
  rc, _, out, _ = run
  assert rc == 0
  for name in ("results.json", "annotations.json", "errors.json", "run.json"):
    assert (out / name).is_file()
  info = json.loads((out / "run.json").read_text())
  assert info["config"]["discover"]["min_instance_cells"] == 4  # the --config.key=value override
  assert info["config"]["batch_size"] == 3


def test_errors_json_lists_bad_files(run):
  _, inputs, out, base = run
  errors = {os.path.basename(e["path"]): e["reason"] for e in json.loads((out / "errors.json").read_text())}
  assert set(errors) == {"e_not_an_image.png", "f_tiny.png", "g_trunc.jpg", "missing.png"}
  assert "not an image" in errors["e_not_an_image.png"]
  assert "too small" in errors["f_tiny.png"]
  assert "truncated" in errors["g_trunc.jpg"]
  assert "not found" in errors["missing.png"]


def test_coco_files_load_and_masks_match_image_sizes(run):
  _, _, out, _ = run
  gt = COCO(str(out / "annotations.json"))
  names = [c["name"] for c in gt.loadCats(gt.getCatIds())]
  assert names == ["orange", "Äpfel 🍎", "table"]
  imgs = {os.path.basename(i["file_name"]): i for i in gt.dataset["images"]}
  assert set(imgs) == {"a_oranges.png", "b_gray.png", "c_rgba.png", "d_rotated.jpg"}
  assert (imgs["a_oranges.png"]["width"], imgs["a_oranges.png"]["height"]) == (480, 360)
  assert (imgs["d_rotated.jpg"]["width"], imgs["d_rotated.jpg"]["height"]) == (120, 90)  # EXIF rotation
  results = json.loads((out / "results.json").read_text())
  assert results, "the smoke run should produce some instances"
  dets = gt.loadRes(str(out / "results.json"))
  assert len(dets.getAnnIds()) == len(results)
  by_id = {i["id"]: i for i in gt.dataset["images"]}
  for r in results:
    m = mask_utils.decode(r["segmentation"])
    im = by_id[r["image_id"]]
    assert m.shape == (im["height"], im["width"])
    assert 0.0 <= r["score"] <= 1.0
    x, y, w, h = r["bbox"]
    assert 0 <= x and 0 <= y and x + w <= im["width"] + 1e-3 and y + h <= im["height"] + 1e-3
  assert gt.dataset["info"]["random_init"] is True and "RANDOM WEIGHTS" in gt.dataset["info"]["note"]
  assert len(gt.dataset["annotations"]) == len(results)


def test_overlays_exist(run):
  _, _, out, _ = run
  files = sorted(os.listdir(out / "overlays"))
  assert [f.split("_", 1)[1] for f in files] == ["a_oranges.png", "b_gray.png", "c_rgba.png", "d_rotated.png"]
  with Image.open(out / "overlays" / files[0]) as im:
    assert im.size == (480, 360)


def test_zipjax_eval_accepts_annotations(run):
  """annotations.json scored against itself (scores stripped as ground truth) gives AP 1."""
  from zipjax.eval import evaluate  # pylint: disable=import-outside-toplevel
  _, _, out, base = run
  pred = json.loads((out / "annotations.json").read_text())
  gt = json.loads(json.dumps(pred))
  for a in gt["annotations"]:
    a.pop("score")
  metrics = evaluate(gt, pred, iou_type="segm")
  assert metrics["segm"]["AP"] == pytest.approx(1.0)


def test_text_feature_cache_reused(run, monkeypatch):
  """A second run finds the text features on disk: the text encoder is not called."""
  _, _, _, base = run
  from zipjax.commands.segment import load_config_file  # pylint: disable=import-outside-toplevel
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("ZIPJAX_CACHE", str(base / "cache"))
  seg = Engine(load_config_file(SMOKE), random_init=True)
  monkeypatch.setattr(seg.semantic_clip, "encode_tokens", lambda t: (_ for _ in ()).throw(AssertionError))
  seg.set_classes(["table", "orange"])
  assert seg.text["text"].shape[0] == 2


@pytest.mark.parametrize("classes,msg", [("cat,,dog", "empty"), ("cat,Cat", "duplicate"), (",", "no class")])
def test_bad_class_lists_exit_2(tmp_path, capsys, classes, msg):
  rc = cli.main(["segment", os.path.join(ROOT, "examples", "oranges.png"), "--classes", classes,
                 "--random-init", "--config", SMOKE, "--out", str(tmp_path / "o")])
  assert rc == 2
  assert msg in capsys.readouterr().err


def test_unknown_override_rejected(tmp_path, capsys):
  rc = cli.main(["segment", os.path.join(ROOT, "examples", "oranges.png"), "--classes", "a", "--random-init",
                 "--config", SMOKE, "--out", str(tmp_path / "o"), "--config.scoring.nope=1"])
  assert rc == 2
  assert "no such config field" in capsys.readouterr().err


def test_compilation_cache_settings(tmp_path, monkeypatch):
  """ZIPJAX_XLA_CACHE=0 leaves jax and the cache folder alone; otherwise jax persists executables in
  <ZIPJAX_CACHE>/xla (that real runs fill it is checked by the subprocess runs of
  tests/train/test_trainer_resume.py, which share one cache)."""
  import jax

  from zipjax.commands.common import enable_compilation_cache
  updates = []
  monkeypatch.setattr(jax.config, "update", lambda *a: updates.append(a))
  monkeypatch.setenv("ZIPJAX_CACHE", str(tmp_path / "c"))
  monkeypatch.setenv("ZIPJAX_XLA_CACHE", "0")
  assert enable_compilation_cache() is None and updates == [] and not (tmp_path / "c").exists()
  monkeypatch.setenv("ZIPJAX_XLA_CACHE", "1")
  assert enable_compilation_cache() == str(tmp_path / "c" / "xla") and (tmp_path / "c" / "xla").is_dir()
  assert ("jax_compilation_cache_dir", str(tmp_path / "c" / "xla")) in updates
