"""Reading PyTorch checkpoint files into numpy. torch is imported lazily (extra `convert`).

Files are never unpickled beyond what `torch.load(weights_only=True)` allows (tensors and plain containers).
When a file cannot be read, the error says what happened, checked in this order: missing, a directory, not
readable (permission denied), empty, a zip archive (torch.save's format) cut short or failing its CRC
checks, a legacy pickle stream that ends early (scanned with `pickletools`, which executes nothing), a
pickle that references other Python objects (refused as unsafe: they could run code), anything else.
"""
from __future__ import annotations

import io
import os
import pickletools
import re
import stat
import zipfile
from typing import Mapping

import numpy as np

from zipjax.errors import CheckpointError


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError(
        "reading PyTorch checkpoint files needs torch: pip install 'zipjax[convert]' "
        "(CPU build: pip install torch==2.13.0), or load an already converted directory") from e
  return torch


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a TorchScript archive (as OpenAI publishes CLIP) or a plain state dict into numpy arrays.

  Floating tensors keep their dtype here (fp16 stays fp16); converters upcast to float32.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file")
  if os.path.isdir(path):
    raise CheckpointError(f"{path}: is a directory, not a PyTorch checkpoint file")
  if not stat.S_ISREG(os.stat(path).st_mode):
    raise CheckpointError(f"{path}: not a regular file (a FIFO, socket or device); refused without reading it")
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except PermissionError:
    raise CheckpointError(f"{path}: permission denied (the file cannot be read)") from None
  except OSError as e:
    raise CheckpointError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
  if not head:
    raise CheckpointError(f"{path}: file is empty")
  torch = _import_torch()
  sd = None
  jit_error = None
  try:
    module = torch.jit.load(path, map_location="cpu")
    sd = module.state_dict()
  except Exception as e:  # not a TorchScript archive (or a corrupt one): try a plain pickle
    jit_error = e
  if sd is None:
    try:
      sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
      raise CheckpointError(f"{path}: {_failure(path, head, jit_error, e)}") from e
  if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
    sd = sd["state_dict"]
  if not isinstance(sd, Mapping) or not all(hasattr(v, "shape") for v in sd.values()):
    raise CheckpointError(f"{path}: holds a {type(sd).__name__}, not a state dict of tensors")
  out = {}
  for k, v in sd.items():
    t = v.detach().cpu()
    if t.dtype == torch.bfloat16:
      t = t.float()
    out[str(k)] = t.numpy()
  return out


def _failure(path: str, head: bytes, jit_error, load_error) -> str:
  """What went wrong when neither torch.jit.load nor torch.load(weights_only=True) could read `path`."""
  detail = f"as TorchScript: {_short(jit_error)}; as a state dict: {_short(load_error)}"
  if head.startswith(b"PK\x03\x04"):  # a zip archive: torch.save's format since torch 1.6, and TorchScript's
    try:
      with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
      return f"cannot be read: truncated or corrupt file (an incomplete zip archive: {e}); {detail}"
    if bad is not None:
      return f"cannot be read: corrupt file (archive member {bad!r} fails its CRC check); {detail}"
  elif _pickle_stream_incomplete(path):
    return f"cannot be read: truncated or corrupt file (the pickle data ends before it is complete); {detail}"
  msg = str(load_error)
  if isinstance(load_error, EOFError) or "unexpected EOF" in msg or "data was truncated" in msg:
    return f"cannot be read: truncated or corrupt file (the data ends early); {detail}"
  if "Weights only load failed" in msg:
    names = _foreign_globals(path, head)
    found = re.search(r"GLOBAL ([\w.]+)", msg)
    if names:
      what = "the Python object" + ("s " if len(names) > 1 else " ") + ", ".join(names[:3])
    elif found:
      what = f"the Python object {found.group(1)}"
    else:
      what = "Python objects other than tensors"
    return (f"refused as unsafe: its pickle references {what}, not only tensors and containers; zipjax "
            "loads checkpoints with torch.load(weights_only=True) and never runs code from a file (convert "
            "the checkpoint to a plain state dict of tensors with a trusted PyTorch)")
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


def _foreign_globals(path: str, head: bytes) -> list[str]:
  """Imported names other than torch's own and plain containers (best effort; [] when it cannot tell)."""
  try:
    if head.startswith(b"PK\x03\x04"):
      with zipfile.ZipFile(path) as z:
        member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
        if member is None:
          return []
        with z.open(member) as f:
          data = f.read()
      names = _globals_in(io.BytesIO(data), 1, len(data))
    else:
      with open(path, "rb") as f:
        names = _globals_in(f, 5, os.fstat(f.fileno()).st_size)
  except (ValueError, EOFError, UnicodeDecodeError, OSError, zipfile.BadZipFile):
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
