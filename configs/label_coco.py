"""Pseudo-labelling COCO train2017 (118,287 images) with the `zip` preset and the 80 COCO class names.

One machine (all its accelerators):

  zipjax label --coco-json annotations/instances_train2017.json --images-root train2017/ \
      --classes-file coco80.txt --config configs/label_coco.py --out runs/coco_train2017

or from a prepared TFDS copy (no TensorFlow needed): `zipjax label tfds:coco/2017:train --data-dir DIR ...`.
A TPU VM slice or a GPU cluster runs the same command on every worker (tpu/README.md); rerun it to resume.

Runtime settings only (they never change an output, so they may differ between a run and its resume): 4 images
per device per step, shards of 512 images, 16 decoding threads and 64 prepared images per process.
"""
from zipjax import configs


def get_config():
  config = configs.zip()
  config.batch_size = 4             # images per device per step (every device always runs a full batch)
  config.label.shard_size = 512     # images per shard file (about 230 shards for train2017 on one process)
  config.label.workers = 16         # decoding + preprocessing threads per process
  config.label.prefetch = 64        # prepared images waiting for the device per process
  return config
