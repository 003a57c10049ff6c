"""zipjax.io.shards: canonical records, shard files + ledger, the streaming merge (vs an in-memory reference built
with json), the commit protocol interrupted at every step, overlays reconciled, temporary files cleaned."""
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zipjax.io import shards
from zipjax.io.shards import RunDir, error_record, image_record

NAMES = ["cat", "dög"]


def _records(n=9, seed=0):
  rng = np.random.default_rng(seed)
  recs = []
  for i in range(n):
    key = f"k{(i * 7) % n:03d}.png"
    if i % 4 == 3:
      recs.append(error_record(key, {"file_name": key, "reason": f"bad {i}"}))
      continue
    h, w = 20 + i, 30
    insts = []
    for j in range(i % 3):
      m = rng.random((h, w)) > 0.7
      insts.append({"category": j % 2, "score": float(rng.random()), "mask": m,
                    "box": [1.0000001 * j, -0.0, 10.123456, 12.5]})
    recs.append(image_record(key, key, h, w, insts))
  return recs


def _write(rd, recs, size, process=0):
  w = rd.writer(size, process)
  for r in recs:
    w.add(r)
  w.flush()
  return w


def _merge(rd, info=None, **kw):
  return rd.merge(info or {"description": "t"}, NAMES, lambda s: {"n": s.images}, **kw)


def _reference(recs):
  """The merged dataset built in memory with the json module: what the streaming merge must equal."""
  images, anns, errors = [], [], []
  for r in sorted(recs, key=lambda r: r["key"]):
    if "error" in r:
      errors.append(r["error"])
      continue
    images.append({"id": len(images) + 1, **r["image"]})
    for a in r["annotations"]:
      anns.append({"id": len(anns) + 1, "image_id": images[-1]["id"], **a})
  cats = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(NAMES)]
  return {"info": {"description": "t"}, "images": images, "annotations": anns, "categories": cats}, errors


def test_records_are_canonical():
  m = np.zeros((4, 5), bool)
  m[1:3, 2:4] = True
  rec = image_record("a", "a.png", 4, 5, [{"category": 1, "score": np.float32(0.123456789), "mask": m,
                                            "box": [2.00049, -0.0, 4.0, 3.0]}])
  a = rec["annotations"][0]
  assert list(a) == ["category_id", "segmentation", "area", "bbox", "iscrowd", "score"]
  assert a["category_id"] == 2 and a["area"] == 4.0 and a["score"] == 0.123457
  assert a["bbox"] == [2.0, 0.0, 2.0, 3.0] and str(a["bbox"][1]) == "0.0"
  np.testing.assert_array_equal(mask_utils.decode(a["segmentation"]).astype(bool), m)
  rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))  # an RLE from the engine gives the same record
  rec2 = image_record("a", "a.png", 4, 5, [{"category": 1, "score": 0.123456789, "mask": rle,
                                             "box": [2.00049, 0.0, 4.0, 3.0]}])
  assert rec2 == rec
  with pytest.raises(ValueError, match="non-finite"):
    image_record("a", "a", 4, 5, [{"category": 0, "score": float("nan"), "mask": m, "box": [0, 0, 1, 1]}])


def test_shards_ledger_and_merge_equal_the_reference(tmp_path):
  recs = _records(23)
  rd = RunDir(tmp_path / "out")
  _write(rd, recs[:10], 4, process=0)
  _write(rd, recs[10:], 3, process=1)
  names = rd.shard_names()
  assert len(names) == 3 + 5
  header = json.loads((tmp_path / "out/.zipjax/shards" / names[0]).read_text().splitlines()[0])
  assert header["format"] == shards.SHARD_FORMAT and header["keys"] == sorted(header["keys"])
  ledger = dict(rd.iter_ledger())
  assert ledger == {r["key"]: "error" in r for r in recs}
  stats = _merge(rd)
  want, want_err = _reference(recs)
  got = (tmp_path / "out/annotations.json").read_text()
  assert json.loads(got) == want
  assert got == json.dumps(want) + "\n"  # exactly json.dumps of the whole dataset
  assert json.loads((tmp_path / "out/errors.json").read_text()) == want_err
  assert (stats.images, stats.errors, stats.annotations) == (len(want["images"]), len(want_err),
                                                             len(want["annotations"]))
  assert json.loads((tmp_path / "out/run.json").read_text()) == {"n": stats.images}
  assert rd.is_complete()
  assert not (tmp_path / "out/.zipjax/commit").exists()


