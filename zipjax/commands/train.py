"""`zipjax train --config FILE --train-json ANN --images-root DIR --workdir W`: train the open-vocabulary detector.

Trains on a COCO dataset with masks (RLE or polygons; pseudo-labels with scores welcome, e.g. the
annotations.json of `zipjax segment`) until `config.total_steps`; every image file (training and validation) is
checked before step 0 (exists, is an image of the annotated size, read from the headers in parallel): bad ones
are listed in one error (exit 2), or left out with a warning under `--skip-bad-images`. Checkpoints,
metrics.jsonl, perf.jsonl, TensorBoard events (tb/) and config.json go to the workdir. Rerunning the same command resumes from the latest
checkpoint (parameters, optimizer, step, RNG, data iterator); a finished run says so and exits 0. SIGTERM saves a
checkpoint and exits 143.

Optional periodic evaluation: `--val-json ANN2 [--val-images-root DIR2]` (class-agnostic and class-aware box and
mask AP, in metrics.jsonl). Configuration: a configs/train_*.py file, then `--config.KEY=VALUE` overrides (e.g.
`--config.total_steps=2000 --config.init_checkpoint=ViT-B/16`); every value is validated after the overrides
(zipjax/config_check.py, `TRAIN_RULES`): a bad one is refused (exit 2) with all problems listed.
"""
from __future__ import annotations

import os
import sys

from zipjax.errors import InputError

ACCEPTS_CONFIG_OVERRIDES = True


def add_parser(sub):
  import argparse  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("train", help="train the open-vocabulary detector (resumable)", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, metavar="FILE", help="a configs/train_*.py file with get_config()")
  p.add_argument("--train-json", required=True, metavar="ANN", help="COCO training annotations (with masks)")
  p.add_argument("--images-root", required=True, metavar="DIR", help="folder of the training images")
  p.add_argument("--workdir", required=True, metavar="W", help="run folder (checkpoints, metrics); rerun to resume")
  p.add_argument("--val-json", metavar="ANN2", help="COCO validation annotations for periodic evaluation")
  p.add_argument("--val-images-root", metavar="DIR2", help="folder of the validation images (default: "
                 "--images-root)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--skip-bad-images", action="store_true",
                 help="train (and validate) without the images that fail the up-front check (missing, not an "
                      "image, another size than annotated), with a warning, instead of refusing the run")
  return p


def resolve_config(args, family: str = "train"):
  """`--config FILE` with the `--config.KEY=VALUE` overrides applied, every value checked against `family`'s rules
  (zipjax.config_check: 'train', or 'selftrain' for `zipjax self-train`) before anything is built."""
  from zipjax.commands.common import apply_overrides, load_config_file  # pylint: disable=import-outside-toplevel
  from zipjax.config_check import check_selftrain_config, check_train_config  # pylint: disable=import-outside-toplevel
  config = load_config_file(args.config)
  apply_overrides(config, getattr(args, "config_overrides", []) or [])
  return (check_selftrain_config if family == "selftrain" else check_train_config)(config)


def run(args) -> int:
  from zipjax.commands.common import enable_compilation_cache  # pylint: disable=import-outside-toplevel
  from zipjax.train import trainer  # pylint: disable=import-outside-toplevel
  config = resolve_config(args)
  for flag in ("train_json", "images_root"):
    path = getattr(args, flag)
    if not os.path.exists(path):
      raise InputError(f"--{flag.replace('_', '-')} {path}: not found")
  if args.val_json and not os.path.exists(args.val_json):
    raise InputError(f"--val-json {args.val_json}: not found")
  from zipjax.io.outdir import check_output_dir  # pylint: disable=import-outside-toplevel
  check_output_dir(args.workdir, "--workdir")  # a writable directory, before anything is built
  enable_compilation_cache()
  res = trainer.train(config, args.train_json, args.images_root, args.workdir, val_json=args.val_json,
                      val_images_root=args.val_images_root, progress=not args.no_progress,
                      log=lambda m: print(m, file=sys.stderr), skip_bad_images=args.skip_bad_images)
  if res.last_metrics:
    shown = {k: v for k, v in res.last_metrics.items() if k == "loss" or k.startswith("eval/")}
    print(" ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items()) if v is not None))
  return res.exit_code
