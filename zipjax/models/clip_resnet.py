"""CLIP's ModifiedResNet (OpenAI `clip.model.ModifiedResNet`), NHWC, with stage taps.

Differences from a torchvision ResNet, as in the original: a three-conv stem with an average pool, anti-aliased
strided blocks (AvgPool before conv3 and in the downsample branch), and an attention pool instead of global
average pooling. BatchNorm runs in inference mode. `trunk(x, stage)` returns the output of stage 0 (stem) .. 4
(layer4) without running later stages; Zip needs layer3 of RN50x64.

`trunk` runs each stage's repeated blocks (all but the first) in one `lax.scan` over their variables, stacked in
the program (`stack_trunk`, `scan_trunk`; ~0.7 GB of temporaries for RN50x64's layer3 weights in float32).
Unrolled, XLA:CPU fuses every block's residual add into the next one's, so that block i recomputes the residual
chain of all earlier blocks and keeps every earlier conv output alive: RN50x64 to layer3 at 2048 x 2688 needed
6.2 GB of temporaries in float32 (2.8 GB scanned) and the chain's elementwise passes grew with the square of the
depth. A scan body is its own computation, so its carry is materialised once per block; the trunk also compiles
one body per stage instead of 54 blocks.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.clip_layers import dot_product_attention
from zipjax.ops.resize import resize_bilinear

BN_EPS = 1e-5


def _conv(features: int, kernel: int, dtype, name: str, stride: int = 1) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, name=name)


def _bn(name: str, dtype) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, momentum=0.9, dtype=dtype, name=name)


def _avg_pool(x: jax.Array, k: int) -> jax.Array:
  return nn.avg_pool(x, (k, k), strides=(k, k), padding="VALID") if k > 1 else x


class Bottleneck(nn.Module):
  """Anti-aliased bottleneck block (expansion 4).

  Attributes:
    planes: bottleneck width; output has 4 * planes channels.
    stride: 1 or 2 (applied by AvgPool, not by a strided conv).
    downsample: whether the identity branch is AvgPool -> 1x1 conv -> BN.
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = self.dtype
    out = nn.relu(_bn("bn1", d)(_conv(self.planes, 1, d, "conv1")(x)))
    out = nn.relu(_bn("bn2", d)(_conv(self.planes, 3, d, "conv2")(out)))
    out = _avg_pool(out, self.stride)
    out = _bn("bn3", d)(_conv(self.planes * 4, 1, d, "conv3")(out))
    identity = x
    if self.downsample:
      identity = _avg_pool(x, self.stride)
      identity = _bn("downsample_1", d)(_conv(self.planes * 4, 1, d, "downsample_0")(identity))
    return nn.relu(out + identity)


class AttentionPool2d(nn.Module):
  """QKV attention of the mean token over all tokens (+ positions), projected by c_proj.

  Attributes:
    spacial_dim: feature-map side at the training resolution (positions grid).
    embed_dim: input channels.
    heads: attention heads.
    output_dim: output size.
    dtype: compute dtype.
  """
  spacial_dim: int
  embed_dim: int
  heads: int
  output_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    pos = self.param("positional_embedding", nn.initializers.normal(c ** -0.5),
                     (self.spacial_dim ** 2 + 1, self.embed_dim))
    if (h, w) != (self.spacial_dim, self.spacial_dim):
      grid = pos[1:].reshape(self.spacial_dim, self.spacial_dim, c)  # [s, s, C]
      grid = resize_bilinear(grid, (h, w)).reshape(h * w, c)  # [h*w, C]
      pos = jnp.concatenate([pos[:1], grid], axis=0)  # [1 + h*w, C]
    x = x.reshape(b, h * w, c)  # [B, HW, C]
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)  # [B, 1 + HW, C]
    x = x + pos.astype(x.dtype)
    hd = c // self.heads
    q = nn.Dense(c, dtype=self.dtype, name="q_proj")(x[:, :1])  # [B, 1, C]
    k = nn.Dense(c, dtype=self.dtype, name="k_proj")(x)  # [B, 1 + HW, C]
    v = nn.Dense(c, dtype=self.dtype, name="v_proj")(x)
    q = q.reshape(b, 1, self.heads, hd)  # [B, 1, H, hd]
    k = k.reshape(b, -1, self.heads, hd)  # [B, 1 + HW, H, hd]
    v = v.reshape(b, -1, self.heads, hd)
    out = dot_product_attention(q, k, v).reshape(b, c)  # [B, C]
    return nn.Dense(self.output_dim, dtype=self.dtype, name="c_proj")(out)


