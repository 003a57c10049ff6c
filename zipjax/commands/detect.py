"""`zipjax detect INPUT... --workdir W --classes A,B --out DIR`: the trained detector on images, any class names.

INPUT: image files or folders (their image files, sorted). W: a `zipjax train` workdir; its config.json gives the
model and the text tower, its latest checkpoint the parameters. Class names are free text (open vocabulary): they
are embedded by the run's frozen CLIP text tower. Writes the same outputs as `zipjax segment`: DIR/results.json
(COCO results), DIR/annotations.json (COCO dataset with scored RLE masks; `zipjax eval --pred` accepts it),
DIR/overlays/*.png, DIR/errors.json (skipped files with the reason) and DIR/run.json, through the same writer
(zipjax/jobs/folder_run.py, zipjax/io/shards.py): one shard file per batch, overlays staged, all outputs
committed together at the end; DIR is locked while a run writes it (a second run exits 2); a killed run is
resumed by running the same command again (same workdir checkpoint, config, classes and inputs). `--out` is
checked and missing or odd inputs refused (errors.json) before the model is loaded. Exit status: 0 when at
least one image was processed, 1 when none could be, 2 on a usage or input error.

Inference: images resized so the longer side is the model's input size and zero-padded, batches of
`config.detect.batch_size` (padded to a multiple of the local devices and split over them), one jitted step with
static shapes; detections scoring at least `config.detect.score_threshold` are kept (`--config.detect.*`).
"""
from __future__ import annotations

import os
import sys
import time

from zipjax.errors import InputError

ACCEPTS_CONFIG_OVERRIDES = True


def add_parser(sub):
  import argparse  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("detect", help="run a trained detector (zipjax train workdir) on images, any class names",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
  p.add_argument("--workdir", required=True, metavar="W", help="a zipjax train workdir")
  cls = p.add_mutually_exclusive_group(required=True)
  cls.add_argument("--classes", help="comma-separated class names")
  cls.add_argument("--classes-file", metavar="FILE", help="class names, one per line (# comments)")
  p.add_argument("--out", required=True, metavar="DIR", help="output folder")
  p.add_argument("--batch-size", type=int, help="images per step (config.detect.batch_size)")
  p.add_argument("--no-overlays", action="store_true", help="do not draw overlays")
  return p


def checkpoint_step(workdir: str) -> int:
  """The step of the workdir's latest checkpoint: what `zipjax detect` runs (part of the run's identity)."""
  from zipjax.train import checkpoints  # pylint: disable=import-outside-toplevel
  return checkpoints.latest_checkpoint_step(workdir)


class _Detector:
  """The trained detector as a folder-run model (`zipjax.jobs.folder_run`): `segment(images)` -> instances.

  Attributes:
    inference: the `zipjax.train.predict.Inference` (jitted, static shapes, batch split over the local devices;
      the class names' text queries).
    params: the detector parameters (replicated over the local devices).
    batch_size: images per step (a multiple of the local device count).
    step: the checkpoint step whose parameters run.
    timings: seconds spent in `predict`.
  """

  def __init__(self, inference, params, step: int):
    self.inference, self.params, self.step = inference, params, int(step)
    self.batch_size = inference.batch_size
    self.timings = {"detect": 0.0}

  def segment(self, images):
    t = time.perf_counter()
    outs = self.inference(self.params, images)
    self.timings["detect"] += time.perf_counter() - t
    return [{"instances": insts} for insts in outs]


def build_detector(config, workdir: str, step: int, names) -> _Detector:
  """Loads checkpoint `step` of `workdir` (the previous one, saying so, when it is corrupt: `_Detector.step` is
  the one used), embeds the class names, compiles nothing yet."""
  import jax  # pylint: disable=import-outside-toplevel

  from zipjax import parallel  # pylint: disable=import-outside-toplevel
  from zipjax.train.checkpoints import load_params  # pylint: disable=import-outside-toplevel
  from zipjax.train.predict import Inference  # pylint: disable=import-outside-toplevel
  mesh = parallel.create_mesh([("data", -1)], jax.local_devices())
  params, used = load_params(workdir, config, mesh, step, fallback=True, log=lambda m: print(m, file=sys.stderr))
  inference = Inference(config, mesh, names, int(config.detect.batch_size), float(config.detect.score_threshold))
  return _Detector(inference, params, used)


def detect_identity(config, names, workdir: str, step: int, inputs: dict) -> dict:
  """What a resumed `zipjax detect` run must share with the run it continues (`zipjax.jobs.identity`): the model
  (workdir, checkpoint step, model and text config), the detection settings (all but the batch size), decoding
  limits, classes and inputs."""
  from zipjax.jobs.identity import make_identity  # pylint: disable=import-outside-toplevel
  from zipjax.train import task  # pylint: disable=import-outside-toplevel
  d = task.config_to_dict(config)
  result = {k: d.get(k) for k in ("model", "text", "input", "init_checkpoint", "init_workdir")}
  result["detect"] = {k: v for k, v in d["detect"].items() if k != "batch_size"}
  return make_identity("detect", names, result, inputs, workdir=os.path.abspath(workdir), checkpoint_step=int(step))


def run(args) -> int:
  from zipjax.commands.common import apply_overrides, class_names, enable_compilation_cache  # pylint: disable=C0415
  from zipjax.jobs.folder_run import FolderJob, run_folder  # pylint: disable=import-outside-toplevel
  from zipjax.train import task  # pylint: disable=import-outside-toplevel

  config = task.load_run_config(args.workdir)
  apply_overrides(config, getattr(args, "config_overrides", []) or [])
  if args.batch_size is not None:
    if args.batch_size < 1:
      raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    config.detect.batch_size = args.batch_size
  if args.no_overlays:
    config.detect.overlays = False
  from zipjax.config_check import check_train_config  # pylint: disable=import-outside-toplevel
  check_train_config(config)  # the run's config with the overrides, before anything is loaded
  names = class_names(args)
  step = checkpoint_step(args.workdir)

  def build():
    enable_compilation_cache()
    det = build_detector(config, args.workdir, step, names)
    if getattr(det, "step", step) != step:  # the latest checkpoint is corrupt: the outputs say which one ran
      info["checkpoint_step"] = det.step
      info["note"] = f"checkpoint {step} of the workdir is corrupt; checkpoint {det.step} was used"
    return det

  info = {"description": "zipjax detect", "workdir": os.path.abspath(args.workdir), "checkpoint_step": step,
          "classes": names}
  lim = config.input
  job = FolderJob(
      command="detect", verb="detected", out=args.out, names=names,
      identity=lambda inputs: detect_identity(config, names, args.workdir, step, inputs),
      info=info,
      config=task.config_to_dict(config), build=build, batch_size=int(config.detect.batch_size),
      limits=(int(lim.min_side), int(lim.max_side), float(lim.max_aspect)), overlays=bool(config.detect.overlays),
      overlay_max_side=int(config.detect.overlay_max_side))
  return run_folder(job, args.inputs)
