"""Self-training the ViT-B/16 detector (configs/train_vit_b16.py) on Zip pseudo-labels, CutLER's recipe.

  python -m zipjax label --coco-json instances_train2017.json --images-root train2017 \
      --classes-file coco80.txt --config configs/label_coco.py --out runs/zip_train2017
  python -m zipjax self-train --config configs/selftrain_vit_b16.py \
      --pseudo-json runs/zip_train2017/annotations.json --images-root train2017 --workdir runs/selftrain \
      [--gt-json instances_train2017.json] [--val-json instances_val2017.json --val-images-root val2017]

CutLER: class-agnostic training with DropLoss; then rounds that keep the predictions scoring above 0.7, then
0.65, at most 30 per image, merged with the previous labels; each round initialised from the previous one. Set
`--config.data.class_agnostic=False` to self-train the open-vocabulary detector on the Zip classes instead.
The steps of a round default to train_vit_b16's total_steps (160k at batch 16, CutLER's schedule; set
`--config.selftrain.steps=[160000,80000,80000]` for shorter later rounds). On a TPU slice: tpu/self_train.sh.
"""
import os

from zipjax.commands.common import load_config_file
from zipjax.jobs import selftrain


def get_config():
  config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_vit_b16.py"))
  config.data.class_agnostic = True
  config.loss.drop_loss = True

  with config.unlocked():               # a loaded config is locked: a group of its own is added so
    config.selftrain = selftrain.config_group(predict_chunk=1024)      # CutLER's recipe
  return config
