"""`zipjax label INPUT... --classes a,b | --classes-file F --out DIR`: pseudo-labels for a whole dataset.

INPUT: image folders (searched recursively; an --out folder inside one is left out, so a rerun never labels the
run's own outputs, e.g. its gallery) and image files; or `--coco-json FILE --images-root DIR` (the json's
`images` list is the work list, ids kept); or `tfds:NAME:SPLIT --data-dir DIR` (a prepared TFDS dataset, read
without TensorFlow). DIR may be a local folder or a bucket URL (gs://...).

Writes DIR/annotations.json (a COCO dataset with RLE masks and scores, images sorted by file name: the same
bytes whatever the number of devices, processes or restarts), DIR/errors.json (images that could not be
labelled, with the reason; the run goes on) and DIR/run.json (config, timings, images/s). annotations.json
appears only once the run is complete. Progress is kept in per-process shard files under DIR/.zipjax/:
running the same command again resumes (finished images are skipped), a complete run finds nothing to do, and
a run started with another config, model or class list is refused (`--overwrite` starts over).
`zipjax label merge DIR` rebuilds the final files from the shards.

Multi-process (several hosts, or several processes on one machine): run the same command in every process with
`--coordinator HOST:PORT --num-processes N --process-id I` (or JAX's environment variables; automatic on TPU
VMs); every process labels its part and process 0 merges. DIR must be shared by all processes.

Configuration as for `zipjax segment` (`--preset`, `--config FILE`, `--config.KEY=VALUE`); runtime settings in
`config.label` (shard_size, workers, prefetch). `--batch-size N`: images per device per step.
"""
from __future__ import annotations

import sys

from zipjax.errors import InputError

ACCEPTS_CONFIG_OVERRIDES = True


def add_parser(sub):
  import argparse  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("label", help="pseudo-label a dataset (multi-host, resumable, one canonical annotations.json)",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("inputs", nargs="*", metavar="INPUT",
                 help="image folders / files, or tfds:NAME:SPLIT; `merge DIR` merges a run directory")
  cls = p.add_mutually_exclusive_group()
  cls.add_argument("--classes", help="comma-separated class names")
  cls.add_argument("--classes-file", metavar="FILE", help="class names, one per line (# comments)")
  p.add_argument("--out", metavar="DIR", help="run directory (local or gs://)")
  p.add_argument("--coco-json", metavar="FILE", help="COCO json whose `images` list is the work list")
  p.add_argument("--images-root", metavar="DIR", help="folder holding the COCO json's file_names")
  p.add_argument("--data-dir", metavar="DIR", help="TFDS data dir holding the prepared dataset")
  p.add_argument("--preset", choices=("reference", "zip"), default=None,
                 help="configuration preset (default: zip; ignored with --config)")
  p.add_argument("--config", metavar="FILE", help="a config file with get_config() (e.g. configs/label_coco.py)")
  p.add_argument("--batch-size", type=int, help="images per device per step (config.batch_size)")
  p.add_argument("--random-init", action="store_true", help="random weights (architectures from config.models)")
  p.add_argument("--overwrite", action="store_true", help="discard a previous run in --out and start over")
  p.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator (multi-process runs)")
  p.add_argument("--num-processes", type=int, metavar="N", help="processes of a multi-process run")
  p.add_argument("--process-id", type=int, metavar="I", help="this process's index in a multi-process run")
  return p


def resolve_config(args):
  """The preset or config file, `--config.KEY=VALUE` overrides, then `--batch-size`."""
  from zipjax import configs  # pylint: disable=import-outside-toplevel
  from zipjax.commands.common import apply_overrides, load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file(args.config) if args.config else configs.get_preset(args.preset or "zip")
  if "label" not in config:
    with config.unlocked():
      config.label = configs._label()  # pylint: disable=protected-access  (configs written before the group)
  apply_overrides(config, getattr(args, "config_overrides", []) or [])
  if args.batch_size is not None:
    config.batch_size = args.batch_size
  from zipjax.config_check import check_config  # pylint: disable=import-outside-toplevel
  return check_config(config)


def run(args) -> int:
  from zipjax import parallel  # pylint: disable=import-outside-toplevel
  from zipjax.jobs import label as label_job  # pylint: disable=import-outside-toplevel
  if args.inputs[:1] == ["merge"] and args.out is None:
    if len(args.inputs) != 2:
      raise InputError("usage: zipjax label merge DIR")
    return label_job.merge_run(args.inputs[1])
  if not args.out:
    raise InputError("--out DIR is required")
  from zipjax.commands.common import class_names  # pylint: disable=import-outside-toplevel
  names = class_names(args)
  config = resolve_config(args)
  if "://" not in args.out:  # a local --out must be (or become) a writable directory (checked before models
    # load); it is created only once the inputs are open, so a bad input leaves no empty folder behind
    from zipjax.io.outdir import check_output_dir  # pylint: disable=import-outside-toplevel
    check_output_dir(args.out, "--out", create=False)
  parallel.initialize(args.coordinator, args.num_processes, args.process_id)
  from zipjax.commands.common import enable_compilation_cache  # pylint: disable=import-outside-toplevel
  enable_compilation_cache()
  req = label_job.LabelRequest(out=args.out, inputs=list(args.inputs), names=names, config=config,
                               random_init=bool(args.random_init), overwrite=bool(args.overwrite),
                               coco_json=args.coco_json, images_root=args.images_root, data_dir=args.data_dir)
  sys.stdout.flush()
  return label_job.run_label(req)
