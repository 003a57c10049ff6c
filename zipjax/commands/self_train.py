"""`zipjax self-train --config FILE --pseudo-json ANN --images-root DIR --workdir W`: self-training rounds.

Round 0 trains the detector on the pseudo-labels ANN (the annotations.json of `zipjax label` / `segment`); round
r >= 1 predicts on the training images with round r-1's detector, keeps the predictions scoring at least the
round's threshold (`config.selftrain.thresholds`, CutLER's 0.7 then 0.65 by default), merges them with the
previous labels ('union' with mask-IoU de-duplication, or 'replace') and trains again from round r-1's weights.
Every round's labels (annotations.json), checkpoints and metrics go to W/round_<r>/ (a `zipjax train` workdir:
`zipjax detect --workdir W/round_<r>`, `zipjax train ... --config.init_workdir=W/round_<r>`).

Rerunning the same command resumes (a killed or preempted run finishes the same rounds with the same outputs).
With `--gt-json GT` (the true annotations of the training images), every round's labels and detector are
evaluated (class-agnostic and class-aware, box and mask): W/report.md, W/metrics.json, W/plots/. With
`--val-json V` each round's detector is also evaluated on a validation split at the end of its training.
Configuration: configs/selftrain_*.py (a train config plus a `selftrain` group), then `--config.KEY=VALUE`.
The design is described in zipjax/jobs/selftrain.py.
"""
from __future__ import annotations

import os
import sys

ACCEPTS_CONFIG_OVERRIDES = True


def add_parser(sub):
  import argparse  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("self-train", help="self-training rounds on pseudo-labels (resumable, per-round report)",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, metavar="FILE", help="a configs/selftrain_*.py file with get_config()")
  p.add_argument("--pseudo-json", required=True, metavar="ANN", help="the pseudo-labels (COCO, with masks)")
  p.add_argument("--images-root", required=True, metavar="DIR", help="folder of the training images")
  p.add_argument("--workdir", required=True, metavar="W", help="run folder (rounds, report); rerun to resume")
  p.add_argument("--gt-json", metavar="GT", help="true annotations of the training images: per-round report")
  p.add_argument("--val-json", metavar="V", help="COCO validation annotations (each round's detector)")
  p.add_argument("--val-images-root", metavar="DIR2", help="folder of the validation images (default: "
                 "--images-root)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.add_argument("--skip-bad-images", action="store_true",
                 help="train without the images that fail the up-front check (missing, not an image, another "
                      "size than annotated), with a warning, instead of refusing the run")
  return p


def gallery_line(out_dir: str) -> str | None:
  """The `zipjax gallery` hint for `out_dir` when the gallery command exists in this installation."""
  try:
    from zipjax.gallery import gallery_hint  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return gallery_hint(out_dir)


def run(args) -> int:
  from zipjax.commands.common import enable_compilation_cache  # pylint: disable=import-outside-toplevel
  from zipjax.commands.train import resolve_config  # pylint: disable=import-outside-toplevel
  from zipjax.jobs import selftrain  # pylint: disable=import-outside-toplevel
  config = resolve_config(args, family="selftrain")
  enable_compilation_cache()
  log = lambda m: print(m, file=sys.stderr)  # noqa: E731
  res = selftrain.self_train(config, args.pseudo_json, args.images_root, args.workdir, gt_json=args.gt_json,
                             val_json=args.val_json, val_images_root=args.val_images_root,
                             progress=not args.no_progress, log=log, skip_bad_images=args.skip_bad_images)
  if res.exit_code:
    return res.exit_code
  last = res.rounds[-1]
  print(f"self-training done: {len(res.rounds)} rounds in {os.path.abspath(args.workdir)}; last round's labels "
        f"{last['labels']}, detector {os.path.dirname(last['labels'])}")
  if res.report:
    print(f"report: {res.report['report']} (metrics: {res.report['metrics']})")
  hint = gallery_line(os.path.dirname(last["labels"]))
  if hint:
    print(hint)
  return 0
