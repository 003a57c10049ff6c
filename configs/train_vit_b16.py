"""The real detector: CLIP ViT-B/16 backbone at 768 px (bf16 compute, remat, stochastic depth 0.1).

  python -m zipjax train --config configs/train_vit_b16.py --train-json ANN --images-root DIR --workdir W \
      --config.init_checkpoint=ViT-B-16.pt

Recipe after OWL-ViT (768 px, backbone lr 5e-5, warm-up + cosine) and CutLER's schedule (160k steps at batch
16, class-agnostic pseudo-labels with DropLoss: `--config.data.class_agnostic=True --config.loss.drop_loss=True`).
The class names are embedded once by the frozen CLIP text tower of init_checkpoint (85-template ensemble).
"""
import ml_collections

from zipjax import configs
from zipjax.train import config_parts


def get_config():
  config = ml_collections.ConfigDict()
  config.model = config_parts.model_config("vit_b16")
  config.loss = config_parts.loss_config()

  config.seed = 0
  config.total_steps = 160_000
  config.batch_size = 16
  config.log_every = 50
  config.init_checkpoint = "ViT-B/16"   # manifest name, OpenAI .pt file or converted dir
  config.init_workdir = ""
  config.distributed = False
  config.xla_opt_level = -1

  config.text = ml_collections.ConfigDict()  # only used without init_checkpoint (random text tower)
  config.text.arch = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                          transformer_layers=12)
  config.text.seed = 0
  config.text.templates = "ensemble"

  config.data = ml_collections.ConfigDict()
  config.data.seed = 0
  config.data.workers = 8
  config.data.threads = 4
  config.data.max_instances = 100
  config.data.min_scale = 0.1           # detectron2's large-scale jitter range
  config.data.max_scale = 2.0
  config.data.hflip = 0.5
  config.data.min_area = 16
  config.data.fraction = 1.0
  config.data.fraction_seed = 0
  config.data.class_agnostic = False
  config.data.min_score = 0.0
  config.data.keep_empty = False
  config.data.soft_masks = False

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 2e-4                # heads; the backbone gets lr * 0.25 = 5e-5 (OWL-ViT)
  config.optim.end_factor = 0.0
  config.optim.warmup_steps = 1000
  config.optim.weight_decay = 0.05
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.clip_norm = 1.0
  config.optim.lr_multipliers = [("^backbone/", 0.25)]

  config.mesh = [("data", -1)]
  config.sharding_rules = [(".*", "fsdp")]
  config.fsdp_min_size = 1 << 20        # 4 MB of float32, as big_vision's default

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 1000
  config.checkpoint.keep = 3
  config.checkpoint.asynchronous = True

  config.eval = ml_collections.ConfigDict()
  config.eval.every = 5000
  config.eval.at_start = True           # baseline: the initial parameters, as step 0
  config.eval.batch_size = 16
  config.eval.score_threshold = 0.0

  config.detect = ml_collections.ConfigDict()
  config.detect.batch_size = 16
  config.detect.score_threshold = 0.3
  config.detect.overlays = True
  config.detect.overlay_max_side = 1024
  config.input = configs.input_group()  # image decoding limits (zipjax.configs.Limits)
  return config
