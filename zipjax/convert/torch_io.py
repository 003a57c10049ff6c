"""Reading PyTorch checkpoint files into numpy, as data: nothing in a file is ever executed.

`read_checkpoint(path)` -> `Checkpoint(tensors, format)`: a flat dict name -> numpy array, and the format
it was read from. Every converter reads its file through it.

Formats:
  * "torchscript": a TorchScript archive (`torch.jit.save`; OpenAI publishes CLIP this way). It is a zip
    file: the module tree is pickled in `data.pkl`, the tensors are raw bytes in `data/<key>`, and `code/`
    holds the modules' TorchScript source. zipjax never calls `torch.jit.load` (which runs that code, e.g.
    a module's `__setstate__`): `data.pkl` is unpickled by `_Unpickler`, which builds only tensors (numpy
    arrays read from `data/`), storages and plain containers, and turns the archive's own classes
    (`__torch__.*`) into inert `_Record`s of their attributes. `code/` is only *read*, as text, for each
    module class's `__parameters__` / `__buffers__` declarations, so that the keys are exactly those of
    `torch.jit.load(path).state_dict()` (parameters, then buffers, then submodules, in attribute order). A
    class whose state is saved by its own `__getstate__` (restored by code, which is not run) is refused.
  * "torch-zip": a `torch.save` file (the zip format of torch >= 1.6): the same unpickler and storages,
    without `__torch__` classes. A `{"state_dict": {...}}` or `{"model": {...}}` (SAM 2) wrapper is unwrapped.
  * "torch-legacy": an older `torch.save` file (a raw pickle stream, not a zip archive), read by
    `torch.load(weights_only=True)` (tensors and plain containers only; needs torch).
  * "safetensors": a safetensors file (recognised by its header: an 8-byte length, then a JSON table of
    dtype / shape / byte range per tensor, then the raw bytes); parsed here, nothing is unpickled. Every
    entry's byte range must lie inside the file, hold exactly shape x itemsize bytes, and not overlap
    another's. A zipjax export (`zipjax convert --format safetensors`) is one of these, with metadata.
  * "safetensors-sharded": a `*.safetensors.index.json` (the Hub's sharded layout): its `weight_map` names
    shard files, which must be plain file names in the index's own directory (never another path); every
    shard is read as above and must hold exactly the keys the index assigns to it.

Memory is bounded by the file: a zip member may not claim more bytes than the archive can hold, a storage
must hold exactly the bytes its header says, a tensor view must lie inside its storage and have no more
elements than it, and each storage is read once.

When a file cannot be read, the error is one line that names the file and says what happened, checked in
this order: missing, a directory, not a regular file (FIFO, device), not readable (permission denied),
empty, a safetensors file whose header fails its checks, a zip archive cut short or failing its CRC checks or without `data.pkl`, a
legacy pickle stream that ends early (scanned with `pickletools`, which executes nothing), a pickle that
references other Python objects (refused as unsafe: they could run code), anything else.
"""
from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import pickletools
import re
import stat
import struct
import sys
import zipfile
import zlib
from typing import Mapping, NamedTuple

import numpy as np

from zipjax.errors import CheckpointError

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_DEPTH = 256            # module nesting of a TorchScript archive
_MAX_ENTRIES = 1_000_000    # state dict entries (and module visits) of one archive
_DEFLATE_RATIO = 32         # a compressed zip member may claim at most this many times the archive's size


