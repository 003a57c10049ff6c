"""Training input: augmentation keeps masks, boxes and pixels consistent; order is deterministic from the seed
(whatever the worker count); the iterator state resumes exactly; dataset rules (crowd, scores, polygons,
fraction, class-agnostic) and error messages."""
import copy
import dataclasses
import json
from fractions import Fraction

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zipjax.data import coco_train as ct
from zipjax.data import synthetic
from zipjax.errors import InputError


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
  d = tmp_path_factory.mktemp("syn")
  data = synthetic.generate(d, 10, seed=7, min_side=48, max_side=80, max_objects=4)
  return d, data


def _params(**kw):
  base = dict(image_size=64, mask_stride=4, max_instances=6, train=True, min_scale=0.5, max_scale=1.8, hflip=0.5,
              min_area=4)
  base.update(kw)
  return ct.AugmentParams(**base)


def test_source_indices_against_exact_reference():
  rng = np.random.default_rng(0)
  for _ in range(200):
    original, resized = (int(v) for v in rng.integers(1, 300, 2))
    start = int(rng.integers(0, resized))
    out_len = int(rng.integers(1, resized - start + 1))
    flip = bool(rng.random() < 0.5)
    got = ct.source_indices(out_len, start, resized, original, flip)
    want = []
    for k in range(out_len):
      r = start + (out_len - 1 - k if flip else k)
      centre = (Fraction(r) + Fraction(1, 2)) * Fraction(original, resized)  # exact source coordinate
      want.append(min(int(centre), original - 1))
    assert got.tolist() == want


