"""Converted checkpoints, torch-free and pickle-free to read, in one of two formats:

  * "dir": a directory with `config.json` and `params.npz` (the default);
  * "safetensors": one `.safetensors` file whose tensors are the Flax variables ('params/visual/conv1/kernel')
    and whose `__metadata__` holds `format` = "zipjax", `format_version`, `family`, `config` (JSON) and
    `source`. `load_converted` reads both, bit for bit.

Writing is atomic: everything goes into a temporary sibling that is renamed onto DST at the end, so an
interrupted conversion never leaves a half-written DST.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile

import numpy as np
from safetensors.numpy import save_file

from zipjax.convert.torch_io import read_safetensors
from zipjax.errors import CheckpointError
from zipjax.models.tree import flatten, unflatten

# usual weight files of a model folder (a Hub snapshot, a `save_pretrained` output), by family, in order
HUB_FILES = {
    "clip": ("open_clip_model.safetensors", "model.safetensors", "model.safetensors.index.json",
             "open_clip_pytorch_model.bin", "pytorch_model.bin"),
    "sam": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
    "sam2": ("model.safetensors", "model.safetensors.index.json"),
}


def checkpoint_file(src: str, family: str) -> str:
  """`src` itself, or for a model folder (a Hub snapshot, a `save_pretrained` output) the first of the family's
  usual weight files in it (`HUB_FILES`)."""
  if not os.path.isdir(src):
    return src
  for name in HUB_FILES[family]:
    if os.path.isfile(os.path.join(src, name)):
      return os.path.join(src, name)
  raise CheckpointError(f"{src}: directory is not a converted zipjax checkpoint (config.json + params.npz), "
                        f"nor a model folder holding one of {', '.join(HUB_FILES[family])}")


def side_json(src: str, name: str) -> dict | None:
  """The JSON object `name` beside the checkpoint file `src` (a model folder's config.json), or None when it is
  absent, unreadable or not an object."""
  path = os.path.join(os.path.dirname(os.path.abspath(src)), name)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (OSError, ValueError):
    return None
  return out if isinstance(out, dict) else None


FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.npz"
FORMATS = ("dir", "safetensors")


def is_converted_dir(path) -> bool:
  """A directory with config.json and params.npz (a Hugging Face model folder has a config.json too)."""
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE)) and \
      os.path.isfile(os.path.join(path, PARAMS_FILE))


def _safetensors_meta(path) -> dict | None:
  """The zipjax metadata of a converted safetensors file, None for any other file (reads the header only)."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        return None
      n = int.from_bytes(head, "little")
      if not 2 <= n <= min(100 << 20, os.fstat(f.fileno()).st_size - 8):
        return None
      header = json.loads(f.read(n).decode("utf-8"))
  except (OSError, UnicodeDecodeError, ValueError):
    return None
  meta = header.get("__metadata__") if isinstance(header, dict) else None
  return meta if isinstance(meta, dict) and meta.get("format") == "zipjax" else None


def is_converted(path) -> bool:
  """A converted directory, or a safetensors file written by `save_converted(..., fmt='safetensors')`."""
  path = os.fspath(path)
  return is_converted_dir(path) or (os.path.isfile(path) and _safetensors_meta(path) is not None)


def converted_family(path) -> str | None:
  """The family a converted checkpoint (directory or safetensors file) declares, None when it is not one or
  its metadata cannot be read (reads config.json / the safetensors header only)."""
  path = os.fspath(path)
  if os.path.isfile(path):
    meta = _safetensors_meta(path)
    return None if meta is None else meta.get("family")
  if not is_converted_dir(path):
    return None
  try:
    with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta.get("family") if isinstance(meta, dict) else None


def check_destination(dst, family: str) -> None:
  """Refuses a `dst` that a conversion of `family` must not replace: an existing file or directory that is not
  a converted checkpoint, or a converted checkpoint of another family (or of unknown family).

  Raises:
    CheckpointError: naming `dst` and what it holds.
  """
  dst = os.fspath(dst)
  if not os.path.lexists(dst):
    return
  if os.path.isfile(dst) and not os.path.islink(dst) and _safetensors_meta(dst) is not None:
    held = _safetensors_meta(dst).get("family")
  elif not (os.path.isdir(dst) and os.path.isfile(os.path.join(dst, CONFIG_FILE))) or os.path.islink(dst):
    raise CheckpointError(f"{dst}: exists and is not a zipjax converted checkpoint; refusing to overwrite")
  else:
    try:
      with open(os.path.join(dst, CONFIG_FILE), encoding="utf-8") as f:
        held = json.load(f).get("family")
    except (OSError, ValueError, AttributeError) as e:
      raise CheckpointError(f"{dst}: holds a converted checkpoint whose {CONFIG_FILE} cannot be read ({e}); "
                            "refusing to overwrite it (remove it first)") from e
  if held != family:
    raise CheckpointError(f"{dst}: holds a converted {held!r} checkpoint; refusing to replace it with a "
                          f"{family!r} one (choose another destination, or remove it first)")


def save_converted(dst, family: str, config: dict, variables: dict, source: str = "", fmt: str = "dir") -> str:
  """Writes `variables` (nested numpy) and `config` to `dst` (a directory, or with fmt='safetensors' one
  file), atomically. An existing converted checkpoint of the same family is replaced; anything else at `dst`
  is refused (`check_destination`)."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown converted format {fmt!r}; known: {', '.join(FORMATS)}")
  dst = os.path.abspath(os.fspath(dst))
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  check_destination(dst, family)
  if os.path.lexists(dst) and os.path.isdir(dst) != (fmt == "dir"):
    raise CheckpointError(f"{dst}: holds a converted checkpoint in the other format "
                          f"({'directory' if os.path.isdir(dst) else 'safetensors file'}); refusing to replace it "
                          f"with a {fmt} one (remove it first)")
  if fmt == "safetensors":
    return _save_safetensors(dst, family, config, variables, source)
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


def _save_safetensors(dst: str, family: str, config: dict, variables: dict, source: str) -> str:
  meta = {"format": "zipjax", "format_version": str(FORMAT_VERSION), "family": family,
          "config": json.dumps(config, sort_keys=True), "source": source}
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst) + ".tmp-", dir=os.path.dirname(dst))
  os.close(fd)
  try:
    flat = {k: np.asarray(v) for k, v in flatten(variables).items()}
    save_file({k: v if v.flags.c_contiguous else np.array(v, order="C") for k, v in flat.items()}, tmp,
              metadata=meta)  # (ascontiguousarray would make 0-d arrays 1-d)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, dst)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return dst


def _load_safetensors(path: str, family: str | None, leaf_filter) -> tuple[dict, dict]:
  meta = _safetensors_meta(path) or {}
  if meta.get("format_version") != str(FORMAT_VERSION):
    raise CheckpointError(f"{path}: unknown zipjax format_version {meta.get('format_version')!r}")
  if family is not None and meta.get("family") != family:
    raise CheckpointError(f"{path}: is a converted {meta.get('family')!r} checkpoint, expected {family!r}")
  try:
    config = json.loads(meta["config"])
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"{path}: converted safetensors file without a readable config ({e})") from e
  keep = leaf_filter.keeps if leaf_filter is not None else None
  tensors, _ = read_safetensors(path, keep=keep)
  if leaf_filter is not None:
    tensors = {k: leaf_filter(k, v) for k, v in tensors.items()}
  return config, unflatten(tensors)


def load_converted(path, family: str | None = None, leaf_filter=None) -> tuple[dict, dict]:
  """Reads a converted directory or safetensors file -> (config, variables). Checks the family when given.
  `leaf_filter` (`zipjax.models.storage.LeafFilter`) drops or casts each leaf as it is read (dropped ones
  are not read)."""
  path = os.fspath(path)
  if os.path.isfile(path) and _safetensors_meta(path) is not None:
    return _load_safetensors(path, family, leaf_filter)
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
