"""Tiny detector for smoke runs and tests: trains in minutes on 2 CPU cores.

  python -m zipjax.data.synthetic --out /tmp/shapes --num-images 200
  python -m zipjax train --config configs/train_smoke.py --train-json /tmp/shapes/annotations.json \
      --images-root /tmp/shapes/images --workdir /tmp/det_smoke

Random weights (no init_checkpoint): the backbone and the text tower that embeds the class names are random
(tiny CLIP text tower, bare class names). The groups are documented in zipjax/train/config_parts.py (text,
data, optim, checkpoint, eval, detect), zipjax/models/detector.py (model), zipjax/train/losses.py (loss) and
zipjax/parallel/ (mesh, sharding_rules: "fsdp" rules).
"""
import ml_collections

from zipjax import configs
from zipjax.train import config_parts


def get_config():
  config = ml_collections.ConfigDict()
  config.model = config_parts.model_config("smoke")
  config.loss = config_parts.loss_config()

  config.seed = 0                       # parameter init and per-step randomness (dropout, point sampling)
  config.total_steps = 300
  config.batch_size = 8                 # global: examples per step over all devices and processes
  config.log_every = 1                  # metrics.jsonl / TensorBoard every this many steps
  config.init_checkpoint = ""           # CLIP ViT file, converted dir or manifest name; "" = random backbone
  config.init_workdir = ""              # start from another run's final parameters (self-training rounds)
  config.distributed = False            # jax.distributed.initialize() (multi-host)
  config.xla_opt_level = -1             # >= 0: XLA backend optimisation level (0: fast CPU compiles, slower steps)

  # the typed groups of zipjax/train/config_parts.py (every field documented there), with the smoke run's changes
  config.text = config_parts.group("text", arch=dict(transformer_width=64, transformer_heads=1, transformer_layers=1),
                                   templates="bare")
  config.data = config_parts.group("data", workers=0, threads=2, max_instances=16, min_scale=0.6, max_scale=1.4)
  config.optim = config_parts.group("optim", lr=2e-3, end_factor=0.01, warmup_steps=30,
                                    lr_multipliers=[("^backbone/", 0.5)])

  config.mesh = [("data", -1)]          # all devices on one data axis
  config.sharding_rules = [(".*", "fsdp")]   # FSDP over 'data' for leaves of >= fsdp_min_size elements
  config.fsdp_min_size = 4096

  config.checkpoint = config_parts.group("checkpoint", every=50, keep=2)
  config.eval = config_parts.group("eval", every=100, at_start=False, batch_size=8)
  config.detect = config_parts.group("detect", batch_size=8)
  config.input = configs.input_group()  # image decoding limits (zipjax.configs.Limits)
  return config
