"""Checkpoint names -> local weights: manifest lookup, cache, download with progress, sha256, convert once.

`resolve(name_or_path, family)` returns something `load_clip` / `load_sam` accept:

1. an existing file or directory is returned as is;
2. otherwise the name is looked up in `checkpoints/manifest.json` (by `name` or `file`); the converted
   directory `<cache>/converted/<file stem>` is returned when present;
3. otherwise, when the entry's `hub` repositories (the same weights on the Hugging Face Hub) are in the
   Hugging Face cache, they are used (see Hub names below);
4. otherwise the published file `<cache>/downloads/<file>` is converted into it (once); when that file is
   missing it is downloaded from the manifest URL with a progress bar (to a temporary file, renamed when
   complete) and its sha256 checked when the manifest knows it (`"sha256": null` entries are not checked);
   when that download fails (and not offline) the entry's `hub` repositories are tried in order.

`<cache>` is `$ZIPJAX_CACHE` or ~/.cache/zipjax. With `ZIPJAX_OFFLINE=1`, or when the download fails, the
error names the file to download and the path to put it at.

Hub names: `hf:ORG/REPO[/FILE][@REVISION]` (a branch, tag or commit) resolve through `huggingface_hub`
(`hf_hub_download`, its cache and progress bars; `HF_HUB_CACHE` / `HF_HOME` and `HF_HUB_OFFLINE` are read
when resolving; `ZIPJAX_OFFLINE=1` also keeps it to the cache). Without FILE, the first of the family's usual
weight files that the repository holds is used (`zipjax.convert.store.HUB_FILES`; a `*.safetensors.index.json`
brings its shards), with `config.json` / `open_clip_config.json` beside it when the repository has them (the CLIP
converter checks them). The file is converted once into `<cache>/converted/hf/ORG--REPO/<commit>[--FILE]`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.request

from huggingface_hub import errors as hub_errors
from huggingface_hub import hf_hub_download
from tqdm import tqdm

from zipjax.convert import get_converter
from zipjax.convert.store import HUB_FILES, is_converted_dir
from zipjax.convert.torch_io import read_checkpoint_index
from zipjax.errors import CheckpointError
from zipjax.io.fs import cache_dir

# zipjax/assets/manifest.json links to checkpoints/manifest.json; a built wheel carries a copy of it.
MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "manifest.json")


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
  hub = [parse_hub_name(spec)[0] for spec, _ in hub_sources(entry)]
  if hub:
    how += f", or get the same weights into the Hugging Face cache: hf download {hub[0]}"
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


HUB_PREFIX = "hf:"
# the weight files a Hub repository of each family usually holds, in the order tried
HUB_SIDE_FILES = ("config.json", "open_clip_config.json")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def is_hub_name(spec) -> bool:
  return isinstance(spec, str) and spec.startswith(HUB_PREFIX)


def parse_hub_name(spec: str) -> tuple[str, str | None, str | None]:
  """'hf:ORG/REPO[/FILE][@REVISION]' -> (repo id, file or None, revision or None)."""
  body, _, revision = spec[len(HUB_PREFIX):].partition("@")
  parts = body.split("/")
  repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
  if not _REPO.fullmatch(repo) or ".." in repo or (filename and any(p in ("", ".", "..") for p in parts[2:])) \
      or (revision == "" and "@" in spec):
    raise CheckpointError(f"{spec!r}: not a Hub name; expected hf:ORG/REPO[/FILE][@REVISION] "
                          "(e.g. hf:timm/vit_base_patch16_clip_224.openai)")
  return repo, filename, revision or None


def hub_offline() -> bool:
  return any(os.environ.get(v, "") not in ("", "0", "false", "False") for v in ("HF_HUB_OFFLINE", "ZIPJAX_OFFLINE"))


def hub_cache() -> str | None:
  """The Hugging Face cache huggingface_hub uses, read now (None: the library's default)."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  if os.environ.get("HF_HOME"):
    return os.path.join(os.environ["HF_HOME"], "hub")
  return None


def hub_download(spec: str, family: str, local_only: bool | None = None, sha256: str | None = None) -> str:
  """The weights of a Hub name in the Hugging Face cache (downloaded there if needed) -> the local path.

  Raises:
    CheckpointError: one line naming the repository and what to do (not cached while offline, no such
      repository, revision or file, a download that failed, a sha256 that does not match).
  """
  repo, filename, revision = parse_hub_name(spec)
  offline = hub_offline() if local_only is None else local_only
  kw = dict(repo_id=repo, revision=revision, cache_dir=hub_cache(), local_files_only=offline,
            endpoint=os.environ.get("HF_ENDPOINT") or None)
  where = f"{repo}" + (f"@{revision}" if revision else "")
  candidates = (filename,) if filename else HUB_FILES[family]

  def get(name: str):
    try:
      return hf_hub_download(filename=name, **kw)
    except hub_errors.LocalEntryNotFoundError as e:
      if offline:
        return None  # not in the cache
      raise CheckpointError(f"{spec}: cannot reach the Hub and {name} of {where} is not in the Hugging Face "
                            f"cache ({_first_line(e)}); with no network, run `hf download {repo}` on a machine "
                            "that has one and copy its cache, or set HF_HUB_OFFLINE=1 to use the cache only") \
          from None
    except hub_errors.EntryNotFoundError:  # the repository has no such file
      return None
    except hub_errors.RepositoryNotFoundError as e:
      raise CheckpointError(f"{spec}: no Hub repository {repo!r} (or it is private / gated: log in with "
                            f"`hf auth login`) ({_first_line(e)})") from None
    except hub_errors.RevisionNotFoundError as e:
      raise CheckpointError(f"{spec}: repository {repo!r} has no revision {revision!r} ({_first_line(e)})") from None
    except (OSError, ValueError, hub_errors.HfHubHTTPError) as e:
      raise CheckpointError(f"{spec}: cannot download from the Hub ({type(e).__name__}: {_first_line(e)}); "
                            "with no network, set HF_HUB_OFFLINE=1 to use only the Hugging Face cache, "
                            f"after `hf download {repo}` on a machine that has one") from None

  path = next((p for p in map(get, candidates) if p is not None), None)
  if path is None:
    tried = ", ".join(candidates)
    if offline:
      raise CheckpointError(f"{spec}: not in the Hugging Face cache ({hub_cache() or 'the default cache'}: no "
                            f"{tried} for {where}) and offline (HF_HUB_OFFLINE / ZIPJAX_OFFLINE): run "
                            f"`hf download {repo}{f' --revision {revision}' if revision else ''}` with network, "
                            "or unset them")
    raise CheckpointError(f"{spec}: repository {where} holds none of the {family} weight files zipjax reads "
                          f"({tried}); name the file: hf:{repo}/FILE")
  if path.endswith(".index.json"):
    sub = os.path.dirname(filename or "")
    for shard in read_checkpoint_index(path):
      if get(f"{sub}/{shard}" if sub else shard) is None:
        raise CheckpointError(f"{spec}: shard {shard!r} of {os.path.basename(path)} is not in {where}"
                              + (" (offline: not in the cache)" if offline else ""))
  for side in HUB_SIDE_FILES:  # what the converter checks beside the weights, when the repository has it
    try:
      get(f"{os.path.dirname(filename)}/{side}" if filename and "/" in filename else side)
    except CheckpointError:
      pass  # best effort: the weights are there (the Hub may be unreachable now, with them cached)
  if sha256:
    got = sha256_file(path)
    if got != sha256:
      raise CheckpointError(f"{path}: sha256 {got} does not match the manifest's {sha256} for {spec}")
  return path


def _first_line(e) -> str:
  s = str(e).strip().splitlines()
  return s[0][:200] if s else type(e).__name__


def _snapshot_commit(path: str) -> str:
  """The commit of a file in the Hugging Face cache (.../snapshots/<commit>/FILE)."""
  parts = os.path.normpath(path).split(os.sep)
  if "snapshots" in parts:
    i = len(parts) - 1 - parts[::-1].index("snapshots")
    if i + 1 < len(parts) - 1:
      return parts[i + 1]
  return hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]