class Checkpoint(NamedTuple):
  """What `read_checkpoint` returns.

  Attributes:
    tensors: flat name -> numpy array (the state dict; floating dtypes kept, bfloat16 widened to float32).
    format: "torchscript", "torch-zip", "torch-legacy", "safetensors" or "safetensors-sharded".
    metadata: the safetensors `__metadata__` table (str -> str; of the first shard), else {}.
  """
  tensors: dict
  format: str
  metadata: dict = {}


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
  """Reads a PyTorch checkpoint file (TorchScript archive or state dict) as data, into numpy arrays.

  Floating tensors keep their dtype here (fp16 stays fp16; bfloat16 becomes float32); converters upcast to
  float32.

  Raises:
    CheckpointError: one line naming `path` and the problem (see the module docstring).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file")
  if os.path.isdir(path):
    raise CheckpointError(f"{path}: is a directory, not a PyTorch checkpoint file")
  st = os.stat(path)
  if not stat.S_ISREG(st.st_mode):
    raise CheckpointError(f"{path}: not a regular file (a FIFO, socket or device); refused without reading it")
  try:
    with open(path, "rb") as f:
      head = f.read(16)
  except PermissionError:
    raise CheckpointError(f"{path}: permission denied (the file cannot be read)") from None
  except OSError as e:
    raise CheckpointError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
  if not head:
    raise CheckpointError(f"{path}: file is empty")
  if _is_safetensors(path, head, st.st_size):
    tensors, meta = read_safetensors(path)
    return Checkpoint(tensors, "safetensors", meta)
  if path.endswith(".index.json"):
    return _read_sharded(path)
  if head.startswith(_ZIP_MAGIC):
    return _read_zip(path, st.st_size)
  return Checkpoint(_read_legacy(path, head), "torch-legacy")


def _is_safetensors(path: str, head: bytes, size: int) -> bool:
  """safetensors: an 8-byte little-endian header length n, then n bytes of JSON starting with '{'."""
  if len(head) < 9:
    return False
  (n,) = struct.unpack("<Q", head[:8])
  return 2 <= n <= size - 8 and head[8:9] == b"{"


# ------------------------------------------------------------------------------------------ safetensors
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
              "I16": "<i2", "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
_ST_MAX_HEADER = 100 << 20  # the safetensors format's own limit on the JSON header


def read_safetensors(path: str, names=None, keep=None) -> tuple[dict, dict]:
  """A safetensors file -> (name -> numpy array, metadata). `names`, if given, are the only keys it may hold;
  `keep(name) -> bool`, if given, selects the tensors read (the others are checked but not read).

  Checked before any tensor is read: the header is JSON of at most 100 MiB inside the file; each entry has
  a known dtype, a shape of non-negative integers and a byte range [begin, end) inside the data section that
  holds exactly prod(shape) x itemsize bytes; ranges do not overlap. BF16 is widened to float32.
  """
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      if n > min(_ST_MAX_HEADER, size - 8):
        raise CheckpointError(f"{path}: safetensors header claims {n} bytes, more than the file holds or the "
                              "format allows (corrupt file)")
      header_bytes = f.read(n)
      try:
        header = json.loads(header_bytes.decode("utf-8"))
      except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {_short(e)})") from None
      if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
      meta = header.pop("__metadata__", None) or {}
      if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ is not a table of strings)")
      data_len = size - 8 - n
      entries = []
      for key, e in header.items():
        entries.append((_st_entry(path, key, e, data_len), key))
      if names is not None and set(header) != set(names):
        extra = sorted(set(header) - set(names))[:3]
        missing = sorted(set(names) - set(header))[:3]
        raise CheckpointError(f"{path}: shard does not hold the keys its index assigns to it (extra: {extra}, "
                              f"missing: {missing})")
      ordered = sorted(entries)
      for (prev, _), (cur, key) in zip(ordered, ordered[1:]):
        if cur[0] < prev[1]:
          raise CheckpointError(f"{path}: tensor {key!r} overlaps another tensor's bytes (corrupt file)")
      out = {}
      base = 8 + n
      for (begin, end, dtype, shape), key in entries:
        if keep is not None and not keep(key):
          continue
        f.seek(base + begin)
        buf = f.read(end - begin)
        if len(buf) != end - begin:
          raise CheckpointError(f"{path}: tensor {key!r} is cut short (truncated file)")
        arr = np.frombuffer(buf, np.dtype(_ST_DTYPES[dtype])).reshape(shape)
        if dtype == "BF16":
          arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif sys.byteorder == "big" and arr.dtype.itemsize > 1:
          arr = arr.astype(arr.dtype.newbyteorder("="))
        out[key] = arr
  except PermissionError:
    raise CheckpointError(f"{path}: permission denied (the file cannot be read)") from None
  except (OSError, struct.error) as e:
    raise CheckpointError(f"{path}: cannot be read: truncated or corrupt safetensors file ({_short(e)})") from None
  return out, dict(meta)


def _st_entry(path: str, key: str, e, data_len: int):
  """((begin, end, dtype, shape)) of one header entry, checked."""
  if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
    raise CheckpointError(f"{path}: corrupt safetensors header entry for {key!r}")
  dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
  if dtype not in _ST_DTYPES:
    raise CheckpointError(f"{path}: tensor {key!r} has dtype {dtype!r}, which zipjax does not read "
                          f"(known: {', '.join(_ST_DTYPES)})")
  ints = lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                for x in v)
  if not ints(shape) or not ints(offs) or len(offs) != 2:
    raise CheckpointError(f"{path}: corrupt safetensors header entry for {key!r} (shape {shape}, "
                          f"data_offsets {offs})")
  begin, end = offs
  if not begin <= end <= data_len:
    raise CheckpointError(f"{path}: tensor {key!r} byte range [{begin}, {end}) lies outside the file's "
                          f"{data_len} data bytes (truncated or corrupt file)")
  if math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize != end - begin:
    raise CheckpointError(f"{path}: tensor {key!r} {shape} {dtype} does not hold {end - begin} bytes "
                          "(corrupt file)")
  return begin, end, dtype, tuple(shape)


def read_checkpoint_index(path: str) -> list[str]:
  """The shard file names of a `*.safetensors.index.json` (checked: plain names beside the index)."""
  return list(_index_shards(path)[1])


def _index_shards(path: str) -> tuple[dict, dict]:
  """(weight_map, shard -> its keys) of an index file, checked."""
  try:
    with open(path, encoding="utf-8") as f:
      index = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f"{path}: cannot be read as a safetensors index ({_short(e)})") from None
  wmap = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
    raise CheckpointError(f"{path}: a JSON file without a safetensors 'weight_map' (not a sharded checkpoint "
                          "index)")
  shards: dict[str, list] = {}
  for key, shard in wmap.items():
    if shard in ("", ".", "..") or os.path.basename(shard) != shard or "\\" in shard or "\0" in shard:
      raise CheckpointError(f"{path}: shard {shard!r} (for {key!r}) is not a plain file name beside the "
                            "index; refused (shards are only read from the index's own directory)")
    shards.setdefault(shard, []).append(key)
  return wmap, shards


def _read_sharded(path: str) -> Checkpoint:
  """A `*.safetensors.index.json` and its shards (plain file names beside it)."""
  wmap, shards = _index_shards(path)
  root = os.path.dirname(os.path.abspath(path))
  tensors, meta = {}, {}
  for shard, names in shards.items():
    sp = os.path.join(root, shard)
    if not os.path.isfile(sp):
      raise CheckpointError(f"{path}: shard {shard!r} is missing (expected at {sp})")
    with open(sp, "rb") as f:
      head = f.read(16)
    if not _is_safetensors(sp, head, os.path.getsize(sp)):
      raise CheckpointError(f"{sp}: not a safetensors file (a shard of {path})")
    t, m = read_safetensors(sp, names)
    tensors.update(t)
    meta = meta or m
  return Checkpoint({k: tensors[k] for k in wmap}, "safetensors-sharded", meta)


# ------------------------------------------------------------------------------------------ zip archives
class _StorageType:
  """`torch.FloatStorage` & co. as the unpickler sees them: the element dtype."""

  def __init__(self, name: str, dtype: str):
    self.name, self.dtype = name, np.dtype(dtype)

  def __setstate__(self, state):
    raise pickle.UnpicklingError("unexpected state for a storage type")


_STORAGE_TYPES = {name: _StorageType(name, dt) for name, dt in (
    ("FloatStorage", "<f4"), ("DoubleStorage", "<f8"), ("HalfStorage", "<f2"), ("BFloat16Storage", "<u2"),
    ("LongStorage", "<i8"), ("IntStorage", "<i4"), ("ShortStorage", "<i2"), ("CharStorage", "i1"),
    ("ByteStorage", "u1"), ("BoolStorage", "?"), ("ComplexFloatStorage", "<c8"),
    ("ComplexDoubleStorage", "<c16"), ("UntypedStorage", "u1"))}


class _Storage:
  """A storage of the archive (`data/<key>`), not read until a tensor of the state dict needs it."""
  __slots__ = ("key", "kind", "numel")

  def __init__(self, key: str, kind: _StorageType, numel: int):
    self.key, self.kind, self.numel = key, kind, numel

  def __setstate__(self, state):
    raise pickle.UnpicklingError("unexpected state for a storage")


class _Tensor:
  """A dense tensor: a view (offset, size, stride, in elements) of a `_Storage`."""
  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise pickle.UnpicklingError("a tensor whose storage is not one of the archive's storages")
    for name, v in (("size", size), ("stride", stride)):
      if not isinstance(v, (tuple, list)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise pickle.UnpicklingError(f"a tensor {name} that is not a tuple of integers")
    if not isinstance(offset, int) or len(size) != len(stride):
      raise pickle.UnpicklingError("a tensor view with a bad offset or stride")
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def __setstate__(self, state):
    raise pickle.UnpicklingError("unexpected state for a tensor")


class _Record:
  """An object of a class that the TorchScript archive declares (`__torch__.*`: a module or a TorchScript
  class), kept as data: the class's name and the state it was saved with. Nothing of the class runs:
  unpickling stores the state (`__setstate__` here is this inert method, not the archive's)."""
  __slots__ = ("state",)
  qualname = "?"

  def __init__(self):  # only NEWOBJ (cls.__new__) creates records; REDUCE on a class fails here
    raise pickle.UnpicklingError(f"{self.qualname}: not built the way TorchScript saves objects")

  def __setstate__(self, state):
    self.state = state


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  if not isinstance(data, _Tensor):
    raise pickle.UnpicklingError("a parameter whose data is not a tensor")
  return data


class _TensorType:
  """`torch.Tensor` / `torch.nn.Parameter` as the type argument of `_rebuild_from_type_v2`."""

  def __setstate__(self, state):
    raise pickle.UnpicklingError("unexpected state for a tensor type")


_TENSOR_TYPE = _TensorType()


def _rebuild_from_type_v2(func, new_type, args, state=None):
  del state
  if new_type is not _TENSOR_TYPE or func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter):
    raise pickle.UnpicklingError("a tensor subclass")
  return func(*args)


