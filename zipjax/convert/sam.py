"""Segment Anything `.pth` (plain state dict) -> Flax variables for `zipjax.models.sam_net.Sam`.

The architecture is inferred from shapes: ViT width and patch from `patch_embed.proj.weight`, image size from
`pos_embed`, depth from the block indices, head dim (hence heads) and the global/windowed pattern from each
block's relative-position table, decoder widths from their linear layers. Every key must match the declared
table and every shape must equal what the Flax module expects (`jax.eval_shape`, no initialisation), or a
CheckpointError names the file and the key.

Attributes:
  SAM_RULES: the declared key table.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from zipjax.convert.core import (CONV, CONV_TRANSPOSE, LINEAR, Layout, Rename, Rule, apply_rules, count_indices,
                                 detect_layout, key_shape, same_setting, translate)
from zipjax.convert.store import checkpoint_file, save_converted, side_json
from zipjax.convert.torch_io import read_checkpoint
from zipjax.errors import CheckpointError
from zipjax.models.sam_net.model import Sam, SamConfig
from zipjax.models.tree import flatten

FAMILY = "sam"
_SAM2_PREFIXES = ("image_encoder.trunk.", "sam_mask_decoder.", "vision_encoder.backbone.")  # SAM 2's keys
ORIGINAL = "segment_anything"
TRANSFORMERS = "transformers SamModel"

_IE = r"image_encoder\."
_PE = r"prompt_encoder\."
_MD = r"mask_decoder\."
_TR = r"mask_decoder\.transformer\."
_ATTN = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
_PROJ = r"(q_proj|k_proj|v_proj|out_proj)"

SAM_RULES = [
    # image encoder
    Rule(_IE + r"patch_embed\.proj\.weight", "params/image_encoder/patch_embed/proj/kernel", CONV),
    Rule(_IE + r"patch_embed\.proj\.bias", "params/image_encoder/patch_embed/proj/bias"),
    Rule(_IE + r"pos_embed", "params/image_encoder/pos_embed"),
    Rule(_IE + r"blocks\.(\d+)\.(norm1|norm2)\.weight", r"params/image_encoder/blocks_\1/\2/scale"),
    Rule(_IE + r"blocks\.(\d+)\.(norm1|norm2)\.bias", r"params/image_encoder/blocks_\1/\2/bias"),
    Rule(_IE + r"blocks\.(\d+)\.attn\.(qkv|proj)\.weight", r"params/image_encoder/blocks_\1/attn/\2/kernel",
         LINEAR),
    Rule(_IE + r"blocks\.(\d+)\.attn\.(qkv|proj)\.bias", r"params/image_encoder/blocks_\1/attn/\2/bias"),
    Rule(_IE + r"blocks\.(\d+)\.attn\.(rel_pos_h|rel_pos_w)", r"params/image_encoder/blocks_\1/attn/\2"),
    Rule(_IE + r"blocks\.(\d+)\.mlp\.(lin1|lin2)\.weight", r"params/image_encoder/blocks_\1/mlp/\2/kernel",
         LINEAR),
    Rule(_IE + r"blocks\.(\d+)\.mlp\.(lin1|lin2)\.bias", r"params/image_encoder/blocks_\1/mlp/\2/bias"),
    Rule(_IE + r"neck\.([02])\.weight", r"params/image_encoder/neck_\1/kernel", CONV),
    Rule(_IE + r"neck\.([13])\.weight", r"params/image_encoder/neck_\1/scale"),
    Rule(_IE + r"neck\.([13])\.bias", r"params/image_encoder/neck_\1/bias"),
    # prompt encoder
    Rule(_PE + r"pe_layer\.positional_encoding_gaussian_matrix",
         "params/prompt_encoder/pe_layer/positional_encoding_gaussian_matrix"),
    Rule(_PE + r"point_embeddings\.([0-3])\.weight", r"params/prompt_encoder/point_embeddings_\1/embedding"),
    Rule(_PE + r"(not_a_point_embed|no_mask_embed)\.weight", r"params/prompt_encoder/\1/embedding"),
    Rule(_PE + r"mask_downscaling\.([036])\.weight", r"params/prompt_encoder/mask_downscaling_\1/kernel", CONV),
    Rule(_PE + r"mask_downscaling\.([036])\.bias", r"params/prompt_encoder/mask_downscaling_\1/bias"),
    Rule(_PE + r"mask_downscaling\.([14])\.weight", r"params/prompt_encoder/mask_downscaling_\1/scale"),
    Rule(_PE + r"mask_downscaling\.([14])\.bias", r"params/prompt_encoder/mask_downscaling_\1/bias"),
    # mask decoder
    Rule(_MD + r"(iou_token|mask_tokens)\.weight", r"params/mask_decoder/\1/embedding"),
    Rule(_MD + r"output_upscaling\.([03])\.weight", r"params/mask_decoder/output_upscaling_\1/kernel",
         CONV_TRANSPOSE),
    Rule(_MD + r"output_upscaling\.([03])\.bias", r"params/mask_decoder/output_upscaling_\1/bias"),
    Rule(_MD + r"output_upscaling\.1\.weight", "params/mask_decoder/output_upscaling_1/scale"),
    Rule(_MD + r"output_upscaling\.1\.bias", "params/mask_decoder/output_upscaling_1/bias"),
    Rule(_MD + r"output_hypernetworks_mlps\.(\d+)\.layers\.(\d+)\.weight",
         r"params/mask_decoder/output_hypernetworks_mlps_\1/layers_\2/kernel", LINEAR),
    Rule(_MD + r"output_hypernetworks_mlps\.(\d+)\.layers\.(\d+)\.bias",
         r"params/mask_decoder/output_hypernetworks_mlps_\1/layers_\2/bias"),
    Rule(_MD + r"iou_prediction_head\.layers\.(\d+)\.weight",
         r"params/mask_decoder/iou_prediction_head/layers_\1/kernel", LINEAR),
    Rule(_MD + r"iou_prediction_head\.layers\.(\d+)\.bias",
         r"params/mask_decoder/iou_prediction_head/layers_\1/bias"),
    # two-way transformer
    Rule(_TR + r"layers\.(\d+)\." + _ATTN + r"\." + _PROJ + r"\.weight",
         r"params/mask_decoder/transformer/layers_\1/\2/\3/kernel", LINEAR),
    Rule(_TR + r"layers\.(\d+)\." + _ATTN + r"\." + _PROJ + r"\.bias",
         r"params/mask_decoder/transformer/layers_\1/\2/\3/bias"),
    Rule(_TR + r"layers\.(\d+)\.(norm[1-4])\.weight", r"params/mask_decoder/transformer/layers_\1/\2/scale"),
    Rule(_TR + r"layers\.(\d+)\.(norm[1-4])\.bias", r"params/mask_decoder/transformer/layers_\1/\2/bias"),
    Rule(_TR + r"layers\.(\d+)\.mlp\.(lin1|lin2)\.weight",
         r"params/mask_decoder/transformer/layers_\1/mlp/\2/kernel", LINEAR),
    Rule(_TR + r"layers\.(\d+)\.mlp\.(lin1|lin2)\.bias",
         r"params/mask_decoder/transformer/layers_\1/mlp/\2/bias"),
    Rule(_TR + r"final_attn_token_to_image\." + _PROJ + r"\.weight",
         r"params/mask_decoder/transformer/final_attn_token_to_image/\1/kernel", LINEAR),
    Rule(_TR + r"final_attn_token_to_image\." + _PROJ + r"\.bias",
         r"params/mask_decoder/transformer/final_attn_token_to_image/\1/bias"),
    Rule(_TR + r"norm_final_attn\.weight", "params/mask_decoder/transformer/norm_final_attn/scale"),
    Rule(_TR + r"norm_final_attn\.bias", "params/mask_decoder/transformer/norm_final_attn/bias"),
]


_V, _M = r"vision_encoder\.", r"mask_decoder\."


def hf_head_renames(pe: str, md: str, tokens: str, mlps: str, out_proj: str,
                    mlp: tuple[tuple[str, str], ...]) -> tuple[Rename, ...]:
  """The rows of transformers' SamModel and Sam2Model for the prompt encoder and mask decoder (the same
  modules in both families) but the point embeddings: their key -> the official key, under the official
  module names `pe` and `md` ('prompt_encoder' / 'mask_decoder', SAM 2's 'sam_prompt_encoder' /
  'sam_mask_decoder'). `tokens`: the decoder's token embeddings, `mlps`: its 3-layer MLPs (SamFeedForward:
  proj_in, layers.0, proj_out), as regex alternatives; `out_proj`: transformers' name of the attention output
  projection; `mlp`: the two-way transformer's MLP layers, (transformers' name, official name)."""
  pe_key, tr = pe + ".pe_layer.positional_encoding_gaussian_matrix", _M + r"transformer\."
  qkv, out = r"\.(q_proj|k_proj|v_proj)\.(weight|bias)", rf"\.{out_proj}\.(weight|bias)"
  return (
      # one positional embedding, saved twice (the model ties the prompt encoder's to its own)
      Rename(r"shared_image_embedding\.positional_embedding", pe_key, tied=True),
      Rename(r"prompt_encoder\.shared_embedding\.positional_embedding", pe_key, tied=True),
      Rename(r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", rf"{pe}.\1.weight"),
      *(Rename(rf"prompt_encoder\.mask_embed\.{hf}\.(weight|bias)", rf"{pe}.mask_downscaling.{i}.\1")
        for hf, i in (("conv1", 0), ("layer_norm1", 1), ("conv2", 3), ("layer_norm2", 4), ("conv3", 6))),
      Rename(rf"{_M}({tokens})\.weight", rf"{md}.\1.weight"),
      *(Rename(rf"{_M}{hf}\.(weight|bias)", rf"{md}.output_upscaling.{i}.\1")
        for hf, i in (("upscale_conv1", 0), ("upscale_layer_norm", 1), ("upscale_conv2", 3))),
      *(Rename(rf"{_M}({mlps})\.{hf}\.(weight|bias)", rf"{md}.\1.layers.{i}.\2")
        for hf, i in (("proj_in", 0), (r"layers\.0", 1), ("proj_out", 2))),
      Rename(rf"{tr}layers\.(\d+)\.{_ATTN}{qkv}", rf"{md}.transformer.layers.\1.\2.\3.\4"),
      Rename(rf"{tr}layers\.(\d+)\.{_ATTN}{out}", rf"{md}.transformer.layers.\1.\2.out_proj.\3"),
      Rename(rf"{tr}layers\.(\d+)\.layer_norm([1-4])\.(weight|bias)", rf"{md}.transformer.layers.\1.norm\2.\3"),
      *(Rename(rf"{tr}layers\.(\d+)\.mlp\.{hf}\.(weight|bias)", rf"{md}.transformer.layers.\1.mlp.{official}.\2")
        for hf, official in mlp),
      Rename(rf"{tr}final_attn_token_to_image{qkv}", rf"{md}.transformer.final_attn_token_to_image.\1.\2"),
      Rename(rf"{tr}final_attn_token_to_image{out}", rf"{md}.transformer.final_attn_token_to_image.out_proj.\1"),
      Rename(rf"{tr}layer_norm_final_attn\.(weight|bias)", rf"{md}.transformer.norm_final_attn.\1"),
  )


# transformers SamModel key (full match) -> segment_anything key (then read by SAM_RULES, which checks shapes).
# The decoder MLPs (SamFeedForward: proj_in, layers.0, proj_out) have 3 layers in every released SAM, as here.
HF_RENAMES: tuple[Rename, ...] = (
    Rename(_V + r"patch_embed\.projection\.(weight|bias)", r"image_encoder.patch_embed.proj.\1"),
    Rename(_V + r"pos_embed", "image_encoder.pos_embed"),
    Rename(_V + r"layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"image_encoder.blocks.\1.norm\2.\3"),
    Rename(_V + r"layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"image_encoder.blocks.\1.attn.\2.\3"),
    Rename(_V + r"layers\.(\d+)\.attn\.(rel_pos_h|rel_pos_w)", r"image_encoder.blocks.\1.attn.\2"),
    Rename(_V + r"layers\.(\d+)\.mlp\.(lin1|lin2)\.(weight|bias)", r"image_encoder.blocks.\1.mlp.\2.\3"),
    Rename(_V + r"neck\.conv1\.weight", "image_encoder.neck.0.weight"),
    Rename(_V + r"neck\.layer_norm1\.(weight|bias)", r"image_encoder.neck.1.\1"),
    Rename(_V + r"neck\.conv2\.weight", "image_encoder.neck.2.weight"),
    Rename(_V + r"neck\.layer_norm2\.(weight|bias)", r"image_encoder.neck.3.\1"),
    Rename(r"prompt_encoder\.point_embed\.([0-3])\.weight", r"prompt_encoder.point_embeddings.\1.weight"),
    *hf_head_renames("prompt_encoder", "mask_decoder", tokens="iou_token|mask_tokens",
                     mlps=r"output_hypernetworks_mlps\.\d+|iou_prediction_head", out_proj="out_proj",
                     mlp=(("lin1", "lin1"), ("lin2", "lin2"))),
)

LAYOUTS: tuple[Layout, ...] = (
    Layout(ORIGINAL, tuple(SAM_RULES), anchors=(r"image_encoder\..*", r"mask_decoder\..*")),
    Layout(TRANSFORMERS, tuple(SAM_RULES), anchors=(r"vision_encoder\..*", r"mask_decoder\..*"),
           renames=HF_RENAMES),
)


def detect(sd: Mapping[str, np.ndarray], source: str) -> Layout:
  """The SAM layout of a state dict (segment_anything's `.pth`, or transformers SamModel)."""
  if any(k.startswith(_SAM2_PREFIXES) for k in sd):  # (transformers' Sam2Model also has vision_encoder.*)
    raise CheckpointError(f"{source}: not a Segment Anything checkpoint: {_describe_foreign(sd)}")
  try:
    return detect_layout(sd, LAYOUTS, source, "SAM")
  except CheckpointError:
    why = _describe_foreign(sd)
    if why.startswith("expected "):  # nothing more specific to say than detect_layout's nearest layout
      raise
    raise CheckpointError(f"{source}: not a Segment Anything checkpoint: {why}") from None


def to_original(sd: Mapping[str, np.ndarray], source: str) -> tuple[dict, str]:
  """A SAM state dict of any layout -> (segment_anything keys, the layout's name)."""
  layout = detect(sd, source)
  if layout.renames:
    sd = translate(sd, layout.renames, f"{source} ({layout.name} layout)")
  return dict(sd), layout.name


def _describe_foreign(sd: Mapping[str, np.ndarray]) -> str:
  keys = list(sd)
  if any(k.startswith("visual.") for k in keys) or "text_projection" in sd or "logit_scale" in sd:
    return "it looks like a CLIP checkpoint (visual.*, text_projection), not Segment Anything"
  if any(k.startswith(_SAM2_PREFIXES) for k in keys):
    return ("it looks like a SAM 2 checkpoint: convert it with `zipjax convert sam2` (zipjax.load_sam reads "
            "either family)")
  if any(k.startswith("model.") or k.startswith("module.") for k in keys):
    return "its keys carry a 'model.'/'module.' prefix; save the bare SAM state dict"
  shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
  return f"expected image_encoder.*, prompt_encoder.*, mask_decoder.* keys; found {shown or 'no keys'}"


def _shape(sd, key, source):
  return key_shape(sd, key, source, "SAM")


def infer_config(sd: Mapping[str, np.ndarray], source: str, **overrides):
  """Architecture from the state dict's shapes -> SamConfig (compute options from `overrides`)."""
  if not any(k.startswith("image_encoder.") for k in sd) or not any(k.startswith("mask_decoder.") for k in sd):
    raise CheckpointError(f"{source}: not a Segment Anything checkpoint: {_describe_foreign(sd)}")
  d, _, p, p2 = _shape(sd, "image_encoder.patch_embed.proj.weight", source)
  pos = _shape(sd, "image_encoder.pos_embed", source)
  if len(pos) != 4 or pos[1] != pos[2] or pos[3] != d or p != p2:
    raise CheckpointError(f"{source}: key 'image_encoder.pos_embed' has shape {pos}, expected "
                          f"(1, G, G, {d}) for patch_embed width {d}")
  grid = pos[1]
  depth = count_indices(sd, "image_encoder.blocks.")
  if depth == 0:
    raise CheckpointError(f"{source}: no 'image_encoder.blocks.N.*' keys")
  glob, windows, head_dims = [], set(), set()
  for i in range(depth):
    key = f"image_encoder.blocks.{i}.attn.rel_pos_h"
    length, hd = _shape(sd, key, source)
    head_dims.add(hd)
    if length == 2 * grid - 1:  # (a window as large as the grid is the same computation as global)
      glob.append(i)
    elif length % 2 == 1:
      windows.add((length + 1) // 2)
    else:
      raise CheckpointError(f"{source}: key '{key}' has shape {(length, hd)}; its length must be 2*S-1")
  if len(head_dims) != 1 or len(windows) > 1:
    raise CheckpointError(f"{source}: inconsistent relative-position tables across blocks "
                          f"(head dims {sorted(head_dims)}, windows {sorted(windows)})")
  hd = head_dims.pop()
  if d % hd:
    raise CheckpointError(f"{source}: head dim {hd} (from rel_pos_h) does not divide width {d}")
  window = windows.pop() if windows else 14
  out_chans = _shape(sd, "image_encoder.neck.0.weight", source)[0]
  mlp_ratio = _shape(sd, "image_encoder.blocks.0.mlp.lin1.weight", source)[0] / d
  mask_in = _shape(sd, "prompt_encoder.mask_downscaling.3.weight", source)[0]
  dec_depth = count_indices(sd, "mask_decoder.transformer.layers.")
  dec_mlp = _shape(sd, "mask_decoder.transformer.layers.0.mlp.lin1.weight", source)[0]
  num_tokens = _shape(sd, "mask_decoder.mask_tokens.weight", source)[0]
  iou_depth = count_indices(sd, "mask_decoder.iou_prediction_head.layers.")
  iou_hidden = _shape(sd, "mask_decoder.iou_prediction_head.layers.0.weight", source)[0]
  try:
    return SamConfig(
        encoder_embed_dim=d, encoder_depth=depth, encoder_num_heads=d // hd, encoder_global_attn_indexes=glob,
        img_size=grid * p, patch_size=p, window_size=window, mlp_ratio=mlp_ratio, prompt_embed_dim=out_chans,
        mask_in_chans=mask_in, decoder_depth=dec_depth, decoder_mlp_dim=dec_mlp,
        num_multimask_outputs=num_tokens - 1, iou_head_depth=iou_depth, iou_head_hidden_dim=iou_hidden,
        **overrides)
  except ValueError as e:
    raise CheckpointError(f"{source}: inferred an impossible SAM architecture: {e}") from e


def expected_shapes(config, model=Sam) -> dict[str, tuple]:
  """Flax path -> shape of every variable of `model(config)` (Sam; SAM 2's converter passes Sam2), by
  `jax.eval_shape` (nothing is computed)."""
  s = config.img_size
  shapes = jax.eval_shape(model(config).init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, s, s, 3),
                                                                                          jnp.float32))
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def convert_state_dict(sd: Mapping[str, np.ndarray], source: str, with_layout: bool = False,
                       check_only: bool = False, **overrides):
  """State dict (numpy; segment_anything or transformers layout) -> (SamConfig, nested float32 numpy
  variables), plus the layout's name when `with_layout`. `check_only`: keys and shapes only (variables
  None)."""
  sd, layout = to_original(sd, source)
  source = f"{source} ({layout} layout)"
  config = infer_config(sd, source, **overrides)
  variables = apply_rules(sd, SAM_RULES, expected_shapes(config), source, check_only=check_only)
  return (config, variables, layout) if with_layout else (config, variables)