def hub_commit(spec: str, family: str) -> str:
  """The commit that a Hub name's weights in the Hugging Face cache come from (no network)."""
  return _snapshot_commit(hub_download(spec, family, local_only=True))


def _hub_converted_dir(spec: str, path: str) -> str:
  """<cache>/converted/hf/ORG--REPO/<commit>[--FILE]: one converted copy per commit and file."""
  repo, filename, _ = parse_hub_name(spec)
  commit = _snapshot_commit(path)
  leaf = commit + (f"--{filename.replace('/', '--')}" if filename else "")
  return os.path.join(cache_dir(), "converted", "hf", repo.replace("/", "--"), leaf)


def hub_sources(entry: dict) -> list[tuple[str, str | None]]:
  """(hf: name, sha256 or None) of each Hub repository a manifest entry lists as holding the same weights."""
  out = []
  for h in entry.get("hub") or []:
    out.append((f"{HUB_PREFIX}{h['repo']}" + (f"/{h['file']}" if h.get("file") else "")
                + (f"@{h['revision']}" if h.get("revision") else ""), h.get("sha256")))
  return out


def _cached_hub_source(entry: dict, family: str) -> tuple[str, str | None] | None:
  """The first Hub source of `entry` whose weights are in the Hugging Face cache (checked, no network)."""
  for spec, sha in hub_sources(entry):
    try:
      hub_download(spec, family, local_only=True, sha256=sha)
    except CheckpointError:
      continue
    return spec, sha
  return None


def resolve_hub(spec: str, family: str, sha256: str | None = None) -> str:
  """A Hub name -> its converted directory in the zipjax cache (downloaded and converted once)."""
  path = hub_download(spec, family, sha256=sha256)
  converted = _hub_converted_dir(spec, path)
  if is_converted_dir(converted):
    return converted
  get_converter(family)(path, converted)
  return converted


