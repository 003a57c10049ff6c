"""What `zipjax train` trains and with which text: the task (the open-vocabulary detector of
`zipjax.models.detector` with its set loss, `zipjax.train.losses`), its config groups as the model sees them
(`detector_config`), the frozen CLIP text tower that embeds the class names (`text_encoder`: the CLIP of
`init_checkpoint`, else a random text tower from `config.text`, inherited from `init_workdir`'s run when that is
set) and the class queries (`class_queries`), a run's recorded config (`load_run_config`), and the XLA options of
its jitted functions (`compiler_options`). The trainer (`zipjax.train.trainer`), the evaluator
(`zipjax.train.evaluator`) and detector inference (`zipjax.train.predict`) build on it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np

from zipjax.clip import ClipModel, load_clip
from zipjax.errors import CheckpointError, InputError
from zipjax.models.clip_net import CLIPConfig
from zipjax.models.detector import Detector, DetectorConfig
from zipjax.pipeline.semantic import text_queries
from zipjax.train.losses import set_loss
from zipjax.weights import resolve


@dataclasses.dataclass
class Task:
  """What the trainer trains: pure functions, jittable.

  Attributes:
    init: rng -> params (random initialisation).
    forward: (params, batch, train, rng) -> model outputs.
    loss: (outputs, batch, rng) -> (scalar loss, dict of scalar metrics).
  """
  init: Callable
  forward: Callable
  loss: Callable


def detector_config(config):
  return DetectorConfig.from_config(config.model)


def detector_task(config) -> Task:
  """The open-vocabulary detector (`zipjax.models.detector`) with its set loss (`zipjax.train.losses`)."""
  cfg = detector_config(config)
  model = Detector(cfg)
  loss_cfg = config.loss

  def init(rng):
    s = cfg.input_size
    return model.init(rng, jnp.zeros((1, s, s, 3), jnp.uint8), jnp.zeros((1, 1, cfg.embed_dim), jnp.float32),
                      jnp.ones((1, 1), bool))["params"]

  def forward(params, batch, train, rng):
    return model.apply({"params": params}, batch["image"], batch["queries"], batch["query_valid"], train=train,
                       rngs={"dropout": rng} if train else None)

  def loss(out, batch, rng):
    return set_loss(out, batch, loss_cfg, rng=rng)

  return Task(init=init, forward=forward, loss=loss)


# ----------------------------------------------------------------------------------------------- text
def _text_settings(config) -> dict:
  """Where the text tower comes from: {'checkpoint': path} or {'arch': {...}, 'seed': s}, plus templates."""
  init_ckpt = str(config.get("init_checkpoint", "") or "")
  text = config.text
  if not init_ckpt and str(config.get("init_workdir", "") or ""):
    prev = load_run_config(str(config.init_workdir))
    init_ckpt = str(prev.get("init_checkpoint", "") or "")
    text = prev.text
  out = {"templates": str(text.templates)}
  if init_ckpt:
    out["checkpoint"] = init_ckpt
  else:
    out["arch"] = dict(text.arch.to_dict() if hasattr(text.arch, "to_dict") else text.arch)
    out["seed"] = int(text.seed)
  return out


def text_encoder(config):
  """The frozen CLIP whose text tower embeds class names (see the module docstring)."""
  settings = _text_settings(config)
  if "checkpoint" in settings:
    return load_clip(resolve(settings["checkpoint"], "clip"))
  arch = settings["arch"]
  # the vision tower is never used: the smallest ViT that builds
  cfg = CLIPConfig(embed_dim=int(config.model.embed_dim), image_resolution=32, vision_layers=1, vision_width=64,
                   vision_patch_size=16, **arch)
  return ClipModel.random(cfg, seed=settings["seed"])


def class_queries(config, clip_model, names) -> np.ndarray:
  """float32 [Q, D] unit-norm text embeddings of the class names (prompt ensemble or bare names)."""
  templates = _text_settings(config)["templates"]
  if templates not in ("ensemble", "bare"):
    raise InputError(f"config.text.templates must be 'ensemble' or 'bare', got {templates!r}")
  q = text_queries(clip_model, list(names), None if templates == "ensemble" else ["{}"])
  if q.shape[-1] != int(config.model.embed_dim):
    raise CheckpointError(f"text embeddings have width {q.shape[-1]}, the detector's embed_dim is "
                          f"{config.model.embed_dim}")
  return q


# --------------------------------------------------------------------------------------------- config
def config_to_dict(config) -> dict:
  return json.loads(config.to_json()) if hasattr(config, "to_json") else json.loads(json.dumps(config))


def load_run_config(workdir: str):
  """The ConfigDict a run recorded in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise InputError(f"{workdir}: not a zipjax train workdir (no config.json)")
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: cannot read ({e})") from e



def compiler_options(config) -> dict | None:
  """XLA options of the jitted functions: `config.xla_opt_level` >= 0 sets `xla_backend_optimization_level`
  (0 compiles a CPU program several times faster and runs it slower: for tests and smoke runs)."""
  level = int(config.get("xla_opt_level", -1))
  return {"xla_backend_optimization_level": level} if level >= 0 else None


__all__ = ["Task", "detector_config", "detector_task", "text_encoder", "class_queries", "config_to_dict",
           "load_run_config", "compiler_options"]
