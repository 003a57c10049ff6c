"""`zipjax segment INPUT... --classes a,b | --classes-file F --out DIR`: instances of the named classes.

INPUT: image files or folders (their image files, sorted). Writes DIR/results.json (COCO results),
DIR/annotations.json (a COCO dataset with scores; `zipjax eval --pred` accepts it), DIR/overlays/*.png,
DIR/errors.json (files that were skipped, with the reason; the run goes on) and DIR/run.json (config, timings).

Output protocol (the loop of zipjax/jobs/folder_run.py, shared with `zipjax detect`, on zipjax/io/shards.py):
results go to one shard file per batch under DIR/.zipjax/ (O(new results) per batch; nothing is rewritten or
held in memory) and overlays to a staging folder; at the end the shards are merged and all outputs are
committed together, old outputs of an earlier run (stale overlays included) replaced. A killed run leaves the
previous outputs or a consistent subset of the new ones; running the same command again resumes it (finished
images are not recomputed). DIR is locked while a run writes it: a second run into the same DIR exits 2; the
lock of a killed run is taken over. Temporary files left by killed runs are removed.
Exit status: 0 when at least one image was segmented, 1 when none could be, 2 on a usage or input error, 130
when interrupted.

Configuration: `--preset reference|zip` (default zip) or `--config FILE` (a configs/*.py file with
get_config()), then `--config.KEY=VALUE` overrides (e.g. `--config.scoring.nms_threshold=0.6`).
Weights: names from checkpoints/manifest.json or paths (see zipjax/weights.py), `--random-init` for random
weights (outputs marked so).
"""
from __future__ import annotations

# shared by every command (common.py); load_config_file, apply_overrides and enable_compilation_cache stay
# importable from here
from zipjax.commands.common import (apply_overrides, class_names, enable_compilation_cache,  # noqa: F401
                                    load_config_file)
from zipjax.errors import InputError

ACCEPTS_CONFIG_OVERRIDES = True


def add_parser(sub):
  import argparse  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("segment", help="annotation-free instance segmentation of named classes (the Zip method)",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
  cls = p.add_mutually_exclusive_group(required=True)
  cls.add_argument("--classes", help="comma-separated class names")
  cls.add_argument("--classes-file", metavar="FILE", help="class names, one per line (# comments)")
  p.add_argument("--out", required=True, metavar="DIR", help="output folder")
  p.add_argument("--preset", choices=("reference", "zip"), default=None,
                 help="configuration preset (default: zip; ignored with --config)")
  p.add_argument("--config", metavar="FILE", help="a config file with get_config() (e.g. configs/smoke.py)")
  p.add_argument("--batch-size", type=int, help="images per CLIP Surgery call (config.batch_size)")
  p.add_argument("--random-init", action="store_true", help="random weights (architectures from config.models)")
  p.add_argument("--clip-semantic", metavar="CKPT", help="CLIP ViT checkpoint (config.models.semantic.checkpoint)")
  p.add_argument("--clip-boundary", metavar="CKPT",
                 help="CLIP ModifiedResNet checkpoint (config.models.boundary.checkpoint)")
  p.add_argument("--sam", metavar="CKPT", help="SAM checkpoint (config.models.sam.checkpoint)")
  p.add_argument("--no-overlays", action="store_true", help="do not draw overlays")
  return p


def resolve_config(args):
  from zipjax import configs  # pylint: disable=import-outside-toplevel
  config = load_config_file(args.config) if args.config else configs.get_preset(args.preset or "zip")
  apply_overrides(config, getattr(args, "config_overrides", []) or [])
  if args.batch_size is not None:
    if args.batch_size < 1:
      raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    config.batch_size = args.batch_size
  for flag, field in (("clip_semantic", "semantic"), ("clip_boundary", "boundary"), ("sam", "sam")):
    if getattr(args, flag):
      config.models[field].checkpoint = getattr(args, flag)
  if args.no_overlays:
    config.output.overlays = False
  from zipjax.config_check import check_config  # pylint: disable=import-outside-toplevel
  return check_config(config)


def build_engine(config, names, random_init: bool = False):
  """The engine `zipjax segment` runs (zipjax/engine.py): models from `config.models`, the vocabulary set."""
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
  eng = Engine(config, random_init=random_init)
  eng.set_classes(names)
  return eng


def run(args) -> int:
  from zipjax.io.results import RANDOM_NOTE  # pylint: disable=import-outside-toplevel
  from zipjax.jobs.folder_run import FolderJob, run_folder  # pylint: disable=import-outside-toplevel
  from zipjax.jobs.identity import job_identity  # pylint: disable=import-outside-toplevel

  config = resolve_config(args)
  names = class_names(args)

  def build():
    enable_compilation_cache()
    return build_engine(config, names, args.random_init)

  info = {"description": "zipjax segment", "preset": str(config.preset), "random_init": bool(args.random_init),
          "classes": names}
  if args.random_init:
    info["note"] = RANDOM_NOTE
  lim = config.input
  job = FolderJob(
      command="segment", verb="segmented", out=args.out, names=names,
      identity=lambda inputs: job_identity("segment", config, names, args.random_init, inputs),
      info=info, config=config.to_dict(), build=build, batch_size=int(config.batch_size),
      limits=(int(lim.min_side), int(lim.max_side), float(lim.max_aspect)), overlays=bool(config.output.overlays),
      overlay_max_side=int(config.output.overlay_max_side),
      banner=RANDOM_NOTE.split(":")[0] if args.random_init else None,
      notes=(f"NOTE: {RANDOM_NOTE}",) if args.random_init else ())
  return run_folder(job, args.inputs)
