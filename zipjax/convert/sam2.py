"""SAM 2 checkpoints -> Flax variables for `zipjax.models.sam2.Sam2` (image mode only).

Two layouts: the official `.pt` files (`{"model": state_dict}` of `sam2.modeling.sam2_base.SAM2Base`, e.g.
sam2.1_hiera_base_plus.pt) and transformers' `Sam2Model` (safetensors). Both hold the video-memory weights
too (memory attention, memory encoder, object pointers); they are skipped by an explicit declared list
(`VIDEO_ONLY`, `HF_VIDEO_ONLY`), and any other key that the table does not know is an error, as is any
missing key or wrong shape (checked against `jax.eval_shape` of the module).

The architecture: the trunk's width, blocks per stage, background positional-embedding size and first window
are read from the shapes and must match one of the sam2.1 sizes (`SAM2_SIZES`), which give what the weights do
not hold (heads, windows, global-attention blocks); `arch=` (a size name, a Sam2Config or a dict of its fields)
names it instead. Decoder widths are read from the shapes.

Attributes:
  SAM2_RULES: the declared key table of the official layout.
  HF_RENAMES: transformers Sam2Model key -> official key.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from zipjax.convert import sam as sam_v1
from zipjax.convert.core import (CONV, DROP, LINEAR, Layout, Rename, Rule, Transform, apply_rules, count_indices,
                                 detect_layout, key_shape, same_setting, translate)
from zipjax.convert.store import checkpoint_file, save_converted, side_json
from zipjax.convert.torch_io import read_checkpoint
from zipjax.errors import CheckpointError
from zipjax.models.tree import flatten

FAMILY = "sam2"
ORIGINAL = "sam2"
TRANSFORMERS = "transformers Sam2Model"

# torch NCHW parameter [1, C, h, w] -> NHWC [1, h, w, C] (the Hiera positional embeddings)
NCHW = Transform("nchw", lambda w: w.transpose(0, 2, 3, 1), lambda s: (s[0], s[3], s[1], s[2]))

_T = r"image_encoder\.trunk\."
_N = r"image_encoder\.neck\."
_TR = r"sam_mask_decoder\.transformer\."


def _v1_rules() -> list[Rule]:
  """SAM v1's prompt-encoder and mask-decoder rules under SAM 2's module names (the same modules)."""
  out = []
  for r in sam_v1.SAM_RULES:
    if r.pattern.startswith(("prompt_encoder", "mask_decoder")):
      target = r.target.replace("params/prompt_encoder/", "params/sam_prompt_encoder/").replace(
          "params/mask_decoder/", "params/sam_mask_decoder/")
      out.append(Rule("sam_" + r.pattern, target, r.transform, r.rename))
  return out


# Video-mode weights of SAM2Base that the image predictor never uses: skipped, by name.
VIDEO_ONLY = (r"memory_attention\..*", r"memory_encoder\..*", r"maskmem_tpos_enc", r"no_mem_pos_enc",
              r"no_obj_ptr", r"no_obj_embed_spatial", r"obj_ptr_proj\..*", r"obj_ptr_tpos_proj\..*",
              r"mask_downsample\..*")

SAM2_RULES = [
    # Hiera trunk
    Rule(_T + r"patch_embed\.proj\.weight", "params/image_encoder/trunk/patch_embed/proj/kernel", CONV),
    Rule(_T + r"patch_embed\.proj\.bias", "params/image_encoder/trunk/patch_embed/proj/bias"),
    Rule(_T + r"(pos_embed|pos_embed_window)", r"params/image_encoder/trunk/\1", NCHW),
    Rule(_T + r"blocks\.(\d+)\.(norm1|norm2)\.weight", r"params/image_encoder/trunk/blocks_\1/\2/scale"),
    Rule(_T + r"blocks\.(\d+)\.(norm1|norm2)\.bias", r"params/image_encoder/trunk/blocks_\1/\2/bias"),
    Rule(_T + r"blocks\.(\d+)\.attn\.(qkv|proj)\.weight", r"params/image_encoder/trunk/blocks_\1/attn/\2/kernel",
         LINEAR),
    Rule(_T + r"blocks\.(\d+)\.attn\.(qkv|proj)\.bias", r"params/image_encoder/trunk/blocks_\1/attn/\2/bias"),
    Rule(_T + r"blocks\.(\d+)\.mlp\.layers\.(\d+)\.weight",
         r"params/image_encoder/trunk/blocks_\1/mlp/layers_\2/kernel", LINEAR),
    Rule(_T + r"blocks\.(\d+)\.mlp\.layers\.(\d+)\.bias", r"params/image_encoder/trunk/blocks_\1/mlp/layers_\2/bias"),
    Rule(_T + r"blocks\.(\d+)\.proj\.weight", r"params/image_encoder/trunk/blocks_\1/proj/kernel", LINEAR),
    Rule(_T + r"blocks\.(\d+)\.proj\.bias", r"params/image_encoder/trunk/blocks_\1/proj/bias"),
    # FPN neck
    Rule(_N + r"convs\.(\d+)\.conv\.weight", r"params/image_encoder/neck/convs_\1/conv/kernel", CONV),
    Rule(_N + r"convs\.(\d+)\.conv\.bias", r"params/image_encoder/neck/convs_\1/conv/bias"),
    Rule(r"no_mem_embed", "params/no_mem_embed"),
    # the two-way transformer's MLP is sam2_utils.MLP (layers.0 / layers.1) where SAM v1 has lin1 / lin2
    Rule(_TR + r"layers\.(\d+)\.mlp\.layers\.0\.weight", r"params/sam_mask_decoder/transformer/layers_\1/mlp/lin1/kernel",
         LINEAR),
    Rule(_TR + r"layers\.(\d+)\.mlp\.layers\.0\.bias", r"params/sam_mask_decoder/transformer/layers_\1/mlp/lin1/bias"),
    Rule(_TR + r"layers\.(\d+)\.mlp\.layers\.1\.weight", r"params/sam_mask_decoder/transformer/layers_\1/mlp/lin2/kernel",
         LINEAR),
    Rule(_TR + r"layers\.(\d+)\.mlp\.layers\.1\.bias", r"params/sam_mask_decoder/transformer/layers_\1/mlp/lin2/bias"),
    # SAM 2's additions to the mask decoder
    Rule(r"sam_mask_decoder\.(conv_s0|conv_s1)\.weight", r"params/sam_mask_decoder/\1/kernel", CONV),
    Rule(r"sam_mask_decoder\.(conv_s0|conv_s1)\.bias", r"params/sam_mask_decoder/\1/bias"),
    Rule(r"sam_mask_decoder\.obj_score_token\.weight", "params/sam_mask_decoder/obj_score_token/embedding"),
    Rule(r"sam_mask_decoder\.pred_obj_score_head\.layers\.(\d+)\.weight",
         r"params/sam_mask_decoder/pred_obj_score_head/layers_\1/kernel", LINEAR),
    Rule(r"sam_mask_decoder\.pred_obj_score_head\.layers\.(\d+)\.bias",
         r"params/sam_mask_decoder/pred_obj_score_head/layers_\1/bias"),
    Rule(r"sam_mask_decoder\.pred_obj_score_head\.weight", "params/sam_mask_decoder/pred_obj_score_head/kernel",
         LINEAR),
    Rule(r"sam_mask_decoder\.pred_obj_score_head\.bias", "params/sam_mask_decoder/pred_obj_score_head/bias"),
    *_v1_rules(),
    *(Rule(p, "", DROP) for p in VIDEO_ONLY),
]

# transformers Sam2Model / Sam2VideoModel keys -> official keys (then read by SAM2_RULES, which checks shapes).
_V, _B, _M = r"vision_encoder\.", r"vision_encoder\.backbone\.", r"mask_decoder\."
# the video model's weights in the Hub checkpoints (what Sam2Model itself ignores on load): skipped, by name
HF_VIDEO_ONLY = (r"memory_.*", r"mask_downsample\..*", r"object_pointer_proj\..*",
                 r"temporal_positional_encoding_projection_layer\..*", r"no_memory_positional_encoding",
                 r"no_object_pointer", r"occlusion_spatial_embedding_parameter")
HF_RENAMES: tuple[Rename, ...] = (
    Rename(_B + r"patch_embed\.projection\.(weight|bias)", r"image_encoder.trunk.patch_embed.proj.\1"),
    Rename(_B + r"(pos_embed|pos_embed_window)", r"image_encoder.trunk.\1"),
    Rename(_B + r"blocks\.(\d+)\.layer_norm([12])\.(weight|bias)", r"image_encoder.trunk.blocks.\1.norm\2.\3"),
    Rename(_B + r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"image_encoder.trunk.blocks.\1.attn.\2.\3"),
    Rename(_B + r"blocks\.(\d+)\.mlp\.proj_in\.(weight|bias)", r"image_encoder.trunk.blocks.\1.mlp.layers.0.\2"),
    Rename(_B + r"blocks\.(\d+)\.mlp\.proj_out\.(weight|bias)", r"image_encoder.trunk.blocks.\1.mlp.layers.1.\2"),
    Rename(_B + r"blocks\.(\d+)\.proj\.(weight|bias)", r"image_encoder.trunk.blocks.\1.proj.\2"),
    Rename(_V + r"neck\.convs\.(\d+)\.(weight|bias)", r"image_encoder.neck.convs.\1.conv.\2"),
    Rename(r"no_memory_embedding", "no_mem_embed"),
    Rename(r"prompt_encoder\.point_embed\.weight", "sam_prompt_encoder.point_embeddings.{i}.weight", split=4),
    Rename(_M + r"(conv_s0|conv_s1)\.(weight|bias)", r"sam_mask_decoder.\1.\2"),
    *sam_v1.hf_head_renames("sam_prompt_encoder", "sam_mask_decoder", tokens="iou_token|mask_tokens|obj_score_token",
                            mlps=r"output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head",
                            out_proj="o_proj", mlp=(("proj_in", "layers.0"), ("proj_out", "layers.1"))),
    *(Rename(p, "", DROP) for p in HF_VIDEO_ONLY),
)

LAYOUTS: tuple[Layout, ...] = (
    Layout(ORIGINAL, tuple(SAM2_RULES), anchors=(r"image_encoder\.trunk\..*", r"sam_mask_decoder\..*")),
    Layout(TRANSFORMERS, tuple(SAM2_RULES), anchors=(r"vision_encoder\.backbone\..*", r"mask_decoder\..*"),
           renames=HF_RENAMES),
)


def looks_like_sam2(keys) -> bool:
  """True for the keys of a SAM 2 state dict of either layout."""
  return any(k.startswith(sam_v1._SAM2_PREFIXES) for k in keys)  # pylint: disable=protected-access


def detect(sd: Mapping[str, np.ndarray], source: str) -> Layout:
  """The SAM 2 layout of a state dict (the official `.pt`, or transformers Sam2Model)."""
  return detect_layout(sd, LAYOUTS, source, "SAM 2")


def to_original(sd: Mapping[str, np.ndarray], source: str) -> tuple[dict, str]:
  """A SAM 2 state dict of any layout -> (official keys, the layout's name)."""
  layout = detect(sd, source)
  if layout.renames:
    sd = translate(sd, layout.renames, f"{source} ({layout.name} layout)")
  return dict(sd), layout.name


def _shape(sd, key, source):
  return key_shape(sd, key, source, "SAM 2")


def trunk_geometry(sd: Mapping[str, np.ndarray], source: str) -> dict:
  """What the trunk's shapes say: embed_dim, stages, window_pos_embed_bkg_spatial_size, window_spec[0]."""
  c = _shape(sd, "image_encoder.trunk.patch_embed.proj.weight", source)[0]
  bkg = _shape(sd, "image_encoder.trunk.pos_embed", source)
  win = _shape(sd, "image_encoder.trunk.pos_embed_window", source)
  depth = count_indices(sd, "image_encoder.trunk.blocks.")
  if depth == 0:
    raise CheckpointError(f"{source}: no 'image_encoder.trunk.blocks.N.*' keys")
  if len(bkg) != 4 or len(win) != 4 or win[2] != win[3]:
    raise CheckpointError(f"{source}: Hiera positional embeddings have shapes {bkg}, {win}; expected "
                          f"(1, C, h, w) and (1, C, w, w)")
  stages = [1]
  for i in range(1, depth):  # a block with a shortcut projection starts a stage
    if f"image_encoder.trunk.blocks.{i}.proj.weight" in sd:
      stages.append(1)
    else:
      stages[-1] += 1
  return {"embed_dim": c, "stages": tuple(stages), "window_pos_embed_bkg_spatial_size": tuple(bkg[2:]),
          "window0": win[2]}


def infer_config(sd: Mapping[str, np.ndarray], source: str, arch=None, **overrides):
  """Architecture from the state dict's shapes (official keys) -> Sam2Config (`overrides`: other fields,
  e.g. compute options or img_size)."""
  from zipjax.models.sam2.sam2 import SAM2_SIZES, Sam2Config  # pylint: disable=import-outside-toplevel
  if not any(k.startswith("image_encoder.trunk.") for k in sd) or not any(k.startswith("sam_mask_decoder.")
                                                                         for k in sd):
    raise CheckpointError(f"{source}: not a SAM 2 checkpoint (no image_encoder.trunk.* / sam_mask_decoder.* keys)")
  geo = trunk_geometry(sd, source)
  if arch is None:
    found = [name for name, a in SAM2_SIZES.items()
             if (a["embed_dim"], tuple(a["stages"]), tuple(a["window_pos_embed_bkg_spatial_size"]),
                 a["window_spec"][0]) == (geo["embed_dim"], geo["stages"],
                                          geo["window_pos_embed_bkg_spatial_size"], geo["window0"])]
    if not found:
      raise CheckpointError(
          f"{source}: a SAM 2 trunk of width {geo['embed_dim']} with stages {list(geo['stages'])} is none of "
          f"the sam2.1 sizes ({', '.join(SAM2_SIZES)}); its heads, windows and global-attention blocks are not "
          "in the weights: name the architecture (arch=)")
    trunk = dict(SAM2_SIZES[found[0]])
  elif isinstance(arch, str):
    trunk = {k: v for k, v in Sam2Config.from_size(arch).to_dict(with_compute=False).items()
             if k in SAM2_SIZES["tiny"]}
  else:
    d = arch.to_dict(with_compute=False) if hasattr(arch, "to_dict") else dict(arch)
    trunk = {k: v for k, v in d.items() if k not in Sam2Config.COMPUTE_FIELDS}
  d_model = _shape(sd, "image_encoder.neck.convs.0.conv.weight", source)[0]
  decoder = dict(
      d_model=d_model,
      mask_in_chans=_shape(sd, "sam_prompt_encoder.mask_downscaling.3.weight", source)[0],
      decoder_depth=count_indices(sd, "sam_mask_decoder.transformer.layers."),
      decoder_mlp_dim=_shape(sd, "sam_mask_decoder.transformer.layers.0.mlp.layers.0.weight", source)[0],
      num_multimask_outputs=_shape(sd, "sam_mask_decoder.mask_tokens.weight", source)[0] - 1,
      iou_head_depth=count_indices(sd, "sam_mask_decoder.iou_prediction_head.layers."),
      iou_head_hidden_dim=_shape(sd, "sam_mask_decoder.iou_prediction_head.layers.0.weight", source)[0],
      use_high_res_features="sam_mask_decoder.conv_s0.weight" in sd,
      pred_obj_scores="sam_mask_decoder.obj_score_token.weight" in sd,
      pred_obj_scores_mlp=any(k.startswith("sam_mask_decoder.pred_obj_score_head.layers.") for k in sd))
  try:
    return Sam2Config(**{**trunk, **decoder, **overrides})
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source}: inferred an impossible SAM 2 architecture: {e}") from e


