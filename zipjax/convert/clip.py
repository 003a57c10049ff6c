"""OpenAI CLIP checkpoints (TorchScript archives or plain state dicts) -> Flax variables.

The architecture is inferred from shapes as OpenAI's `build_model` does; every key goes through the declared
table below and every shape is checked against the Flax module.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from zipjax.convert.core import CONV, DROP, IDENTITY, LINEAR, Rule, apply_rules, flatten, flax_path
from zipjax.convert.store import save_converted
from zipjax.errors import CheckpointError
from zipjax.models.clip import CLIPConfig, variable_shapes


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


def convert_state_dict(sd: Mapping[str, np.ndarray], source: str = "checkpoint",
                       config: CLIPConfig | None = None) -> tuple[CLIPConfig, dict]:
  """OpenAI state dict (numpy) -> (config, Flax variables as float32 numpy)."""
  config = config or infer_config(sd, source)
  variables = apply_rules(sd, KEY_TABLE, variable_shapes(config), source, torch_name=torch_key)
  return config, variables


def load_file(src) -> tuple[CLIPConfig, dict]:
  """Reads (as data, `zipjax.convert.torch_io.read_checkpoint`) and converts an OpenAI checkpoint file."""
  from zipjax.convert.torch_io import read_checkpoint  # pylint: disable=import-outside-toplevel
  return convert_state_dict(read_checkpoint(src).tensors, source=os.fspath(src))


def convert_file(src, dst) -> tuple[str, str]:
  """`zipjax convert clip SRC DST`."""
  config, variables = load_file(src)
  dst = save_converted(dst, "clip", config.to_dict(), variables, source=os.path.basename(os.fspath(src)))
  kind = f"ViT-{config.vision_width}w/{config.vision_patch_size}" if config.is_vit else \
      f"ModifiedResNet{list(config.vision_layers)} width {config.vision_width}"
  n = sum(int(np.prod(v.shape)) for v in flatten(variables).values())
  return dst, f"CLIP {kind}, embed dim {config.embed_dim}, {n / 1e6:.1f}M values"

