"""Run directories and inputs in a bucket: `gs://` URLs go through etils.epath (here its mock backend, mapping
gs://bucket/... onto a local folder), never through os. Shards, ledger, merge + commit, the lock (lock-file
mode), recursive image folders, a COCO json and --classes-file in the bucket."""
import contextlib
import json
import os

import numpy as np
import pytest
from etils.epath import testing as epath_testing
from PIL import Image

from zipjax.configs import Limits
from zipjax.data import sources
from zipjax.io import fs
from zipjax.io.lock import DirLock, LockedError
from zipjax.io.shards import RunDir, image_record


@contextlib.contextmanager
def fake_bucket(root):
  """gs://NAME/... -> root/NAME/... for every etils.epath operation; records which operations were used."""
  used = set()

  def local(p):
    s = os.fspath(p)
    return os.path.join(str(root), s[len("gs://"):]) if s.startswith("gs://") else s

  def to_url(p):
    s = os.fspath(p)
    return "gs://" + os.path.relpath(s, str(root)) if s.startswith(str(root)) else s

  def one(name):
    def fn(orig, path, *a, **k):
      used.add(name)
      return orig(local(path), *a, **k)
    return fn

  def two(name):
    def fn(orig, path, dst, *a, **k):
      used.add(name)
      return orig(local(path), local(dst), *a, **k)
    return fn

  def walk(orig, top, **k):
    used.add("walk")
    for d, dirs, files in orig(local(top), **k):
      yield to_url(d), dirs, files

  fns = {n: one(n) for n in ("open", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree",
                             "stat")}
  fns.update(rename=two("rename"), replace=two("replace"), copy=two("copy"), walk=walk)
  with epath_testing.mock_epath(**fns):
    yield used


def test_run_directory_in_a_bucket(tmp_path):
  with fake_bucket(tmp_path) as used:
    rd = RunDir("gs://b/runs/x")
    lock = rd.lock("test").acquire()
    assert lock.mode == "file"  # no flock on a bucket
    with pytest.raises(LockedError):
      DirLock("gs://b/runs/x/.zipjax/lock").acquire()
    w = rd.writer(2)
    m = np.zeros((4, 6), bool)
    m[1:3, 1:4] = True
    for i in range(5):
      w.add(image_record(f"k{4 - i}", f"f{4 - i}.png", 4, 6, [{"category": 0, "score": 0.5, "box": [1, 1, 4, 3],
                                                                  "mask": m}]))
    w.flush()
    assert len(rd.shard_names()) == 3 and sorted(k for k, _ in rd.iter_ledger()) == [f"k{i}" for i in range(5)]
    stats = rd.merge({"d": 1}, ["a"], lambda s: {"n": s.images})
    assert stats.images == 5 and rd.is_complete()
    assert fs.read_bytes("gs://b/runs/x/run.json") == b'{\n "n": 5\n}\n'
    lock.release()
    assert not fs.exists("gs://b/runs/x/.zipjax/lock")
  assert {"open", "rename", "listdir", "rmtree"} <= used
  ds = json.loads((tmp_path / "b/runs/x/annotations.json").read_text())
  assert [im["file_name"] for im in ds["images"]] == [f"f{i}.png" for i in range(5)]
  assert not [n for n in os.listdir(tmp_path / "b/runs/x") if ".tmp-" in n]


def test_inputs_in_a_bucket(tmp_path):
  rng = np.random.default_rng(0)
  for rel in ("imgs/a.png", "imgs/sub/b.png"):
    os.makedirs(tmp_path / "b" / os.path.dirname(rel), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "b" / rel)
  (tmp_path / "b/imgs/bad.png").write_text("x")
  (tmp_path / "b/c.json").write_text(json.dumps({"images": [{"id": 5, "file_name": "sub/b.png"},
                                                            {"id": 6, "file_name": "nope.png"}]}))
  with fake_bucket(tmp_path):
    wl = sources.open_inputs(["gs://b/imgs"])
    assert [wl.key(i) for i in range(len(wl))] == ["a.png", "bad.png", "sub/b.png"]
    got = [wl.load(i, Limits()) for i in range(len(wl))]
    np.testing.assert_array_equal(got[0].image, np.asarray(Image.open(tmp_path / "b/imgs/a.png")))
    assert "not an image" in got[1].reason
    coco = sources.open_inputs([], coco_json="gs://b/c.json", images_root="gs://b/imgs")
    x, y = coco.load(0, Limits()), coco.load(1, Limits())
    assert (x.key, x.image_id, x.reason) == ("nope.png", 6, "file not found")
    assert (y.key, y.image_id, y.image.shape) == ("sub/b.png", 5, (40, 50, 3))


def test_label_job_into_a_bucket(tmp_path):
  from tests.jobs.test_label import NAMES, make_images, run_single
  make_images(tmp_path / "in", n=5)
  (tmp_path / "b").mkdir()
  with fake_bucket(tmp_path):
    assert run_single([tmp_path / "in"], "gs://b/run")[0] == 0
    logs = []
    assert run_single([tmp_path / "in"], "gs://b/run", logs=logs)[0] == 0
    assert any("nothing to do" in m for m in logs)
  local = tmp_path / "local"
  assert run_single([tmp_path / "in"], local)[0] == 0
  for n in ("annotations.json", "errors.json"):
    assert (tmp_path / "b/run" / n).read_bytes() == (local / n).read_bytes()
  assert len(json.loads((local / "annotations.json").read_text())["categories"]) == len(NAMES)
