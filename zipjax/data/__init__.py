"""Input data: work lists of batch jobs (image folders, COCO json, TFDS) and their grain loading pipeline
(`sources`, `loader`); the synthetic shapes dataset (`synthetic`) and the grain pipeline that turns a COCO
dataset into fixed-shape, augmented detector batches with a checkpointable iterator (`coco_train`)."""