def expected_shapes(config) -> dict[str, tuple]:
  """Flax path -> shape of every variable of `Sam2(config)`, by `jax.eval_shape` (nothing is computed)."""
  from zipjax.models.sam2.sam2 import Sam2  # pylint: disable=import-outside-toplevel
  return sam_v1.expected_shapes(config, Sam2)


def convert_state_dict(sd: Mapping[str, np.ndarray], source: str, with_layout: bool = False,
                       check_only: bool = False, arch=None, **overrides):
  """State dict (numpy; official or transformers layout) -> (Sam2Config, nested float32 numpy variables),
  plus the layout's name when `with_layout`. `check_only`: keys and shapes only (variables None)."""
  sd, layout = to_original(sd, source)
  source = f"{source} ({layout} layout)"
  config = infer_config(sd, source, arch=arch, **overrides)
  variables = apply_rules(sd, SAM2_RULES, expected_shapes(config), source, check_only=check_only)
  return (config, variables, layout) if with_layout else (config, variables)


# transformers Sam2Config fields (config.json beside a Sam2Model file) -> the Sam2Config field they set
_HF_TRUNK = {"hidden_size": "embed_dim", "num_attention_heads": "num_heads", "blocks_per_stage": "stages",
             "global_attention_blocks": "global_att_blocks", "window_size_per_stage": "window_spec",
             "window_positional_embedding_background_size": "window_pos_embed_bkg_spatial_size",
             "num_query_pool_stages": "q_pool", "query_stride": "q_stride", "mlp_ratio": "mlp_ratio"}
