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
  try:
    mode = os.stat(path).st_mode & 0o7777
  except FileNotFoundError:
    mode = _DEFAULT_MODE
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