def _identity(value, *unused):
  return value


def _device(*args):
  return str(args[0]) if args else "cpu"


def _plain_set(items=()):
  return set(items)


def _plain_frozenset(items=()):
  return frozenset(items)


# (module, name) -> what the unpickler builds for it: tensors, storages and plain containers only
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPE,
    ("torch", "device"): _device,
    ("torch", "Size"): tuple,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): _plain_set,
    ("builtins", "frozenset"): _plain_frozenset,
    # TorchScript's pickler tags typed lists and dicts; the values are plain containers already
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "build_genericlist"): _identity,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
}
_ALLOWED.update({("torch", name): kind for name, kind in _STORAGE_TYPES.items()})
_ALLOWED[("torch.storage", "UntypedStorage")] = _STORAGE_TYPES["UntypedStorage"]


class _Refused(Exception):
  """The pickle references something the reader does not build (message: what and why)."""


class _Unpickler(pickle.Unpickler):
  """Builds only what `_ALLOWED` lists, `_Storage`s for persistent ids, and (in a TorchScript archive)
  `_Record` classes for `__torch__.*` names. Anything else stops the load before it is called."""

  def __init__(self, data: bytes, torchscript: bool):
    super().__init__(io.BytesIO(data))
    self._torchscript = torchscript
    self._records: dict[str, type] = {}
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module, name):
    key = (module, name)
    if key in _ALLOWED:
      return _ALLOWED[key]
    qual = f"{module}.{name}"
    if self._torchscript and (module == "__torch__" or module.startswith("__torch__.")) and \
        not module.startswith("__torch__.torch.classes"):
      if qual not in self._records:
        self._records[qual] = type(name, (_Record,), {"__slots__": (), "qualname": qual})
      return self._records[qual]
    if module == "torch" or module.startswith("torch."):
      raise _Refused(f"its pickle uses {qual}, which zipjax's checkpoint reader does not read (only dense "
                     "tensors, storages and plain containers)")
    raise _Refused(f"refused as unsafe: its pickle references the Python object {qual}, not only tensors and "
                   "containers; zipjax reads checkpoints as data and never runs code from a file (convert the "
                   "checkpoint to a plain state dict of tensors with a trusted PyTorch)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:60]!r}")
    _, kind, key, _location, numel = pid[:5]
    if not isinstance(kind, _StorageType) or not isinstance(key, str) or not re.fullmatch(r"\w{1,64}", key) \
        or not isinstance(numel, int) or numel < 0:
      raise pickle.UnpicklingError(f"a malformed storage reference {str(pid)[:80]!r}")
    old = self._storages.get(key)
    if old is None:
      old = self._storages[key] = _Storage(key, kind, numel)
    elif old.kind is not kind or old.numel != numel:
      raise pickle.UnpicklingError(f"storage {key!r} is referenced with two different types or sizes")
    return old


