"""Run directories of batch jobs (`zipjax label`, `zipjax segment`, `zipjax detect`, the predictions of
`zipjax self-train`): append-only shards, a ledger, one canonical merge, and a commit that a kill at any moment
cannot tear.

Layout of a run directory `OUT/` (local or `gs://...`, see `zipjax/io/fs.py`):

```
OUT/annotations.json, errors.json, run.json   final outputs (+ results.json, overlays/ for segment / detect)
OUT/.zipjax/lock                              the directory lock (zipjax/io/lock.py)
OUT/.zipjax/job.json                          identity of the run: command, config, models, classes, inputs
OUT/.zipjax/shards/<nonce>-p<proc>-<seq>.jsonl  per-process shard files (complete or absent)
OUT/.zipjax/attempts/<nonce>.json             statistics of each attempt (for run.json)
OUT/.zipjax/overlays/                         overlays drawn by segment / detect, moved into OUT/overlays/ at commit
OUT/.zipjax/commit/                           the next outputs, staged; COMMIT marks them complete
OUT/.zipjax/merged.json                       fingerprint of the shard set the final outputs were merged from
```

**Records and shards.** Every finished image is one record, `{"key", "image": {...}, "annotations": [...]}`
or `{"key", "error": {...}}` (failed images count as finished, with their reason). Records are canonical
when made (`image_record`, `error_record`): compressed RLE masks, boxes and scores rounded to fixed decimals,
keys in a fixed order, so merging is pure concatenation. A `ShardWriter` buffers records and writes them every
`shard_size` images as ONE file: a header line `{"format", "process", "keys": [...], "errors": [...]}` then
the records sorted by key, written atomically. Writing costs O(new records); nothing already written is read
or rewritten. Each process of a job writes its own files (the name holds a per-attempt nonce and the process
index), so processes never share a file and attempts never overwrite each other.

**Ledger.** The shard headers are the ledger of finished keys: a key is finished exactly when a complete
shard file lists it, since the shard file is the one and only commit point of an image (there is no second
file that could disagree with it after a kill). Resuming reads the header lines only (`iter_ledger`).

**Merge.** `RunDir.merge` k-way merges the sorted shards (`heapq.merge`, at most `FAN_IN` files open; more
shards are first merged in groups into temporary runs), drops duplicate keys, assigns image ids (a fixed id
from the record, else 1, 2, ... in key order) and annotation ids (1, 2, ... in output order), and streams
`annotations.json` (`{"info", "images", "annotations", "categories"}`, images sorted by key), `errors.json`
and optionally `results.json`, holding one record per shard in memory: host memory does not grow with the
dataset. The same records give byte-identical files whatever the process count, shard boundaries or number
of restarts. `RunDir.records` is the same merged stream of records, decoded, for a job that assembles outputs
of its own from them (`zipjax self-train`'s per-round predictions, zipjax/jobs/selftrain.py).

**Commit.** Merged files are written into `.zipjax/commit/`, then the `COMMIT` marker; then (1) old outputs
that have a staged replacement are deleted, (2) stale overlays are deleted and staged ones moved in, (3) the
staged files are moved into place, (4) the staging directory is removed. A kill before the marker leaves the
old outputs untouched (the staging directory is discarded by the next run); a kill after it is rolled forward
by the next run (`RunDir.recover`). At every moment the output files present all describe one set of images:
old files are all deleted before the first new one appears, and `annotations.json` only ever appears complete.

Kill points for the tests: `zipjax.io.faults` (`shard.written`, `merge.record`, `commit.file`).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import shutil
import tempfile
import time
import uuid

from zipjax.io import fs
from zipjax.io.faults import fault
from zipjax.io.geometry import encode_rle, rle_area
from zipjax.io.lock import DirLock
from zipjax.io.paths import display, json_path

SHARD_FORMAT = "zipjax-shard-1"
STATE = ".zipjax"
FAN_IN = 128  # shard files open at once in a merge
SCORE_DECIMALS = 6
BOX_DECIMALS = 3
COMMIT_MARKER = "COMMIT"

def _dumps(obj) -> str:
  return json.dumps(obj, ensure_ascii=True, allow_nan=False)


def _num(v, decimals: int) -> float:
  v = float(v)
  if not math.isfinite(v):
    raise ValueError(f"non-finite value {v}")
  return round(v, decimals) + 0.0  # + 0.0: no '-0.0'


# --------------------------------------------------------------------------------------------------- records
def instance_annotation(inst: dict) -> dict:
  """An engine instance {category (0-based), score, box [x0, y0, x1, y1], mask} -> the canonical annotation body
  {category_id (1-based), segmentation (RLE), area, bbox [x, y, w, h], iscrowd, score}."""
  rle = encode_rle(inst["mask"])
  area = rle_area(rle)
  x0, y0, x1, y1 = (_num(v, BOX_DECIMALS) for v in inst["box"])
  bbox = [x0, y0, _num(max(x1 - x0, 0.0), BOX_DECIMALS), _num(max(y1 - y0, 0.0), BOX_DECIMALS)]
  return {"category_id": int(inst["category"]) + 1, "segmentation": rle, "area": area, "bbox": bbox,
          "iscrowd": 0, "score": _num(inst["score"], SCORE_DECIMALS)}


def image_record(key: str, file_name: str, height: int, width: int, instances, *, image_id: int | None = None,
                 extra: dict | None = None) -> dict:
  """The canonical record of a segmented image (instances as the engine returns them, best first)."""
  text, escaped = json_path(file_name)  # names that are not valid UTF-8: see zipjax/io/paths.py
  image = {"file_name": text, "height": int(height), "width": int(width),
           **({"file_name_escaped": True} if escaped else {}), **(extra or {})}
  rec = {"key": key}
  if image_id is not None:
    rec["id"] = int(image_id)
  rec["image"] = image
  rec["annotations"] = [instance_annotation(inst) for inst in instances]
  return rec


def error_record(key: str, error: dict) -> dict:
  """The record of an image that could not be segmented; `error` is its errors.json entry (with a reason)."""
  error = dict(error)
  if "path" in error:
    text, escaped = json_path(error["path"])
    error["path"] = text
    if escaped:
      error["path_escaped"] = True
  if "reason" in error:
    error["reason"] = display(str(error["reason"]))
  return {"key": key, "error": error}


# --------------------------------------------------------------------------------------------------- shards
def new_nonce() -> str:
  """A per-attempt name part: sortable by time, unique across processes and hosts."""
  return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:6]}"


class ShardWriter:
  """Buffers records of one process and writes them as shard files of `shard_size` records.

  Attributes:
    directory: the shards directory.
    prefix: file-name prefix of this process and attempt (`<nonce>-p<process>`).
    shard_size: records per shard file (the last one may be smaller).
    files: names written so far.
    written: records written so far.
  """

  def __init__(self, directory, prefix: str, shard_size: int, process_index: int = 0):
    if shard_size < 1:
      raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    self.directory = os.fspath(directory)
    self.prefix = prefix
    self.shard_size = int(shard_size)
    self.process_index = int(process_index)
    self.files: list[str] = []
    self.written = 0
    self._buffer: list[dict] = []
    fs.makedirs(self.directory)

  @property
  def pending(self) -> int:
    return len(self._buffer)

  def add(self, record: dict) -> str | None:
    """Buffers a record; writes a shard when `shard_size` are buffered (-> its name)."""
    self._buffer.append(record)
    if len(self._buffer) >= self.shard_size:
      return self.flush()
    return None

  def flush(self) -> str | None:
    """Writes the buffered records as one shard file (atomically) -> its name, or None when nothing is buffered."""
    if not self._buffer:
      return None
    recs = sorted(self._buffer, key=lambda r: r["key"])
    header = {"format": SHARD_FORMAT, "process": self.process_index, "count": len(recs),
              "keys": [r["key"] for r in recs], "errors": [r["key"] for r in recs if "error" in r]}
    lines = [_dumps(header)] + [_dumps(r) for r in recs]
    name = f"{self.prefix}-{len(self.files):06d}.jsonl"
    fs.write_bytes(fs.join(self.directory, name), ("\n".join(lines) + "\n").encode("ascii"))
    self.files.append(name)
    self.written += len(recs)
    self._buffer = []
    fault("shard.written")
    return name


def _read_header(path) -> dict:
  with fs.open_read(path, "rb") as f:
    line = f.readline()
  header = json.loads(line)
  if not isinstance(header, dict) or header.get("format") != SHARD_FORMAT:
    raise ValueError(f"{path}: not a zipjax shard file")
  return header


_KEY_PREFIX = '{"key": '
_DECODER = json.JSONDecoder()


def _line_key(line: str) -> str:
  """The key of a record line without decoding the whole line (records are written with "key" first)."""
  if line.startswith(_KEY_PREFIX):
    return _DECODER.raw_decode(line, len(_KEY_PREFIX))[0]
  return json.loads(line)["key"]


def _iter_lines(path, skip_header: bool):
  """(key, record line) of a sorted shard or merge run."""
  with fs.open_read(path, "rb") as f:
    if skip_header:
      f.readline()
    for raw in f:
      line = raw.decode("ascii").rstrip("\n")
      if line:
        yield _line_key(line), line


# ------------------------------------------------------------------------------------------------ run dir
class MergeStats:
  """Counts of a merge.

  Attributes:
    images: segmented images written to annotations.json.
    errors: images listed in errors.json.
    annotations: annotations written.
    per_class: annotations per category id.
    duplicates: records dropped because their key was already merged.
  """

  def __init__(self):
    self.images = 0
    self.errors = 0
    self.annotations = 0
    self.per_class: dict[int, int] = {}
    self.duplicates = 0
    self.first_errors: list[dict] = []

  def as_dict(self) -> dict:
    return {"images": self.images, "errors": self.errors, "annotations": self.annotations,
            "duplicates": self.duplicates}


class RunDir:
  """The output directory of a batch job (see the module docstring).

  Attributes:
    root: the output directory (a local path or a URL).
    state: `root/.zipjax`.
    shards_dir, attempts_dir, overlay_stage, commit_dir: folders under `state`.
  """

  OUTPUTS = ("errors.json", "results.json", "annotations.json", "run.json")

  def __init__(self, root):
    self.root = os.fspath(root)
    self.state = fs.join(self.root, STATE)
    self.shards_dir = fs.join(self.state, "shards")
    self.attempts_dir = fs.join(self.state, "attempts")
    self.overlay_stage = fs.join(self.state, "overlays")
    self.commit_dir = fs.join(self.state, "commit")
    self.overlays_dir = fs.join(self.root, "overlays")

  # ---------------------------------------------------------------------------------------------- basics
  def path(self, name: str) -> str:
    return fs.join(self.root, name)

  def lock(self, command: str):
    return DirLock(fs.join(self.state, "lock"), command=command)

  def read_job(self) -> dict | None:
    p = fs.join(self.state, "job.json")
    if not fs.exists(p):
      return None
    return json.loads(fs.read_bytes(p))

  def write_job(self, job: dict) -> None:
    fs.makedirs(self.state)
    fs.write_bytes(fs.join(self.state, "job.json"), (json.dumps(job, indent=1, sort_keys=True) + "\n").encode())

  def recover(self) -> dict:
    """Cleans what killed runs left: temporary files of atomic writes, an incomplete staging directory; rolls a
    committed merge forward. Call with the lock held, before anything else touches the directory."""
    cleaned = []
    for d in (self.root, self.overlays_dir, self.state, self.shards_dir, self.attempts_dir, self.overlay_stage,
              self.commit_dir):
      cleaned += [fs.join(d, n) for n in fs.clean_tmp(d)]
    rolled = False
    if fs.exists(fs.join(self.commit_dir, COMMIT_MARKER)):
      self._apply_commit()
      rolled = True
    elif fs.exists(self.commit_dir):
      fs.rmtree(self.commit_dir)
    return {"cleaned": cleaned, "rolled_forward": rolled}

  def reset(self, outputs: bool = True) -> None:
    """Forgets every finished image (shards, attempts, staged overlays, job identity); with `outputs`, also
    deletes the final outputs and overlays. The lock file is kept."""
    for d in (self.shards_dir, self.attempts_dir, self.overlay_stage, self.commit_dir):
      fs.rmtree(d)
    for name in ("job.json", "merged.json"):
      fs.remove(fs.join(self.state, name))
    if outputs:
      for name in self.OUTPUTS:
        fs.remove(self.path(name))
      if fs.isdir(self.overlays_dir):
        for name in fs.listdir(self.overlays_dir):
          if name.endswith(".png") or fs.is_tmp_name(name):
            fs.remove(fs.join(self.overlays_dir, name))

  # ---------------------------------------------------------------------------------------------- shards
  def writer(self, shard_size: int, process_index: int = 0, nonce: str | None = None) -> ShardWriter:
    return ShardWriter(self.shards_dir, f"{nonce or new_nonce()}-p{process_index:05d}", shard_size, process_index)

  def shard_names(self) -> list[str]:
    return [n for n in fs.listdir(self.shards_dir) if n.endswith(".jsonl") and not fs.is_tmp_name(n)]

  def iter_ledger(self):
    """(key, failed) of every finished image, shard by shard (header lines only)."""
    for name in self.shard_names():
      header = _read_header(fs.join(self.shards_dir, name))
      errors = set(header.get("errors", ()))
      for key in header["keys"]:
        yield key, key in errors

  def fingerprint(self) -> str:
    """sha256 of the sorted shard names (the shard set the outputs were merged from)."""
    return hashlib.sha256("\n".join(self.shard_names()).encode()).hexdigest()

  def is_complete(self, outputs=("annotations.json", "errors.json", "run.json")) -> bool:
    """Whether the final outputs exist and were merged from exactly the current shards."""
    p = fs.join(self.state, "merged.json")
    if fs.exists(fs.join(self.commit_dir, COMMIT_MARKER)) or not fs.exists(p):
      return False
    if json.loads(fs.read_bytes(p)).get("shards") != self.fingerprint():
      return False
    return all(fs.exists(self.path(n)) for n in outputs)

  def write_attempt(self, nonce: str, stats: dict) -> None:
    fs.makedirs(self.attempts_dir)
    fs.write_bytes(fs.join(self.attempts_dir, f"{nonce}.json"), (json.dumps(stats, sort_keys=True) + "\n").encode())

  def attempts(self) -> list[dict]:
    out = []
    for name in fs.listdir(self.attempts_dir):
      if name.endswith(".json") and not fs.is_tmp_name(name):
        out.append(json.loads(fs.read_bytes(fs.join(self.attempts_dir, name))))
    return out

  # ---------------------------------------------------------------------------------------------- merge
  def _sorted_runs(self, tmp: str) -> list:
    """Iterators over sorted (key, line) streams, at most FAN_IN of them (groups pre-merged into tmp files)."""
    paths = [(fs.join(self.shards_dir, n), True) for n in self.shard_names()]
    level = 0
    while len(paths) > FAN_IN:
      merged = []
      for g in range(0, len(paths), FAN_IN):
        group = paths[g:g + FAN_IN]
        out = os.path.join(tmp, f"run-{level}-{g // FAN_IN:06d}.jsonl")
        with open(out, "w", encoding="ascii") as f:
          for _, line in heapq.merge(*[_iter_lines(p, h) for p, h in group], key=lambda kv: kv[0]):
            f.write(line + "\n")
        merged.append((out, False))
      paths, level = merged, level + 1
    return [_iter_lines(p, h) for p, h in paths]

  def _merged_lines(self, tmp: str, stats: MergeStats | None = None):
    """(key, record line) of every finished record in key order, duplicate keys dropped (counted in `stats`)."""
    prev = None
    for key, line in heapq.merge(*self._sorted_runs(tmp), key=lambda kv: kv[0]):
      if key == prev:
        if stats is not None:
          stats.duplicates += 1
        continue
      prev = key
      yield key, line

  def records(self):
    """Every finished record, decoded, in key order (duplicate keys dropped), streamed like `merge` (one record
    per shard in memory): for jobs that assemble their own outputs from the shards."""
    tmp = tempfile.mkdtemp(prefix="zipjax-merge-")
    try:
      for _, line in self._merged_lines(tmp):
        yield json.loads(line)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)

  def merge(self, info: dict, names: list[str], run_info, *, results: bool = False, overlay_name=None,
            error_log_limit: int = 5) -> MergeStats:
    """Merges every shard into the final outputs and commits them (see the module docstring).

    Args:
      info: the `info` block of annotations.json (must not hold anything that varies between runs).
      names: class names (category id = 1 + index).
      run_info: `stats -> dict` written as run.json.
      results: also write results.json (a COCO results list; `zipjax segment`).
      overlay_name: `(image_id, record) -> overlay file name` when overlays are expected (`zipjax segment`);
        overlays not named this way are deleted from OUT/overlays at commit.
      error_log_limit: errors kept in `MergeStats.first_errors` (for the summary).

    Returns:
      the merge's counts.
    """
    if fs.exists(self.commit_dir):
      fs.rmtree(self.commit_dir)
    fs.makedirs(self.commit_dir)
    stats = MergeStats()
    cats = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)]
    expected_overlays = []
    tmp = tempfile.mkdtemp(prefix="zipjax-merge-")
    try:
      parts = {k: open(os.path.join(tmp, k), "w", encoding="ascii") for k in ("images", "annotations", "errors",
                                                                                  "results")}
      next_image = 1
      for _, line in self._merged_lines(tmp, stats):
        rec = json.loads(line)
        fault("merge.record")
        if "error" in rec:
          parts["errors"].write(("" if stats.errors == 0 else ",\n") + _dumps(rec["error"]))
          if len(stats.first_errors) < error_log_limit:
            stats.first_errors.append(rec["error"])
          stats.errors += 1
          continue
        image_id = rec.get("id", next_image)
        next_image += 1
        parts["images"].write(("" if stats.images == 0 else ", ") + _dumps({"id": image_id, **rec["image"]}))
        stats.images += 1
        if overlay_name is not None:
          expected_overlays.append(overlay_name(image_id, rec))
        for a in rec["annotations"]:
          stats.annotations += 1
          stats.per_class[a["category_id"]] = stats.per_class.get(a["category_id"], 0) + 1
          sep = "" if stats.annotations == 1 else ", "
          parts["annotations"].write(sep + _dumps({"id": stats.annotations, "image_id": image_id, **a}))
          if results:
            parts["results"].write(sep + _dumps({
                "image_id": image_id, "category_id": a["category_id"],
                "category_name": names[a["category_id"] - 1], "segmentation": a["segmentation"],
                "bbox": a["bbox"], "score": a["score"]}))
      for f in parts.values():
        f.close()

      def copy(src, dst):
        with open(os.path.join(tmp, src), "rb") as f:
          shutil.copyfileobj(f, dst, 1 << 20)

      with fs.atomic_stream(fs.join(self.commit_dir, "annotations.json")) as out:
        out.write(('{"info": ' + _dumps(info) + ', "images": [').encode())
        copy("images", out)
        out.write(b'], "annotations": [')
        copy("annotations", out)
        out.write(('], "categories": ' + _dumps(cats) + "}\n").encode())
      with fs.atomic_stream(fs.join(self.commit_dir, "errors.json")) as out:
        out.write(b"[\n" if stats.errors else b"[")
        copy("errors", out)
        out.write(b"\n]\n" if stats.errors else b"]\n")
      files = ["errors.json", "annotations.json"]
      if results:
        with fs.atomic_stream(fs.join(self.commit_dir, "results.json")) as out:
          out.write(b"[")
          copy("results", out)
          out.write(b"]\n")
        files.insert(1, "results.json")
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    fs.write_bytes(fs.join(self.commit_dir, "run.json"),
                   (json.dumps(run_info(stats), indent=1, allow_nan=False) + "\n").encode())
    files.append("run.json")
    if overlay_name is not None:
      fs.write_bytes(fs.join(self.commit_dir, "overlays.txt"), ("\n".join(expected_overlays) + "\n").encode())
    marker = {"files": files, "overlays": overlay_name is not None, "shards": self.fingerprint()}
    fs.write_bytes(fs.join(self.commit_dir, COMMIT_MARKER), (json.dumps(marker) + "\n").encode())
    self._apply_commit()
    return stats

  def _apply_commit(self) -> None:
    """Moves the staged outputs into place (idempotent: a killed commit is finished by calling it again)."""
    marker = json.loads(fs.read_bytes(fs.join(self.commit_dir, COMMIT_MARKER)))
    files = marker["files"]
    staged = [f for f in files if fs.exists(fs.join(self.commit_dir, f))]
    # (1) every old output that is about to be replaced goes first: old and new files never coexist
    for f in staged:
      fs.remove(self.path(f))
    for f in self.OUTPUTS:
      if f not in files:  # an output this run does not produce (e.g. results.json of an earlier segment run)
        fs.remove(self.path(f))
    # (2) overlays: delete the stale ones, move the staged ones in
    if marker["overlays"] or fs.isdir(self.overlays_dir):
      expected = set()
      if marker["overlays"]:
        text = fs.read_bytes(fs.join(self.commit_dir, "overlays.txt")).decode()
        expected = {n for n in text.split("\n") if n}
      for name in fs.listdir(self.overlays_dir):
        if name not in expected and (name.endswith(".png") or fs.is_tmp_name(name)):
          fs.remove(fs.join(self.overlays_dir, name))
      if expected:
        fs.makedirs(self.overlays_dir)
        for name in sorted(expected):
          src = fs.join(self.overlay_stage, name)
          if fs.exists(src):
            fs.move(src, fs.join(self.overlays_dir, name))
    # (3) the new outputs, annotations.json and run.json last
    for f in staged:
      fs.move(fs.join(self.commit_dir, f), self.path(f))
      fault("commit.file")
    fs.write_bytes(fs.join(self.state, "merged.json"), (json.dumps({"shards": marker["shards"]}) + "\n").encode())
    # (4) done
    fs.rmtree(self.commit_dir)
    fs.rmtree(self.overlay_stage)


__all__ = ["SHARD_FORMAT", "STATE", "FAN_IN", "fault", "instance_annotation", "image_record",
           "error_record", "new_nonce", "ShardWriter", "MergeStats", "RunDir"]
