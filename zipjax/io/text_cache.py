"""Package prompt templates and the on-disk cache of prompt-ensemble text features.

The cache holds one append-only file per (text model, templates), `<cache>/text/<key>.bin`: a magic header,
then one record per class name:

  u32 name length (bytes) | u32 feature dim D | u32 CRC-32 of (name bytes + feature bytes) | name (UTF-8) |
  float32[D] (little endian)

so a class costs its own bytes (a 10,000-character name costs ~10 KB, not a fixed-width column for every
row), and storing a new class appends its record instead of rewriting the file. `store` appends under an
exclusive `flock` (concurrent runs do not interleave records or add a name twice); a record torn by a kill
fails its length or CRC check, is ignored by `load`, and is cut off by the next `store`. The key hashes the
model's identity (`model_key`) and the template list. (Older zipjax versions wrote `<key>.npz` with a
fixed-width name column; those files are not read.)
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import struct
import zlib
from importlib import resources

import numpy as np

from zipjax.io.fs import cache_dir

MAGIC = b"ZJTXTv1\n"
_HEAD = struct.Struct("<III")  # name length, dim, crc32


def prompt_templates() -> list[str]:
  """The 85 prompt templates (80 CLIP ImageNet + 5 scene) shipped in zipjax/assets/prompt_templates.json."""
  text = resources.files("zipjax").joinpath("assets/prompt_templates.json").read_text(encoding="utf-8")
  return list(json.loads(text)["templates"])


def model_key(name: str, config: dict) -> str:
  """Identity of a text model: its source (with size and mtime when it is a file or directory) + config."""
  ident = {"name": name, "config": config}
  if name and os.path.exists(name):
    st = os.stat(name)
    ident.update(path=os.path.abspath(name), size=st.st_size, mtime=st.st_mtime_ns)
  return json.dumps(ident, sort_keys=True, default=str)


def _encode_name(name: str) -> bytes:
  return name.encode("utf-8", "surrogatepass")


def encode_record(name: str, feature: np.ndarray) -> bytes:
  """One record (see the module docstring)."""
  raw = _encode_name(name)
  data = np.ascontiguousarray(feature, dtype="<f4").reshape(-1).tobytes()
  return _HEAD.pack(len(raw), len(data) // 4, zlib.crc32(raw + data)) + raw + data


def parse_records(buf: bytes) -> tuple[dict[str, np.ndarray], int]:
  """(name -> float32 [D] in file order, first name wins; byte length of the valid prefix). Parsing stops at
  a bad header or the first incomplete or corrupt record."""
  if not buf.startswith(MAGIC):
    return {}, 0
  out: dict[str, np.ndarray] = {}
  pos = len(MAGIC)
  while pos + _HEAD.size <= len(buf):
    n, dim, crc = _HEAD.unpack_from(buf, pos)
    end = pos + _HEAD.size + n + 4 * dim
    if end > len(buf):
      break
    body = buf[pos + _HEAD.size:end]
    if zlib.crc32(body) != crc:
      break
    name = body[:n].decode("utf-8", "surrogatepass")
    if name not in out:
      out[name] = np.frombuffer(body[n:], "<f4").astype(np.float32)
    pos = end
  return out, pos


class TextFeatureCache:
  """Text features per (model, templates) on disk, append-only.

  Attributes:
    path: the record file.
  """

  def __init__(self, model: str, templates: list[str], directory: str | None = None):
    h = hashlib.sha256((model + "\0" + "\0".join(templates)).encode("utf-8")).hexdigest()[:24]
    self.path = os.path.join(directory or os.path.join(cache_dir(), "text"), f"{h}.bin")

  def load(self) -> dict[str, np.ndarray]:
    """name -> float32 [D]; an unreadable file or a torn tail counts as missing entries (recomputed)."""
    try:
      with open(self.path, "rb") as f:
        return parse_records(f.read())[0]
    except OSError:
      return {}

  def store(self, features: dict[str, np.ndarray]) -> int:
    """Appends the names of `features` that the file does not hold yet; returns how many were appended.

    Under an exclusive lock: re-reads the file (another run may have appended), cuts off a torn or corrupt
    tail, writes the new records in one write, fsyncs. A cache that cannot be written is no reason to fail a
    run: OSErrors are swallowed (the features are simply recomputed next time).
    """
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
      return 0
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      size = os.fstat(fd).st_size
      buf = os.pread(fd, size, 0) if size else b""
      held, valid = parse_records(buf)
      new = [n for n in features if n not in held]
      if not new:
        return 0
      payload = b"".join(encode_record(n, features[n]) for n in new)
      if valid == 0:  # empty, or not our format (e.g. garbage): start over
        payload = MAGIC + payload
      if valid != size:
        os.ftruncate(fd, valid)
      view, pos = memoryview(payload), valid
      while view:
        written = os.pwrite(fd, view, pos)
        view, pos = view[written:], pos + written
      os.fsync(fd)
      return len(new)
    except OSError:
      return 0
    finally:
      os.close(fd)  # releases the lock


__all__ = ["prompt_templates", "model_key", "encode_record", "parse_records", "TextFeatureCache"]
