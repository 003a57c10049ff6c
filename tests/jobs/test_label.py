"""The labelling job around a fake engine (tests/jobs/fake_engine.py): canonical merged output, resume, nothing to
do, identity checks, multi-process scheduling (simulated processes in threads), per-image errors, and a SIGKILL
in the middle of writing a shard (a subprocess of tests/jobs/label_runner.py): no partial shard under a final
name, the rerun byte-identical."""
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tests.jobs import fake_engine as fe
from zipjax import configs
from zipjax.errors import InputError
from zipjax.io import fs, shards
from zipjax.jobs import label as label_job

NAMES = ["red thing", "green thing", "blue thing", "bright red"]


def make_images(root, n=11, seed=0):
  """Nested folder of images of two orientations, a corrupt file and a too-small image -> relative keys."""
  rng = np.random.default_rng(seed)
  keys = []
  for i in range(n):
    sub = ("a", "b/c", "")[i % 3]
    h, w = (48, 64) if i % 2 else (64, 40)
    img = np.zeros((h, w, 3), np.uint8)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[y0:y0 + h // 3, x0:x0 + w // 3, i % 3] = 120 + 10 * (i % 13)
    img[..., (i + 1) % 3] = rng.integers(0, 255, (h, w))
    rel = os.path.join(sub, f"img_{i:02d}.png")
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    Image.fromarray(img).save(os.path.join(root, rel))
    keys.append(rel)
  (root / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  Image.new("RGB", (10, 40)).save(root / "tiny.png")
  step_fail = np.full((40, 40, 3), 200, np.uint8)
  step_fail[0, 0] = (1, 2, 3)
  Image.fromarray(step_fail).save(root / "a" / "step_fail.png")
  return keys


def config(shard_size=3):
  c = configs.zip()
  c.label.shard_size = shard_size
  c.label.workers = 3
  c.label.prefetch = 4
  return c


def request(inputs, out, **kw):
  return label_job.LabelRequest(out=str(out), inputs=[str(i) for i in inputs], names=NAMES,
                                config=kw.pop("config", None) or config(), random_init=True, **kw)


def run_single(inputs, out, engine_kw=None, logs=None, **kw):
  from zipjax.jobs.comm import Comm
  make = fe.factory(**(engine_kw or {}))
  rc = label_job.run_label(request(inputs, out, **kw), make_engine=make, comm=Comm(0, 1),
                           log=(logs.append if logs is not None else lambda m: None))
  return rc, make


def run_threads(n, inputs, out, engine_kw=None, **kw):
  """`n` simulated processes in threads (each with its own fake engine)."""
  group = fe.ThreadGroup(n)
  makes = [fe.factory(**(engine_kw or {})) for _ in range(n)]
  rcs, errors = [None] * n, []

  def body(i):
    try:
      rcs[i] = label_job.run_label(request(inputs, out, **kw), make_engine=makes[i],
                                   comm=fe.ThreadComm(group, i), log=lambda m: None)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)
      group.bar.abort()

  threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise errors[0]
  return rcs, makes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("label_in")
  keys = make_images(root)
  out = tmp_path_factory.mktemp("label_ref") / "out"
  rc, make = run_single([root], out)
  assert rc == 0
  return root, keys, out, make


def _bytes(out):
  return {n: (out / n).read_bytes() for n in ("annotations.json", "errors.json")}


def test_annotations_match_the_engine_and_are_canonical(data):
  root, keys, out, _ = data
  gt = COCO(str(out / "annotations.json"))
  images = gt.dataset["images"]
  good = sorted(keys + ["a/step_fail.png"])
  good.remove("a/step_fail.png")
  assert [im["file_name"] for im in images] == sorted(good)  # sorted by key, recursive relative paths
  assert [im["id"] for im in images] == list(range(1, len(good) + 1))
  assert [c["name"] for c in gt.dataset["categories"]] == NAMES
  anns = gt.dataset["annotations"]
  assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
  for im in images:
    arr = np.asarray(Image.open(root / im["file_name"]).convert("RGB"))
    want = fe.expected_instances(arr, len(NAMES))
    got = [a for a in anns if a["image_id"] == im["id"]]
    assert len(got) == len(want)
    for a, w in zip(got, want):
      assert a["category_id"] == w["category"] + 1
      assert a["score"] == round(w["score"], 6)
      np.testing.assert_array_equal(mask_utils.decode(a["segmentation"]).astype(bool), w["mask"])
      x0, y0, x1, y1 = w["box"]
      assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0]
      assert a["area"] == float(w["mask"].sum())
  text = (out / "annotations.json").read_text()
  assert text.startswith('{"info": {"description": "zipjax label"')
  assert list(json.loads(text)) == ["info", "images", "annotations", "categories"]