# transformers SamConfig fields whose value zipjax's SAM computes (released SAM v1); others are refused
_HF_FIXED = {"vision_config": {"hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True, "use_abs_pos": True,
                               "use_rel_pos": True},
             "mask_decoder_config": {"hidden_act": "relu", "attention_downsample_rate": 2},
             "prompt_encoder_config": {"hidden_act": "gelu"}}


def _check_side_config(src: str, layout: str) -> None:
  """Refuses a transformers SamModel whose config.json (beside the file) zipjax would compute wrongly."""
  cfg = side_json(src, "config.json") if layout == TRANSFORMERS else None
  if cfg is None:
    return
  for part, fixed in _HF_FIXED.items():
    sub = cfg.get(part) or {}
    for key, want in fixed.items():
      got = sub.get(key, want)
      if not same_setting(got, want):
        raise CheckpointError(f"{src}: its config.json has {part}.{key}={got!r}; zipjax's SAM computes the "
                              f"released SAM ({key}={want!r}) and would give wrong masks for this model")


def _read(src) -> tuple[str, dict]:
  src = checkpoint_file(os.fspath(src), FAMILY)
  return src, read_checkpoint(src).tensors


def _convert_v1(src: str, sd: dict, **overrides):
  layout = detect(sd, src).name
  _check_side_config(src, layout)
  return convert_state_dict(sd, src, with_layout=True, **overrides)


def load_file(src, **overrides):
  """Reads (as data) and converts a SAM checkpoint file or model folder of any layout -> (SamConfig,
  variables, layout name). `overrides`: compute options of SamConfig."""
  src, sd = _read(src)
  return _convert_v1(src, sd, **overrides)


def convert_file(src, dst, fmt: str = "dir") -> tuple[str, str]:
  """`python -m zipjax convert sam SRC DST [--format dir|safetensors]`: a SAM checkpoint -> converted checkpoint."""
  config, variables, layout = load_file(src)
  out = save_converted(dst, FAMILY, config.to_dict(with_compute=False), variables,
                       source=os.path.basename(os.fspath(src)), fmt=fmt)
  n = sum(int(np.prod(v.shape)) for v in flatten(variables).values())
  name = config.size_name() or (f"custom (width {config.encoder_embed_dim}, depth {config.encoder_depth}, "
                                f"image {config.img_size})")
  return out, f"{layout} layout: SAM {name}, {n / 1e6:.1f}M parameters"