def test_merge_independent_of_shard_layout_fan_in_and_duplicates(tmp_path, monkeypatch):
  recs = _records(31, seed=1)
  outs = []
  for i, (sizes, fan_in) in enumerate((((31,), 128), ((1,) * 31, 3), ((5, 26), 2))):
    monkeypatch.setattr(shards, "FAN_IN", fan_in)
    rd = RunDir(tmp_path / str(i))
    start = 0
    for p, s in enumerate(sizes):
      _write(rd, recs[start:start + s], max(1, s // 2 or 1), process=p)
      start += s
    if i == 2:
      _write(rd, recs[3:9], 2, process=9)  # the same images twice (identical records): dropped at merge
    stats = _merge(rd)
    assert stats.duplicates == (6 if i == 2 else 0)
    outs.append({n: (tmp_path / str(i) / n).read_bytes() for n in ("annotations.json", "errors.json")})
  assert outs[0] == outs[1] == outs[2]


def test_records_stream_the_merged_records_in_key_order(tmp_path, monkeypatch):
  """`RunDir.records`: every finished record once (duplicates dropped), decoded, in key order, whatever the shard
  layout and fan-in; nothing for a directory without shards."""
  assert list(RunDir(tmp_path / "none").records()) == []
  recs = _records(17, seed=2)
  want = sorted((json.loads(json.dumps(r)) for r in recs), key=lambda r: r["key"])  # as read back from a file
  for fan_in in (128, 2):
    monkeypatch.setattr(shards, "FAN_IN", fan_in)
    rd = RunDir(tmp_path / f"f{fan_in}")
    _write(rd, recs[:9], 2, process=0)
    _write(rd, recs[9:], 3, process=1)
    _write(rd, recs[2:6], 1, process=2)  # the same images twice: dropped
    got = list(rd.records())
    assert got == want
    assert not rd.is_complete() and not (tmp_path / f"f{fan_in}" / "annotations.json").exists()  # reads only


def test_results_json_and_fixed_ids(tmp_path):
  recs = _records(6)
  for r in recs:
    if "image" in r:
      r["id"] = 100 + int(r["key"][1:4])
  rd = RunDir(tmp_path)
  _write(rd, recs, 100)
  _merge(rd, results=True)
  ds = json.loads((tmp_path / "annotations.json").read_text())
  res = json.loads((tmp_path / "results.json").read_text())
  assert [im["id"] for im in ds["images"]] == sorted(100 + int(r["key"][1:4]) for r in recs if "image" in r)
  assert len(res) == len(ds["annotations"])
  for r, a in zip(res, ds["annotations"]):
    assert r == {"image_id": a["image_id"], "category_id": a["category_id"],
                 "category_name": NAMES[a["category_id"] - 1], "segmentation": a["segmentation"],
                 "bbox": a["bbox"], "score": a["score"]}


def _state(out):
  files = {n: (out / n).read_bytes() for n in ("annotations.json", "results.json", "errors.json", "run.json")
           if (out / n).exists()}
  overlays = sorted(os.listdir(out / "overlays")) if (out / "overlays").exists() else []
  return files, overlays


def _assert_consistent(state, old, new):
  """Every output file present is from ONE generation (old or new), and the overlays present belong to it."""
  files, overlays = state
  gens = {"old", "new"}
  for name, data in files.items():
    gens &= {g for g, ref in (("old", old), ("new", new)) if ref[0].get(name) == data}
  assert gens, f"output files from two different runs: {sorted(files)}"
  if files:
    assert any(set(overlays) <= set(ref[1]) for g, ref in (("old", old), ("new", new)) if g in gens)


def _segment_like_run(rd, recs, gen, fault_at=None, monkeypatch=None):
  """Writes shards + staged overlays for recs (ids fixed) and merges with overlays, optionally interrupted."""
  rd.reset(outputs=False)
  os.makedirs(rd.overlay_stage, exist_ok=True)
  for r in recs:
    if "image" in r:
      r["id"] = int(r["key"][1:4]) + 1
      with open(os.path.join(rd.overlay_stage, f"{r['id']:06d}_{r['key'][:4]}.png"), "wb") as f:
        f.write(r["key"].encode())
  _write(rd, recs, 3)
  calls = {"n": 0}

  def fault(point):
    if point == "commit.file":
      calls["n"] += 1
      if calls["n"] == fault_at:
        raise KeyboardInterrupt(point)

  if fault_at is not None:
    monkeypatch.setattr(shards, "fault", fault)
  try:
    _merge(rd, {"description": gen}, results=True, overlay_name=lambda iid, rec: f"{iid:06d}_{rec['key'][:4]}.png")
  finally:
    monkeypatch and monkeypatch.setattr(shards, "fault", lambda p: None)


@pytest.mark.parametrize("fault_at", [1, 2, 3, 4])
def test_commit_interrupted_at_each_replace_is_consistent_and_rolls_forward(tmp_path, monkeypatch, fault_at):
  ref = RunDir(tmp_path / "ref")
  _segment_like_run(ref, _records(5, seed=4), "B")
  new_state = _state(tmp_path / "ref")
  out = tmp_path / "out"
  rd = RunDir(out)
  old = _records(9, seed=3)
  _segment_like_run(rd, old, "A")
  old_state = _state(out)
  assert len(old_state[1]) == len([r for r in old if "image" in r]) and len(old_state[0]) == 4
  with pytest.raises(KeyboardInterrupt):  # fewer images: some old overlays become stale
    _segment_like_run(rd, _records(5, seed=4), "B", fault_at=fault_at, monkeypatch=monkeypatch)
  mid = _state(out)
  _assert_consistent(mid, old_state, new_state)
  assert "annotations.json" not in mid[0] or mid[0]["annotations.json"] == new_state[0]["annotations.json"]
  assert len(mid[0]) == fault_at  # old files all deleted first, then new ones appear one by one
  rd.recover()  # the next run rolls the commit forward
  assert _state(out) == new_state
  assert not rd.recover()["rolled_forward"]


def test_interrupted_merge_before_the_marker_keeps_old_outputs(tmp_path, monkeypatch):
  out = tmp_path / "out"
  rd = RunDir(out)
  _write(rd, _records(9), 4)
  _merge(rd)
  before = {n: (out / n).read_bytes() for n in ("annotations.json", "errors.json", "run.json")}
  _write(rd, _records(12, seed=5)[9:], 4)

  def boom(point):
    if point == "merge.record":
      raise KeyboardInterrupt

  monkeypatch.setattr(shards, "fault", boom)
  with pytest.raises(KeyboardInterrupt):
    _merge(rd)
  monkeypatch.setattr(shards, "fault", lambda p: None)
  assert {n: (out / n).read_bytes() for n in before} == before
  assert not rd.is_complete()  # new shards since the last merge
  rd.recover()
  assert not (out / ".zipjax/commit").exists()


def test_recover_cleans_temporary_files(tmp_path):
  out = tmp_path
  rd = RunDir(out)
  _write(rd, _records(3), 3)
  os.makedirs(out / "overlays")
  junk = [out / ".errors.json.tmp-abc123", out / "overlays" / ".000001_x.png.tmp-zz",
          out / ".zipjax/shards" / ".x-p00000-000000.jsonl.tmp-q1"]
  for j in junk:
    j.write_text("partial")
  keep = out / "notes.tmp-1.txt"
  keep.write_text("user file")
  got = rd.recover()
  assert sorted(got["cleaned"]) == sorted(str(j) for j in junk)
  assert not any(j.exists() for j in junk) and keep.exists()
  assert len(rd.shard_names()) == 1


def test_line_keys_with_odd_characters():
  for key in ('plain.png', 'dir/ä "quoted" \\ 🍎.png', 'x\udcff.png'):
    line = shards._dumps(error_record(key, {"reason": "r"}))
    assert shards._line_key(line) == key