def test_errors_listed_per_image_and_run_goes_on(data):
  _, _, out, _ = data
  errors = {e["file_name"]: e["reason"] for e in json.loads((out / "errors.json").read_text())}
  assert set(errors) == {"b/corrupt.jpg", "tiny.png", "a/step_fail.png"}
  assert "corrupt or truncated" in errors["b/corrupt.jpg"] or "not an image" in errors["b/corrupt.jpg"]
  assert "too small" in errors["tiny.png"]
  assert "fake failure inside the step" in errors["a/step_fail.png"]
  run = json.loads((out / "run.json").read_text())
  assert run["segmented"] == 11 and run["skipped"] == 3 and run["images"] == 14
  assert run["images_per_second"] > 0 and run["attempts"][0]["device_seconds"] == {"step": 0.0}


def test_scheduler_keeps_buckets_pure_and_batches_bounded(data):
  _, _, _, make = data
  eng = make.engines[-1]
  assert sum(n for _, n in eng.calls) == 12  # every decodable image once (incl. the one failing in the step)
  assert all(1 <= n <= eng.local_batch for _, n in eng.calls)


def test_nothing_to_do_leaves_files_unchanged(data):
  root, _, out, _ = data
  before = {n: ((out / n).read_bytes(), os.stat(out / n).st_mtime_ns) for n in ("annotations.json", "errors.json",
                                                                                "run.json")}
  logs = []
  rc, make = run_single([root], out, logs=logs)
  assert rc == 0 and not make.engines  # no engine built
  assert any("nothing to do" in m for m in logs)
  after = {n: ((out / n).read_bytes(), os.stat(out / n).st_mtime_ns) for n in before}
  assert after == before


def test_resume_after_interruption_is_byte_identical(data, tmp_path):
  root, _, ref, _ = data
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    run_single([root], out, engine_kw={"fail_after_steps": 3})
  assert not (out / "annotations.json").exists()
  done = sum(1 for _ in shards.RunDir(out).iter_ledger())
  assert 0 < done < 14
  logs = []
  rc, make = run_single([root], out, logs=logs)
  assert rc == 0
  assert any(f"{done} of 14 images already finished" in m for m in logs)
  assert sum(n for _, n in make.engines[0].calls) + done == 14 - 2  # corrupt + tiny never reach the engine
  assert _bytes(out) == _bytes(ref)


def test_simulated_processes_give_identical_bytes(data, tmp_path):
  root, _, ref, _ = data
  for n in (2, 3):
    out = tmp_path / f"p{n}"
    rcs, makes = run_threads(n, [root], out, engine_kw={"local_batch": 3})
    assert rcs == [0] * n
    calls = [m.engines[0].calls for m in makes]
    assert all(len(c) == len(calls[0]) for c in calls)  # every process ran every step ...
    names = shards.RunDir(out).shard_names()
    assert {nm.split("-p")[1][:5] for nm in names} == {f"{i:05d}" for i in range(n)}  # ... and wrote its shards
    assert _bytes(out) == _bytes(ref)


def test_small_fan_in_merge_is_identical(data, tmp_path, monkeypatch):
  root, _, ref, _ = data
  monkeypatch.setattr(shards, "FAN_IN", 2)
  out = tmp_path / "out"
  cfg = config(shard_size=1)
  assert run_single([root], out, config=cfg)[0] == 0
  assert len(shards.RunDir(out).shard_names()) == 14
  assert _bytes(out) == _bytes(ref)


def test_different_identity_refused_and_overwrite(data, tmp_path):
  root, _, ref, _ = data
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    run_single([root], out, engine_kw={"fail_after_steps": 1})
  cfg = config()
  cfg.scoring.nms_threshold = 0.6
  with pytest.raises(InputError, match=r"different run identity.*scoring.nms_threshold \(0.5 -> 0.6\)"):
    run_single([root], out, config=cfg)
  cfg2 = config(shard_size=5)  # runtime-only fields may change on resume
  cfg2.batch_size = 7
  assert run_single([root], out, config=cfg2)[0] == 0
  assert _bytes(out) == _bytes(ref)
  logs = []
  assert run_single([root], out, config=cfg, overwrite=True, logs=logs)[0] == 0
  assert any("--overwrite" in m for m in logs)
  info = json.loads((out / ".zipjax" / "job.json").read_text())
  assert info["config"]["scoring"]["nms_threshold"] == 0.6