def test_targets_consistent_with_masks_and_pixels():
  """Solid-colour objects: after random geometries, each box is the bbox of its transformed mask, the
  low-resolution mask is the block vote of the full one, and the pixels inside each mask (away from edges)
  have the object's colour."""
  rng = np.random.default_rng(1)
  colours = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250]], np.uint8)
  checked = 0
  for trial in range(40):
    h, w = (int(v) for v in rng.integers(30, 120, 2))
    image = np.zeros((h, w, 3), np.uint8)
    anns = []
    for k in range(3):
      m = np.zeros((h, w), np.uint8)
      y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
      m[y0:y0 + int(rng.integers(6, 20)), x0:x0 + int(rng.integers(6, 20))] = 1
      m[image.any(-1)] = 0  # earlier objects stay on top: the visible part only
      if m.sum() < 6:
        continue
      image[m.astype(bool)] = colours[k]
      rle = mask_utils.encode(np.asfortranarray(m))
      seg = {"size": [h, w], "counts": rle["counts"].decode()} if trial % 2 else \
          {"size": [h, w], "counts": _uncompressed(m)}
      anns.append((k, seg))
    p = _params()
    ex = ct.make_targets(image, anns, p, np.random.default_rng(trial), full_masks=True)
    g = ct.sample_geometry(h, w, p, np.random.default_rng(trial))  # the geometry make_targets drew first
    s = p.image_size
    assert ex["image"].shape == (s, s, 3) and ex["masks"].shape == (6, 16, 16)
    for j in range(6):
      if not ex["valid"][j]:
        assert not ex["full_masks"][j].any() and not ex["masks"][j].any() and (ex["boxes"][j] == 0).all()
        continue
      full = ex["full_masks"][j]
      ys, xs = np.nonzero(full)
      want = np.array([(xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, xs.max() + 1 - xs.min(),
                       ys.max() + 1 - ys.min()]) / s
      np.testing.assert_allclose(ex["boxes"][j], want, rtol=0, atol=1e-6)
      assert full.sum() >= p.min_area
      vote = full.reshape(16, 4, 16, 4).mean((1, 3)) >= 0.5
      np.testing.assert_array_equal(ex["masks"][j], vote)
      if trial < 4:  # data.soft_masks: the cover fractions, the same geometry and boxes
        soft = ct.make_targets(image, anns, dataclasses.replace(p, soft_masks=True), np.random.default_rng(trial))
        assert soft["masks"].dtype == np.float32 and ex["masks"].dtype == bool
        np.testing.assert_allclose(soft["masks"][j], full.reshape(16, 4, 16, 4).mean((1, 3)), atol=1e-7)
        np.testing.assert_array_equal(soft["boxes"], ex["boxes"])
      # interior pixels carry the object's colour after (antialiased) bilinear resampling: erode by the filter
      # support, 1 + the downscale factor
      inner = full.copy()
      for _ in range(1 + int(np.ceil(max(h / g.rh, 1.0)))):
        inner[1:] &= inner[:-1].copy()
        inner[:-1] &= inner[1:].copy()
        inner[:, 1:] &= inner[:, :-1].copy()
        inner[:, :-1] &= inner[:, 1:].copy()
      if inner.any():
        checked += 1
        col = colours[ex["labels"][j]].astype(int)
        assert np.abs(ex["image"][inner].astype(int) - col).max() <= 2
  assert checked >= 20


def _uncompressed(m):
  flat = m.T.reshape(-1)
  counts, cur, run = [], 0, 0
  for v in flat:
    if v != cur:
      counts.append(run)
      cur, run = v, 0
    run += 1
  counts.append(run)
  return counts


def test_eval_geometry_is_plain_resize():
  p = _params(train=False)
  g = ct.sample_geometry(40, 80, p, np.random.default_rng(0))
  assert (g.rh, g.rw, g.y0, g.x0, g.flip) == (32, 64, 0, 0, False)


def test_max_instances_keeps_largest():
  h = w = 64
  anns = []
  for k, size in enumerate([3, 9, 5, 12, 7, 4, 10, 6]):
    m = np.zeros((h, w), np.uint8)
    m[k * 8:k * 8 + 7, :size] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    anns.append((k, {"size": [h, w], "counts": rle["counts"].decode()}))
  ex = ct.make_targets(np.zeros((h, w, 3), np.uint8), anns, _params(train=False, max_instances=4, min_area=1),
                       None)
  assert ex["valid"].all()
  assert ex["labels"].tolist() == [1, 3, 4, 6]  # sizes 9, 12, 7, 10 in file order


def _batches(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  return all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_loader_deterministic_and_resumes(syn):
  d, _ = syn
  ts = ct.load_train_set(d / "annotations.json", d / "images")
  p = _params()
  ds = ct.make_dataset(ts, p, global_batch=3, seed=5)
  first = _batches(ct.make_iterator(ds), 5)
  again = _batches(ct.make_iterator(ct.make_dataset(ts, p, global_batch=3, seed=5), threads=1), 5)
  assert _equal(first, again)
  other = _batches(ct.make_iterator(ct.make_dataset(ts, p, global_batch=3, seed=6)), 5)
  assert not _equal(first, other)
  assert first[0]["image"].shape == (3, 64, 64, 3) and first[0]["image"].dtype == np.uint8
  assert first[0]["boxes"].dtype == np.float32 and first[0]["labels"].dtype == np.int32
  assert first[0]["masks"].shape == (3, 6, 16, 16) and first[0]["valid"].dtype == bool
  # resume: state after 2 batches, a fresh loader restored from it yields batches 3..5
  it = ct.make_iterator(ds)
  _batches(it, 2)
  state = it.get_state()
  it2 = ct.make_iterator(ct.make_dataset(ts, p, global_batch=3, seed=5))
  it2.set_state(state)
  assert _equal(_batches(it2, 3), first[2:])
  # or restart at a batch index
  assert _equal(_batches(ct.make_iterator(ds, start=3), 2), first[3:])


def test_epochs_are_permutations(syn):
  d, _ = syn
  ts = ct.load_train_set(d / "annotations.json", d / "images")
  ds = ct.make_dataset(ts, _params(), global_batch=5, seed=2)
  pick = ct.ExampleAt(None, None, 2, 0, 5, 5)
  assert [pick.global_index(k) for k in range(7)] == list(range(7))
  pick = ct.ExampleAt(None, None, 2, 1, 2, 4)  # process 1 of 2, global batch 4
  assert [pick.global_index(k) for k in range(5)] == [2, 3, 6, 7, 10]
  # each epoch of the order visits every record once, in a different order per epoch
  order = grain_order(ts, 2)
  n = len(ts.records)
  e0, e1 = [r["image_id"] for r in order[:n]], [r["image_id"] for r in order[n:2 * n]]
  assert sorted(e0) == sorted(e1) == sorted(r["image_id"] for r in ts.records) and e0 != e1
  assert len(ds[0:1][0]["image"]) == 5


def grain_order(ts, seed):
  import grain  # pylint: disable=import-outside-toplevel
  ds = grain.MapDataset.source(ts.records).shuffle(seed=seed).repeat()
  return [ds[i] for i in range(2 * len(ts.records))]


def test_loader_same_with_workers(syn):
  d, _ = syn
  ts = ct.load_train_set(d / "annotations.json", d / "images")
  p = _params()
  ds = ct.make_dataset(ts, p, global_batch=2, seed=3)
  serial = _batches(ct.make_iterator(ds), 5)
  it = ct.make_iterator(ds, workers=2)
  parallel = _batches(it, 3)
  assert _equal(serial[:3], parallel)
  state = it.get_state()  # worker-count state resumes in a fresh 2-worker iterator
  it2 = ct.make_iterator(ct.make_dataset(ts, p, global_batch=2, seed=3), workers=2)
  it2.set_state(state)
  assert _equal(_batches(it2, 2), serial[3:])


def test_loader_process_shards(syn):
  d, _ = syn
  ts = ct.load_train_set(d / "annotations.json", d / "images")
  p = _params(train=False)
  one = _batches(ct.make_iterator(ct.make_dataset(ts, p, global_batch=4, seed=0)), 3)
  parts = [_batches(ct.make_iterator(ct.make_dataset(ts, p, global_batch=4, seed=0, process_index=k,
                                                     process_count=2)), 3) for k in range(2)]
  for j in range(3):  # the two processes' local batches concatenate to the single-process global batch
    for key in one[j]:
      np.testing.assert_array_equal(np.concatenate([parts[0][j][key], parts[1][j][key]]), one[j][key])
  with pytest.raises(InputError, match="multiple"):
    ct.make_dataset(ts, p, global_batch=3, seed=0, process_count=2)


def test_dataset_rules(tmp_path, syn):
  d, data = syn
  data = copy.deepcopy(data)
  anns = data["annotations"]
  anns[0]["iscrowd"] = 1
  anns[1]["score"] = 0.2
  anns[2]["score"] = 0.9
  # a polygon annotation: a square
  img = next(i for i in data["images"] if i["id"] == anns[3]["image_id"])
  anns[3]["segmentation"] = [[2, 2, 12, 2, 12, 12, 2, 12]]
  path = tmp_path / "a.json"
  path.write_text(json.dumps(data))
  ts = ct.load_train_set(path, d / "images", min_score=0.5)
  n_kept = sum(len(r["anns"]) for r in ts.records)
  assert n_kept == len(anns) - 2  # crowd and low score dropped
  assert ts.names == list(synthetic.CATEGORIES)
  rec = next(r for r in ts.records if r["image_id"] == img["id"])
  poly = [seg for _, seg in rec["anns"] if isinstance(seg, list)][0]
  assert ct.decode_mask(poly, img["height"], img["width"]).sum() == 100  # pycocotools' polygon raster
  agn = ct.load_train_set(path, d / "images", class_agnostic=True)
  assert agn.names == ["object"] and all(lab == 0 for r in agn.records for lab, _ in r["anns"])
  # fraction: seeded, nested, at least one image
  all_ids = [r["image_id"] for r in ct.load_train_set(path, d / "images", keep_empty=True).records]
  half = [r["image_id"] for r in ct.load_train_set(path, d / "images", fraction=0.5, keep_empty=True).records]
  small = [r["image_id"] for r in ct.load_train_set(path, d / "images", fraction=0.2, keep_empty=True).records]
  other = [r["image_id"] for r in ct.load_train_set(path, d / "images", fraction=0.5, fraction_seed=1,
                                                    keep_empty=True).records]
  assert len(all_ids) == 10 and len(half) == 5 and len(small) == 2
  assert set(small) <= set(half) <= set(all_ids) and half != other
  assert len(ct.load_train_set(path, d / "images", fraction=0.01).records) == 1
  with pytest.raises(InputError, match="fraction"):
    ct.load_train_set(path, d / "images", fraction=0.0)


def test_errors(tmp_path, syn):
  d, data = syn
  bad = copy.deepcopy(data)
  bad["annotations"][0]["segmentation"] = {"size": [3, 3], "counts": "x"}
  (tmp_path / "bad.json").write_text(json.dumps(bad))
  with pytest.raises(InputError, match="annotation 0"):
    ct.load_train_set(tmp_path / "bad.json", d / "images")
  nomask = copy.deepcopy(data)
  del nomask["annotations"][1]["segmentation"]
  (tmp_path / "nomask.json").write_text(json.dumps(nomask))
  with pytest.raises(InputError, match="no segmentation"):
    ct.load_train_set(tmp_path / "nomask.json", d / "images")
  ts = ct.load_train_set(d / "annotations.json", tmp_path)  # wrong images root
  with pytest.raises(InputError, match="file not found"):
    ct.make_dataset(ts, _params(), global_batch=1, seed=0)[0]
  with pytest.raises(InputError, match="mask_stride"):
    _params(mask_stride=5)
