"""Converted checkpoints: a directory with `config.json` and `params.npz` (torch-free to read).

Writing is atomic: everything goes into a temporary sibling directory that is renamed onto DST at the end,
so an interrupted conversion never leaves a half-written DST.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile

import numpy as np

from zipjax.convert.core import flatten, unflatten
from zipjax.errors import CheckpointError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.npz"


def is_converted_dir(path) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def check_destination(dst, family: str) -> None:
  """Refuses a `dst` that a conversion of `family` must not replace: an existing file or directory that is not
  a converted checkpoint, or a converted checkpoint of another family (or of unknown family).

  Raises:
    CheckpointError: naming `dst` and what it holds.
  """
  dst = os.fspath(dst)
  if not os.path.lexists(dst):
    return
  if not is_converted_dir(dst):
    raise CheckpointError(f"{dst}: exists and is not a zipjax converted checkpoint; refusing to overwrite")
  try:
    with open(os.path.join(dst, CONFIG_FILE), encoding="utf-8") as f:
      held = json.load(f).get("family")
  except (OSError, ValueError, AttributeError) as e:
    raise CheckpointError(f"{dst}: holds a converted checkpoint whose {CONFIG_FILE} cannot be read ({e}); "
                          "refusing to overwrite it (remove it first)") from e
  if held != family:
    raise CheckpointError(f"{dst}: holds a converted {held!r} checkpoint; refusing to replace it with a "
                          f"{family!r} one (choose another destination, or remove it first)")


def save_converted(dst, family: str, config: dict, variables: dict, source: str = "") -> str:
  """Writes `variables` (nested numpy) and `config` to the directory `dst`, atomically. An existing converted
  checkpoint of the same family is replaced; anything else at `dst` is refused (`check_destination`)."""
  dst = os.path.abspath(os.fspath(dst))
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  check_destination(dst, family)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".tmp-", dir=parent)
  try:
    flat = flatten(variables)
    with open(os.path.join(tmp, PARAMS_FILE), "wb") as f:
      np.savez(f, **flat)
      f.flush()
      os.fsync(f.fileno())
    meta = {"format_version": FORMAT_VERSION, "family": family, "config": config, "source": source}
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    if os.path.exists(dst):
      old = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".old-", dir=parent)
      os.rename(dst, os.path.join(old, "x"))
      os.rename(tmp, dst)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dst


def load_converted(path, family: str | None = None, leaf_filter=None) -> tuple[dict, dict]:
  """Reads a converted directory -> (config, variables). Checks the family when given. `leaf_filter`
  (`zipjax.models.storage.LeafFilter`) drops or casts each leaf as it is read (dropped ones are not read)."""
  path = os.fspath(path)
  cfg_path = os.path.join(path, CONFIG_FILE)
  try:
    with open(cfg_path) as f:
      meta = json.load(f)
  except FileNotFoundError as e:
    raise CheckpointError(f"{path}: not a converted checkpoint directory (no {CONFIG_FILE})") from e
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_path}: corrupt JSON: {e}") from e
  if meta.get("format_version") != FORMAT_VERSION:
    raise CheckpointError(f"{cfg_path}: unknown format_version {meta.get('format_version')!r}")
  if family is not None and meta.get("family") != family:
    raise CheckpointError(f"{path}: is a converted {meta.get('family')!r} checkpoint, expected {family!r}")
  try:
    with np.load(os.path.join(path, PARAMS_FILE), allow_pickle=False) as z:
      flat = {}
      for k in z.files:
        if leaf_filter is None:
          flat[k] = z[k]
        elif leaf_filter.keeps(k):
          flat[k] = leaf_filter(k, z[k])
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise CheckpointError(f"{os.path.join(path, PARAMS_FILE)}: cannot be read ({e})") from e
  return meta["config"], unflatten(flat)
