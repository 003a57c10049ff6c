"""PyTorch references for CLIP: OpenAI's model classes with random weights, and CLIP Surgery written from
the spec (zip_method.md section 1) on top of OpenAI's VisionTransformer parameters."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tests.reference import clip_modules

TINY_TEXT = dict(context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                 transformer_layers=2)


def make_clip(seed: int = 0, **arch) -> torch.nn.Module:
  """OpenAI `clip.model.CLIP(**arch)` with random weights (BatchNorm statistics randomised too), eval mode."""
  model_mod, _ = clip_modules()
  torch.manual_seed(seed)
  model = model_mod.CLIP(**arch).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
  return model


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def nchw(x_nhwc: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


def _dual_attention(attn: torch.nn.MultiheadAttention, y: torch.Tensor):
  """Both CLIP Surgery attention paths on y [L, B, D] -> (original, new), each through out_proj."""
  length, b, d = y.shape
  h = attn.num_heads
  hd = d // h
  qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
  q, k, v = (t.reshape(length, b * h, hd).transpose(0, 1) for t in qkv.chunk(3, dim=-1))

  def att(q, k, v):
    w = torch.softmax(q @ k.transpose(1, 2) * hd ** -0.5, dim=-1)
    return attn.out_proj((w @ v).transpose(0, 1).reshape(length, b, d))

  return att(q, k, v), att(v, v, v)


def resized_positional_embedding(visual, gh: int, gw: int) -> torch.Tensor:
  pos = visual.positional_embedding
  side = int(round((pos.shape[0] - 1) ** 0.5))
  if (gh, gw) == (side, side):
    return pos
  c = pos.shape[1]
  grid = pos[1:].reshape(1, side, side, c).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, (gh, gw), mode="bilinear", align_corners=False)
  return torch.cat([pos[:1], grid[0].reshape(c, gh * gw).T], dim=0)


def _tokens(visual, x: torch.Tensor) -> torch.Tensor:
  x = visual.conv1(x)
  b, c, gh, gw = x.shape
  x = x.reshape(b, c, gh * gw).permute(0, 2, 1)
  x = torch.cat([visual.class_embedding + torch.zeros(b, 1, c), x], dim=1)
  x = x + resized_positional_embedding(visual, gh, gw)
  return visual.ln_pre(x).permute(1, 0, 2)  # [L, B, D]


@torch.no_grad()
def vit_encode(visual, x: torch.Tensor) -> torch.Tensor:
  """OpenAI encode_image with the positional embedding resized for any grid -> [B, D]."""
  x = visual.transformer(_tokens(visual, x)).permute(1, 0, 2)
  return visual.ln_post(x[:, 0, :]) @ visual.proj


@torch.no_grad()
def surgery_encode(visual, x: torch.Tensor, surgery_depth: int = 6) -> torch.Tensor:
  """CLIP Surgery token features [B, 1 + N, D] (unnormalised), from the spec."""
  x = _tokens(visual, x)
  blocks = list(visual.transformer.resblocks)
  start = len(blocks) - surgery_depth
  for blk in blocks[:start]:
    x = blk(x)
  x_new, x_ori = x, x
  for blk in blocks[start:]:
    a_ori, a_new = _dual_attention(blk.attn, blk.ln_1(x_ori))
    x_new = x_new + a_new
    x_ori = x_ori + a_ori
    x_ori = x_ori + blk.mlp(blk.ln_2(x_ori))
  x = torch.cat([x_ori[:1], x_new[1:]], dim=0).permute(1, 0, 2)
  return visual.ln_post(x) @ visual.proj


@torch.no_grad()
def resnet_stages(visual, x: torch.Tensor, last: int = 4) -> list[torch.Tensor]:
  """Outputs of the stem and of layer1..layer`last` of OpenAI's ModifiedResNet, NCHW."""
  v = visual
  x = x.type(v.conv1.weight.dtype)
  x = v.relu1(v.bn1(v.conv1(x)))
  x = v.relu2(v.bn2(v.conv2(x)))
  x = v.relu3(v.bn3(v.conv3(x)))
  x = v.avgpool(x)
  outs = [x]
  for layer in (v.layer1, v.layer2, v.layer3, v.layer4)[:last]:
    x = layer(x)
    outs.append(x)
  return outs


def rel_err(a, b) -> float:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))
