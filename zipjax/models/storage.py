"""Which parameters a job keeps, and in which dtype it holds them (`LeafFilter`).

The labelling engine needs less than a whole checkpoint: the boundary model's image trunk up to
`boundary.stage` (not layer4, the attention pool or the text tower), and it computes the image towers in their
configured dtype. A `LeafFilter` is applied leaf by leaf while variables are drawn (`random_init`) or read
(`convert.store.load_converted`, the checkpoint converters), so the dropped leaves and the float32 copies of
the cast ones never exist together with the rest.

Casting is exact for what the models compute: the leaves cast (`CAST_LEAVES`: Dense / Conv kernels and CLIP's
fused attention input projection) are the ones the modules cast to their compute dtype before use, so a model
with `dtype=bfloat16` computes the same numbers from pre-cast leaves as from float32 ones (tested). Biases,
normalisation statistics, embeddings and position tables stay float32.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from zipjax.errors import InputError
from zipjax.models.tree import flatten, unflatten

CAST_LEAVES = ("kernel", "in_proj_weight")


@dataclasses.dataclass(frozen=True)
class LeafFilter:
  """Keep / cast rule over flat variable paths ('params/visual/layer1_0/conv1/kernel').

  Attributes:
    keep_prefixes: keep only paths under one of these prefixes (empty: keep all).
    drop_parts: drop paths with a '/'-separated component that starts with one of these ('layer4_',
      'attnpool').
    dtype: numpy dtype name the `CAST_LEAVES` of at least 2 dimensions are held in (None: unchanged).
    cast_prefixes: cast only under these prefixes (empty: everywhere).
    device: put each kept leaf on the default device as soon as it is drawn or read, so the host copy of the
      whole model never exists beside the device one (on CPU both are host memory: the model loaded twice
      kept its peak RSS high for the rest of the run).
  """
  keep_prefixes: tuple[str, ...] = ()
  drop_parts: tuple[str, ...] = ()
  dtype: str | None = None
  cast_prefixes: tuple[str, ...] = ()
  device: bool = False

  def keeps(self, path: str) -> bool:
    if self.keep_prefixes and not path.startswith(self.keep_prefixes):
      return False
    return not any(part.startswith(self.drop_parts) for part in path.split("/")) if self.drop_parts else True

  def target_dtype(self, path: str, ndim: int):
    if self.dtype is None or ndim < 2 or path.rsplit("/", 1)[-1] not in CAST_LEAVES:
      return None
    if self.cast_prefixes and not path.startswith(self.cast_prefixes):
      return None
    return np_dtype(self.dtype)

  def __call__(self, path: str, array) -> np.ndarray | None:
    """The leaf as held (cast or not), or None when it is dropped."""
    if not self.keeps(path):
      return None
    want = self.target_dtype(path, np.ndim(array))
    held = np.asarray(array) if want is None else np.asarray(array).astype(want)
    if self.device:
      return jax.device_put(held)
    return held

  def apply(self, variables: Mapping) -> dict:
    """Nested variables -> the kept and cast ones (nested)."""
    out = {}
    for path, leaf in flatten(variables).items():
      held = self(path, leaf)
      if held is not None:
        out[path] = held
    return unflatten(out)


# What models.*.dtype = "auto" means per platform: bfloat16 where the matrix units run it natively (GPU, TPU);
# on CPU the faster of the two at the zip preset's real sizes, as bench/fullsize.py measured it (the note of
# that bench records the figures).
AUTO_DTYPE = {"gpu": "bfloat16", "tpu": "bfloat16", "cuda": "bfloat16", "rocm": "bfloat16", "cpu": "float32"}
DTYPES = ("float32", "bfloat16")


def resolve_dtype(name: str, platform: str | None = None) -> str:
  """A model's configured dtype ('auto', 'float32', 'bfloat16') -> the compute dtype on `platform`
  (default: JAX's default backend)."""
  name = str(name)
  if name == "auto":
    if platform is None:
      platform = jax.default_backend()
    return AUTO_DTYPE.get(platform, "bfloat16")
  if name not in DTYPES:
    raise InputError(f"model dtype must be 'auto', 'float32' or 'bfloat16', got {name!r}")
  return name


def trunk_filter(stage: int, dtype: str | None, depth: int = 4, device: bool = False) -> LeafFilter:
  """The boundary model as the engine holds it: the image trunk up to `stage` (no later stage, no attention
  pool, no text tower), kernels in `dtype`."""
  return LeafFilter(keep_prefixes=("params/visual/", "batch_stats/visual/"),
                    drop_parts=tuple(f"layer{s}_" for s in range(stage + 1, depth + 1)) + ("attnpool",),
                    dtype=dtype, device=device)


def np_dtype(name: str):
  """'float32' / 'bfloat16' / 'float16' -> numpy dtype (bfloat16 through ml_dtypes, as JAX)."""
  return np.dtype(jnp.dtype(name))


__all__ = ["LeafFilter", "CAST_LEAVES", "AUTO_DTYPE", "resolve_dtype", "trunk_filter", "np_dtype"]
