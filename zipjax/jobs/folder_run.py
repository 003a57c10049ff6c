"""The run loop of the folder commands, `zipjax segment` and `zipjax detect`: image files in, the outputs of the
shard writer out (zipjax/io/shards.py), kill-safe, resumable and locked.

A command resolves its config and class names, then hands `run_folder` a `FolderJob`: its name, the result-
affecting identity of the run, the `info` block of annotations.json, decoding limits, overlay settings and a
`build()` that loads its models. `run_folder` then, in this order:

1. expands the inputs (`zipjax.io.images.scan_inputs`: missing files, broken links, FIFOs, duplicates... are
   refused up front and listed in errors.json) and checks `--out` (`zipjax.io.outdir.check_output_dir`), both
   before any model is loaded;
2. takes the directory lock (a second run into the same DIR exits 2; a killed run's lock is taken over),
   removes temporary files of killed runs and rolls a committed output set forward (`RunDir.recover`);
3. compares the run's identity (`FolderJob.identity(inputs)`: command, config, models, classes, the inputs'
   absolute paths) with `.zipjax/job.json`: the same identity continues a killed run (finished images are
   not recomputed), another one starts afresh (the old outputs stay until the new ones are committed);
4. builds the models only when something is left to do, then per batch of `batch_size` images (the model's
   `batch_size` attribute when it has one): decodes them (a bad file is an error record and the run goes on),
   runs `model.segment(images)` (an image it could not segment comes back as `{"error": reason}` and becomes
   an error record, its batch mates unaffected), stages overlays under `.zipjax/overlays/` and writes one shard file (O(new results));
   `fault("<command>.batch")` after each batch is the kill point of the tests;
5. merges the shards into results.json, annotations.json, errors.json, run.json (+ overlays/) and commits them
   together (`RunDir.merge`), then prints a summary and the `zipjax gallery` command.

A model is anything with `segment(list of uint8 [H, W, 3]) -> list of {"instances": [...]}` (or `{"error":
reason}`) and a `timings` dict (`zipjax.engine.Engine` for segment); instances are the engine's `{category (0-based), score, box [x0, y0, x1, y1],
mask bool [H, W]}`, best first. Image ids are input positions + 1 (refused entries get none).

`file_name`s are the paths as given (relative ones are relative to the working directory, which run.json
records as `images_root` for `zipjax gallery`; run.json's `input_roots`, the INPUT arguments made absolute, are
where the gallery may read images from). Exit status: 0 when at least one image got outputs, 1 when
none could (every input missing or bad).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from typing import Any, Callable

from tqdm import tqdm

from zipjax.errors import InputError
from zipjax.gallery import gallery_hint
from zipjax.io import fs
from zipjax.io import images as images_io
from zipjax.io.faults import fault
from zipjax.io.lock import describe
from zipjax.io.outdir import check_output_dir
from zipjax.io.results import draw_overlay
from zipjax.io.shards import RunDir, error_record, image_record


@dataclasses.dataclass
class FolderJob:
  """What a folder command asks of `run_folder`.

  Attributes:
    command: 'segment' or 'detect' (messages, the lock, the inputs' kind, the fault point `<command>.batch`).
    verb: past participle for the summary and run.json's count ('segmented', 'detected').
    out: the output directory.
    names: class names (category id = 1 + index).
    identity: `inputs dict -> run identity` (stored as .zipjax/job.json; `zipjax.jobs.identity`).
    info: the `info` block of annotations.json (nothing that varies between runs).
    config: the config as a dict (run.json).
    build: `() -> model` (see the module docstring), called only when an image is left to do.
    batch_size: images per `model.segment` call (unless the model says otherwise).
    limits: decoding limits (min_side, max_side, max_aspect).
    overlays: draw overlays.
    overlay_max_side: longer side of the overlays.
    banner: text drawn on every overlay (random-weight runs), or None.
    notes: lines printed to stderr before the run (e.g. the random-weights note).
  """
  command: str
  verb: str
  out: str
  names: list
  identity: Callable[[dict], dict]
  info: dict
  config: dict
  build: Callable[[], Any]
  batch_size: int
  limits: tuple
  overlays: bool = True
  overlay_max_side: int = 1024
  banner: str | None = None
  notes: tuple = ()


def overlay_name(image_id: int, path: str) -> str:
  """overlays/<image id, 6 digits>_<file stem>.png"""
  stem = os.path.splitext(os.path.basename(path))[0] or "image"
  return f"{image_id:06d}_{stem}.png"


def run_folder(job: FolderJob, inputs) -> int:
  """Runs (or resumes) `job` on the image files / folders `inputs`; see the module docstring. -> exit status."""


  t_start = time.perf_counter()
  names = list(job.names)
  paths, refused = images_io.scan_inputs(inputs)  # refused: missing, broken links, FIFOs, duplicates...
  check_output_dir(job.out, "--out")  # before any model is loaded

  rd = RunDir(job.out)
  fs.makedirs(job.out)
  with rd.lock(f"zipjax {job.command}") as lock:
    if lock.stale is not None:
      print(f"took over the stale lock of {describe(lock.stale)}")
    rec = rd.recover()  # temporary files of killed runs; a committed output set of a killed run rolled forward
    overlays = bool(job.overlays)
    spec = {"kind": job.command, "count": len(paths), "overlays": overlays,
            "overlay_max_side": int(job.overlay_max_side) if overlays else None,
            "paths_sha256": hashlib.sha256("\n".join(os.path.abspath(p) for p in paths).encode(
                "utf-8", "surrogateescape")).hexdigest()}
    identity = job.identity(spec)
    if rd.read_job() != identity:  # not the continuation of a killed run with the same identity: start afresh
      rd.reset(outputs=False)
      rd.write_job(identity)
    keys = [f"{i:09d}" for i in range(len(paths))]
    done = {k for k, _ in rd.iter_ledger()}
    todo = [i for i, k in enumerate(keys) if k not in done]
    if refused and "ref000000" not in done:  # entries refused before decoding: missing, FIFOs, duplicates...
      pre = rd.writer(shard_size=1 << 30)
      for j, entry in enumerate(refused):  # keys sort after the 9-digit image positions
        pre.add(error_record(f"ref{j:06d}", {"path": entry["path"], "reason": entry["reason"]}))
      pre.flush()
    if done - {f"ref{j:06d}" for j in range(len(refused))}:
      print(f"resuming the killed run in {job.out}: {len(paths) - len(todo)} of {len(paths)} images already done")
    if rec["cleaned"]:
      print(f"removed {len(rec['cleaned'])} temporary file(s) left by a killed run")
    for note in job.notes:
      print(note, file=sys.stderr)

    timings = {}
    t_ready = time.perf_counter()
    if todo:
      model = job.build()
      t_ready = time.perf_counter()
      writer = rd.writer(shard_size=1 << 30)  # one shard file per batch (flushed below)
      min_side, max_side, max_aspect = job.limits
      bs = int(getattr(model, "batch_size", None) or job.batch_size)
      with tqdm(total=len(todo), unit="img", desc=job.command, disable=None, file=sys.stderr) as bar:
        for s in range(0, len(todo), bs):
          batch = []
          for i in todo[s:s + bs]:
            try:
              batch.append((i, images_io.load_image(paths[i], int(min_side), int(max_side), float(max_aspect))))
            except InputError as e:
              writer.add(error_record(keys[i], {"path": paths[i], "reason": str(e)}))
          outs = model.segment([img for _, img in batch]) if batch else []
          for (i, img), out in zip(batch, outs):
            if "error" in out:
              writer.add(error_record(keys[i], {"path": paths[i], "reason": out["error"]}))
              continue
            h, w = img.shape[:2]
            if overlays:  # staged; moved into OUT/overlays only with the JSON files that describe them
              png = draw_overlay(img, out["instances"], names, int(job.overlay_max_side), banner=job.banner)
              fs.write_bytes(fs.join(rd.overlay_stage, overlay_name(i + 1, paths[i])), png)
            writer.add(image_record(keys[i], paths[i], h, w, out["instances"], image_id=i + 1))
          writer.flush()  # one shard per batch: O(new results), nothing rewritten
          bar.update(len(todo[s:s + bs]))
          fault(f"{job.command}.batch")
      timings = dict(getattr(model, "timings", {}) or {})

    def run_info(stats):
      elapsed = time.perf_counter() - t_start
      return {"info": job.info, "config": job.config, "images": len(paths) + len(refused), job.verb: stats.images,
              "skipped": stats.errors, "instances": stats.annotations, "images_root": os.getcwd(),
              "input_roots": [os.path.abspath(i) for i in inputs if "://" not in str(i)],
              "seconds": {"total": elapsed, "setup": t_ready - t_start, **timings}}

    stats = rd.merge(job.info, names, run_info, results=True,
                     overlay_name=(lambda iid, r: overlay_name(iid, r["image"]["file_name"])) if overlays else None)
    rd.reset(outputs=False)  # the run is complete: the next run into this directory starts afresh
  elapsed = time.perf_counter() - t_start
  _summary(job, stats, len(todo), len(paths) + len(refused), elapsed, t_ready - t_start)
  if not stats.images:
    print(f"zipjax {job.command}: no image could be {job.verb} (see errors.json)", file=sys.stderr)
    return 1
  return 0


def _summary(job: FolderJob, stats, done: int, total: int, elapsed: float, setup: float) -> None:
  out_dir = job.out
  print(f"{job.verb} {stats.images}/{total} images in {elapsed:.1f}s (setup {setup:.1f}s, "
        f"{done / max(elapsed - setup, 1e-9):.2f} images/s after setup); {stats.annotations} instances")
  for i, n in enumerate(job.names):
    print(f"  {n}: {stats.per_class.get(i + 1, 0)}")
  if stats.errors:
    print(f"{stats.errors} file(s) skipped, see {os.path.join(out_dir, 'errors.json')}:")
    for e in stats.first_errors:
      print(f"  {e['path']}: {e['reason']}")
  print(f"outputs in {out_dir}: results.json, annotations.json, errors.json, run.json"
        f"{', overlays/' if os.path.isdir(os.path.join(out_dir, 'overlays')) else ''}")
  print(gallery_hint(out_dir))


__all__ = ["FolderJob", "run_folder", "overlay_name"]