class _Declared(NamedTuple):
  """What a TorchScript class's source declares (read as text): its base, parameter and buffer names."""
  is_module: bool
  parameters: frozenset
  buffers: frozenset
  has_setstate: bool


_CLASS_LINE = re.compile(r"class (\w+)\(([\w.]*)\):\s*$")
_NAMES_LINE = re.compile(r"\s+(__parameters__|__buffers__) = \[(.*)\]\s*$")
_SETSTATE_LINE = re.compile(r"\s+def __setstate__\(")


def _declarations(text: str) -> dict:
  """class name -> `_Declared`, from the source of one `code/` file (a line scan; nothing is executed)."""
  out, current, fields = {}, None, {}

  def close():
    if current is not None:
      name, base = current
      out[name] = _Declared(base == "Module", frozenset(fields.get("__parameters__", ())),
                            frozenset(fields.get("__buffers__", ())), bool(fields.get("setstate")))

  for line in text.splitlines():
    m = _CLASS_LINE.match(line)
    if m:
      close()
      current, fields = (m.group(1), m.group(2)), {}
      continue
    if current is None or not line[:1].isspace():
      if line.strip():
        close()
        current = None
      continue
    m = _NAMES_LINE.match(line)
    if m:
      fields[m.group(1)] = re.findall(r'"([^"\\]*)"', m.group(2))
    elif _SETSTATE_LINE.match(line):
      fields["setstate"] = True
  close()
  return out


