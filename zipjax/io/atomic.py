"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial file.

Each writer puts the data in a temporary file in the destination's directory (same filesystem), flushes and
fsyncs it, then `os.replace`s it onto the destination and fsyncs the directory. On any error the temporary
file is removed and the destination is left untouched.
"""
from __future__ import annotations

import json
import os
import tempfile

_DEFAULT_MODE = 0o644


def _mode_of(path: str) -> int:
  """The permission bits a replacement of `path` keeps (the existing file's, else the default)."""
  try:
    return os.stat(path).st_mode & 0o7777
  except FileNotFoundError:
    return _DEFAULT_MODE


def atomic_write_bytes(path, data: bytes) -> str:
  """Writes `data` to `path` atomically.

  Args:
    path: destination file; its parent directory is created if missing.
    data: the complete file contents.

  Returns:
    The absolute destination path.
  """
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  mode = _mode_of(path)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fchmod(f.fileno(), mode)
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise
  _fsync_dir(parent)
  return path


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> str:
  """Writes the string `text` to `path` atomically (see `atomic_write_bytes`)."""
  return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path, obj, indent: int | None = 1, sort_keys: bool = False) -> str:
  """Serialises `obj` as JSON (NaN and infinities refused) and writes it to `path` atomically.

  The object is serialised completely before anything touches the disk, so an unserialisable object
  raises without creating or changing any file.
  """
  text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
  return atomic_write_text(path, text)


def atomic_write_many(files) -> list[str]:
  """Writes several files atomically with one flush to disk for all of them (many small files: a gallery's
  thumbnails and pages).

  Every file is written to a temporary file beside its destination; then one `os.sync()` makes all of them
  durable (where `os.sync` is missing, each is fsynced), they are renamed onto their destinations in order, and
  each parent directory is fsynced once. A reader sees, for each destination, the old file or the complete new
  one; a crash part-way through the renames leaves some destinations new and some old, never a partial file.
  Per file this costs no fsync of its own, where `atomic_write_bytes` costs two (file and directory).

  Args:
    files: iterable of (path, bytes).

  Returns:
    The absolute destination paths, in order.
  """
  items = [(os.path.abspath(os.fspath(p)), bytes(d)) for p, d in files]
  tmps: list[str] = []
  try:
    for path, data in items:
      parent = os.path.dirname(path)
      os.makedirs(parent, exist_ok=True)
      mode = _mode_of(path)
      fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=parent)
      tmps.append(tmp)
      with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), mode)
        if not hasattr(os, "sync"):
          os.fsync(f.fileno())
    if items and hasattr(os, "sync"):
      os.sync()
    for (path, _), tmp in zip(items, tmps):
      os.replace(tmp, path)
  except BaseException:
    for tmp in tmps:
      try:
        os.unlink(tmp)
      except FileNotFoundError:
        pass
    raise
  for parent in dict.fromkeys(os.path.dirname(p) for p, _ in items):
    _fsync_dir(parent)
  return [p for p, _ in items]


def _fsync_dir(path: str) -> None:
  """Makes a rename in directory `path` durable (best effort: some filesystems refuse directory fsync)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
