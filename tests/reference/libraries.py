"""Tiny random models built by the libraries that define the layouts zipjax reads (open_clip, transformers).

`open_clip`'s `utils` module imports `torchvision.ops.misc.FrozenBatchNorm2d` at the top, and PyPI's
torchvision does not import beside the CPU torch used here: `open_clip_model()` loads the package without
its `__init__` (as `tests.reference.clip_modules` does for openai-clip) with a placeholder for that one name,
present in `sys.modules` only while `open_clip.model` is imported (none of the models built here use it).
`transformers` is imported first (it probes for torchvision by spec and must see none).
"""
from __future__ import annotations

import importlib
import sys
import types

import torch

from tests.reference import _bare_package


def open_clip_model():
  """-> the `open_clip.model` module."""
  import transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  if "open_clip.model" in sys.modules:
    return sys.modules["open_clip.model"]
  _bare_package("open_clip")
  names = ("torchvision", "torchvision.ops", "torchvision.ops.misc")
  saved = {k: sys.modules[k] for k in names if k in sys.modules}
  tv, ops, misc = (types.ModuleType(n) for n in names)

  class FrozenBatchNorm2d(torch.nn.Module):  # never built: open_clip uses it only to freeze pretrained BNs
    def __init__(self, *a, **k):
      raise NotImplementedError("placeholder for torchvision's FrozenBatchNorm2d (tests only)")

  misc.FrozenBatchNorm2d, tv.ops, ops.misc = FrozenBatchNorm2d, ops, misc
  sys.modules.update(dict(zip(names, (tv, ops, misc))))
  try:
    return importlib.import_module("open_clip.model")
  finally:
    for k in names:
      sys.modules.pop(k, None)
    sys.modules.update(saved)


def randomize_batch_norms(model: torch.nn.Module, seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  for mod in model.modules():
    if isinstance(mod, torch.nn.BatchNorm2d):
      mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
      mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
      mod.weight.data.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
      mod.bias.data.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)


def make_open_clip(embed_dim, image_size, layers, width, patch_size=None, text_width=64, text_layers=2,
                   seed=0) -> torch.nn.Module:
  """open_clip `CLIP` (quick_gelu, as its OpenAI-weight configs) with random weights, eval mode."""
  m = open_clip_model()
  torch.manual_seed(seed)
  vision = m.CLIPVisionCfg(layers=layers, width=width, head_width=64, image_size=image_size,
                           **({"patch_size": patch_size} if patch_size else {}))
  text = m.CLIPTextCfg(context_length=77, vocab_size=49408, width=text_width, heads=text_width // 64,
                       layers=text_layers)
  model = m.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
  with torch.no_grad():
    for p in model.parameters():  # open_clip zero-inits some projections; random everywhere
      p.add_(torch.randn_like(p) * 0.02)
    randomize_batch_norms(model, seed)
  return model


def make_hf_clip(embed_dim=32, image_size=32, patch_size=16, width=64, layers=2, text_width=64, text_layers=2,
                 seed=0):
  """transformers `CLIPModel` (quick_gelu, 64-wide heads, eps 1e-5: OpenAI's architecture), random, eval."""
  from transformers import CLIPConfig, CLIPModel  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  cfg = CLIPConfig(
      projection_dim=embed_dim,
      text_config=dict(vocab_size=49408, hidden_size=text_width, intermediate_size=4 * text_width,
                       num_hidden_layers=text_layers, num_attention_heads=text_width // 64,
                       max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                       eos_token_id=49407, bos_token_id=49406, pad_token_id=0),
      vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=width // 64, image_size=image_size, patch_size=patch_size,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5))
  model = CLIPModel(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  return model


def make_hf_sam(cfg, seed=0):
  """transformers `SamModel` with the architecture of zipjax's SamConfig `cfg`, random weights, eval mode."""
  from transformers import SamConfig, SamModel  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  d = cfg.prompt_embed_dim
  hf = SamConfig(
      vision_config=dict(hidden_size=cfg.encoder_embed_dim, num_hidden_layers=cfg.encoder_depth,
                         num_attention_heads=cfg.encoder_num_heads, image_size=cfg.img_size,
                         patch_size=cfg.patch_size, output_channels=d, window_size=cfg.window_size,
                         global_attn_indexes=list(cfg.encoder_global_attn_indexes), mlp_ratio=cfg.mlp_ratio,
                         num_pos_feats=d // 2),
      prompt_encoder_config=dict(hidden_size=d, image_size=cfg.img_size, patch_size=cfg.patch_size,
                                 mask_input_channels=cfg.mask_in_chans),
      mask_decoder_config=dict(hidden_size=d, num_hidden_layers=cfg.decoder_depth,
                               num_attention_heads=cfg.decoder_num_heads, mlp_dim=cfg.decoder_mlp_dim,
                               iou_head_depth=cfg.iou_head_depth, iou_head_hidden_dim=cfg.iou_head_hidden_dim,
                               num_multimask_outputs=cfg.num_multimask_outputs))
  model = SamModel(hf).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == "prompt_encoder.shared_embedding.positional_embedding":
        continue  # tied to shared_image_embedding
      p.add_(torch.randn_like(p) * (0.02 if p.ndim > 1 else 0.1))
  return model
