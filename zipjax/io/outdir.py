"""Output locations checked up front: a command finds out that it cannot write its outputs before it loads a
model or computes anything, and says why in one line (`InputError`, exit 2).

- `check_output_dir(path)`: `path` must be (or become) a writable directory. An existing path must be a
  directory; otherwise its nearest existing ancestor must be a directory (not a file: "below a file"). With
  `create=True` (`zipjax segment --out`) the directory is created; with `create=False` (`zipjax eval --out`,
  which writes only at the end and leaves nothing behind on bad input) nothing is created.
- `check_output_parent(path)`: for a destination that is itself replaced atomically (`zipjax convert DST`):
  its parent must be a writable directory, and `path` must not be a file.

Writability is tested, not guessed from permission bits: a probe file (or, without `create`, a probe
directory in the nearest existing ancestor) is created and removed at once. That catches read-only
directories and mounts, virtual filesystems such as /proc and /sys, and works for root, to whom permission
bits do not apply.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from zipjax.errors import InputError

_PROBE_PREFIX = ".zipjax-write-probe-"


def _why(e: OSError) -> str:
  return e.strerror or type(e).__name__


def _nearest_existing(path: str) -> str:
  parent = os.path.dirname(path)
  while not os.path.lexists(parent):
    up = os.path.dirname(parent)
    if up == parent:
      break
    parent = up
  return parent


def _probe_file(directory: str, where: str) -> None:
  try:
    fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=directory)
  except OSError as e:
    raise InputError(f"{where}: directory {directory} is not writable ({_why(e)})") from None
  os.close(fd)
  os.unlink(probe)


def _probe_dir(directory: str, where: str) -> None:
  try:
    probe = tempfile.mkdtemp(prefix=_PROBE_PREFIX, dir=directory)
  except OSError as e:
    raise InputError(f"{where}: cannot create anything in {directory} ({_why(e)})") from None
  shutil.rmtree(probe, ignore_errors=True)


def _check_ancestor(abspath: str, where: str) -> str:
  ancestor = _nearest_existing(abspath)
  if not os.path.isdir(ancestor):
    kind = "a broken symbolic link" if os.path.islink(ancestor) and not os.path.exists(ancestor) else \
        "a file, not a directory"
    raise InputError(f"{where}: {ancestor} is {kind}, so nothing can be created below it")
  return ancestor


def check_output_dir(path, flag: str = "--out", create: bool = True) -> str:
  """Checks that `path` is, or can become, a writable directory; returns its absolute path.

  Args:
    path: the output directory.
    flag: how the user gave it (for messages), e.g. '--out'.
    create: create the directory (and its parents) now.

  Raises:
    InputError: `path` is a file or a broken link, lies below a file, or cannot be created or written.
  """
  path = os.fspath(path)
  where = f"{flag} {path}"
  if not path:
    raise InputError(f"{flag}: empty path")
  abspath = os.path.abspath(path)
  if os.path.lexists(abspath):
    if not os.path.isdir(abspath):
      kind = "a broken symbolic link" if os.path.islink(abspath) and not os.path.exists(abspath) else \
          "an existing file, not a directory"
      raise InputError(f"{where}: is {kind}")
    _probe_file(abspath, where)
    return abspath
  ancestor = _check_ancestor(abspath, where)
  if not create:
    _probe_dir(ancestor, where)
    return abspath
  try:
    os.makedirs(abspath, exist_ok=True)
  except OSError as e:
    raise InputError(f"{where}: cannot create the directory ({_why(e)})") from None
  _probe_file(abspath, where)
  return abspath


def check_output_parent(path, flag: str = "DST", file_ok: bool = False) -> str:
  """Checks that `path` can be created or replaced as a whole (its parent is a writable directory, or can be
  created below the nearest existing directory) and is not an existing file (unless `file_ok`: the output is
  a file, which the caller checks); returns its absolute path.

  Raises:
    InputError: as `check_output_dir`, for the parent; or `path` is an existing file.
  """
  path = os.fspath(path)
  where = f"{flag} {path}"
  if not path:
    raise InputError(f"{flag}: empty path")
  abspath = os.path.abspath(path)
  if os.path.lexists(abspath) and not os.path.isdir(abspath) and not file_ok:
    raise InputError(f"{where}: is an existing file, not a directory")
  _probe_dir(_check_ancestor(abspath, where), where)
  return abspath


__all__ = ["check_output_dir", "check_output_parent"]
