"""The real detector: CLIP ViT-B/16 backbone at 768 px (bf16 compute, remat, stochastic depth 0.1).

  python -m zipjax train --config configs/train_vit_b16.py --train-json ANN --images-root DIR --workdir W \
      --config.init_checkpoint=ViT-B-16.pt
"""
import ml_collections

from zipjax.train import config_parts


def get_config():
  config = ml_collections.ConfigDict()
  config.model = config_parts.model_config("vit_b16")
  config.loss = config_parts.loss_config()
  return config