# ... and the fields whose value zipjax's SAM 2 computes (the released models); others are refused
_HF_FIXED = {("vision_config", "backbone_config"): {"hidden_act": "gelu", "layer_norm_eps": 1e-6},
             ("vision_config",): {"fpn_top_down_levels": [2, 3], "num_feature_levels": 3},
             ("mask_decoder_config",): {"hidden_act": "gelu", "attention_downsample_rate": 2}}


def check_side_config(src: str, layout: str, config) -> None:
  """Refuses a transformers Sam2Model whose config.json (beside the file) declares an architecture other than
  the one converted (heads, windows, global blocks are not in the weights) or settings zipjax does not
  compute."""
  cfg = side_json(src, "config.json") if layout == TRANSFORMERS else None
  if cfg is None:
    return

  def sub(keys):
    node = cfg
    for k in keys:
      node = node.get(k) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}

  trunk = sub(("vision_config", "backbone_config"))
  for hf_key, field in _HF_TRUNK.items():
    if hf_key in trunk:
      got, want = trunk[hf_key], getattr(config, field)
      same = list(got) == list(want) if isinstance(want, tuple) and isinstance(got, (list, tuple)) else got == want
      if not same:
        raise CheckpointError(f"{src}: its config.json has backbone_config.{hf_key}={got!r} but the weights are "
                              f"SAM 2.1 hiera {config.size_name() or 'custom'} ({field}={want!r}); zipjax "
                              "would compute another model")
  for keys, fixed in _HF_FIXED.items():
    node = sub(keys)
    for key, want in fixed.items():
      got = node.get(key, want)
      if not same_setting(got, want):
        raise CheckpointError(f"{src}: its config.json has {'.'.join(keys)}.{key}={got!r}; zipjax's SAM 2 "
                              f"computes the released models ({key}={want!r})")


