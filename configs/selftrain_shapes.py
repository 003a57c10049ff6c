"""Self-training with the small detector of configs/train_shapes.py (128 px, class-agnostic, DropLoss): ten-odd
minutes on 2 CPU cores for 200 images (bench/selftrain_quality.py, which measures it).

  python bench/heldout_shapes.py --out /tmp/st/clean --num-images 200 --seed 5                # the truth
  python bench/heldout_shapes.py --out /tmp/st/noisy --num-images 200 --seed 5 --degrade      # pseudo-labels
  python -m zipjax self-train --config configs/selftrain_shapes.py \
      --pseudo-json /tmp/st/noisy/annotations.json --images-root /tmp/st/noisy/images \
      --gt-json /tmp/st/clean/annotations.json --workdir /tmp/st/run

How a round's labels are made (zipjax/data/self_labels.py, zipjax/jobs/selftrain.py):
- a new label is a prediction of the previous round's detector: its mask is the predicted mask inside the box
  head's box widened by half its size (box_source='mask' in train_shapes: pieces far from the object dropped),
  its box the detection's own (the extent of the object's faint region around the mask's largest piece, so a
  stray piece of the mask does not stretch it; training recomputes box targets from the mask), its score the
  detector's (class times mask quality squared);
- thresholds are calibrated on the previous labels, not fixed: the predictions that agree with a previous label
  (mask IoU >= 0.5) show the scores this detector gives real objects; new labels need their 30% quantile
  (`calibrate=0.3`), a previous label is replaced by an agreeing prediction above it;
- a previous label no prediction agrees with at the 10% quantile of those scores is dropped (false pseudo-labels
  the detector does not reproduce), and kept labels take their agreeing prediction's score (`rescore`), so the
  labels are ranked on one scale;
- labels a round's detector made are not replaced by later rounds (`protect`): only the original pseudo-labels
  are repaired, later rounds add the objects still missing. Measured without it (bench/selftrain_quality.py,
  seed 4): round 2 replaced 408 of round 1's labels with its own predictions and the labels' AR100 fell (box
  0.357 -> 0.331, mask 0.337 -> 0.318; its detector was trained on round 1's labels and its masks are a little
  smaller each round); with it 380 predictions confirmed round 1's labels and all four numbers rose.
"""
import os

from zipjax.commands.common import load_config_file
from zipjax.jobs import selftrain


def get_config():
  config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_shapes.py"))
  config.data.class_agnostic = True     # CutLER self-trains class-agnostic
  config.loss.drop_loss = True          # no background loss where no label is near (missing objects)
  config.checkpoint.keep = 1
  config.eval.every = 0

  with config.unlocked():               # a loaded config is locked: a group of its own is added so
    config.selftrain = selftrain.config_group(
        thresholds=[0.05, 0.05],        # floors under the calibrated thresholds
        steps=[3000, 1500, 1500], predict_min_score=0.02,
        calibrate=0.3, support_quantile=0.1, rescore=True, protect=True)  # the guards (see above)
  return config