def test_label_merge_rebuilds_outputs(data, tmp_path):
  import shutil
  _, _, ref, _ = data
  out = tmp_path / "copy"
  shutil.copytree(ref, out)
  for n in ("annotations.json", "errors.json", "run.json"):
    (out / n).unlink()
  assert label_job.merge_run(str(out), log=lambda m: None) == 0
  assert _bytes(out) == _bytes(ref)


def test_coco_json_input_keeps_ids_and_reports_missing(tmp_path):
  root = tmp_path / "imgs"
  keys = make_images(root, n=4)
  listing = [{"id": 1000 + i, "file_name": k} for i, k in enumerate(sorted(keys))]
  listing.append({"id": 7, "file_name": "gone.jpg"})
  (tmp_path / "c.json").write_text(json.dumps({"images": listing[::-1], "annotations": [], "categories": []}))
  out = tmp_path / "out"
  rc, _ = run_single([], out, coco_json=str(tmp_path / "c.json"), images_root=str(root))
  assert rc == 0
  ds = json.loads((out / "annotations.json").read_text())
  assert [(im["id"], im["file_name"]) for im in ds["images"]] == [(1000 + i, k) for i, k in enumerate(sorted(keys))]
  errors = json.loads((out / "errors.json").read_text())
  assert errors == [{"file_name": "gone.jpg", "id": 7, "reason": "file not found"}]


def test_gallery_finds_images_of_folder_and_coco_runs(data, tmp_path, monkeypatch):
  """file_names are relative to the inputs' folder (or --images-root): run.json's absolute `images_root` lets
  the gallery find every image from any working directory, without --images-root."""
  from zipjax.gallery import build_gallery
  root, keys, out, _ = data
  run = json.loads((out / "run.json").read_text())
  assert run["images_root"] == str(root)
  ann = json.loads((out / "annotations.json").read_text())
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  res = build_gallery(str(out), out=str(tmp_path / "g1"), workers=1, thumb_size=32, image_size=64)
  assert res.shown == len(ann["images"]) == len(keys) and res.missing == 0
  listing = [{"id": 50 + i, "file_name": k} for i, k in enumerate(sorted(keys))]
  (tmp_path / "c.json").write_text(json.dumps({"images": listing, "annotations": [], "categories": []}))
  out2 = tmp_path / "coco_out"
  rc, _ = run_single([], out2, coco_json=str(tmp_path / "c.json"), images_root=str(root))
  assert rc == 0 and json.loads((out2 / "run.json").read_text())["images_root"] == str(root)
  res = build_gallery(str(out2), out=str(tmp_path / "g2"), workers=1, thumb_size=32, image_size=64)
  assert res.shown == len(keys) and res.missing == 0


def test_every_image_bad_exits_1(tmp_path):
  root = tmp_path / "in"
  root.mkdir()
  (root / "x.png").write_text("nope")
  rc, _ = run_single([root], tmp_path / "out")
  assert rc == 1
  assert json.loads((tmp_path / "out" / "annotations.json").read_text())["images"] == []


