"""`zipjax label` end to end with the real engine (configs/smoke.py, --random-init): annotations.json is byte-identical
for 1 device, 8 devices and 2 processes x 4 devices, and across SIGKILLs (before the first shard, mid-shard,
during the merge) and resumes; `zipjax segment` finds the same instances; a TFDS dataset is labelled without
TensorFlow; a complete rerun changes nothing; a different config is refused before any model is built.

All images share one aspect-ratio bucket, so each device layout compiles one program; the subprocesses share
one XLA cache (ZIPJAX_XLA_CACHE=1 in a temporary ZIPJAX_CACHE)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from zipjax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")
CLASSES = "orange,table,sky"
SIZES = [(96, 128), (120, 160), (72, 96), (108, 144), (90, 120), (99, 132)]  # one 3:4 bucket


def _images(folder):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(7)
  for i, (h, w) in enumerate(SIZES):
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = rng.integers(0, 60, (1, 1, 3))
    y, x = h // 4 + i, w // 5
    img[y:y + h // 2, x:x + w // 2] = (230, 140 + 10 * i, 30)  # an orange-ish block
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    (folder / "sub").mkdir(exist_ok=True)
    Image.fromarray(img).save(folder / ("sub" if i % 2 else ".") / f"img{i}.png")
  (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  return folder


def _env(cache, devices, **extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", ZIPJAX_CACHE=str(cache), ZIPJAX_XLA_CACHE="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("ZIPJAX_FAULT", None)
  env.update(extra)
  return env


def _label_cmd(inputs, out, *more):
  return [sys.executable, "-m", "zipjax", "label", *map(str, inputs), "--classes", CLASSES, "--random-init",
          "--config", SMOKE, "--out", str(out), "--batch-size", "1", "--config.label.shard_size=2",
          "--config.label.workers=2", *more]


def _run(cmd, env, timeout=600):
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _outputs(out):
  return {n: (out / n).read_bytes() for n in ("annotations.json", "errors.json")}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """The 1-device run everything is compared with."""
  base = tmp_path_factory.mktemp("labelcli")
  images = _images(base / "images")
  out = base / "ref"
  r = _run(_label_cmd([images], out), _env(base / "cache", 1))
  assert r.returncode == 0, r.stderr[-3000:]
  (base / "ref.stdout").write_text(r.stdout)
  return base, images, out


def test_reference_run_outputs(ref):
  base, images, out = ref
  ds = json.loads((out / "annotations.json").read_text())
  assert [im["file_name"] for im in ds["images"]] == ["img0.png", "img2.png", "img4.png", "sub/img1.png",
                                                       "sub/img3.png", "sub/img5.png"]
  assert [(im["height"], im["width"]) for im in ds["images"]] == [SIZES[i] for i in (0, 2, 4, 1, 3, 5)]
  assert ds["annotations"], "the smoke models should find something"
  for a in ds["annotations"]:
    im = ds["images"][a["image_id"] - 1]
    assert mask_utils.decode(a["segmentation"]).shape == (im["height"], im["width"])
  errors = json.loads((out / "errors.json").read_text())
  assert [e["file_name"] for e in errors] == ["sub/broken.png"]
  run = json.loads((out / "run.json").read_text())
  assert run["segmented"] == 6 and run["skipped"] == 1 and run["attempts"][0]["compiled_programs"] == 1


def test_gallery_finds_the_images_of_a_label_run(ref, tmp_path, monkeypatch):
  """The run prints the gallery command; run.json records the inputs' folder, so the gallery built without
  --images-root from another working directory finds every image (file_names are relative to that folder)."""
  from zipjax.gallery import build_gallery, gallery_hint
  base, images, out = ref
  assert gallery_hint(str(out)) in (base / "ref.stdout").read_text()
  run = json.loads((out / "run.json").read_text())
  assert run["images_root"] == str(images) and os.path.isabs(run["images_root"])
  ds = json.loads((out / "annotations.json").read_text())
  assert all(not (tmp_path / im["file_name"]).exists() for im in ds["images"])
  monkeypatch.chdir(tmp_path)  # neither the working directory nor the run's folder or parent hold the images
  res = build_gallery(str(out), out=str(tmp_path / "gallery"), workers=1, thumb_size=32, image_size=64)
  assert res.shown == len(ds["images"]) == 6 and res.missing == 0
  page = (tmp_path / "gallery" / "pages" / f"{ds['images'][3]['id']}.html").read_text()
  assert "image missing" not in page and "blank canvas" not in page


def test_eight_devices_in_process_identical(ref, tmp_path, monkeypatch):
  base, images, out1 = ref
  monkeypatch.setenv("ZIPJAX_CACHE", str(base / "cache"))
  rc = cli.main(["label", str(images), "--classes", CLASSES, "--random-init", "--config", SMOKE, "--out",
                 str(tmp_path / "o8"), "--batch-size", "1", "--config.label.shard_size=3"])
  assert rc == 0
  import jax
  assert jax.device_count() == 8
  run = json.loads((tmp_path / "o8" / "run.json").read_text())
  assert run["attempts"][0]["devices"] == 8 and run["attempts"][0]["local_batch"] == 8
  assert _outputs(tmp_path / "o8") == _outputs(out1)
  # `zipjax segment` on the same images: the same instances (masks, boxes, scores, classes)
  rc = cli.main(["segment", str(images), str(images / "sub"), "--classes", CLASSES, "--random-init", "--config",
                 SMOKE, "--out", str(tmp_path / "seg"), "--batch-size", "1", "--no-overlays"])
  assert rc == 0
  lab = json.loads((out1 / "annotations.json").read_text())
  seg = json.loads((tmp_path / "seg" / "annotations.json").read_text())

  def by_file(ds):
    names = {im["id"]: os.path.basename(im["file_name"]) for im in ds["images"]}
    out = {}
    for a in ds["annotations"]:
      out.setdefault(names[a["image_id"]], []).append(
          (a["category_id"], a["score"], a["bbox"], a["segmentation"]["counts"], a["area"]))
    return out

  assert by_file(seg) == by_file(lab) and by_file(lab)
  assert sorted(os.path.basename(i["file_name"]) for i in seg["images"]) == sorted(
      os.path.basename(i["file_name"]) for i in lab["images"])


def _by_file(ds):
  names = {im["id"]: os.path.basename(im["file_name"]) for im in ds["images"]}
  out = {}
  for a in ds["annotations"]:
    out.setdefault(names[a["image_id"]], []).append(
        (a["category_id"], a["score"], a["bbox"], a["segmentation"]["counts"], a["area"]))
  return out


def test_sam2_label_8_devices_equals_segment(ref, tmp_path, monkeypatch):
  """configs/smoke_sam2.py (sam.family = 'sam2'): `zipjax label` on 8 devices and `zipjax segment` find the same
  instances, and they are SAM 2's (not the SAM run's masks)."""
  base, images, out1 = ref
  smoke2 = os.path.join(ROOT, "configs", "smoke_sam2.py")
  monkeypatch.setenv("ZIPJAX_CACHE", str(base / "cache"))
  rc = cli.main(["label", str(images), "--classes", CLASSES, "--random-init", "--config", smoke2, "--out",
                 str(tmp_path / "l2"), "--batch-size", "1", "--config.label.shard_size=3"])
  assert rc == 0
  run = json.loads((tmp_path / "l2" / "run.json").read_text())
  assert run["attempts"][0]["devices"] == 8
  rc = cli.main(["segment", str(images), str(images / "sub"), "--classes", CLASSES, "--random-init", "--config",
                 smoke2, "--out", str(tmp_path / "s2"), "--batch-size", "1", "--no-overlays"])
  assert rc == 0
  lab = json.loads((tmp_path / "l2" / "annotations.json").read_text())
  seg = json.loads((tmp_path / "s2" / "annotations.json").read_text())
  assert _by_file(seg) == _by_file(lab) and _by_file(lab)
  sam1 = _by_file(json.loads((out1 / "annotations.json").read_text()))
  assert _by_file(lab) != sam1


def test_two_processes_identical(ref, tmp_path):
  base, images, out1 = ref
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  out = tmp_path / "o2"
  procs = [subprocess.Popen(_label_cmd([images], out, "--coordinator", f"localhost:{port}", "--num-processes", "2",
                                       "--process-id", str(i)), env=_env(base / "cache", 4), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    results = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
  assert _outputs(out) == _outputs(out1)
  shards = os.listdir(out / ".zipjax" / "shards")
  assert {n.split("-p")[1][:5] for n in shards} == {"00000", "00001"}  # each process wrote its own files
  assert "merged 6 images" in results[0][0] and "merged" not in results[1][0]  # process 0 merges and reports


def test_sigkill_at_three_points_then_resume_identical(ref, tmp_path):
  base, images, out1 = ref
  out = tmp_path / "ok"
  env = lambda fault: _env(base / "cache", 1, ZIPJAX_FAULT=fault)  # noqa: E731
  # 1. killed after the first image, before any shard file
  r = _run(_label_cmd([images], out), env("label.step@1"))
  assert r.returncode == -signal.SIGKILL
  assert not os.listdir(out / ".zipjax" / "shards") and not (out / "annotations.json").exists()
  # 2. killed mid-shard: 2 shards (4 records incl. the broken file) written, the next one half full
  r = _run(_label_cmd([images], out), env("label.step@4"))
  assert r.returncode == -signal.SIGKILL
  assert len(os.listdir(out / ".zipjax" / "shards")) == 2 and not (out / "annotations.json").exists()
  # 3. killed during the merge
  r = _run(_label_cmd([images], out), env("merge.record@4"))
  assert r.returncode == -signal.SIGKILL
  assert "already finished" in r.stdout and not (out / "annotations.json").exists()
  # 4. resumed to the end: byte-identical to the uninterrupted run
  r = _run(_label_cmd([images], out), env(""))
  assert r.returncode == 0, r.stderr[-3000:]
  assert "7 of 7 images already finished" in r.stdout
  assert _outputs(out) == _outputs(out1)
  assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_complete_rerun_nothing_to_do_and_identity_checks(ref, tmp_path, capsys, monkeypatch):
  base, images, out1 = ref
  out = tmp_path / "copy"
  shutil.copytree(out1, out)
  monkeypatch.setenv("ZIPJAX_CACHE", str(base / "cache"))
  stamp = {n: os.stat(out / n).st_mtime_ns for n in ("annotations.json", "errors.json", "run.json")}
  args = ["label", str(images), "--classes", CLASSES, "--random-init", "--config", SMOKE, "--out", str(out)]
  assert cli.main(args) == 0
  assert "nothing to do" in capsys.readouterr().out
  assert {n: os.stat(out / n).st_mtime_ns for n in stamp} == stamp
  assert cli.main(args + ["--config.scoring.nms_threshold=0.4"]) == 2  # refused before any model is built
  err = capsys.readouterr().err
  assert "refusing to resume" in err and "scoring.nms_threshold (0.5 -> 0.4)" in err and "--overwrite" in err
  assert cli.main(["label", str(images), "--classes", "orange,table", "--random-init", "--config", SMOKE, "--out",
                   str(out)]) == 2
  assert "classes" in capsys.readouterr().err
  assert {n: os.stat(out / n).st_mtime_ns for n in stamp} == stamp


def test_tfds_input_without_tensorflow(ref, tmp_path, monkeypatch):
  from tests.data.test_sources import BUILD as build_code
  base, _, _ = ref
  data = tmp_path / "tfds"
  subprocess.run([sys.executable, "-c", build_code, str(data)], check=True, capture_output=True, cwd=ROOT)
  monkeypatch.setenv("ZIPJAX_CACHE", str(base / "cache"))
  out = tmp_path / "out"
  rc = cli.main(["label", "tfds:tiny_images:train", "--data-dir", str(data), "--classes", CLASSES, "--random-init",
                 "--config", SMOKE, "--out", str(out), "--batch-size", "1"])
  assert rc == 0
  assert "tensorflow" not in sys.modules
  ds = json.loads((out / "annotations.json").read_text())
  assert sorted(im["file_name"] for im in ds["images"]) == [f"img_{i}.png" for i in (0, 1, 2, 4, 5)]
  assert sorted(im["source_id"] for im in ds["images"]) == [500, 501, 502, 504, 505]
  keys = [im["id"] for im in ds["images"]]
  assert keys == list(range(1, 6))
  errors = json.loads((out / "errors.json").read_text())
  assert [e["file_name"] for e in errors] == ["img_3.png"] and "not an image" in errors[0]["reason"]
  # the gallery of a TFDS run: no image files to look up; it says so once and on every page, and draws the
  # instances on blank canvases
  assert json.loads((out / "run.json").read_text())["images_root"] is None
  from zipjax.gallery import build_gallery
  res = build_gallery(str(out), workers=1, thumb_size=32, image_size=64)
  assert res.shown == 5 and res.missing == 5
  index = (out / "gallery" / "index.html").read_text()
  assert "TFDS dataset tiny_images, split train" in index and "records, not files" in index
  page = (out / "gallery" / "pages" / "1.html").read_text()
  assert "no image file: this run read its images from the TFDS dataset" in page and "looked in" not in page
