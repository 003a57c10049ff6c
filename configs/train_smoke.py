"""Tiny detector for smoke runs and tests: trains in minutes on 2 CPU cores.

  python -m zipjax.data.synthetic --out /tmp/shapes --num-images 200
  python -m zipjax train --config configs/train_smoke.py --train-json /tmp/shapes/annotations.json \
      --images-root /tmp/shapes/images --workdir /tmp/det_smoke

Random weights (no init_checkpoint): the backbone and the text tower that embeds the class names are random
(tiny CLIP text tower, bare class names). Every group is documented in zipjax/train/trainer.py (run, state,
checkpoints, eval), zipjax/data/coco_train.py (data), zipjax/train/optim.py (optim) and
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

  # frozen text tower that embeds the class names (used when init_checkpoint is empty)
  config.text = ml_collections.ConfigDict()
  config.text.arch = dict(context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                          transformer_layers=1)
  config.text.seed = 0
  config.text.templates = "bare"        # 'bare': the class name itself; 'ensemble': the 85 CLIP templates

  config.data = ml_collections.ConfigDict()
  config.data.seed = 0                  # order and augmentation
  config.data.workers = 0               # decoding worker processes (0: in the main process)
  config.data.threads = 2               # prefetch threads per process
  config.data.max_instances = 16        # T: targets per image (the largest are kept)
  config.data.min_scale = 0.6           # large-scale jitter: longer side = input_size * U[min, max]
  config.data.max_scale = 1.4
  config.data.hflip = 0.5
  config.data.min_area = 16             # drop transformed masks under this many pixels (at input_size)
  config.data.fraction = 1.0            # seeded subset of the images, (0, 1]
  config.data.fraction_seed = 0
  config.data.class_agnostic = False    # one query, "object", for every category
  config.data.min_score = 0.0           # drop pseudo-labels scoring below this
  config.data.keep_empty = False        # keep images without annotations
  config.data.soft_masks = False        # mask targets: cover fraction per cell instead of the half-cover vote

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 2e-3
  config.optim.end_factor = 0.01        # cosine decays to lr * end_factor at total_steps
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 0.05
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.clip_norm = 1.0          # global gradient norm (0: no clipping)
  config.optim.lr_multipliers = [("^backbone/", 0.5)]   # (regex on parameter paths, lr multiplier)

  config.mesh = [("data", -1)]          # all devices on one data axis
  config.sharding_rules = [(".*", "fsdp")]   # FSDP over 'data' for leaves of >= fsdp_min_size elements
  config.fsdp_min_size = 4096

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 50
  config.checkpoint.keep = 2
  config.checkpoint.asynchronous = True

  config.eval = ml_collections.ConfigDict()
  config.eval.every = 100               # with --val-json; 0: only at the end
  config.eval.at_start = False          # also evaluate the initial parameters (logged as step 0)
  config.eval.batch_size = 8
  config.eval.score_threshold = 0.0     # keep the model's top_k detections per image

  # zipjax detect
  config.detect = ml_collections.ConfigDict()
  config.detect.batch_size = 8
  config.detect.score_threshold = 0.3
  config.detect.overlays = True
  config.detect.overlay_max_side = 1024
  config.input = configs.input_group()  # image decoding limits (zipjax.configs.Limits)
  return config