class _ZipReader:
  """One zip archive (TorchScript or torch.save) read as data."""

  def __init__(self, path: str, z: zipfile.ZipFile, size: int):
    self.path, self.z, self.size = path, z, size
    self.infos = {i.filename: i for i in z.infolist()}
    pkls = sorted((n for n in self.infos if n == "data.pkl" or re.fullmatch(r"[^/]+/data\.pkl", n)), key=len)
    if not pkls:
      raise CheckpointError(f"{path}: a zip archive without data.pkl: not a PyTorch checkpoint (neither a "
                            "torch.save file nor a TorchScript archive)")
    self.prefix = pkls[0][:-len("data.pkl")]
    self.torchscript = (self.prefix + "constants.pkl") in self.infos or any(
        n.startswith(self.prefix + "code/") for n in self.infos)
    self.big_endian = self._small_member("byteorder").strip() == b"big"
    self._arrays: dict[str, np.ndarray] = {}
    self._code: dict[str, dict] = {}

  def member(self, name: str) -> bytes:
    """A member's bytes (CRC-checked by zipfile), after checking that its size is one the file can hold."""
    info = self.infos.get(name)
    if info is None:
      raise CheckpointError(f"{self.path}: archive member {name!r} is missing (truncated or corrupt file?)")
    limit = self.size * (1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO)
    if info.file_size > limit:
      raise CheckpointError(f"{self.path}: archive member {name!r} claims {info.file_size} bytes, more than "
                            "the archive can hold (corrupt file)")
    buf = bytearray(info.file_size)
    with self.z.open(info) as f:
      n = f.readinto(buf)
      if n != info.file_size or f.read(1):
        raise CheckpointError(f"{self.path}: archive member {name!r} does not hold the bytes its header says "
                              "(truncated or corrupt file)")
    return buf

  def _small_member(self, name: str) -> bytes:
    info = self.infos.get(self.prefix + name)
    return bytes(self.member(self.prefix + name)) if info is not None and info.file_size <= 64 else b""

  # ---------------------------------------------------------------------------------------- the state dict
  def read(self) -> Checkpoint:
    data = self.member(self.prefix + "data.pkl")
    try:
      root = _Unpickler(bytes(data), self.torchscript).load()
    except _Refused as e:
      raise CheckpointError(f"{self.path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, KeyError, IndexError,
            RecursionError, MemoryError, OverflowError) as e:
      raise CheckpointError(f"{self.path}: cannot be read: corrupt data.pkl ({type(e).__name__}: "
                            f"{_short(e)})") from None
    del data
    if self.torchscript:
      if not isinstance(root, _Record):
        raise CheckpointError(f"{self.path}: a TorchScript archive whose data.pkl holds a "
                              f"{type(root).__name__}, not a module")
      entries = self._module_entries(root)
      fmt = "torchscript"
    else:
      entries = self._state_dict_entries(root)
      fmt = "torch-zip"
    return Checkpoint({k: self.array(k, t) for k, t in entries.items()}, fmt)

  def _state_dict_entries(self, root) -> dict:
    sd = _unwrap(root)
    if not isinstance(sd, Mapping) or not all(isinstance(v, _Tensor) for v in sd.values()):
      what = type(sd).__name__ if not isinstance(sd, Mapping) else "dict with values other than tensors"
      raise CheckpointError(f"{self.path}: holds a {what}, not a state dict of tensors")
    return {str(k): v for k, v in sd.items()}

  def declared(self, qualname: str) -> _Declared | None:
    """The declarations of a `__torch__.a.b.Name` class, from `code/__torch__/a/b.py` (None if absent)."""
    module, _, name = qualname.rpartition(".")
    member = self.prefix + "code/" + module.replace(".", "/") + ".py"
    if member not in self._code:
      self._code[member] = {}
      if member in self.infos:
        text = bytes(self.member(member)).decode("utf-8", errors="replace")
        self._code[member] = _declarations(text)
    return self._code[member].get(name)

  def _module_entries(self, root: _Record) -> dict:
    """The state dict of a module tree, with `torch.jit.load(path).state_dict()`'s keys and order."""
    out: dict[str, _Tensor] = {}
    visits = [0]
    active: set[int] = set()

    def is_module(rec) -> bool:
      decl = self.declared(rec.qualname)
      if decl is not None:
        return decl.is_module
      return isinstance(getattr(rec, "state", None), dict) and "training" in rec.state

    def visit(rec: _Record, prefix: str, depth: int) -> None:
      visits[0] += 1
      if depth > _MAX_DEPTH or visits[0] > _MAX_ENTRIES:
        raise CheckpointError(f"{self.path}: a TorchScript module tree nested deeper than {_MAX_DEPTH} or "
                              f"with more than {_MAX_ENTRIES} modules (corrupt file?)")
      if id(rec) in active:
        raise CheckpointError(f"{self.path}: a TorchScript module that contains itself ({rec.qualname})")
      decl = self.declared(rec.qualname)
      state = getattr(rec, "state", None)
      if not isinstance(state, dict) or (decl is not None and decl.has_setstate):
        raise CheckpointError(
            f"{self.path}: TorchScript class {rec.qualname} saves its state with its own __getstate__ and "
            "restores it with __setstate__ code from the archive, which zipjax never runs; only archives of "
            "plain modules (parameters and buffers) can be read")
      active.add(id(rec))
      if decl is not None:
        names = [n for n in state if n in decl.parameters] + [n for n in state if n in decl.buffers]
      else:  # no declaration in code/: every tensor attribute
        names = [n for n, v in state.items() if isinstance(v, _Tensor)]
      for n in names:
        v = state[n]
        if isinstance(v, _Tensor):
          out[prefix + str(n)] = v
          if len(out) > _MAX_ENTRIES:
            raise CheckpointError(f"{self.path}: more than {_MAX_ENTRIES} tensors (corrupt file?)")
      for n, v in state.items():
        if isinstance(v, _Record) and is_module(v):
          visit(v, f"{prefix}{n}.", depth + 1)
      active.discard(id(rec))

    visit(root, "", 0)
    return out

  # ---------------------------------------------------------------------------------------- tensors
  def storage(self, s: _Storage) -> np.ndarray:
    arr = self._arrays.get(s.key)
    if arr is None:
      name = f"{self.prefix}data/{s.key}"
      info = self.infos.get(name)
      want = s.numel * s.kind.dtype.itemsize
      if info is not None and info.file_size != want:
        raise CheckpointError(f"{self.path}: storage {name!r} holds {info.file_size} bytes, its tensors say "
                              f"{want} (corrupt file)")
      dtype = s.kind.dtype.newbyteorder(">") if self.big_endian and s.kind.dtype.itemsize > 1 else s.kind.dtype
      arr = np.frombuffer(self.member(name), dtype)
      if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("="))
      self._arrays[s.key] = arr
    return arr

  def array(self, key: str, t: _Tensor) -> np.ndarray:
    buf = self.storage(t.storage)
    size, stride, offset = t.size, t.stride, t.offset
    n = math.prod(size)
    if any(v < 0 for v in size + stride) or offset < 0:
      raise CheckpointError(f"{self.path}: tensor {key!r} has a negative size, stride or offset (corrupt file)")
    if n == 0:
      out = np.zeros(size, buf.dtype)
    else:
      last = offset + sum((s - 1) * d for s, d in zip(size, stride))
      if last >= buf.shape[0] or n > buf.shape[0]:
        raise CheckpointError(f"{self.path}: tensor {key!r} {list(size)} does not fit in its storage of "
                              f"{buf.shape[0]} elements (corrupt file)")
      contiguous = all(d == math.prod(size[i + 1:]) for i, d in enumerate(stride) if size[i] > 1)
      if contiguous:
        out = buf[offset:offset + n].reshape(size)
      else:
        out = np.lib.stride_tricks.as_strided(buf[offset:], shape=size,
                                              strides=[d * buf.itemsize for d in stride]).copy()
    if t.storage.kind is _STORAGE_TYPES["BFloat16Storage"]:
      out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _read_zip(path: str, size: int) -> Checkpoint:
  try:
    with zipfile.ZipFile(path) as z:
      return _ZipReader(path, z, size).read()
  except zipfile.BadZipFile as e:
    bad = re.search(r"Bad CRC-32 for file '(.*)'", str(e))
    if bad:
      raise CheckpointError(f"{path}: cannot be read: corrupt file (archive member {bad.group(1)!r} fails its "
                            "CRC check)") from None
    raise CheckpointError(f"{path}: cannot be read: truncated or corrupt file (an incomplete zip archive: "
                          f"{_short(e)})") from None
  except (zlib.error, EOFError, OSError, ValueError, NotImplementedError, OverflowError) as e:
    if isinstance(e, CheckpointError):
      raise
    raise CheckpointError(f"{path}: cannot be read: truncated or corrupt file ({type(e).__name__}: "
                          f"{_short(e)})") from None


