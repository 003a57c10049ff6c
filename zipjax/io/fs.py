"""Paths that may be local or in a bucket (`gs://...`), for run directories and shard files.

Local paths go through `os` (atomic writes by temporary file + `os.replace` + fsync, see `zipjax/io/atomic.py`);
other URLs (`gs://bucket/dir`, anything `etils.epath` understands) go through `etils.epath`. An object in a
bucket appears only once its upload completes, so a plain write there is already all-or-nothing; renames in a
bucket are copy + delete, which is why the run directory's commit protocol (`zipjax/io/shards.py`) never relies
on a rename being atomic, only on each file being complete or absent.

Functions take and return strings (`join` builds them), so callers never mix `pathlib` and `epath` objects.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid

from etils import epath

from zipjax.io.atomic import _fsync_dir, atomic_write_bytes

TMP_MARK = ".tmp-"  # temporary files are named `.<name>.tmp-<random>` (zipjax/io/atomic.py does the same)


def cache_dir() -> str:
  """zipjax's cache root (weights, converted checkpoints, text features, XLA executables): `$ZIPJAX_CACHE` or
  ~/.cache/zipjax."""
  return os.environ.get("ZIPJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zipjax")


def is_local(path) -> bool:
  """False for URLs such as `gs://b/x`; True for plain paths."""
  return "://" not in os.fspath(path)


def _epath(path):
  return epath.Path(os.fspath(path))


def join(path, *parts) -> str:
  path = os.fspath(path)
  if is_local(path):
    return os.path.join(path, *parts)
  return "/".join([path.rstrip("/"), *parts])


def basename(path) -> str:
  return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path) -> bool:
  return os.path.exists(path) if is_local(path) else _epath(path).exists()


def isdir(path) -> bool:
  return os.path.isdir(path) if is_local(path) else _epath(path).is_dir()


def isfile(path) -> bool:
  return os.path.isfile(path) if is_local(path) else _epath(path).is_file()


def makedirs(path) -> None:
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    _epath(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> list[str]:
  """Sorted entry names of a directory; [] when it does not exist."""
  if is_local(path):
    try:
      return sorted(os.listdir(path))
    except FileNotFoundError:
      return []
  p = _epath(path)
  if not p.exists():
    return []
  return sorted(c.name for c in p.iterdir())


def remove(path) -> bool:
  """Deletes a file; False when it was already gone."""
  try:
    if is_local(path):
      os.unlink(path)
    else:
      p = _epath(path)
      if not p.exists():
        return False
      p.unlink()
    return True
  except FileNotFoundError:
    return False


def rmtree(path) -> None:
  if is_local(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    p = _epath(path)
    if p.exists():
      p.rmtree()


def move(src, dst) -> None:
  """Moves a file onto `dst` (replacing it): atomic on a local filesystem, copy + delete in a bucket."""
  if is_local(src):
    os.replace(src, dst)
  else:
    _epath(src).rename(_epath(dst))


def read_bytes(path) -> bytes:
  if is_local(path):
    with open(path, "rb") as f:
      return f.read()
  return _epath(path).read_bytes()


def open_read(path, mode: str = "rb"):
  return open(path, mode) if is_local(path) else _epath(path).open(mode)


def write_bytes(path, data: bytes) -> None:
  """Complete-or-absent write (local: temporary file + replace + fsync; bucket: one upload)."""
  if is_local(path):
    atomic_write_bytes(path, data)
  else:
    _epath(path).write_bytes(data)


@contextlib.contextmanager
def atomic_stream(path, mode: str = "wb"):
  """A file object whose contents appear at `path` only when the block exits without an error.

  Local: a temporary file next to `path`, fsynced and `os.replace`d onto it; removed on error. Bucket: the
  upload is made under a temporary name and moved onto `path` at the end (copy + delete), so a reader never
  sees a partial object at `path`.
  """
  if is_local(path):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + TMP_MARK, dir=parent)
    try:
      with os.fdopen(fd, mode) as f:
        yield f
        f.flush()
        os.fchmod(f.fileno(), 0o644)
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
      raise
    _fsync_dir(parent)
  else:
    head, name = os.fspath(path).rstrip("/").rsplit("/", 1)
    tmp = f"{head}/.{name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
      with _epath(tmp).open(mode) as f:
        yield f
      move(tmp, path)
    except BaseException:
      remove(tmp)
      raise


def is_tmp_name(name: str) -> bool:
  """Whether `name` is a leftover temporary file of an atomic write (`.<name>.tmp-<random>`)."""
  return name.startswith(".") and TMP_MARK in name


def clean_tmp(directory) -> list[str]:
  """Removes leftover temporary files of killed atomic writes in `directory` (not recursive) -> their names."""
  gone = []
  for name in listdir(directory):
    if is_tmp_name(name) and remove(join(directory, name)):
      gone.append(name)
  return gone


__all__ = ["cache_dir", "is_local", "join", "basename", "exists", "isdir", "isfile", "makedirs", "listdir", "remove", "rmtree",
           "move", "read_bytes", "open_read", "write_bytes", "atomic_stream", "is_tmp_name", "clean_tmp"]
