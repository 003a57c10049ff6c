"""The config groups of configs/train_*.py, typed: each field's default, rule and doc written once.

- `config.model`: `zipjax.models.detector.DetectorConfig` (presets `SMOKE_MODEL`, `VIT_B16_MODEL`);
- `config.loss`: `zipjax.train.losses.LossConfig`;
- `config.text`, `config.data`, `config.optim`, `config.checkpoint`, `config.eval`, `config.detect`: the
  groups below (`TRAIN_GROUPS`), whose defaults are the real recipe's (configs/train_vit_b16.py);
- `config.input`: `zipjax.configs.Limits`.

A config file builds a group with its changes (`config_parts.group("data", max_instances=16)`), checked by the
rules; `zipjax.config_check` takes every group's rules from here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import ml_collections

from zipjax.errors import InputError
from zipjax.models.detector import DetectorConfig
from zipjax.schema import (BOOL, PROBABILITY, SEED, Choice, Custom, Float, Group, Int, config_group,
                           group as nested, regex_pairs, setting)
from zipjax.train.losses import LossConfig

# Tiny: trains in minutes on 2 CPU cores (8 x 8 tokens of width 64, 2 blocks, 32 x 32 masks at 128 px).
# Its masks (stride-4 pixel decoder) localise edges far better than its box head (16 px tokens from 2 small
# blocks), so detections report the masks' tight boxes: on held-out generated rectangles after 1500 steps,
# 0.91 of the objects are found at IoU > 0.5 with mask boxes against 0.76 with the head's boxes.
SMOKE_MODEL = DetectorConfig(input_size=128, patch_size=16, width=64, layers=2, heads=2, embed_dim=64,
                             mask_stride=4, mask_dim=32, pixel_width=32, stem_width=16, top_k=50,
                             box_source="mask")
# The real one: CLIP ViT-B/16 at 768 px (48 x 48 = 2304 tokens, 192 x 192 masks), OWL-ViT's recipe.
VIT_B16_MODEL = DetectorConfig(input_size=768, patch_size=16, width=768, layers=12, heads=12, embed_dim=512,
                               mask_stride=4, mask_dim=64, pixel_width=128, stem_width=32, drop_path=0.1,
                               remat=True, dtype="bfloat16", top_k=100)
PRESETS = {"smoke": SMOKE_MODEL, "vit_b16": VIT_B16_MODEL}


def model_config(preset: str = "smoke", **overrides) -> ml_collections.ConfigDict:
  """`config.model` for a preset ('smoke' or 'vit_b16'), with field overrides."""
  if preset not in PRESETS:
    raise ValueError(f"unknown detector preset {preset!r}; known: {sorted(PRESETS)}")
  return ml_collections.ConfigDict(dataclasses.asdict(PRESETS[preset].replace(**overrides)))


def loss_config(**overrides) -> ml_collections.ConfigDict:
  """`config.loss`: LossConfig defaults with field overrides."""
  return ml_collections.ConfigDict(dataclasses.asdict(LossConfig(**overrides)))


@dataclasses.dataclass(frozen=True)
class TextArch(Group):
  """`config.text.arch`: the random frozen CLIP text tower (zipjax.models.clip_net's text fields).

  Attributes:
    context_length: tokens per prompt.
    vocab_size: BPE vocabulary.
    transformer_width: token width (a multiple of transformer_heads).
    transformer_heads: attention heads.
    transformer_layers: depth.
  """
  NAME: ClassVar[str] = "text.arch"
  context_length: int = setting(77, Int(1))
  vocab_size: int = setting(49408, Int(1))
  transformer_width: int = setting(512, Int(1))
  transformer_heads: int = setting(8, Int(1))
  transformer_layers: int = setting(12, Int(1))

  def __post_init__(self):
    super().__post_init__()
    if self.transformer_width % self.transformer_heads:
      raise InputError(f"text.arch.transformer_width = {self.transformer_width} must be a multiple of "
                       f"text.arch.transformer_heads = {self.transformer_heads}")


@dataclasses.dataclass(frozen=True)
class Text(Group):
  """`config.text`: the frozen text tower that embeds the class names (zipjax/train/task.py).

  Attributes:
    arch: the random tower's architecture, used only without init_checkpoint (else init_checkpoint's own).
    seed: the random tower's seed.
    templates: 'bare' (the class name itself) or 'ensemble' (the 85 CLIP templates).
  """
  NAME: ClassVar[str] = "text"
  arch: TextArch = nested(TextArch)
  seed: int = setting(0, SEED)
  templates: str = setting("ensemble", Choice("bare", "ensemble"))


@dataclasses.dataclass(frozen=True)
class Data(Group):
  """`config.data`: the training input (zipjax/data/coco_train.py).

  Attributes:
    seed: order and augmentation.
    workers: decoding worker processes (0: in the main process).
    threads: prefetch threads per process.
    max_instances: T, targets per image (the largest are kept).
    min_scale: large-scale jitter: longer side = input_size * U[min_scale, max_scale] (detectron2's range).
    max_scale: see min_scale (>= min_scale).
    hflip: probability of a horizontal flip.
    min_area: transformed masks under this many pixels (at input_size) are dropped.
    fraction: a seeded subset of the images, (0, 1].
    fraction_seed: the subset's seed.
    class_agnostic: one query, "object", for every category (CutLER; with loss.drop_loss).
    min_score: pseudo-labels scoring below this are dropped.
    keep_empty: keep images without annotations.
    soft_masks: mask targets are the cover fraction of each cell instead of the half-cover vote.
  """
  NAME: ClassVar[str] = "data"
  seed: int = setting(0, SEED)
  workers: int = setting(8, Int(0))
  threads: int = setting(4, Int(0))
  max_instances: int = setting(100, Int(1))
  min_scale: float = setting(0.1, Float(0.0, lo_open=True))
  max_scale: float = setting(2.0, Float(0.0, lo_open=True))
  hflip: float = setting(0.5, PROBABILITY)
  min_area: float = setting(16.0, Float(0.0))
  fraction: float = setting(1.0, Float(0.0, 1.0, lo_open=True))
  fraction_seed: int = setting(0, SEED)
  class_agnostic: bool = setting(False, BOOL)
  min_score: float = setting(0.0, PROBABILITY)
  keep_empty: bool = setting(False, BOOL)
  soft_masks: bool = setting(False, BOOL)

  def __post_init__(self):
    super().__post_init__()
    if self.max_scale < self.min_scale:
      raise InputError(f"data.max_scale = {self.max_scale} must be >= data.min_scale = {self.min_scale}")


def _lr_multipliers(v) -> bool:
  return regex_pairs(v, lambda m: isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m)
                     and m >= 0)


@dataclasses.dataclass(frozen=True)
class Optim(Group):
  """`config.optim`: AdamW with warm-up and cosine decay (zipjax/train/optim.py), OWL-ViT's recipe.

  Attributes:
    lr: the heads' peak learning rate.
    end_factor: the cosine decays to lr * end_factor at total_steps.
    warmup_steps: linear warm-up steps (<= total_steps).
    weight_decay: decoupled weight decay.
    b1: Adam's first-moment decay, in [0, 1) (its bias correction divides by 1 - b1**step: 1 gives NaN).
    b2: Adam's second-moment decay, in [0, 1).
    eps: Adam's epsilon.
    clip_norm: global gradient norm clip (0: no clipping).
    lr_multipliers: (regex searched in parameter paths, lr multiplier) pairs, the first match wins
      (the backbone at 0.25: 5e-5, OWL-ViT).
  """
  NAME: ClassVar[str] = "optim"
  lr: float = setting(2e-4, Float(0.0, lo_open=True))
  end_factor: float = setting(0.0, Float(0.0))
  warmup_steps: int = setting(1000, Int(0))
  weight_decay: float = setting(0.05, Float(0.0))
  b1: float = setting(0.9, Float(0.0, 1.0, hi_open=True))
  b2: float = setting(0.999, Float(0.0, 1.0, hi_open=True))
  eps: float = setting(1e-8, Float(0.0, lo_open=True))
  clip_norm: float = setting(1.0, Float(0.0))
  lr_multipliers: tuple = setting((("^backbone/", 0.25),),
                                  Custom("a list of (regex, multiplier >= 0) pairs", _lr_multipliers))


@dataclasses.dataclass(frozen=True)
class Checkpoint(Group):
  """`config.checkpoint`: orbax checkpoints of the train state (zipjax/train/checkpoints.py).

  Attributes:
    every: save every this many steps (and at the end, and on SIGTERM).
    keep: checkpoints kept.
    asynchronous: save in the background.
  """
  NAME: ClassVar[str] = "checkpoint"
  every: int = setting(1000, Int(1))
  keep: int = setting(3, Int(1))
  asynchronous: bool = setting(True, BOOL)


@dataclasses.dataclass(frozen=True)
class Eval(Group):
  """`config.eval`: COCO evaluation during training, with --val-json (zipjax/train/evaluator.py).

  Attributes:
    every: evaluate every this many steps (0: only at the end).
    at_start: also evaluate the initial parameters (logged as step 0: the baseline).
    batch_size: images per evaluation step.
    score_threshold: detections below this are dropped (0: the model's top_k per image).
  """
  NAME: ClassVar[str] = "eval"
  every: int = setting(5000, Int(0))
  at_start: bool = setting(True, BOOL)
  batch_size: int = setting(16, Int(1))
  score_threshold: float = setting(0.0, PROBABILITY)


@dataclasses.dataclass(frozen=True)
class Detect(Group):
  """`config.detect`: `zipjax detect` (zipjax/commands/detect.py).

  Attributes:
    batch_size: images per step.
    score_threshold: detections below this are dropped.
    overlays: write DIR/overlays/*.png.
    overlay_max_side: overlays are drawn at most this large (longer side).
  """
  NAME: ClassVar[str] = "detect"
  batch_size: int = setting(16, Int(1))
  score_threshold: float = setting(0.3, PROBABILITY)
  overlays: bool = setting(True, BOOL)
  overlay_max_side: int = setting(1024, Int(1))


TRAIN_GROUPS = {cls.NAME: cls for cls in (Text, Data, Optim, Checkpoint, Eval, Detect)}


def group(name: str, **changes) -> ml_collections.ConfigDict:
  """`config.<name>` (a name of `TRAIN_GROUPS`) for a config file: the typed group's defaults with `changes`,
  checked by their rules (`zipjax.schema.config_group`)."""
  if name not in TRAIN_GROUPS:
    raise InputError(f"unknown train config group {name!r}; known: {sorted(TRAIN_GROUPS)}")
  return config_group(TRAIN_GROUPS[name], name, **changes)


__all__ = ["SMOKE_MODEL", "VIT_B16_MODEL", "PRESETS", "model_config", "loss_config", "TextArch", "Text", "Data",
           "Optim", "Checkpoint", "Eval", "Detect", "TRAIN_GROUPS", "group"]