# ------------------------------------------------------------------------------------------ legacy pickles
def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError(
        "reading legacy (non-zip) PyTorch checkpoint files needs torch: pip install 'zipjax[convert]' "
        "(CPU build: pip install torch==2.13.0), or load an already converted directory") from e
  return torch


# wrappers around a state dict: {"state_dict": sd} (many trainers), {"model": sd} (SAM 2's checkpoints)
_WRAPPERS = ("state_dict", "model")


def _unwrap(sd):
  """The state dict inside a `_WRAPPERS` wrapper (the first such key holding a dict), else `sd`."""
  if isinstance(sd, Mapping):
    for key in _WRAPPERS:
      if key in sd and isinstance(sd[key], Mapping):
        return sd[key]
  return sd


def _read_legacy(path: str, head: bytes) -> dict:
  """A pre-1.6 `torch.save` file (or a plain pickle) through `torch.load(weights_only=True)`."""
  try:
    torch = _import_torch()
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{path}: {_failure(path, e)}") from None
  sd = _unwrap(sd)
  if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
    raise CheckpointError(f"{path}: holds a {type(sd).__name__}, not a state dict of tensors")
  out = {}
  for k, v in sd.items():
    t = v.detach().cpu()
    if t.dtype == torch.bfloat16:
      t = t.float()
    out[str(k)] = t.numpy()
  return out