def convert_read(src: str, sd: Mapping[str, np.ndarray], arch=None, **overrides):
  """A state dict read from `src` -> (Sam2Config, variables, layout name), with the side-config check."""
  config, variables, layout = convert_state_dict(sd, src, with_layout=True, arch=arch, **overrides)
  check_side_config(src, layout, config)
  return config, variables, layout


def load_file(src, arch=None, **overrides):
  """Reads (as data) and converts a SAM 2 checkpoint file or model folder of either layout -> (Sam2Config,
  variables, layout name). `overrides`: compute options (or img_size) of Sam2Config."""
  src = checkpoint_file(os.fspath(src), FAMILY)
  sd = read_checkpoint(src).tensors
  return convert_read(src, sd, arch=arch, **overrides)


def convert_file(src, dst, fmt: str = "dir") -> tuple[str, str]:
  """A SAM 2 checkpoint -> converted checkpoint (`python -m zipjax convert sam SRC DST` routes SAM 2 files
  here)."""
  config, variables, layout = load_file(src)
  out = save_converted(dst, FAMILY, config.to_dict(with_compute=False), variables,
                       source=os.path.basename(os.fspath(src)), fmt=fmt)
  n = sum(int(np.prod(v.shape)) for v in flatten(variables).values())
  name = config.size_name() or f"custom (width {config.embed_dim}, stages {list(config.stages)})"
  return out, f"{layout} layout: SAM 2.1 hiera {name}, {n / 1e6:.1f}M parameters (image mode)"
def load_any(src, **overrides):
  """A SAM or SAM 2 checkpoint file or model folder (the family is told by its keys) -> (SamConfig or
  Sam2Config, variables, layout name); what `zipjax.load_sam` reads a file with."""
  src, sd = sam_v1._read(src)
  if looks_like_sam2(sd):
    return convert_read(src, sd, **overrides)
  return sam_v1._convert_v1(src, sd, **overrides)


