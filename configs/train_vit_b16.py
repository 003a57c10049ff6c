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

  # the typed groups of zipjax/train/config_parts.py: their defaults are this recipe (every field documented there)
  config.text = config_parts.group("text")    # the random tower: only used without init_checkpoint
  config.data = config_parts.group("data")
  config.optim = config_parts.group("optim")  # heads at 2e-4, the backbone at lr * 0.25 = 5e-5 (OWL-ViT)

  config.mesh = [("data", -1)]
  config.sharding_rules = [(".*", "fsdp")]
  config.fsdp_min_size = 1 << 20        # 4 MB of float32, as big_vision's default

  config.checkpoint = config_parts.group("checkpoint")
  config.eval = config_parts.group("eval")
  config.detect = config_parts.group("detect")
  config.input = configs.input_group()  # image decoding limits (zipjax.configs.Limits)
  return config