def _failure(path: str, load_error) -> str:
  """What went wrong when torch.load(weights_only=True) could not read the legacy file `path`."""
  detail = _short(load_error)
  msg = str(load_error)
  if _pickle_stream_incomplete(path):
    return f"cannot be read: truncated or corrupt file (the pickle data ends before it is complete; {detail})"
  if isinstance(load_error, EOFError) or "unexpected EOF" in msg or "data was truncated" in msg:
    return f"cannot be read: truncated or corrupt file (the data ends early; {detail})"
  if "Weights only load failed" in msg:
    names = _foreign_globals(path)
    found = re.search(r"GLOBAL ([\w.]+)", msg)
    if names:
      what = "the Python object" + ("s " if len(names) > 1 else " ") + ", ".join(names[:3])
    elif found:
      what = f"the Python object {found.group(1)}"
    else:
      what = "Python objects other than tensors"
    return (f"refused as unsafe: its pickle references {what}, not only tensors and containers; zipjax "
            "reads checkpoints as data and never runs code from a file (convert the checkpoint to a plain "
            "state dict of tensors with a trusted PyTorch)")
  return f"cannot be read as a PyTorch checkpoint (corrupt file?): {detail}"


_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset")


def _globals_in(stream, max_pickles: int, size: int) -> list[str]:
  """Names that the pickles in `stream` import (GLOBAL, STACK_GLOBAL), by parsing opcodes (nothing runs)."""
  names, strings = [], []
  for _ in range(max_pickles):
    if stream.tell() >= size:
      break
    for op, arg, _ in pickletools.genops(stream):
      if op.name == "GLOBAL":
        names.append(str(arg).replace(" ", "."))
      elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
        names.append(f"{strings[-2]}.{strings[-1]}")
      if isinstance(arg, str):
        strings.append(arg)
  return names


def _foreign_globals(path: str) -> list[str]:
  """Imported names other than torch's own and plain containers (best effort; [] when it cannot tell)."""
  try:
    with open(path, "rb") as f:
      names = _globals_in(f, 5, os.fstat(f.fileno()).st_size)
  except (ValueError, EOFError, UnicodeDecodeError, OSError):
    return []
  return list(dict.fromkeys(n for n in names if not n.startswith(_SAFE_PREFIXES)))


def _pickle_stream_incomplete(path: str, max_pickles: int = 5) -> bool:
  """True when the consecutive pickles at the start of `path` (a legacy torch file has five before its raw
  tensor data; a plain pickle has one) end before their STOP opcode. Parses opcodes only, executes nothing."""
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    for _ in range(max_pickles):
      if f.tell() >= size:
        return False
      try:
        for _ in pickletools.genops(f):
          pass
      except (ValueError, EOFError, UnicodeDecodeError):
        return True  # "pickle exhausted before seeing STOP", a cut-off argument, ...
  return False


def _short(e) -> str:
  s = str(e).strip().splitlines()
  return s[0][:200] if s else type(e).__name__


__all__ = ["Checkpoint", "read_checkpoint", "read_checkpoint_index", "read_safetensors"]
