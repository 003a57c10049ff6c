"""CLIP checkpoints -> Flax variables, in the layouts users keep them in:

  * "OpenAI / open_clip": OpenAI's TorchScript archives and state dicts, and `open_clip` state dicts (ViT and
    ModifiedResNet; the same keys, e.g. the OpenAI weights that open_clip and timm publish on the Hub as
    `open_clip_model.safetensors`), read by `KEY_TABLE`;
  * "transformers CLIPModel": Hugging Face `transformers` CLIPModel (ViT only: transformers has no
    ModifiedResNet), turned into the OpenAI layout by `HF_RENAMES` (q/k/v projections concatenated).

The layout is detected from the keys (`LAYOUTS`, `zipjax.convert.core.detect_layout`); the architecture is
inferred from shapes as OpenAI's `build_model` does; every key goes through a declared table and every shape
is checked against the Flax module. zipjax's CLIP computes QuickGELU with 64-wide heads and LayerNorm eps 1e-5
(the OpenAI models): a `config.json` (transformers) or `open_clip_config.json` beside the file that declares
otherwise is refused.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from zipjax.convert.core import (CONV, DROP, IDENTITY, LINEAR, TRANSPOSE, Layout, Rename, Rule, apply_rules,
                                 detect_layout, flax_path, translate)
from zipjax.convert.store import checkpoint_file, save_converted, side_json
from zipjax.convert.torch_io import read_checkpoint
from zipjax.errors import CheckpointError
from zipjax.models.clip_net import CLIPConfig, variable_shapes
from zipjax.models.tree import flatten


def _rule(pattern: str, target: str, transform=IDENTITY) -> Rule:
  return Rule(pattern, target, transform, rename=flax_path)


_LINEAR = r"(?:out_proj|c_fc|c_proj|q_proj|k_proj|v_proj)"
_BN = r"(?:bn\d|downsample\.1)"
_LN = r"(?:ln_\w+)"

# torch key (full match) -> Flax path (dotted; numeric components join their parent: layer1.0 -> layer1_0).
KEY_TABLE: tuple[Rule, ...] = (
    # integer attributes that OpenAI's TorchScript archives carry in the state dict: not parameters
    _rule(r"input_resolution|context_length|vocab_size", "", DROP),
    _rule(r".*\.num_batches_tracked", "", DROP),
    # plain arrays
    _rule(r"(positional_embedding|text_projection|logit_scale)", r"params.\1"),
    _rule(r"(visual\.(?:class_embedding|positional_embedding|proj|attnpool\.positional_embedding))",
          r"params.\1"),
    _rule(r"token_embedding\.weight", "params.token_embedding.embedding"),
    # attention input projections [3D, D] (text and ViT blocks)
    _rule(r"(.*\.attn)\.in_proj_weight", r"params.\1.in_proj_weight", LINEAR),
    _rule(r"(.*\.attn)\.in_proj_bias", r"params.\1.in_proj_bias"),
    # linear layers
    _rule(rf"(.*{_LINEAR})\.weight", r"params.\1.kernel", LINEAR),
    _rule(rf"(.*{_LINEAR})\.bias", r"params.\1.bias"),
    # layer norms
    _rule(rf"(.*{_LN})\.weight", r"params.\1.scale"),
    _rule(rf"(.*{_LN})\.bias", r"params.\1.bias"),
    # convolutions (ViT patch embedding, ResNet) and batch norms (ResNet)
    _rule(r"(visual\.(?:.*\.)?(?:conv\d|downsample\.0))\.weight", r"params.\1.kernel", CONV),
    _rule(rf"(visual\.(?:.*\.)?{_BN})\.weight", r"params.\1.scale"),
    _rule(rf"(visual\.(?:.*\.)?{_BN})\.bias", r"params.\1.bias"),
    _rule(rf"(visual\.(?:.*\.)?{_BN})\.running_mean", r"batch_stats.\1.mean"),
    _rule(rf"(visual\.(?:.*\.)?{_BN})\.running_var", r"batch_stats.\1.var"),
)



def _hf_tower(hf: str, ours: str) -> tuple[Rename, ...]:
  """transformers CLIPEncoder layers under `hf` -> OpenAI resblocks under `ours`."""
  layer, block = hf + r"\.encoder\.layers\.(\d+)\.", ours + r"resblocks.\1."
  out = []
  for leaf in ("weight", "bias"):
    for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
      out.append(Rename(layer + rf"self_attn\.{proj}\.{leaf}", block + f"attn.in_proj_{leaf}", part=(i, 3)))
  out += [Rename(layer + r"self_attn\.out_proj\.(weight|bias)", block + r"attn.out_proj.\2"),
          Rename(layer + r"layer_norm1\.(weight|bias)", block + r"ln_1.\2"),
          Rename(layer + r"layer_norm2\.(weight|bias)", block + r"ln_2.\2"),
          Rename(layer + r"mlp\.fc1\.(weight|bias)", block + r"mlp.c_fc.\2"),
          Rename(layer + r"mlp\.fc2\.(weight|bias)", block + r"mlp.c_proj.\2")]
  return tuple(out)


# transformers CLIPModel key (full match) -> OpenAI key (then read by KEY_TABLE, which checks every shape)
HF_RENAMES: tuple[Rename, ...] = (
    Rename(r"(?:text_model|vision_model)\.embeddings\.position_ids", "", DROP),  # a buffer of 0..N-1
    Rename(r"text_model\.embeddings\.token_embedding\.weight", "token_embedding.weight"),
    Rename(r"text_model\.embeddings\.position_embedding\.weight", "positional_embedding"),
    Rename(r"text_model\.final_layer_norm\.(weight|bias)", r"ln_final.\1"),
    Rename(r"text_projection\.weight", "text_projection", TRANSPOSE),
    Rename(r"logit_scale", "logit_scale"),
    Rename(r"vision_model\.embeddings\.class_embedding", "visual.class_embedding"),
    Rename(r"vision_model\.embeddings\.patch_embedding\.weight", "visual.conv1.weight"),
    Rename(r"vision_model\.embeddings\.position_embedding\.weight", "visual.positional_embedding"),
    Rename(r"vision_model\.pre_layrnorm\.(weight|bias)", r"visual.ln_pre.\1"),
    Rename(r"vision_model\.post_layernorm\.(weight|bias)", r"visual.ln_post.\1"),
    Rename(r"visual_projection\.weight", "visual.proj", TRANSPOSE),
) + _hf_tower("text_model", "transformer.") + _hf_tower("vision_model", "visual.transformer.")

OPENAI = "OpenAI / open_clip"
TRANSFORMERS = "transformers CLIPModel"
NO_HF_RESNET = ("transformers has no ModifiedResNet CLIP (its CLIPModel is ViT only): for a ResNet (e.g. the "
                "boundary model RN50x64) use an OpenAI or open_clip checkpoint, such as "
                "hf:timm/resnet50x64_clip.openai")


def _refuse_hf(keys) -> str | None:
  if any(k.startswith("vision_model.") and re.search(r"\.(?:layer\d|stages?|embedder|conv\d|bn\d)\.", k)
         for k in keys):
    return "a transformers vision tower with convolutional stages: " + NO_HF_RESNET
  return None


LAYOUTS: tuple[Layout, ...] = (
    Layout(OPENAI, KEY_TABLE, anchors=(r"token_embedding\.weight", r"visual\..*")),
    Layout(TRANSFORMERS, KEY_TABLE, anchors=(r"text_model\.embeddings\.token_embedding\.weight",
                                             r"vision_model\..*"),
           renames=HF_RENAMES, refuse=_refuse_hf),
)

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "mean": "running_mean",
                  "var": "running_var"}


def torch_key(path: str) -> str:
  """Flax path -> the torch key the table maps to it (inverse of the naming convention, for messages)."""
  parts = path.split("/")[1:]
  if len(parts) > 1 or parts[0] not in ("positional_embedding", "text_projection", "logit_scale"):
    parts[-1] = _LEAF_TO_TORCH.get(parts[-1], parts[-1])
  dotted = ".".join(parts)
  return re.sub(r"_(\d+)(?=\.|$)", r".\1", dotted)


def infer_config(sd: Mapping[str, np.ndarray], source: str = "checkpoint") -> CLIPConfig:
  """The architecture, from the shapes of an OpenAI CLIP state dict (as clip.model.build_model)."""
  _check_family(sd, source)
  try:
    if "visual.proj" in sd:
      width = sd["visual.conv1.weight"].shape[0]
      layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
      patch = sd["visual.conv1.weight"].shape[-1]
      grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
      vision = dict(vision_layers=layers, vision_width=width, vision_patch_size=patch,
                    image_resolution=patch * grid)
    else:
      counts = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
      width = sd["visual.layer1.0.conv1.weight"].shape[0]
      out_w = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
      vision = dict(vision_layers=counts, vision_width=width, vision_patch_size=None, image_resolution=out_w * 32)
    tw = sd["ln_final.weight"].shape[0]
    text = dict(embed_dim=sd["text_projection"].shape[1], context_length=sd["positional_embedding"].shape[0],
                vocab_size=sd["token_embedding.weight"].shape[0], transformer_width=tw,
                transformer_heads=tw // 64,
                transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}))
  except KeyError as e:
    raise CheckpointError(f"{source}: missing key {e.args[0]!r}, needed to infer the CLIP architecture") from e
  return CLIPConfig(**vision, **text)


def _check_family(sd: Mapping[str, np.ndarray], source: str) -> None:
  keys = list(sd)
  if any(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in keys):
    raise CheckpointError(f"{source}: is a SAM checkpoint (image_encoder.* keys), not CLIP; "
                          "use `zipjax convert sam` / zipjax.load_sam")
  if not any(k.startswith("visual.") for k in keys) or "token_embedding.weight" not in sd:
    sample = ", ".join(keys[:5])
    raise CheckpointError(f"{source}: not an OpenAI CLIP checkpoint (expected visual.* and token_embedding.* "
                          f"keys; found {len(keys)} keys such as {sample})")


def detect(sd: Mapping[str, np.ndarray], source: str = "checkpoint") -> Layout:
  """The CLIP layout of a state dict (see the module docstring)."""
  if any(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.", "vision_encoder.")) for k in sd):
    raise CheckpointError(f"{source}: is a SAM checkpoint (image_encoder.* / vision_encoder.* keys), not CLIP; "
                          "use `zipjax convert sam` / zipjax.load_sam")
  return detect_layout(sd, LAYOUTS, source, "CLIP")


def convert_state_dict(sd: Mapping[str, np.ndarray], source: str = "checkpoint",
                       config: CLIPConfig | None = None, layout: Layout | None = None,
                       check_only: bool = False) -> tuple[CLIPConfig, dict | None]:
  """A state dict (numpy) of any layout in LAYOUTS -> (config, Flax variables as float32 numpy).
  `check_only`: keys and shapes only (variables None), e.g. for a real-size layout check without the data."""
  layout = layout or detect(sd, source)
  if layout.renames:
    sd = translate(sd, layout.renames, f"{source} ({layout.name} layout)")
    source = f"{source} ({layout.name} layout, keys named as OpenAI's)"
  else:
    source = f"{source} ({layout.name} layout)"
  config = config or infer_config(sd, source)
  variables = apply_rules(sd, KEY_TABLE, variable_shapes(config), source, torch_name=torch_key,
                          check_only=check_only)
  return config, variables


def _check_side_config(src: str, layout: Layout) -> None:
  """Refuses a transformers / open_clip model whose config (beside the file) zipjax would compute wrongly."""
  if layout.name == TRANSFORMERS:
    cfg = side_json(src, "config.json")
    if cfg is None:
      return
    for tower in ("text_config", "vision_config"):
      c = cfg.get(tower) or {}
      act, eps = c.get("hidden_act", "quick_gelu"), c.get("layer_norm_eps", 1e-5)
      width, heads = c.get("hidden_size"), c.get("num_attention_heads")
      if act != "quick_gelu" or abs(float(eps) - 1e-5) > 1e-12 or (width and heads and width != 64 * heads):
        raise CheckpointError(
            f"{src}: its config.json {tower} has hidden_act={act!r}, layer_norm_eps={eps}, {heads} heads of "
            f"width {width}; zipjax's CLIP computes OpenAI's architecture (quick_gelu, eps 1e-5, 64-wide "
            "heads) and would give wrong embeddings for this model")
  else:
    cfg = side_json(src, "open_clip_config.json")
    model_cfg = (cfg or {}).get("model_cfg") or {}
    if cfg is not None and not model_cfg.get("quick_gelu", False):
      raise CheckpointError(
          f"{src}: its open_clip_config.json does not set quick_gelu: this open_clip model uses nn.GELU, "
          "while zipjax's CLIP computes OpenAI's QuickGELU (it reads the OpenAI-trained weights, e.g. "
          "hf:timm/vit_base_patch16_clip_224.openai, hf:timm/resnet50x64_clip.openai)")


def load_file(src, with_layout: bool = False):
  """Reads (as data, `zipjax.convert.torch_io.read_checkpoint`) and converts a CLIP checkpoint file of any
  layout -> (config, variables), plus the layout's name when `with_layout`."""
  src = checkpoint_file(os.fspath(src), "clip")
  sd = read_checkpoint(src).tensors
  layout = detect(sd, src)
  _check_side_config(src, layout)
  config, variables = convert_state_dict(sd, source=src, layout=layout)
  return (config, variables, layout.name) if with_layout else (config, variables)


def convert_file(src, dst, fmt: str = "dir") -> tuple[str, str]:
  """`zipjax convert clip SRC DST [--format dir|safetensors]`."""
  config, variables, layout = load_file(src, with_layout=True)
  dst = save_converted(dst, "clip", config.to_dict(), variables, source=os.path.basename(os.fspath(src)),
                       fmt=fmt)
  kind = f"ViT-{config.vision_width}w/{config.vision_patch_size}" if config.is_vit else \
      f"ModifiedResNet{list(config.vision_layers)} width {config.vision_width}"
  n = sum(int(np.prod(v.shape)) for v in flatten(variables).values())
  return dst, f"{layout} layout: CLIP {kind}, embed dim {config.embed_dim}, {n / 1e6:.1f}M values"

