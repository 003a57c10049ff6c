"""`zipjax eval --gt GT --pred P [--pred P2 ...]`: COCO box and mask AP/AR of one or more prediction files.

With one --pred: the 12 COCO stats (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) for box and mask. With
several (a pseudo-label quality report: e.g. reference preset, zip preset, self-training round k), one row
per file in a comparison table. Published class-agnostic COCO val2017 anchors (MaskCut, CutLER, FreeSOLO)
are shown beside them for context unless --no-anchors.

Predictions: a COCO results list ([{image_id, score, bbox, segmentation, category_id | category_name}]) or a
COCO dataset with scored annotations (zipjax's annotations.json; images matched by file_name). Class-aware
evaluation matches predicted class names to ground-truth category names; --class-agnostic merges all
categories into one (CutLER's protocol).

With --out DIR: writes DIR/metrics.json (fractions), DIR/report.md (percent) and DIR/pr_bbox.png,
DIR/pr_segm.png (precision-recall), each atomically.
"""
from __future__ import annotations

import os

from zipjax.errors import InputError


def add_parser(sub):
  from zipjax.eval.coco import BACKENDS, DEFAULT_BACKEND

  p = sub.add_parser("eval", help="COCO box/mask AP of predictions; pseudo-label quality reports",
                     description=__doc__, formatter_class=_formatter())
  p.add_argument("--gt", required=True, metavar="ANNOTATIONS.json", help="COCO ground-truth dataset")
  p.add_argument("--pred", required=True, action="append", metavar="RESULTS.json",
                 help="predictions (repeat to compare several files side by side)")
  p.add_argument("--name", action="append", metavar="NAME",
                 help="display name of the matching --pred, in order (default: the file name)")
  p.add_argument("--class-agnostic", action="store_true",
                 help="merge all categories into one (CutLER's protocol); default matches class names")
  p.add_argument("--iou-type", choices=("bbox", "segm", "both"), default="both",
                 help="box AP, mask AP or both (default: both)")
  p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                 help=f"COCO evaluator (default: {DEFAULT_BACKEND})")
  p.add_argument("--only-pred-images", action="store_true",
                 help="evaluate only the images each prediction file covers (its 'images' list; for a "
                      "results list, images with a prediction); default: all ground-truth images")
  p.add_argument("--no-anchors", action="store_true", help="leave out the published anchors")
  p.add_argument("--no-plots", action="store_true", help="do not draw precision-recall PNGs")
  p.add_argument("--out", metavar="DIR", help="write metrics.json, report.md and PR plots here")
  return p


def _formatter():
  import argparse
  return argparse.RawDescriptionHelpFormatter


def run_names(preds: list, names: list | None) -> list:
  """Display names: the given --name values, else unique file stems."""
  if names:
    if len(names) != len(preds):
      raise InputError(f"got {len(names)} --name for {len(preds)} --pred; give one name per prediction file")
    if len(set(names)) != len(names):
      raise InputError(f"--name values must be unique, got {names}")
    return list(names)
  out = []
  for path in preds:
    stem = os.path.splitext(os.path.basename(path))[0] or path
    name, k = stem, 2
    while name in out:
      name, k = f"{stem}-{k}", k + 1
    out.append(name)
  return out


def run(args) -> int:
  from zipjax.eval.coco import compare
  from zipjax.eval.report import summary_text, write_report
  from zipjax.io.outdir import check_output_dir

  if args.out:
    check_output_dir(args.out, "--out", create=False)  # before the (possibly long) evaluation
  names = run_names(args.pred, args.name)
  result = compare(args.gt, dict(zip(names, args.pred)), iou_type=args.iou_type,
                   class_agnostic=args.class_agnostic, backend=args.backend,
                   only_pred_images=args.only_pred_images)
  print(summary_text(result, anchors=not args.no_anchors))
  if args.out:
    paths = write_report(result, args.out, anchors=not args.no_anchors, plots=not args.no_plots)
    print(f"\nwrote {paths['metrics']}, {paths['report']}"
          + "".join(f", {p}" for p in paths["plots"].values()))
  return 0
