"""Reference SAM models in PyTorch (segment_anything modules) with random weights, converted to Flax."""
from __future__ import annotations

import functools

import numpy as np
import torch

from tests.reference import sam_modules
from zipjax.convert.sam import convert_state_dict
from zipjax.models.sam_net.model import SamConfig

torch.set_grad_enabled(False)

# Parity tolerance (float32 on both sides, highest matmul precision in JAX): ||flax - torch|| / ||torch||.
RTOL = 1e-4


def rel_err(a, b) -> float:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build_torch_sam(cfg: SamConfig, seed: int = 0):
  """A segment_anything `Sam` with `cfg`'s architecture and random weights (no zero/one parameters left)."""
  modeling, _ = sam_modules()
  torch.manual_seed(seed)
  g = cfg.img_size // cfg.patch_size
  sam = modeling.Sam(
      image_encoder=modeling.ImageEncoderViT(
          depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.img_size,
          mlp_ratio=cfg.mlp_ratio, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
          num_heads=cfg.encoder_num_heads, patch_size=cfg.patch_size, qkv_bias=True, use_rel_pos=True,
          global_attn_indexes=list(cfg.encoder_global_attn_indexes), window_size=cfg.window_size,
          out_chans=cfg.prompt_embed_dim),
      prompt_encoder=modeling.PromptEncoder(
          embed_dim=cfg.prompt_embed_dim, image_embedding_size=(g, g), input_image_size=(cfg.img_size,) * 2,
          mask_in_chans=cfg.mask_in_chans),
      mask_decoder=modeling.MaskDecoder(
          num_multimask_outputs=cfg.num_multimask_outputs,
          transformer=modeling.TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
                                                 mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads),
          transformer_dim=cfg.prompt_embed_dim, iou_head_depth=cfg.iou_head_depth,
          iou_head_hidden_dim=cfg.iou_head_hidden_dim))
  sam.eval()
  randomize_(sam, seed)
  return sam


def randomize_(model: torch.nn.Module, seed: int) -> None:
  """Replaces the zero/one initialisations (LayerNorms, positions) with random values, in place."""
  gen = torch.Generator().manual_seed(seed + 1)
  modeling, _ = sam_modules()
  norm_types = (torch.nn.LayerNorm, modeling.common.LayerNorm2d)
  for module in model.modules():
    if isinstance(module, norm_types):
      module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
      module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
  for name, p in model.named_parameters():
    if name.endswith(("rel_pos_h", "rel_pos_w", "pos_embed")):
      p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    elif name.endswith(".bias") and "norm" not in name and p.abs().max() == 0:
      p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_and_flax(cfg: SamConfig, seed: int = 0):
  """-> (torch Sam, SamModel with the same weights through the converter, inferred config)."""
  from zipjax.sam import SamModel  # pylint: disable=import-outside-toplevel
  sam = build_torch_sam(cfg, seed)
  inferred, variables = convert_state_dict(state_dict_numpy(sam), f"random-torch-seed{seed}")
  return sam, SamModel(inferred, variables), inferred


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.numpy().transpose(0, 2, 3, 1)
