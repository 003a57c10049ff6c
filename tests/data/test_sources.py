"""zipjax.data: work-list keys (recursive folders, several inputs, COCO json, TFDS), decoding equal to
zipjax.io.images.load_image, odd folder entries reported per image, a TFDS dataset built in the test and read
without TensorFlow, the grain loader's sharding by process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zipjax.configs import Limits
from zipjax.data import loader, sources
from zipjax.errors import InputError
from zipjax.io import images as images_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIM = Limits()


def _img(path, h=40, w=50, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_folder_keys_recursive_sorted_and_relative(tmp_path, monkeypatch):
  for rel in ("b/2.png", "a/z/1.jpg", "0.png", "a/notes.txt"):
    p = tmp_path / "data" / rel
    _img(p) if rel.endswith(("png", "jpg")) else (p.parent.mkdir(parents=True, exist_ok=True), p.write_text("x"))
  wl = sources.FileList([tmp_path / "data"])
  assert [wl.key(i) for i in range(len(wl))] == ["0.png", "a/z/1.jpg", "b/2.png"]
  assert wl.index_of("a/z/1.jpg") == 1 and wl.index_of("nope.png") is None
  _img(tmp_path / "other" / "x.png")
  wl2 = sources.FileList([tmp_path / "data", tmp_path / "other" / "x.png", tmp_path / "data" / "0.png"])
  assert [wl2.key(i) for i in range(len(wl2))] == ["data/0.png", "data/a/z/1.jpg", "data/b/2.png", "other/x.png"]
  monkeypatch.chdir(tmp_path)  # keys do not depend on how the inputs were spelled
  assert [wl2.key(i) for i in range(len(wl2))] == [
      sources.FileList(["data", "other/x.png"]).key(i) for i in range(4)]
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="no image files"):
    sources.FileList([tmp_path / "empty"])


def test_decoding_matches_load_image_and_odd_entries_are_errors(tmp_path):
  d = tmp_path / "d"
  _img(d / "ok.png", 60, 45)
  img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 64, 3), dtype=np.uint8))
  exif = img.getexif()
  exif[0x0112] = 6
  img.save(d / "rot.jpg", exif=exif)
  os.symlink(d / "missing.png", d / "dangling.png")
  os.mkfifo(d / "fifo.png")
  (d / "empty.png").write_bytes(b"")
  wl = sources.FileList([d])
  got = {wl.key(i): wl.load(i, LIM) for i in range(len(wl))}
  assert set(got) == {"ok.png", "rot.jpg", "dangling.png", "fifo.png", "empty.png"}
  for k in ("ok.png", "rot.jpg"):
    np.testing.assert_array_equal(got[k].image, images_io.load_image(d / k))
    data = (d / k).read_bytes()
    np.testing.assert_array_equal(sources.decode_image_bytes(data, LIM), got[k].image)
  assert got["rot.jpg"].image.shape == (64, 40, 3)  # EXIF applied
  assert got["dangling.png"].reason == "dangling symbolic link (its target does not exist)"
  assert got["fifo.png"].reason == "not a regular file (a FIFO)"  # refused without blocking on open()
  assert got["empty.png"].reason
  with pytest.raises(InputError, match="too small"):
    sources.decode_image_bytes((d / "ok.png").read_bytes(), Limits(min_side=100))
  with pytest.raises(InputError, match="empty file"):
    sources.decode_image_bytes(b"", LIM)
  with pytest.raises(InputError, match="not an image"):
    sources.decode_image_bytes(b"hello", LIM)


def test_coco_json_validation(tmp_path):
  def write(images):
    (tmp_path / "c.json").write_text(json.dumps({"images": images}))
    return str(tmp_path / "c.json")

  wl = sources.CocoList(write([{"id": 3, "file_name": "b.jpg"}, {"id": 9, "file_name": "a.jpg"}]), str(tmp_path))
  assert [wl.key(i) for i in range(2)] == ["a.jpg", "b.jpg"]
  x = wl.load(0, LIM)
  assert (x.image_id, x.reason) == (9, "file not found")
  assert x.error_entry() == {"file_name": "a.jpg", "id": 9, "reason": "file not found"}
  for bad, msg in (([{"id": 1, "file_name": "a"}, {"id": 2, "file_name": "a"}], "listed twice"),
                   ([{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}], "id 1 is used twice"),
                   ([{"id": "1", "file_name": "a"}], r"images\[0\]: needs an integer 'id'"),
                   ([{"id": 1}], "file_name"), ([], "empty")):
    with pytest.raises(InputError, match=msg):
      sources.CocoList(write(bad), str(tmp_path))
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(InputError, match="not valid JSON"):
    sources.CocoList(str(tmp_path / "bad.json"), str(tmp_path))


def test_open_inputs_argument_checks(tmp_path):
  for kw, msg in (({"inputs": ["x"], "coco_json": "c.json", "images_root": "r"}, "takes no other INPUT"),
                  ({"inputs": [], "coco_json": "c.json"}, "go together"),
                  ({"inputs": ["tfds:a:train", "x"]}, "cannot be combined"),
                  ({"inputs": ["tfds:a:train"]}, "--data-dir is required"),
                  ({"inputs": ["tfds:nosplit"], "data_dir": "d"}, "expected tfds:NAME:SPLIT"),
                  ({"inputs": ["x"], "data_dir": "d"}, "only used with a tfds"),
                  ({"inputs": []}, "no INPUT")):
    with pytest.raises(InputError, match=msg):
      sources.open_inputs(**kw)


# A tiny TFDS dataset, written with tfds' own builder in array_record format (no TensorFlow needed), in a
# subprocess so that this test process never imports tensorflow_datasets' builder machinery.
BUILD = r'''
import io, sys
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

class TinyImages(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(), "image/id": tfds.features.Scalar(np.int64),
        "image/filename": tfds.features.Text()}))
  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(6), "validation": self._generate_examples(2)}
  def _generate_examples(self, n):
    for i in range(n):
      rng = np.random.default_rng(i)
      buf = io.BytesIO()
      Image.fromarray(rng.integers(0, 256, (36 + 3 * i, 48 + 4 * i, 3), dtype=np.uint8)).save(buf, "PNG")
      data = buf.getvalue() if i != 3 else b"corrupt bytes"
      yield i, {"image": data, "image/id": 500 + i, "image/filename": f"img_{i}.png"}

TinyImages(data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
assert "tensorflow" not in sys.modules
'''


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  subprocess.run([sys.executable, "-c", BUILD, str(d)], check=True, capture_output=True, cwd=ROOT)
  return d


def test_tfds_source_without_tensorflow(tfds_dir):
  wl = sources.open_inputs(["tfds:tiny_images:train"], data_dir=str(tfds_dir))
  assert isinstance(wl, sources.TfdsList) and len(wl) == 6
  assert [wl.key(i) for i in range(6)] == [f"train/{i:09d}" for i in range(6)]
  assert wl.index_of("train/000000004") == 4 and wl.index_of("validation/000000004") is None
  seen = set()
  for j in range(6):
    x = wl.load(j, LIM)
    i = int(x.file_name[4:-4])  # tfds stores examples in its own (hashed) order
    seen.add(i)
    assert x.file_name == f"img_{i}.png" and x.extra == {"source_id": 500 + i}
    if i == 3:
      assert "not an image" in x.reason
      continue
    want = np.random.default_rng(i).integers(0, 256, (36 + 3 * i, 48 + 4 * i, 3), dtype=np.uint8)
    np.testing.assert_array_equal(x.image, want)
  assert seen == set(range(6))
  assert "tensorflow" not in sys.modules
  with pytest.raises(InputError, match="cannot open the prepared dataset"):
    sources.open_inputs(["tfds:not_there:train"], data_dir=str(tfds_dir))


def test_grain_loader_shards_by_process_in_order(tmp_path):
  for i in range(7):
    _img(tmp_path / f"{i}.png", 40 + i, 40)
  (tmp_path / "7.png").write_text("bad")
  wl = sources.FileList([tmp_path])
  todo = np.array([0, 2, 3, 4, 5, 6, 7])
  seen = []
  for p in range(3):
    got = list(loader.process_stream(wl, todo, lambda im: ("prepared", im.shape), LIM, process_index=p,
                                     process_count=3, workers=3, prefetch=2))
    assert [x.index for x in got] == list(todo[p::3])
    for x in got:
      if x.index == 7:
        assert x.item is None and "not an image" in x.reason
      else:
        assert x.item == ("prepared", (40 + x.index, 40, 3)) and (x.height, x.width) == (40 + x.index, 40)
        assert x.image is None
    seen += [x.index for x in got]
  assert sorted(seen) == list(todo)

  def boom(im):
    raise RuntimeError("kaput")

  got = list(loader.process_stream(wl, [0], boom, LIM))
  assert got[0].reason == "preprocessing failed (RuntimeError: kaput)"
