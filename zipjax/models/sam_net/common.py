"""Layers shared by SAM's image encoder, prompt encoder and mask decoder; what SAM's and SAM 2's configs share.

Attributes:
  SamConfigBase: the compute options' checks, `compute_dtype`, `to_dict` / `from_dict` / `replace` of
    SamConfig and Sam2Config.
  LN_EPS_ENCODER: epsilon of the image encoder's LayerNorms and of every LayerNorm2d (1e-6).
  LN_EPS_DEFAULT: epsilon of the two-way transformer's nn.LayerNorm (PyTorch default, 1e-5).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.schema import unknown_keys

LN_EPS_ENCODER = 1e-6
LN_EPS_DEFAULT = 1e-5

Dtype = Any

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class SamConfigBase:
  """What the frozen config dataclasses of SAM and SAM 2 share. A subclass names its tuple fields
  (`_TUPLES`: made tuples of ints, lists in `to_dict`) and its family's name in messages (`_TITLE`), and calls
  `_check_compute` first in `__post_init__`."""
  # Fields that describe compute, not weights: not stored with converted checkpoints.
  COMPUTE_FIELDS: ClassVar[tuple[str, ...]] = ("dtype", "fused_attention", "remat")
  _TUPLES: ClassVar[tuple[str, ...]] = ()
  _TITLE: ClassVar[str] = "SAM"

  def _check_compute(self):
    for name in self._TUPLES:
      object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
    if self.fused_attention not in (False, True, "xla", "cudnn"):
      raise ValueError(f"fused_attention must be a bool, 'xla' or 'cudnn', got {self.fused_attention!r}")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def to_dict(self, with_compute: bool = True) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    for name in self._TUPLES:
      d[name] = list(d[name])
    if not with_compute:
      for k in self.COMPUTE_FIELDS:
        d.pop(k)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any], **overrides):
    unknown = unknown_keys(cls, d)
    if unknown:
      raise ValueError(f"unknown {cls._TITLE} config fields {unknown}")
    return cls(**{**d, **overrides})

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm over the last axis with PyTorch's two-pass variance (`mean((x - mean)^2)`).

  Also serves as SAM's LayerNorm2d: on NHWC arrays the channel axis is last, so normalising it is exactly
  LayerNorm2d's normalisation over dim 1 of NCHW.
  """
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def gelu(x: jax.Array) -> jax.Array:
  """torch.nn.GELU() default: the exact (erf) form."""
  return jax.nn.gelu(x, approximate=False)


class MLPBlock(nn.Module):
  """`segment_anything.modeling.common.MLPBlock`: lin1 -> act -> lin2.

  Attributes:
    mlp_dim: hidden width.
    act: 'gelu' (image encoder) or 'relu' (two-way transformer).
    dtype: compute dtype.
  """
  mlp_dim: int
  act: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_dim = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="lin1")(x)
    x = gelu(x) if self.act == "gelu" else jax.nn.relu(x)
    return nn.Dense(out_dim, dtype=self.dtype, name="lin2")(x)


class ConvTransposeStride(nn.Module):
  """`nn.ConvTranspose2d(in, out, kernel_size=k, stride=k)` (kernel equal to stride, no padding), NHWC.

  With kernel == stride the output patches do not overlap, so each input pixel writes one k x k patch:
  `y[b, k*i + a, k*j + c, o] = sum_ch x[b, i, j, ch] * kernel[a, c, ch, o] + bias[o]`.
  The kernel is stored as [kh, kw, in, out]; the converter maps PyTorch's [in, out, kh, kw] to it by a plain
  transpose (no spatial flip, unlike `flax.linen.ConvTranspose` with `transpose_kernel=False`).

  Attributes:
    features: output channels.
    kernel_size: k (also the stride).
    dtype: compute dtype.
  """
  features: int
  kernel_size: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    b, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jnp.einsum("bijc,uvco->biujvo", x, kernel)  # [B, H, k, W, k, O]
    y = y.reshape(b, h * k, w * k, self.features)  # [B, kH, kW, O]
    return y + bias


def attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, bias: jax.Array | None = None,
              fused: bool | str = False) -> jax.Array:
  """Multi-head softmax attention on [B, T, N, D] queries and [B, S, N, D] keys/values -> [B, T, N, D].

  Args:
    q: queries [B, T, N, D].
    k: keys [B, S, N, D].
    v: values [B, S, N, D].
    scale: multiplier of q.k (1/sqrt(D) in SAM).
    bias: optional additive logits bias [B, N, T, S] (relative positions).
    fused: use `jax.nn.dot_product_attention`: True for JAX's default implementation (XLA), or an
      implementation name ('xla', 'cudnn'); False: the explicit form, with logits and softmax in float32.

  Returns:
    [B, T, N, D] in the dtype of `v`.
  """
  if fused:
    if bias is not None:
      bias = bias.astype(q.dtype)
    impl = None if fused is True else fused
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation=impl)
  logits = jnp.einsum("btnd,bsnd->bnts", q * jnp.asarray(scale, q.dtype), k,
                      preferred_element_type=jnp.float32)  # [B, N, T, S]
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bnts,bsnd->btnd", probs, v)  # [B, T, N, D]
