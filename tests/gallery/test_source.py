"""CocoIndex (one streaming pass over a COCO file) against `json.load`: the same images, categories, info and
per-image annotation records, whatever the chunk boundaries, indentation, key order or non-ASCII text; bounded
memory on a file dominated by mask strings; clear errors on corrupt files."""
import json
import os
import tracemalloc

import numpy as np
import pytest

from zipjax.errors import InputError
from zipjax.gallery import source
from zipjax.gallery.source import CocoIndex


def _dataset(n_images=7, n_ann=60, seed=0):
  rng = np.random.default_rng(seed)
  images = [{"id": 10 + i, "file_name": f"dír/ïmg {i}.png", "height": 20 + i, "width": 30} for i in range(n_images)]
  anns = []
  for k in range(n_ann):
    anns.append({"id": k + 1, "image_id": 10 + int(rng.integers(0, n_images)), "category_id": 1 + k % 3,
                 "segmentation": {"size": [20, 30], "counts": "".join(rng.choice(list("0123456789:;<=>?@ABC"),
                                                                                    int(rng.integers(1, 200))))},
                 "bbox": [float(k), 1.5, 2.0, 3.0], "area": 10.0 + k, "score": float(rng.random()),
                 "iscrowd": int(k % 11 == 0), "note": "é🍎 \u2028 \"q\" \\ </script>"})
  return {"info": {"description": "zipjax ä 🍎", "nested": {"a": [1, 2, {"b": None}]}},
          "licenses": [{"id": 1, "name": "x" * 5000}], "images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "orange"}, {"id": 2, "name": "Äpfel 🍎"}, {"id": 3, "name": "t"}]}


@pytest.mark.parametrize("ensure_ascii,indent,chunk,order", [
    (True, None, 97, "std"), (False, None, 61, "std"), (False, 2, 1 << 20, "std"), (True, 1, 13, "rev")])
def test_index_equals_json_load(tmp_path, monkeypatch, ensure_ascii, indent, chunk, order):
  monkeypatch.setattr(source, "_CHUNK", chunk)
  d = _dataset()
  if order == "rev":  # annotations before images, categories first
    d = {k: d[k] for k in ("categories", "annotations", "licenses", "images", "info")}
  p = tmp_path / "a.json"
  p.write_text(json.dumps(d, ensure_ascii=ensure_ascii, indent=indent), encoding="utf-8")
  with CocoIndex(p) as idx:
    assert idx.info == d["info"]
    assert [c["name"] for c in idx.categories] == ["orange", "Äpfel 🍎", "t"]
    assert [(im["id"], im["file_name"], im["height"]) for im in idx.images] == [
        (im["id"], im["file_name"], im["height"]) for im in d["images"]]
    assert len(idx.table) == len(d["annotations"]) and idx.orphans == 0
    for i, im in enumerate(idx.images):
      ref = [a for a in d["annotations"] if a["image_id"] == im["id"]]
      recs, h = idx.records(i)
      assert recs == ref
      r = idx.rows(i)
      np.testing.assert_array_equal(idx.table.score[r], [a["score"] for a in ref])
      np.testing.assert_array_equal(idx.table.category[r], [a["category_id"] for a in ref])
      np.testing.assert_array_equal(idx.table.area[r], [a["area"] for a in ref])
      np.testing.assert_array_equal(idx.table.bbox[r].reshape(-1, 4), [a["bbox"] for a in ref])
      np.testing.assert_array_equal(idx.table.iscrowd[r], [a["iscrowd"] for a in ref])
      assert len(h) == 40


def test_content_hash_follows_the_records(tmp_path):
  d = _dataset()
  p = tmp_path / "a.json"
  p.write_text(json.dumps(d))
  with CocoIndex(p) as idx:
    hashes = [idx.records(i)[1] for i in range(len(idx.images))]
  target = d["annotations"][5]["image_id"]
  d["annotations"][5]["score"] = 0.123456
  p.write_text(json.dumps(d, indent=3))  # layout changes do not matter, record bytes do
  with CocoIndex(p) as idx:
    for i, im in enumerate(idx.images):
      assert (idx.records(i)[1] == hashes[i]) == (im["id"] != target)


def test_orphans_and_unknown_categories(tmp_path):
  d = _dataset()
  d["annotations"][0]["image_id"] = 999
  d["annotations"][1]["category_id"] = 42
  p = tmp_path / "a.json"
  p.write_text(json.dumps(d))
  with CocoIndex(p) as idx:
    assert idx.orphans == 1 and len(idx.table) == len(d["annotations"]) - 1
    assert {"id": 42, "name": "category 42"} in idx.categories
    assert any("image ids not in" in m for m in idx.problems)
    assert any("category id 42" in m for m in idx.problems)


def test_memory_is_bounded_by_annotation_count_not_mask_bytes(tmp_path):
  """1,000 annotations with 20 kB mask strings (a 20 MB file): the pass keeps a few MB (the 1 MiB read window,
  its decoded copy, the compact arrays), where json.load holds the whole file."""
  counts = "0123456789:;<=>?@ABCDEFGHIJKLMN" * 650  # ~20 kB
  anns = ",".join(json.dumps({"id": k + 1, "image_id": 1 + k % 50, "category_id": 1, "score": 0.5, "area": 1.0,
                              "bbox": [0, 0, 1, 1], "iscrowd": 0,
                              "segmentation": {"size": [100, 100], "counts": counts}}) for k in range(1000))
  p = tmp_path / "big.json"
  with open(p, "w") as f:
    f.write('{"images": [' + ",".join(json.dumps({"id": i + 1, "file_name": f"{i}.png", "height": 100,
                                                   "width": 100}) for i in range(50))
            + '], "annotations": [' + anns + '], "categories": [{"id": 1, "name": "a"}]}')
  size = os.path.getsize(p)
  assert size > 19e6
  tracemalloc.start()
  try:
    idx = CocoIndex(p)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert len(idx.table) == 1000
  assert peak < 8e6, f"peak {peak / 1e6:.1f} MB while indexing a {size / 1e6:.0f} MB file"
  recs, _ = idx.records(3)
  assert len(recs) == 20 and recs[0]["segmentation"]["counts"] == counts
  idx.close()


@pytest.mark.parametrize("text,message", [
    ("", "the file is empty"),
    ("[]", "expected a COCO dataset object"),
    ('{"images": [], "annotations": [{"image_id": 1,', "truncated"),
    ('{"images": [], "annotations": [{"image_id": 1,, }]}', "Expecting property name"),
    ('{"images": []}', "no 'annotations' list"),
    ('{"annotations": []}', "no 'images' list"),
    ('{"images": [{"id": 1}], "annotations": []}', "positive integer 'height' and 'width'"),
    ('{"images": [], "annotations": [{"image_id": "a"}]}', "integer 'image_id'"),
    ('{"images": [], "annotations": [{"image_id": 1, "score": "high"}]}', "score 'high' is not a number"),
    ('{"images": [], "annotations": []} x', "unexpected data after"),
])
def test_corrupt_files_are_clear_errors(tmp_path, text, message):
  p = tmp_path / "bad.json"
  p.write_text(text)
  with pytest.raises(InputError, match=message) as e:
    CocoIndex(p)
  assert str(p) in str(e.value)


def test_missing_file(tmp_path):
  with pytest.raises(InputError, match="file not found"):
    CocoIndex(tmp_path / "nope.json")


def test_truncated_large_file_fails_without_reading_everything_twice(tmp_path, monkeypatch):
  monkeypatch.setattr(source, "_CHUNK", 1000)
  d = _dataset(n_ann=500)
  text = json.dumps(d)
  p = tmp_path / "t.json"
  p.write_text(text[: len(text) * 2 // 3])
  with pytest.raises(InputError, match="truncated"):
    CocoIndex(p)
