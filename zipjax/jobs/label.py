"""The labelling job: a dataset in, one canonical COCO `annotations.json` out, on any number of processes, kill-safe.

`run_label(request)` is what `zipjax label` runs on every process of a job:

1. **Run directory** (`zipjax/io/shards.py`). Process 0 takes the directory lock (`zipjax/io/lock.py`; a second
   run gets exit 2, a killed run's lock is taken over), cleans what killed runs left, rolls a committed merge
   forward, and checks the run's identity (`zipjax/jobs/identity.py`: command, zipjax version, result-affecting
   config, model identity, class names, inputs) against `.zipjax/job.json`: a different identity is refused
   (`--overwrite` starts over). Every process then reads the ledger (the shard headers) and skips finished
   images.
2. **Input** (`zipjax/data`). The work list (sorted keys) minus the finished images is split across processes
   (`[p::P]`); each process decodes and prepares only its part in a grain pipeline (threads + prefetch).
3. **Scheduling.** Prepared images fall into the engine's buckets; each process keeps one queue per bucket
   (bounded: it stops reading when a queue holds a full local batch). Before every step the processes
   allgather their queue lengths, an input-exhausted flag and their finished counts, and all pick the same
   bucket: the one with the most queued images over all processes (lowest index on ties). Every process calls
   `engine.run_local(bucket, items)` with its queued images of that bucket (possibly none), as the engine's
   collective step requires. The job ends when every process is exhausted and every queue is empty. Results
   do not depend on the schedule: the engine pads every device batch and an image's numbers never depend on
   its batch-mates.
4. **Output.** Results become canonical records (RLE masks, rounded numbers) in a writer thread that overlaps
   the next step, and land in per-process shard files of `config.label.shard_size` images; failed images are
   records too (with their reason). After a barrier, process 0 merges every shard into `annotations.json`,
   `errors.json` and `run.json` and commits them; re-running a complete run finds nothing to do and changes no
   file.

`merge_run(out)` is `zipjax label merge DIR`: the merge alone, from whatever shards the directory holds.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from zipjax import engine as engine_lib
from zipjax.data.loader import process_stream
from zipjax.configs import Limits
from zipjax.data.sources import open_inputs
from zipjax.errors import InputError
from zipjax.gallery import gallery_hint
from zipjax.io import fs
from zipjax.io.faults import fault
from zipjax.io.lock import describe
from zipjax.io.results import RANDOM_NOTE
from zipjax.io.shards import RunDir, error_record, image_record, new_nonce
from zipjax.jobs.comm import Comm
from zipjax.jobs.identity import annotations_info, check_identity, job_identity


# ------------------------------------------------------------------------------------------------ schedule
def schedule(stream, run_local, local_batch: int, num_buckets: int, comm, on_error, on_outputs,
             max_pending: int = 0, on_progress=None) -> int:
  """Runs the engine over a stream of prepared images with per-bucket queues (module docstring, step 3).

  Args:
    stream: iterator of `Loaded` items (`.item.bucket`, or `.reason` when the image failed).
    run_local: `(bucket, items) -> outputs`, called by every process with the same bucket each step.
    local_batch: images per step on this process at most.
    num_buckets: the engine's bucket count.
    comm: `zipjax.jobs.comm.Comm`.
    on_error: `Loaded -> None` for images that failed before the step.
    on_outputs: `(list of Loaded, outputs) -> None` after each step.
    max_pending: bound on queued images (0: num_buckets * local_batch).
    on_progress: `global finished count -> None`, after every agreement.

  Returns:
    the number of steps run.
  """
  queues = [collections.deque() for _ in range(num_buckets)]
  max_pending = int(max_pending) or num_buckets * local_batch
  pending, finished, steps = 0, 0, 0
  exhausted = False
  fullest = 0
  while True:
    while not exhausted and pending < max_pending and fullest < local_batch:
      x = next(stream, None)
      if x is None:
        exhausted = True
        break
      if x.reason is not None or x.item is None:
        on_error(x)
        finished += 1
        continue
      q = queues[int(x.item.bucket)]
      q.append(x)
      pending += 1
      fullest = max(fullest, len(q))
    local = np.array([len(q) for q in queues] + [int(exhausted), finished], np.int64)
    table = comm.allgather(local)  # [P, num_buckets + 2]
    counts = table[:, :num_buckets].sum(0)
    if on_progress is not None:
      on_progress(int(table[:, -1].sum()))
    if counts.sum() == 0:
      if table[:, num_buckets].all():
        return steps
      continue
    b = int(np.argmax(counts))
    batch = [queues[b].popleft() for _ in range(min(local_batch, len(queues[b])))]
    pending -= len(batch)
    fullest = max(len(q) for q in queues)
    outs = run_local(b, [x.item for x in batch])
    if len(outs) != len(batch):
      raise RuntimeError(f"engine returned {len(outs)} outputs for {len(batch)} images")
    on_outputs(batch, outs)
    finished += len(batch)
    steps += 1


class _Sink:
  """Turns step outputs into records and shard files in one background thread (one step in flight), so RLE
  encoding and file writes overlap the next device step."""

  def __init__(self, writer):
    self.writer = writer
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zipjax-shards")
    self._future = None

  def submit(self, fn, *args) -> None:
    if self._future is not None:
      self._future.result()
    self._future = self._pool.submit(fn, *args)

  def close(self) -> None:
    try:
      if self._future is not None:
        self._future.result()
      self.writer.flush()
    finally:
      self._pool.shutdown(wait=True)


def _records(batch, outs) -> list[dict]:
  recs = []
  for x, o in zip(batch, outs):
    if "error" in o:
      x.reason = f"failed in the labelling step: {o['error']}"
      recs.append(error_record(x.key, x.error_entry()))
      continue
    try:
      recs.append(image_record(x.key, x.file_name, x.height, x.width, o["instances"], image_id=x.image_id,
                               extra=x.extra))
    except (KeyError, TypeError, ValueError) as e:
      x.reason = f"invalid labelling output ({type(e).__name__}: {e})"
      recs.append(error_record(x.key, x.error_entry()))
  return recs


# ------------------------------------------------------------------------------------------------ job
@dataclasses.dataclass
class LabelRequest:
  """What `zipjax label` was asked to do.

  Attributes:
    out: run directory (local or gs://).
    inputs: folders / image files / one `tfds:NAME:SPLIT`.
    names: class names.
    config: the resolved config (with `config.label`).
    random_init: random weights.
    overwrite: discard a previous run in `out`.
    coco_json, images_root, data_dir: the other input forms.
    command: 'label'.
  """
  out: str
  inputs: list
  names: list
  config: object
  random_init: bool = False
  overwrite: bool = False
  coco_json: str | None = None
  images_root: str | None = None
  data_dir: str | None = None
  command: str = "label"


def default_engine(config, random_init: bool):
  """(engine, prepare) of `zipjax.engine` for `config`."""
  eng = engine_lib.Engine(config, random_init=random_init)
  return eng, functools.partial(engine_lib.prepare, spec=eng.spec)


def _log_main(comm):
  def log(msg):
    if comm.is_main:
      print(msg, flush=True)
  return log


def run_label(req: LabelRequest, make_engine=None, comm=None, log=None) -> int:
  """Runs (or resumes, or finds complete) a labelling job on this process; see the module docstring.

  `make_engine(config, random_init) -> (engine, prepare)` defaults to `default_engine` (zipjax.engine)."""
  t0 = time.perf_counter()
  comm = comm or Comm()
  log = log or _log_main(comm)
  config = req.config
  lc = config.label
  rd = RunDir(req.out)
  worklist = open_inputs(req.inputs, req.coco_json, req.images_root, req.data_dir,
                         image_feature=str(lc.tfds_image_feature), exclude=(req.out,))
  job = job_identity(req.command, config, req.names, req.random_init, worklist.spec)
  lock = rd.lock(f"zipjax {req.command}")

  def setup():
    fs.makedirs(rd.root)
    lock.acquire()
    if lock.stale is not None:
      log(f"took over the stale lock of {describe(lock.stale)}")
    rec = rd.recover()
    if rec["cleaned"]:
      log(f"removed {len(rec['cleaned'])} temporary file(s) left by a killed run")
    if rec["rolled_forward"]:
      log("finished the output commit of a killed run")
    check_identity(rd, job, req.overwrite, log)

  try:
    comm.agree(setup, "set up the run directory")
    comm.barrier("label-setup")
    # -------------------------------------------------------------------- ledger: what is already done
    done = np.zeros(len(worklist), bool)
    failed = 0
    for key, bad in rd.iter_ledger():
      i = worklist.index_of(key)
      if i is not None and not done[i]:
        done[i] = True
        failed += bad
    remaining = np.flatnonzero(~done)
    n_done = int(done.sum())
    del done
    comm.barrier("label-ledger")  # everyone read the ledger before anyone writes a shard
    if len(remaining) == 0 and rd.is_complete():
      log(f"nothing to do: all {len(worklist)} images of {rd.root} are labelled and merged "
          f"({failed} skipped); no file was changed")
      _gallery_hint(rd, job, log)
      return 0
    if n_done:
      log(f"resuming {rd.root}: {n_done} of {len(worklist)} images already finished ({failed} failed), skipped; "
          f"{len(remaining)} to do")
    attempt = {"nonce": new_nonce(), "processes": comm.count, "images": int(len(remaining)),
               "started": round(time.time(), 3)}
    if len(remaining):
      attempt.update(_label_images(req, worklist, remaining, rd, comm, log, make_engine or default_engine,
                                   Limits.from_config(config), nonce=attempt["nonce"]))
    comm.barrier("label-written")
    rc = 0
    if comm.is_main:
      attempt["seconds_total"] = round(time.perf_counter() - t0, 3)
      if len(remaining):
        rd.write_attempt(attempt["nonce"], attempt)
      rc = _merge_and_report(rd, job, config, len(worklist), log)
    comm.barrier("label-merged")
    return rc
  finally:
    lock.release()


def _label_images(req, worklist, remaining, rd, comm, log, make_engine, limits, nonce) -> dict:
  """Labels `remaining` (the same on every process); returns this attempt's statistics (process 0's view)."""

  config = req.config
  lc = config.label
  if req.random_init:
    log(f"NOTE: {RANDOM_NOTE}")
  t_setup = time.perf_counter()
  eng, prepare = make_engine(config, req.random_init)
  eng.set_classes(req.names)
  setup_s = time.perf_counter() - t_setup
  writer = rd.writer(int(lc.shard_size), comm.index, nonce)
  sink = _Sink(writer)
  stream = process_stream(worklist, remaining, prepare, limits, process_index=comm.index,
                          process_count=comm.count, workers=int(lc.workers), prefetch=int(lc.prefetch))

  def handle(batch, outs):
    for rec in _records(batch, outs):
      writer.add(rec)
    fault("label.step")

  def handle_errors(items):
    for x in items:
      writer.add(error_record(x.key, x.error_entry()))

  errors_buffer = []

  def on_error(x):
    errors_buffer.append(x)
    if len(errors_buffer) >= 64:
      sink.submit(handle_errors, list(errors_buffer))
      errors_buffer.clear()

  def on_outputs(batch, outs):
    if errors_buffer:
      sink.submit(handle_errors, list(errors_buffer))
      errors_buffer.clear()
    sink.submit(handle, batch, outs)

  total = len(remaining)
  bar = tqdm(total=total, unit="img", desc=req.command, disable=None if comm.is_main else True, file=sys.stderr,
             dynamic_ncols=True)
  t_loop = time.perf_counter()

  def progress(n):
    bar.update(n - bar.n)

  try:
    steps = schedule(stream, eng.run_local, int(eng.local_batch), int(eng.num_buckets), comm, on_error,
                     on_outputs, max_pending=int(lc.max_pending), on_progress=progress)
  finally:  # also on Ctrl-C: results already computed are written, not lost
    bar.close()
    if errors_buffer:
      sink.submit(handle_errors, list(errors_buffer))
    sink.close()
  loop_s = time.perf_counter() - t_loop
  timings = {k: round(float(v), 3) for k, v in dict(getattr(eng, "timings", {}) or {}).items()}
  compiled = None
  if hasattr(eng, "compiled_programs"):
    try:
      compiled = eng.compiled_programs()
    except Exception:  # pylint: disable=broad-except
      compiled = None
  if isinstance(compiled, dict):
    compiled = {str(k): v for k, v in compiled.items()}
  stats = {"setup_seconds": round(setup_s, 3), "loop_seconds": round(loop_s, 3), "steps": steps,
           "images_per_second": round(total / max(loop_s, 1e-9), 3), "device_seconds": timings,
           "compiled_programs": compiled, "local_batch": int(eng.local_batch), "num_buckets": int(eng.num_buckets)}
  try:
    stats["devices"] = jax.device_count()
  except Exception:  # pylint: disable=broad-except
    pass
  if comm.is_main:
    stage = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    log(f"labelled {total} images in {loop_s:.1f}s ({total / max(loop_s, 1e-9):.2f} images/s on {comm.count} "
        f"process(es), {steps} steps; setup {setup_s:.1f}s){'; device time: ' + stage if stage else ''}")
  return stats


def _merge_and_report(rd: RunDir, job: dict, config, n_images: int | None, log) -> int:
  names = job["classes"]
  t = time.perf_counter()
  attempts = sorted(rd.attempts(), key=lambda a: a.get("nonce", ""))

  def run_info(stats):
    loop = sum(a.get("loop_seconds", 0.0) for a in attempts)
    labelled = sum(a.get("images", 0) for a in attempts)
    return {"info": annotations_info(job), "config": config.to_dict() if config is not None else job["config"],
            "inputs": job["inputs"], "images_root": images_root(job),
            "images": n_images if n_images is not None else stats.images + stats.errors,
            "segmented": stats.images, "skipped": stats.errors, "instances": stats.annotations,
            "images_per_second": round(labelled / loop, 3) if loop > 0 else None, "attempts": attempts,
            "merge": stats.as_dict()}

  stats = rd.merge(annotations_info(job), names, run_info)
  log(f"merged {stats.images} images, {stats.annotations} instances, {stats.errors} skipped into "
      f"{fs.join(rd.root, 'annotations.json')} in {time.perf_counter() - t:.1f}s")
  for cid in sorted(stats.per_class):
    log(f"  {names[cid - 1]}: {stats.per_class[cid]}")
  if stats.errors:
    log(f"{stats.errors} image(s) skipped, see {fs.join(rd.root, 'errors.json')}:")
    for e in stats.first_errors:
      log(f"  {e.get('file_name', e.get('path'))}: {e['reason']}")
  if stats.images == 0 and stats.errors:
    log("error: no image could be labelled")
    return 1
  _gallery_hint(rd, job, log)
  return 0


def images_root(job: dict) -> str | None:
  """The folder the run's `file_name`s are relative to (run.json `images_root`, where `zipjax gallery` looks):
  the inputs' common folder or `--images-root`, absolute (a bucket URL stays a URL); None for TFDS inputs,
  whose images are records, not files.

  Absolute, not relative to the run directory: it is a function of the command alone (the inputs as the job
  identity records them), so it is the same whatever the device or process count, and it stays right when the
  run directory is moved or the gallery is built from another working directory. It lives in run.json, not in
  annotations.json, so annotations.json stays a function of the images and the config only (the same bytes
  for the same dataset stored elsewhere)."""
  root = job.get("inputs", {}).get("images_root")
  return str(root) if root else None


def _gallery_hint(rd: RunDir, job: dict, log) -> None:
  """Tells the user how to look at the labels (`zipjax gallery`), for a local run directory."""
  if not fs.is_local(rd.root):
    return
  log(gallery_hint(rd.root))
  if job.get("inputs", {}).get("kind") == "tfds":
    log("  (the images of a TFDS input are records, not files: the gallery draws the instances on blank canvases "
        "unless --images-root names a folder holding them as files)")


def merge_run(out: str, comm=None, log=None) -> int:
  """`zipjax label merge DIR`: merges the shards of a run directory into its final outputs."""
  comm = comm or Comm(0, 1)
  log = log or _log_main(comm)
  rd = RunDir(out)
  job = rd.read_job() if fs.exists(rd.state) else None
  if job is None:
    raise InputError(f"{out} is not a zipjax run directory (no .zipjax/job.json)")
  with rd.lock("zipjax label merge"):
    rd.recover()
    return _merge_and_report(rd, job, None, None, log)


__all__ = ["LabelRequest", "run_label", "merge_run", "schedule", "images_root", "default_engine"]
