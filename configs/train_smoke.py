"""Tiny detector for smoke runs and tests: trains in minutes on 2 CPU cores.

  python -m zipjax train --config configs/train_smoke.py --train-json ANN --images-root DIR --workdir W
"""
import ml_collections

from zipjax.train import config_parts


def get_config():
  config = ml_collections.ConfigDict()
  config.model = config_parts.model_config("smoke")
  config.loss = config_parts.loss_config()
  return config
