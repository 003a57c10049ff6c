"""Input data of batch jobs: work lists (image folders, COCO json, TFDS) and the grain loading pipeline."""