def resolve(name_or_path: str, family: str, downloader=_download) -> str:
  """A local path for `load_clip` (family 'clip') or `load_sam` (families 'sam', 'sam2'); see the module
  docstring."""
  if is_hub_name(name_or_path):
    return resolve_hub(name_or_path, family)
  src = os.path.expanduser(os.fspath(name_or_path))
  if os.path.exists(src):
    return src
  entry = lookup(name_or_path, family)
  stem = os.path.splitext(entry["file"])[0]
  converted = os.path.join(cache_dir(), "converted", stem)
  if is_converted_dir(converted):
    return converted
  if not os.path.isfile(os.path.join(cache_dir(), "downloads", entry["file"])):
    cached = _cached_hub_source(entry, family)
    if cached is not None:  # the same weights are in the Hugging Face cache already: no download
      return resolve_hub(cached[0], family, sha256=cached[1])
  try:
    raw = fetch(entry, downloader)
  except CheckpointError as e:
    if hub_offline() or not hub_sources(entry):
      raise
    failures = [str(e)]
    for spec, sha in hub_sources(entry):
      try:
        return resolve_hub(spec, family, sha256=sha)
      except CheckpointError as hub_error:
        failures.append(str(hub_error))
    raise CheckpointError(" | also tried the Hub: ".join(failures)) from None
  try:
    convert = get_converter(family)
  except KeyError:
    return raw  # no converter registered for this family: load the published file directly
  convert(raw, converted)
  return converted


def _size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files if os.path.isfile(os.path.join(root, f)))
  return total


def status(entry: dict) -> dict:
  """Where a manifest entry's weights are on this machine (nothing is downloaded): keys name, family, arch,
  url, hub (hf: names), converted / downloaded / hub_cached (paths or None), size (bytes of what is there)."""
  root = cache_dir()
  stem = os.path.splitext(entry["file"])[0]
  converted = os.path.join(root, "converted", stem)
  out = {"name": entry["name"], "family": entry["family"], "arch": entry.get("arch"), "url": entry.get("url"),
         "hub": [spec for spec, _ in hub_sources(entry)], "converted": None, "downloaded": None,
         "hub_cached": None, "size": 0}
  if is_converted_dir(converted):
    out["converted"] = converted
  raw = os.path.join(root, "downloads", entry["file"])
  if os.path.isfile(raw):
    out["downloaded"] = raw
  cached = _cached_hub_source(entry, entry["family"])
  if cached is not None:
    path = hub_download(cached[0], entry["family"], local_only=True)
    out["hub_cached"] = path
    conv = _hub_converted_dir(cached[0], path)
    if out["converted"] is None and is_converted_dir(conv):
      out["converted"] = conv
  out["size"] = sum(_size(p) for p in (out["converted"], out["downloaded"], out["hub_cached"]) if p)
  return out


def verify(entry: dict) -> list[tuple[str, str, str]]:
  """sha256 checks of what is cached for a manifest entry -> [(path, 'ok' | 'MISMATCH' | 'unverified', detail)].

  The downloaded file is checked against the manifest's sha256; a Hub file in the Hugging Face cache against
  the manifest's sha256 for that repository when recorded, else against the content hash the Hub cache names
  its blob by (the LFS sha256 the Hub served)."""
  out = []
  raw = os.path.join(cache_dir(), "downloads", entry["file"])
  if os.path.isfile(raw):
    want, got = entry.get("sha256"), sha256_file(raw)
    out.append((raw, "unverified" if not want else ("ok" if got == want else "MISMATCH"),
                f"sha256 {got}" + (f", manifest {want}" if want and want != got else "")))
  for spec, want in hub_sources(entry):
    try:
      path = hub_download(spec, entry["family"], local_only=True)
    except CheckpointError:
      continue
    got = sha256_file(path)
    blob = os.path.basename(os.path.realpath(path))
    if want:
      state = "ok" if got == want else "MISMATCH"
    elif re.fullmatch(r"[0-9a-f]{64}", blob):
      state, want = ("ok" if got == blob else "MISMATCH"), blob
    else:
      state = "unverified"
    out.append((path, state, f"{spec}: sha256 {got}" + (f", expected {want}" if want and want != got else "")))
  return out


def describe(name_or_path: str, family: str) -> str:
  """Where `resolve` would look, for messages (no download, no conversion)."""
  if is_hub_name(name_or_path):
    return f"{name_or_path} (Hugging Face cache {hub_cache() or 'default'})"
  if os.path.exists(os.path.expanduser(name_or_path)):
    return name_or_path
  entry = lookup(name_or_path, family)
  return os.path.join(cache_dir(), "downloads", entry["file"])


def available(name_or_path: str, family: str) -> bool:
  """True when `resolve` would succeed without a download."""
  if is_hub_name(name_or_path):
    try:
      hub_download(name_or_path, family, local_only=True)
    except CheckpointError:
      return False
    return True
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
          os.path.isfile(os.path.join(root, "downloads", entry["file"])) or
          _cached_hub_source(entry, family) is not None)


__all__ = ["MANIFEST", "cache_dir", "manifest", "lookup", "fetch", "resolve", "available", "describe",
           "sha256_file", "HUB_PREFIX", "is_hub_name", "parse_hub_name", "hub_download", "hub_sources", "resolve_hub",
           "status", "verify"]
