"""Checkpoint names -> local weights: manifest lookup, cache, download with progress, sha256, convert once.

`resolve(name_or_path, family)` returns something `load_clip` / `load_sam` accept:

1. an existing file or directory is returned as is;
2. otherwise the name is looked up in `checkpoints/manifest.json` (by `name` or `file`); the converted
   directory `<cache>/converted/<file stem>` is returned when present;
3. otherwise the published file `<cache>/downloads/<file>` is converted into it (once); when that file is
   missing it is downloaded from the manifest URL with a progress bar (to a temporary file, renamed when
   complete) and its sha256 checked when the manifest knows it (`"sha256": null` entries are not checked).

`<cache>` is `$ZIPJAX_CACHE` or ~/.cache/zipjax. With `ZIPJAX_OFFLINE=1`, or when the download fails, the
error names the file to download and the path to put it at.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request

from zipjax.errors import CheckpointError

# zipjax/assets/manifest.json links to checkpoints/manifest.json; a built wheel carries a copy of it.
MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "manifest.json")


def cache_dir() -> str:
  return os.environ.get("ZIPJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zipjax")


def manifest(path: str | None = None) -> list[dict]:
  path = path or os.environ.get("ZIPJAX_MANIFEST") or MANIFEST
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)["checkpoints"]
  except (OSError, ValueError, KeyError) as e:
    raise CheckpointError(f"{path}: cannot read the checkpoint manifest ({e})") from e


def lookup(name: str, family: str | None = None, path: str | None = None) -> dict:
  """The manifest entry whose `name` or `file` is `name` (and of `family` when given)."""
  entries = [e for e in manifest(path) if family is None or e["family"] == family]
  for e in entries:
    if name in (e["name"], e["file"]):
      return e
  known = ", ".join(e["name"] for e in entries)
  raise CheckpointError(f"{name!r} is neither an existing file/directory nor a known {family or ''} checkpoint "
                        f"name (known: {known})")


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def _download(url: str, dst: str) -> None:
  """Downloads `url` to `dst` via a temporary file in the same directory, with a tqdm progress bar."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst) + ".part-", dir=os.path.dirname(dst))
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
      total = int(resp.headers.get("Content-Length") or 0) or None
      with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dst)) as bar:
        for block in iter(lambda: resp.read(1 << 20), b""):
          out.write(block)
          bar.update(len(block))
    os.replace(tmp, dst)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def fetch(entry: dict, downloader=_download) -> str:
  """The published file of a manifest entry in the cache, downloaded and verified if needed -> its path."""
  dst = os.path.join(cache_dir(), "downloads", entry["file"])
  how = (f"download {entry['url']} and put it at {dst} (or set ZIPJAX_CACHE to a folder that has "
         f"downloads/{entry['file']})")
  if not os.path.isfile(dst):
    if os.environ.get("ZIPJAX_OFFLINE", "") not in ("", "0"):
      raise CheckpointError(f"checkpoint {entry['name']!r} is not in the cache and ZIPJAX_OFFLINE is set: {how}")
    try:
      downloader(entry["url"], dst)
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot download checkpoint {entry['name']!r} ({type(e).__name__}: {e}); "
                            f"{how}") from e
  want = entry.get("sha256")
  if want:
    got = sha256_file(dst)
    if got != want:
      raise CheckpointError(f"{dst}: sha256 {got} does not match the manifest's {want} for {entry['name']!r}; "
                            f"delete the file and {how}")
  return dst


def resolve(name_or_path: str, family: str, downloader=_download) -> str:
  """A local path for `load_clip` (family 'clip') or `load_sam` (family 'sam'); see the module docstring."""
  src = os.path.expanduser(os.fspath(name_or_path))
  if os.path.exists(src):
    return src
  entry = lookup(name_or_path, family)
  stem = os.path.splitext(entry["file"])[0]
  converted = os.path.join(cache_dir(), "converted", stem)
  from zipjax.convert.store import is_converted_dir  # pylint: disable=import-outside-toplevel
  if is_converted_dir(converted):
    return converted
  raw = fetch(entry, downloader)
  from zipjax.convert import get_converter  # pylint: disable=import-outside-toplevel
  try:
    convert = get_converter(family)
  except KeyError:
    return raw  # no converter registered for this family: load the published file directly
  convert(raw, converted)
  return converted


def describe(name_or_path: str, family: str) -> str:
  """Where `resolve` would look, for messages (no download, no conversion)."""
  if os.path.exists(os.path.expanduser(name_or_path)):
    return name_or_path
  entry = lookup(name_or_path, family)
  return os.path.join(cache_dir(), "downloads", entry["file"])


def available(name_or_path: str, family: str) -> bool:
  """True when `resolve` would succeed without a download."""
  src = os.path.expanduser(name_or_path)
  if os.path.exists(src):
    return True
  try:
    entry = lookup(name_or_path, family)
  except CheckpointError:
    return False
  stem = os.path.splitext(entry["file"])[0]
  root = cache_dir()
  return (os.path.isfile(os.path.join(root, "converted", stem, "config.json")) or
          os.path.isfile(os.path.join(root, "downloads", entry["file"])))


__all__ = ["MANIFEST", "cache_dir", "manifest", "lookup", "fetch", "resolve", "available", "describe",
           "sha256_file"]
