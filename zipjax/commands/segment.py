"""`zipjax segment INPUT... --classes a,b | --classes-file F --out DIR`: instances of the named classes.

INPUT: image files or folders (their image files, sorted). Writes DIR/results.json (COCO results),
DIR/annotations.json (a COCO dataset with scores; `zipjax eval --pred` accepts it), DIR/overlays/*.png,
DIR/errors.json (files that were skipped, with the reason; the run goes on) and DIR/run.json (config, timings).

Output protocol (zipjax/io/shards.py): results go to one shard file per batch under DIR/.zipjax/ (O(new
results) per batch; nothing is rewritten or held in memory) and overlays to a staging folder; at the end the
shards are merged and all outputs are committed together, old outputs of an earlier run (stale overlays
included) replaced. A killed run leaves the previous outputs or a consistent subset of the new ones; running
the same command again resumes it (finished images are not recomputed). DIR is locked while a run writes it:
a second run into the same DIR exits 2; the lock of a killed run is taken over. Temporary files left by
killed runs are removed.

Configuration: `--preset reference|zip` (default zip) or `--config FILE` (a configs/*.py file with
get_config()), then `--config.KEY=VALUE` overrides (e.g. `--config.scoring.nms_threshold=0.6`).
Weights: names from checkpoints/manifest.json or paths (see zipjax/weights.py), `--random-init` for random
weights (outputs marked so).
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import time

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


# ------------------------------------------------------------------------------------------------- config
def load_config_file(path: str):
  """`get_config()` of a Python config file."""
  if not os.path.isfile(path):
    raise InputError(f"--config {path}: file not found")
  spec = importlib.util.spec_from_file_location(f"_zipjax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"--config {path}: cannot load get_config() ({type(e).__name__}: {e})") from e


def _convert(old, text: str, key: str):
  if isinstance(old, bool):
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise InputError(f"--config.{key}: expected a boolean, got {text!r}")
  try:
    if isinstance(old, int):
      return int(text)
    if isinstance(old, float):
      return float(text)
  except ValueError:
    raise InputError(f"--config.{key}: expected {type(old).__name__}, got {text!r}") from None
  if isinstance(old, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides: list[str]):
  """Applies `--config.a.b=value` / `--config.a.b value` items to `config` (fields must exist)."""
  items = list(overrides)
  i = 0
  while i < len(items):
    arg = items[i]
    if not arg.startswith("--config."):
      raise InputError(f"unrecognised argument {arg!r}")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(items):
        raise InputError(f"--config.{key}: missing value")
      value = items[i + 1]
      i += 1
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
      if part not in node:
        raise InputError(f"--config.{key}: no field {part!r}")
      node = node[part]
    if parts[-1] not in node:
      raise InputError(f"--config.{key}: no such config field")
    old = node[parts[-1]]
    if hasattr(old, "keys"):
      raise InputError(f"--config.{key} is a group of fields; set its members")
    with node.unlocked() if hasattr(node, "unlocked") else _null():
      node[parts[-1]] = _convert(old, value, key)
    i += 1
  return config


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


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
  return config


# ------------------------------------------------------------------------------------------------- run
def enable_compilation_cache() -> str | None:
  """Persists XLA executables in <cache>/xla (ZIPJAX_XLA_CACHE=0 turns it off), so a second run with the same
  models and image sizes skips compilation (most of a cold start on CPU)."""
  import jax  # pylint: disable=import-outside-toplevel

  from zipjax.weights import cache_dir  # pylint: disable=import-outside-toplevel
  if os.environ.get("ZIPJAX_XLA_CACHE", "1") == "0":
    return None
  path = os.path.join(cache_dir(), "xla")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None  # a read-only cache is no reason to fail a run
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def run(args) -> int:
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  from zipjax.io import fs  # pylint: disable=import-outside-toplevel
  from zipjax.io import images as images_io  # pylint: disable=import-outside-toplevel
  from zipjax.io.results import RANDOM_NOTE, draw_overlay  # pylint: disable=import-outside-toplevel
  from zipjax.io.shards import RunDir, error_record, fault, image_record  # pylint: disable=import-outside-toplevel
  from zipjax.jobs.label import job_identity  # pylint: disable=import-outside-toplevel
  from zipjax.pipeline.zip import build_segmenter  # pylint: disable=import-outside-toplevel

  t_start = time.perf_counter()
  config = resolve_config(args)
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

  rd = RunDir(args.out)
  fs.makedirs(args.out)
  with rd.lock("zipjax segment") as lock:
    if lock.stale is not None:
      from zipjax.io.lock import describe  # pylint: disable=import-outside-toplevel
      print(f"took over the stale lock of {describe(lock.stale)}")
    rec = rd.recover()  # temporary files of killed runs; a committed output set of a killed run rolled forward
    overlays = bool(config.output.overlays)
    inputs = {"kind": "segment", "count": len(paths), "overlays": overlays,
              "overlay_max_side": int(config.output.overlay_max_side) if overlays else None,
              "paths_sha256": hashlib.sha256("\n".join(os.path.abspath(p) for p in paths).encode(
                  "utf-8", "surrogateescape")).hexdigest()}
    job = job_identity("segment", config, names, args.random_init, inputs)
    if rd.read_job() != job:  # not the continuation of a killed run with the same identity: start afresh
      rd.reset(outputs=False)
      rd.write_job(job)
    keys = [f"{i:09d}" for i in range(len(paths))]
    done = {k for k, _ in rd.iter_ledger()}
    todo = [i for i, k in enumerate(keys) if k not in done]
    if done:
      print(f"resuming the killed run in {args.out}: {len(paths) - len(todo)} of {len(paths)} images already done")
    if rec["cleaned"]:
      print(f"removed {len(rec['cleaned'])} temporary file(s) left by a killed run")

    if args.random_init:
      print(f"NOTE: {RANDOM_NOTE}", file=sys.stderr)
    info = {"description": "zipjax segment", "preset": str(config.preset), "random_init": bool(args.random_init),
            "classes": names}
    if args.random_init:
      info["note"] = RANDOM_NOTE
    banner = RANDOM_NOTE.split(":")[0] if args.random_init else None
    timings = {}
    t_ready = time.perf_counter()
    if todo:
      enable_compilation_cache()
      seg = build_segmenter(config, random_init=args.random_init)
      seg.set_classes(names)
      t_ready = time.perf_counter()
      writer = rd.writer(shard_size=1 << 30)  # one shard file per batch (flushed below)
      lim = config.input
      bs = int(config.batch_size)
      with tqdm(total=len(todo), unit="img", desc="segment", disable=None, file=sys.stderr) as bar:
        for s in range(0, len(todo), bs):
          batch = []
          for i in todo[s:s + bs]:
            try:
              img = images_io.load_image(paths[i], int(lim.min_side), int(lim.max_side), float(lim.max_aspect))
              batch.append((i, img))
            except InputError as e:
              writer.add(error_record(keys[i], {"path": paths[i], "reason": str(e)}))
          for (i, img), out in zip(batch, _segment(seg, batch, paths)):
            if isinstance(out, str) or "error" in out:
              reason = out if isinstance(out, str) else out["error"]
              writer.add(error_record(keys[i], {"path": paths[i], "reason": reason}))
              continue
            h, w = img.shape[:2]
            if overlays:  # staged; moved into OUT/overlays only with the JSON files that describe them
              png = draw_overlay(img, out["instances"], names, int(config.output.overlay_max_side), banner=banner)
              fs.write_bytes(fs.join(rd.overlay_stage, overlay_name(i + 1, paths[i])), png)
            writer.add(image_record(keys[i], paths[i], h, w, out["instances"], image_id=i + 1))
          writer.flush()  # one shard per batch: O(new results), nothing rewritten
          bar.update(len(todo[s:s + bs]))
          fault("segment.batch")
      timings = dict(seg.timings)

    def run_info(stats):
      elapsed = time.perf_counter() - t_start
      return {"info": info, "config": config.to_dict(), "images": len(paths), "segmented": stats.images,
              "skipped": stats.errors, "instances": stats.annotations,
              "seconds": {"total": elapsed, "setup": t_ready - t_start, **timings}}

    stats = rd.merge(info, names, run_info, results=True,
                     overlay_name=(lambda iid, r: overlay_name(iid, r["image"]["file_name"])) if overlays else None)
    rd.reset(outputs=False)  # the run is complete: the next run into this directory starts afresh
  elapsed = time.perf_counter() - t_start
  _summary(names, stats, len(todo), len(paths), elapsed, t_ready - t_start, args.out)
  return 0


def overlay_name(image_id: int, path: str) -> str:
  """overlays/<image id, 6 digits>_<file stem>.png"""
  stem = os.path.splitext(os.path.basename(path))[0] or "image"
  return f"{image_id:06d}_{stem}.png"


def _segment(seg, batch, paths):
  """Segments a batch of (index, image); when the batch fails on bad input, image by image so one bad image is
  isolated: its output is the reason (a string)."""
  if not batch:
    return []
  try:
    return seg.segment([img for _, img in batch])
  except InputError as e:
    if len(batch) == 1:
      return [str(e) or type(e).__name__]
  outs = []
  for item in batch:
    outs.extend(_segment(seg, [item], paths))
  return outs


def _summary(names, stats, done, total, elapsed, setup, out_dir):
  print(f"segmented {stats.images}/{total} images in {elapsed:.1f}s (setup {setup:.1f}s, "
        f"{done / max(elapsed - setup, 1e-9):.2f} images/s after setup); {stats.annotations} instances")
  for i, n in enumerate(names):
    print(f"  {n}: {stats.per_class.get(i + 1, 0)}")
  if stats.errors:
    print(f"{stats.errors} file(s) skipped, see {os.path.join(out_dir, 'errors.json')}:")
    for e in stats.first_errors:
      print(f"  {e['path']}: {e['reason']}")
  print(f"outputs in {out_dir}: results.json, annotations.json, errors.json, run.json"
        f"{', overlays/' if os.path.isdir(os.path.join(out_dir, 'overlays')) else ''}")