def _run_cli(inputs, out, **env):
  """`zipjax label` in a subprocess (tests/jobs/label_runner.py: the real CLI, job and writer, the fake engine)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  full = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu", ZIPJAX_XLA_CACHE="0", **env)
  full.pop("ZIPJAX_FAULT", None)
  cmd = [sys.executable, os.path.join(root, "tests", "jobs", "label_runner.py"), "label", *map(str, inputs),
         "--classes", ",".join(NAMES), "--random-init", "--out", str(out), "--config.label.shard_size=3"]
  return subprocess.run(cmd, env=full, cwd=root, capture_output=True, text=True, timeout=300)


def _complete_shard(path) -> bool:
  """A whole shard file: a header, exactly its `count` records (the keys it lists, sorted), a final newline."""
  data = path.read_bytes()
  if not data.endswith(b"\n"):
    return False
  try:
    lines = [json.loads(line) for line in data.decode("ascii").splitlines()]
  except ValueError:
    return False
  header, recs = lines[0], lines[1:]
  return (header.get("format") == shards.SHARD_FORMAT and header["count"] == len(recs)
          and header["keys"] == [r["key"] for r in recs])


def test_sigkill_in_the_middle_of_writing_a_shard(data, tmp_path):
  """The process is SIGKILLed with half of its third shard's bytes on disk (the hook in label_runner.py tears
  the write below zipjax, whatever writer it uses): no partial file appears under a shard's final name, so
  the ledger lists only whole shards, and the rerun resumes to bytes identical to the uninterrupted run."""
  root, _, ref, _ = data
  out = tmp_path / "out"
  r = _run_cli([root], out, ZIPJAX_TEST_TORN_SHARD="3")
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  sdir = out / ".zipjax" / "shards"
  final = [n for n in sorted(os.listdir(sdir)) if not n.startswith(".")]
  torn = [n for n in os.listdir(sdir) if n.startswith(".")]
  partial = [n for n in final if not _complete_shard(sdir / n)]
  assert not partial, f"partial shard(s) under a final name: {partial}"
  assert len(final) == 2, final  # the two shards written before the kill
  assert torn and all(fs.is_tmp_name(n) and (sdir / n).stat().st_size > 0 for n in torn)  # the kill hit mid-write
  assert not (out / "annotations.json").exists()
  assert sum(1 for _ in shards.RunDir(out).iter_ledger()) == 6  # 2 shards x 3 images
  r = _run_cli([root], out)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "6 of 14 images already finished" in r.stdout, r.stdout
  assert _bytes(out) == _bytes(ref)
  assert not [n for n in os.listdir(sdir) if n.startswith(".")]  # the torn temporary file was cleaned
  assert all(_complete_shard(sdir / n) for n in os.listdir(sdir))


def test_output_folder_inside_the_input_folder_is_not_labelled(tmp_path):
  """`zipjax label DIR --out DIR/out`, then a gallery (JPEGs under DIR/out/gallery/), then the same command
  again: the run is complete (nothing to do), the gallery's images are not added to the dataset."""
  from zipjax.gallery import build_gallery
  root = tmp_path / "data"
  keys = make_images(root, n=4)
  out = root / "out"
  rc, _ = run_single([root], out)
  assert rc == 0
  first = (out / "annotations.json").read_bytes()
  build_gallery(str(out), workers=1, thumb_size=32, image_size=64)
  assert list((out / "gallery" / "thumbs").iterdir())
  logs = []
  rc, make = run_single([root], out, logs=logs)
  assert rc == 0 and make.engines == []  # complete: nothing to label, no engine built
  assert (out / "annotations.json").read_bytes() == first
  names = [im["file_name"] for im in json.loads(first)["images"]]
  assert not [n for n in names if n.startswith("out/")] and set(keys) <= set(names)


def test_coco_json_names_stay_inside_the_images_root(tmp_path):
  """--coco-json: an absolute name, a ../ name and a symbolic link leading out of --images-root are per-image
  errors (nothing outside is read); './a.png' beside 'a.png' is one file listed twice."""
  root = tmp_path / "imgs"
  keys = make_images(root, n=2)
  outside = tmp_path / "private.png"
  Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(outside)
  os.symlink(outside, root / "link.png")
  listing = [{"id": 1, "file_name": keys[0]}, {"id": 2, "file_name": str(outside)},
             {"id": 3, "file_name": "../private.png"}, {"id": 4, "file_name": "link.png"},
             {"id": 5, "file_name": "a/../" + keys[1]}]
  (tmp_path / "c.json").write_text(json.dumps({"images": listing}))
  out = tmp_path / "out"
  rc, _ = run_single([], out, coco_json=str(tmp_path / "c.json"), images_root=str(root))
  assert rc == 0
  ds = json.loads((out / "annotations.json").read_text())
  assert sorted(im["id"] for im in ds["images"]) == [1, 5]
  errors = {e["id"]: e["reason"] for e in json.loads((out / "errors.json").read_text())}
  assert sorted(errors) == [2, 3, 4] and all("outside --images-root" in r for r in errors.values()), errors
  (tmp_path / "d.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"},
                                                         {"id": 2, "file_name": "./a.png"}]}))
  with pytest.raises(InputError, match="'./a.png' is listed twice"):
    run_single([], tmp_path / "out2", coco_json=str(tmp_path / "d.json"), images_root=str(root))


def test_label_input_files_fail_in_one_line_and_leave_nothing(tmp_path, capsys):
  from zipjax import cli
  root = tmp_path / "imgs"
  make_images(root, n=3)
  (tmp_path / "big.json").write_text(json.dumps({"images": [{"id": 2 ** 70, "file_name": "a.png"}]}))
  os.mkfifo(tmp_path / "fifo.json")
  cases = [(["--coco-json", str(tmp_path / "big.json"), "--images-root", str(root)], "below 2^53"),
           (["--coco-json", "/dev/zero", "--images-root", str(root)], "not a regular file"),
           (["--coco-json", str(tmp_path / "fifo.json"), "--images-root", str(root)], "not a regular file"),
           (["tfds:no_such_dataset_zipjax:train", "--data-dir", str(tmp_path)], "cannot open the prepared dataset")]
  for k, (args, msg) in enumerate(cases):
    out = tmp_path / f"out{k}"
    rc = cli.main(["label", *args, "--classes", "a", "--random-init", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and "\n" not in err, err
    assert not out.exists()  # no empty run folder left behind