class ModifiedResNet(nn.Module):
  """CLIP ResNet image tower.

  Attributes:
    layers: blocks per stage, e.g. (3, 4, 6, 3) for RN50, (3, 15, 36, 10) for RN50x64.
    output_dim: embedding size of the attention pool.
    heads: attention-pool heads.
    input_resolution: training resolution (sets the attention-pool positions grid).
    width: stem width; stage i has 4 * width * 2**(i-1) output channels.
    dtype: compute dtype.
  """
  layers: Sequence[int]
  output_dim: int
  heads: int
  input_resolution: int = 224
  width: int = 64

  dtype: Any = jnp.float32

  def setup(self):
    d, w = self.dtype, self.width
    self.conv1 = _conv(w // 2, 3, d, "conv1", stride=2)
    self.bn1 = _bn("bn1", d)
    self.conv2 = _conv(w // 2, 3, d, "conv2")
    self.bn2 = _bn("bn2", d)
    self.conv3 = _conv(w, 3, d, "conv3")
    self.bn3 = _bn("bn3", d)
    stages = []
    inplanes = w
    for s, blocks in enumerate(self.layers):
      planes, stride = w * 2 ** s, (1 if s == 0 else 2)
      stage = []
      for i in range(blocks):
        stage.append(Bottleneck(planes, stride if i == 0 else 1,
                                downsample=(i == 0 and (stride > 1 or inplanes != planes * 4)),
                                dtype=d, name=f"layer{s + 1}_{i}"))
        inplanes = planes * 4
      stages.append(stage)
    self.stages = stages
    self.attnpool = AttentionPool2d(self.input_resolution // 32, w * 32, self.heads, self.output_dim,
                                    dtype=d, name="attnpool")

  def stem(self, x: jax.Array) -> jax.Array:
    """Pixels [B, H, W, 3] -> stem output [B, ceil(H/2)/2, ceil(W/2)/2, width]."""
    x = x.astype(self.dtype)
    x = nn.relu(self.bn1(self.conv1(x)))
    x = nn.relu(self.bn2(self.conv2(x)))
    x = nn.relu(self.bn3(self.conv3(x)))
    return _avg_pool(x, 2)

  def trunk(self, x: jax.Array, stage: int = 4) -> jax.Array:
    """Pixels [B, H, W, 3] -> output of `stage` (0 = stem, 1..4 = layer1..layer4), [B, h, w, C].

    Runs `scan_trunk` on this module's variables (stacked in the program); `init` runs the blocks unrolled
    (it creates them)."""
    if not 0 <= stage <= len(self.layers):
      raise ValueError(f"stage must be in 0..{len(self.layers)}, got {stage}")
    if self.is_initializing():
      x = self.stem(x)
      for blocks in self.stages[:stage]:
        for block in blocks:
          x = block(x)
      return x
    return scan_trunk(self.clone(parent=None), stack_trunk(self.variables, stage), x, stage)

  def __call__(self, x: jax.Array) -> jax.Array:
    """OpenAI encode_image: attention-pooled embedding [B, output_dim]."""
    return self.attnpool(self.trunk(x, len(self.layers))).astype(jnp.float32)


STEM_NAMES = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def stack_trunk(variables: dict, stage: int, stack=None) -> dict:
  """Visual-tower variables {'params': ..., 'batch_stats': ...} (the names of `ModifiedResNet`) -> the layout
  of `scan_trunk`: {'stem': vars, 'layer1': {'first': vars, 'rest': vars with a leading block axis or None},
  ...} up to `stage`. `stack` joins the blocks' leaves (default `jnp.stack`; `np.stack` on the host)."""
  stack = jnp.stack if stack is None else stack

  def block(name):
    return {col: tree[name] for col, tree in variables.items() if name in tree}

  out = {"stem": {col: {k: tree[k] for k in STEM_NAMES if k in tree} for col, tree in variables.items()}}
  for s in range(1, stage + 1):
    names = sorted((k for k in variables["params"] if k.startswith(f"layer{s}_")), key=lambda k: int(k[7:]))
    if not names:
      raise ValueError(f"variables have no blocks of layer{s}")
    rest = [block(n) for n in names[1:]]
    out[f"layer{s}"] = {"first": block(names[0]),
                        "rest": jax.tree_util.tree_map(lambda *xs: stack(xs), *rest) if rest else None}
  return out


def scan_trunk(module: ModifiedResNet, stacked: dict, x: jax.Array, stage: int) -> jax.Array:
  """`module.trunk(x, stage)` from `stack_trunk` variables, each stage's repeated blocks in one `lax.scan`."""
  if not 0 <= stage <= len(module.layers):
    raise ValueError(f"stage must be in 0..{len(module.layers)}, got {stage}")
  x = module.apply(stacked["stem"], x, method=ModifiedResNet.stem)
  for s in range(stage):
    planes, stride = module.width * 2 ** s, (1 if s == 0 else 2)
    part = stacked[f"layer{s + 1}"]
    first = Bottleneck(planes, stride, downsample="downsample_0" in part["first"]["params"], dtype=module.dtype,
                       parent=None)
    x = first.apply(part["first"], x)
    if part["rest"] is not None:
      block = Bottleneck(planes, 1, downsample=False, dtype=module.dtype, parent=None)
      x, _ = jax.lax.scan(lambda h, v: (block.apply(v, h), None), x, part["rest"])
  return x
