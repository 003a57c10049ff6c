"""The tiny detector on the synthetic shapes (what tests/train/test_trainer_learns.py runs): 64 px input, 8 px
patches (8 x 8 tokens of width 64, 2 blocks), random weights, 4000 steps of batch 8 on 2 CPU cores
(class-agnostic: box AP50 ~0.74, mask AP50 ~0.69 on held-out shapes, about 8 minutes).

  SHAPES="--min-side 64 --max-side 96 --max-objects 4 --min-object-frac 0.25 --max-object-frac 0.5 --min-area 30"
  python -m zipjax.data.synthetic --out /tmp/shapes --num-images 400 $SHAPES
  python -m zipjax.data.synthetic --out /tmp/shapes_val --num-images 48 --seed 1 $SHAPES
  python -m zipjax train --config configs/train_shapes.py --train-json /tmp/shapes/annotations.json \
      --images-root /tmp/shapes/images --workdir /tmp/shapes_run --val-json /tmp/shapes_val/annotations.json \
      --val-images-root /tmp/shapes_val/images --config.data.class_agnostic=True

Everything not set here is configs/train_smoke.py.
"""
import importlib.util
import os

from zipjax.train import config_parts


def _smoke():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_smoke.py")
  spec = importlib.util.spec_from_file_location("_zipjax_train_smoke", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _smoke()
  # 128 px input in 16 px patches (8 x 8 tokens), 32 x 32 masks: objects of 1/8 of the image side are 16 px
  config.model = config_parts.model_config("smoke", input_size=128, patch_size=16, box_param="ltrb",
                                           box_source="mask", score="class_mask", mask_nms=0.6)
  config.loss.cost_center = 4.0
  config.total_steps = 4000
  config.optim.warmup_steps = 100
  config.optim.lr_multipliers = []      # random init: the backbone learns at the heads' rate
  config.data.min_area = 8
  config.checkpoint.every = 500
  config.eval.every = 1000
  config.eval.batch_size = 16
  return config
