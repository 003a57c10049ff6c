"""Reading PyTorch checkpoint files into numpy. torch is imported lazily (extra `convert`)."""
from __future__ import annotations

import os
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
  if os.path.getsize(path) == 0:
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
      raise CheckpointError(
          f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt file?): "
          f"as TorchScript: {_short(jit_error)}; as a state dict: {_short(e)}") from e
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


def _short(e) -> str:
  s = str(e).strip().splitlines()
  return s[0][:200] if s else type(e).__name__
