"""`zipjax detect INPUT... --workdir W --classes A,B --out DIR`: the trained detector on images, any class names.

INPUT: image files or folders (their image files, sorted). W: a `zipjax train` workdir; its config.json gives the
model and the text tower, its latest checkpoint the parameters. Class names are free text (open vocabulary): they
are embedded by the run's frozen CLIP text tower. Writes the same outputs as `zipjax segment`: DIR/results.json
(COCO results), DIR/annotations.json (COCO dataset with scored RLE masks; `zipjax eval --pred` accepts it),
DIR/overlays/*.png, DIR/errors.json (skipped files with the reason) and DIR/run.json, atomically after every
batch.

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


def run(args) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  from zipjax.commands.segment import apply_overrides, enable_compilation_cache  # pylint: disable=C0415
  from zipjax.io import images as images_io  # pylint: disable=import-outside-toplevel
  from zipjax.io.atomic import atomic_write_json  # pylint: disable=import-outside-toplevel
  from zipjax.io.results import ResultWriter  # pylint: disable=import-outside-toplevel
  from zipjax.train import sharding as shard_lib  # pylint: disable=import-outside-toplevel
  from zipjax.train import trainer  # pylint: disable=import-outside-toplevel
  from zipjax.train.predict import DetectorPredictor  # pylint: disable=import-outside-toplevel

  t_start = time.perf_counter()
  config = trainer.load_run_config(args.workdir)
  apply_overrides(config, getattr(args, "config_overrides", []) or [])
  if args.batch_size is not None:
    if args.batch_size < 1:
      raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    config.detect.batch_size = args.batch_size
  if args.no_overlays:
    config.detect.overlays = False
  if args.classes_file:
    try:
      with open(args.classes_file, encoding="utf-8") as f:
        lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
      raise InputError(f"--classes-file {args.classes_file}: cannot read ({e})") from e
    names = images_io.parse_class_names(file_lines=lines)
  else:
    names = images_io.parse_class_names(args.classes)
  paths = images_io.find_images(args.inputs)

  enable_compilation_cache()
  mesh = shard_lib.make_mesh([("data", -1)], jax.local_devices())
  params, step = trainer.load_params(args.workdir, config, mesh)
  clip = trainer.text_encoder(config)
  queries = trainer.class_queries(config, clip, names)  # [Q, D]
  cfg = trainer.detector_config(config)
  predictor = DetectorPredictor(cfg, mesh, int(config.detect.batch_size),
                                score_threshold=float(config.detect.score_threshold),
                                compiler_options=trainer.compiler_options(config))
  t_ready = time.perf_counter()
  info = {"description": "zipjax detect", "workdir": os.path.abspath(args.workdir), "checkpoint_step": step,
          "classes": names}
  writer = ResultWriter(args.out, names, info)
  lim = config.input
  bs = predictor.batch_size
  done = 0
  with tqdm(total=len(paths), unit="img", desc="detect", disable=None, file=sys.stderr) as bar:
    for s in range(0, len(paths), bs):
      batch = []
      for j, path in enumerate(paths[s:s + bs]):
        try:
          img = images_io.load_image(path, int(lim.min_side), int(lim.max_side), float(lim.max_aspect))
          batch.append((s + j + 1, path, img))
        except InputError as e:
          writer.add_error(path, str(e))
      outs = predictor.predict(params, [img for _, _, img in batch], queries) if batch else []
      for (image_id, path, img), insts in zip(batch, outs):
        writer.add_image(image_id, path, img, insts)
        if config.detect.overlays:
          writer.write_overlay(image_id, path, img, insts, int(config.detect.overlay_max_side))
        done += 1
      writer.flush()
      bar.update(len(paths[s:s + bs]))
  elapsed = time.perf_counter() - t_start
  atomic_write_json(os.path.join(args.out, "run.json"), {
      "info": info, "config": trainer.config_to_dict(config), "images": len(paths), "detected": done,
      "skipped": len(writer.errors), "instances": len(writer.results),
      "seconds": {"total": elapsed, "setup": t_ready - t_start}})
  print(f"detected {len(writer.results)} instances in {done}/{len(paths)} images in {elapsed:.1f}s "
        f"(setup {t_ready - t_start:.1f}s); outputs in {args.out}")
  if writer.errors:
    print(f"{len(writer.errors)} file(s) skipped, see {os.path.join(args.out, 'errors.json')}")
  return 0
