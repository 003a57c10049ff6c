"""`zipjax self-train`: CutLER-style self-training rounds as one resumable job, with a per-round quality report.

    python -m zipjax self-train --config configs/selftrain_smoke.py --pseudo-json ANN --images-root DIR \
        --workdir W [--gt-json GT] [--val-json V --val-images-root DIR2] [--config.key=value ...]

Rounds r = 0 .. R (`R = config.selftrain.rounds`), each in its own folder `W/round_<r>/`, which is also the
`zipjax train` workdir of the round (so `zipjax detect --workdir W/round_<r>` and
`zipjax train ... --config.init_workdir=W/round_<r>` use it as is). Phases of round r, in order:

  labels   `round_<r>/annotations.json`, the labels the round trains on (a COCO dataset with scores; the
           `images_root` is recorded in `info`, so `zipjax gallery W/round_<r>` shows them).
           r = 0: the pseudo-labels (ANN) as given. r >= 1: round r-1's predictions on the training images,
           kept when scoring at least the round's threshold, de-duplicated and merged with round r-1's labels
           (`zipjax.data.self_labels.merge_labels`: 'replace' or 'union' with mask-IoU de-duplication, at most
           `max_dets` new labels per image). A new label's mask is the detector's (with the model's
           box_source='mask': only inside the box head's box widened by half its size), its box the tight box
           of that mask (what training recomputes), its score the detector's. The threshold is
           `thresholds[r-1]`, or with `calibrate` q the q quantile of the scores of the predictions that agree
           with round r-1's labels (mask IoU >= dedup_iou; `thresholds[r-1]` is then a floor); with
           `support_quantile` a previous label that no prediction at that quantile agrees with is dropped; with
           `rescore` kept labels take their agreeing prediction's score; with `protect` labels made by an
           earlier round are kept as they are (only the pseudo-labels are replaced). New labels carry
           `self_round` (r). The thresholds used are recorded in the labels' `info`.
  train    the detector trained on those labels for `steps` steps (`zipjax.train.trainer.train`, in process),
           initialised from round r-1's final parameters (`init='previous'`, CutLER's choice) or from the
           config's own initialisation (`init='base'`); `round_<r>/checkpoints`, `metrics.jsonl`, `tb/`.
           Marker: `round_<r>/train_done.json` (final step and metrics record).
  predict  round r's detector on every image of the labels' `images` list (resized like evaluation, top-k,
           class-agnostic when the config trains class-agnostic): `round_<r>/predictions/annotations.json`
           (COCO dataset with scores, at most `predict_max_dets` per image scoring at least `predict_min_score`,
           boxes from the detector, masks thresholded at logit 0). Done in chunks of `predict_chunk` images,
           each one shard file of the shared shard writer (`zipjax.io.shards.RunDir` in
           `round_<r>/predictions/.zipjax/`; a rerun skips finished chunks), then assembled and the shards
           deleted; images that cannot be read are listed in `predictions/errors.json`. Skipped for the last
           round unless `--gt-json` asks for its evaluation.
  eval     with `--gt-json`: the round's labels and its detector's predictions against the ground truth of the
           training images, class-agnostic and (where the category names allow) class-aware, box and mask
           (`zipjax.eval.evaluate`, only the images the files cover): `round_<r>/eval.json`.
At the end, with `--gt-json`, `W/report.md`, `W/metrics.json` and `W/plots/*.png` show the rounds side by side
(`zipjax.eval.rounds`; a round whose labels lost more than 0.01 of box or mask AP50 or AR100 is flagged WORSE
there and warned about in the log when it is evaluated).

Resume: every phase's output is written atomically and is its own done-marker, so a rerun of the same command
skips finished phases and redoes an interrupted one from its start (training resumes from its last checkpoint,
prediction from its last finished chunk). Every phase is deterministic (the trainer's exact resume, a fixed
image order and batch composition in prediction, a deterministic merge), so a run killed anywhere and rerun
writes the same labels (byte for byte) and the same metrics as an uninterrupted one. `W/selftrain.json`
records the inputs (the pseudo-labels' SHA-256, the images root) and the config; a rerun with other inputs or
another model / loss / data / optimizer / self-training config is refused.

Tests (`zipjax.io.faults`): `ZIPJAX_FAULT=selftrain.<phase>.<round>` SIGKILLs the process at a fixed point:
`train` once the round's first checkpoint exists (training goes on until then), `predict` after the round's
first chunk's shard file, `merge` after round r's labels are computed and before they are written.

Multi-host (`config.distributed=True`, one process per host, W on a filesystem all hosts share): every process
trains; prediction chunks are split round-robin over the processes (each uses its local devices); process 0
writes the labels, the assembled predictions, the evaluation and the report; barriers separate the phases.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Callable

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from zipjax import parallel
from zipjax.data.self_labels import MODES, calibrate, merge_labels
from zipjax.errors import InputError
from zipjax.eval import evaluate
from zipjax.eval.rounds import label_regressions, write_rounds_report
from zipjax.io import coco as coco_io
from zipjax.io import faults
from zipjax.io import fs
from zipjax.io import images as images_io
from zipjax.io.atomic import atomic_write_json
from zipjax.io.coco import normalize_name
from zipjax.io.geometry import encode_rle
from zipjax.io.shards import RunDir
from zipjax.jobs.comm import Comm
from zipjax.schema import BOOL, PROBABILITY, Choice, Custom, Float, Int, check, from_mapping, setting
from zipjax.schema import config_group as _config_group
from zipjax.train import checkpoints
from zipjax.train import task
from zipjax.train import trainer as tr
from zipjax.train.metrics import read_metrics
from zipjax.train.predict import Inference

KILL_ENV = faults.ENV
EXIT_PREEMPTED = 143
LABELS_FILE = "annotations.json"
PREDICTIONS_DIR = "predictions"
TRAIN_DONE = "train_done.json"
EVAL_FILE = "eval.json"
STATE_FILE = "selftrain.json"
INITS = ("previous", "base")
THRESHOLDS = Custom("a list of score thresholds in [0, 1], one per round 1..rounds",
                    lambda v: isinstance(v, (list, tuple)) and all(PROBABILITY.problem(t) is None for t in v))
ROUND_STEPS = Custom("[] (total_steps each round), N, [N] or one positive step count per round 0..rounds",
                     lambda v: Int(1).problem(v) is None if not isinstance(v, (list, tuple)) else
                     all(Int(1).problem(n) is None for n in v))
# config groups a rerun must share with the run that started the workdir (runtime settings may change)
FIXED_KEYS = ("model", "loss", "text", "data", "optim", "batch_size", "seed", "total_steps", "init_checkpoint",
              "init_workdir", "selftrain")


# -------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.selftrain`, validated: each field's default (CutLER's recipe) and rule (type and range) are declared
  with it (`zipjax.schema.setting`); config files build the group from them (`config_group`) and the config check
  of the `selftrain` group uses the same rules.

  Attributes:
    rounds: self-training rounds R after round 0 (R + 1 detectors are trained).
    thresholds: score threshold of each round r = 1..R (`thresholds[r - 1]`).
    max_dets: most new labels per image and round (CutLER: 30).
    mode: 'union' (previous labels kept unless a new label covers them) or 'replace'.
    dedup_iou: mask IoU at which two labels are the same object.
    min_area: smallest mask area (pixels) of a new label.
    steps: training steps of each round r = 0..R (`[]`: config.total_steps each; `[N]`: N each).
    init: 'previous' (round r starts from round r-1's final parameters) or 'base' (every round starts from the
      config's initialisation: init_checkpoint / init_workdir / random).
    predict_min_score: smallest score of a saved prediction.
    predict_max_dets: most saved predictions per image.
    predict_chunk: images per prediction shard file (the resume granularity of prediction).
    calibrate: 0: round r's threshold is `thresholds[r - 1]`; q in (0, 1): the q quantile of the scores of round
      r-1's predictions that agree with round r-1's labels (mask IoU >= dedup_iou), at least
      `thresholds[r - 1]` (`zipjax.data.self_labels.calibrate`): the detector's own scale, each round.
    support_quantile: 0: previous labels are kept unless replaced; q in (0, 1): a previous label needs an agreeing
      prediction scoring at least the q quantile of the agreeing scores, else it is dropped (union mode).
    rescore: a kept previous label takes the score of its best-agreeing prediction (union mode).
    protect: labels an earlier round's detector made are never replaced, only the original pseudo-labels are
      (union mode; predictions agreeing with a protected label confirm it and add nothing): a detector trained on
      its own labels does not redo them, which drifts (`zipjax.data.self_labels`).
  """
  rounds: int = setting(2, Int(0))
  thresholds: tuple = setting((0.7, 0.65), THRESHOLDS)
  max_dets: int = setting(30, Int(1))
  mode: str = setting("union", Choice(*MODES))
  dedup_iou: float = setting(0.5, Float(0.0, 1.0, lo_open=True))
  min_area: float = setting(16.0, Float(0.0))
  steps: tuple = setting((), ROUND_STEPS)
  init: str = setting("previous", Choice(*INITS))
  predict_min_score: float = setting(0.05, PROBABILITY)
  predict_max_dets: int = setting(100, Int(1))
  predict_chunk: int = setting(64, Int(1))
  calibrate: float = setting(0.0, Float(0.0, 1.0, hi_open=True))
  support_quantile: float = setting(0.0, Float(0.0, 1.0, hi_open=True))
  rescore: bool = setting(False, BOOL)
  protect: bool = setting(False, BOOL)

  def __post_init__(self):
    check(self, "selftrain.")

  @classmethod
  def from_config(cls, config) -> "Settings":
    """`config.selftrain` (every field's rule, then the relations), with `thresholds` one per round and `steps`
    one per round 0..rounds (`[]`: config.total_steps each; `N` or `[N]`: N each)."""
    if "selftrain" not in config:
      raise InputError("the config has no 'selftrain' group (use configs/selftrain_*.py)")
    s = from_mapping(cls, config.selftrain, "selftrain config")
    if len(s.thresholds) < s.rounds:
      raise InputError(f"selftrain.thresholds has {len(s.thresholds)} value(s) for selftrain.rounds = {s.rounds}: "
                       "give one threshold per round")
    steps = [s.steps] if isinstance(s.steps, int) else list(s.steps)
    steps = steps or [int(config.total_steps)]
    if len(steps) == 1:
      steps = steps * (s.rounds + 1)
    if len(steps) != s.rounds + 1:
      raise InputError(f"selftrain.steps has {len(steps)} values: give [], [N] or one positive value per round "
                       f"0..{s.rounds} (selftrain.rounds = {s.rounds})")
    return dataclasses.replace(s, thresholds=tuple(float(t) for t in s.thresholds[:s.rounds]),
                               steps=tuple(int(n) for n in steps))


def config_group(**overrides) -> ml_collections.ConfigDict:
  """`config.selftrain` for a config file: `Settings`' defaults (CutLER's recipe) with `overrides`, checked by
  their rules; tuples become lists (what `--config.selftrain.KEY=[...]` overrides)."""
  return _config_group(Settings, "selftrain", **overrides)


def round_dir(workdir: str, r: int) -> str:
  return os.path.join(workdir, f"round_{r}")


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_compact(path: str, obj) -> str:
  return atomic_write_json(path, obj, indent=None)


# ----------------------------------------------------------------------------------------- multi-host
def _process() -> tuple:
  return jax.process_index(), jax.process_count()


def _barrier(name: str) -> None:
  Comm().barrier(name)


# --------------------------------------------------------------------------------------------- config
def round_config(config, settings: Settings, workdir: str, r: int):
  """The `zipjax train` config of round r (the self-training group removed, steps and initialisation set)."""
  cfg = ml_collections.ConfigDict(json.loads(config.to_json()))
  with cfg.unlocked():
    del cfg["selftrain"]
    cfg.total_steps = int(settings.steps[r])
    cfg.distributed = False  # initialised once by self_train
    if r > 0 and settings.init == "previous":
      cfg.init_workdir = os.path.abspath(round_dir(workdir, r - 1))
  return cfg


def run_identity(state: dict) -> str:
  """sha256 of what a self-training run may not change between restarts: the pseudo-labels' bytes, the images
  root and the config's fixed keys. Round 0's labels carry it (`info.run_identity`), so that the identity survives
  the loss of selftrain.json."""
  ident = {"pseudo_json_sha256": state["pseudo_json_sha256"], "images_root": state["images_root"],
           "config": {k: state["config"].get(k) for k in FIXED_KEYS}}
  return hashlib.sha256(json.dumps(ident, sort_keys=True).encode("utf-8")).hexdigest()


def _check_state(workdir: str, state: dict, write: bool = True) -> None:
  """Refuses a workdir started with other inputs or config; records `state` (when `write`). Without
  selftrain.json, a workdir whose round 0 exists is checked against the identity its labels carry (refused when
  they carry none or another one: its rounds are not adopted by other inputs)."""
  path = os.path.join(workdir, STATE_FILE)
  if not os.path.exists(path):
    labels = os.path.join(round_dir(workdir, 0), LABELS_FILE)
    if os.path.exists(labels):
      try:
        recorded = (_read_json(labels).get("info") or {}).get("run_identity")
      except (OSError, ValueError, AttributeError):
        recorded = None
      if recorded != run_identity(state):
        why = "other inputs or config" if recorded else "inputs that cannot be checked"
        raise InputError(f"{workdir} has self-training rounds but no {STATE_FILE} (deleted?), and its round 0 was "
                         f"made from {why}; rerun with the same inputs and config, or use a new --workdir")
    if write:
      atomic_write_json(path, state)
    return
  old = _read_json(path)
  diff = [k for k in ("pseudo_json_sha256", "images_root") if old.get(k) != state[k]]
  diff += [f"config.{k}" for k in FIXED_KEYS if old["config"].get(k) != state["config"].get(k)]
  if diff:
    raise InputError(f"{workdir} was started with other inputs or config ({', '.join(diff)} differ); rerun with "
                     "the same ones to resume, or use a new --workdir")
  if old != state:
    atomic_write_json(path, state)


# --------------------------------------------------------------------------------------------- labels
def _initial_labels(pseudo_json: str, images_root: str, identity: str) -> dict:
  """Round 0's labels: the pseudo-labels as given (validated), the images root and the run's identity
  (`run_identity`) recorded in `info`."""
  data, source = coco_io.load_json(pseudo_json, "pseudo-label")
  coco_io.load_ground_truth(data, source)  # validation: ids, categories, segmentations
  for i, img in enumerate(data["images"]):
    if not isinstance(img.get("file_name"), str):
      raise InputError(f"{source}: image {i} (id {img['id']}): needs a file_name (relative to --images-root)")
  for k, a in enumerate(data["annotations"]):
    if not a.get("iscrowd", 0) and a.get("segmentation") in (None, []):
      raise InputError(f"{source}: annotation {k} (image_id {a['image_id']}): no segmentation (self-training "
                       "trains masks)")
  info = dict(data.get("info") or {})
  info.update(description="zipjax self-train labels, round 0 (the pseudo-labels)", round=0,
              source=os.path.abspath(pseudo_json), images_root=os.path.abspath(images_root), run_identity=identity)
  return {"info": info, "images": data["images"], "annotations": data["annotations"],
          "categories": data["categories"]}


def round_thresholds(settings: Settings, prev: dict, preds: dict, r: int) -> dict:
  """Round r's {'threshold', 'support' (None: not needed)} and, when calibrated, the calibration record."""
  floor = settings.thresholds[r - 1]
  out = {"threshold": floor, "support": None, "calibration": None}
  if settings.calibrate > 0 or settings.support_quantile > 0:
    cal = calibrate(prev, preds, quantile=settings.calibrate if settings.calibrate > 0 else 0.5,
                    support_quantile=settings.support_quantile, dedup_iou=settings.dedup_iou, floor=floor)
    out["calibration"] = cal
    if settings.calibrate > 0:
      out["threshold"] = round(cal["threshold"], 6)
    if settings.support_quantile > 0:
      out["support"] = round(cal["support"], 6)
  return out


def _merged_labels(settings: Settings, workdir: str, r: int, images_root: str) -> tuple:
  prev = _read_json(os.path.join(round_dir(workdir, r - 1), LABELS_FILE))
  preds = _read_json(os.path.join(round_dir(workdir, r - 1), PREDICTIONS_DIR, LABELS_FILE))
  th = round_thresholds(settings, prev, preds, r)
  t = th["threshold"]
  info = {"description": f"zipjax self-train labels, round {r}", "round": r, "threshold": t,
          "support": th["support"], "calibration": th["calibration"], "rescore": settings.rescore,
          "protect": settings.protect,
          "mode": settings.mode, "max_dets": settings.max_dets, "dedup_iou": settings.dedup_iou,
          "min_area": settings.min_area, "images_root": os.path.abspath(images_root)}
  data, stats = merge_labels(prev, preds, threshold=t, max_dets=settings.max_dets, mode=settings.mode,
                             dedup_iou=settings.dedup_iou, min_area=settings.min_area, support=th["support"],
                             rescore=settings.rescore, protect=settings.protect, round_index=r, info=info)
  data["info"]["stats"] = stats
  return data, stats


# -------------------------------------------------------------------------------------------- predict
def _train_names(rd: str) -> list:
  """The query names the round's detector was trained with (recorded in its final checkpoint)."""
  ck = checkpoints.Checkpoints(os.path.join(rd, "checkpoints"), every=1, keep=1, asynchronous=False, read_only=True)
  try:
    return list(ck.restore_meta(ck.latest_step())["names"])
  finally:
    ck.close()


def _local_params(rd: str, cfg, mesh):
  """The round's final parameters, replicated over `mesh` (this process's devices)."""

  if jax.process_count() == 1:
    return checkpoints.load_params(rd, cfg, mesh)[0]
  global_mesh = parallel.create_mesh([("data", -1)])  # orbax restores onto all processes' devices
  params, _ = checkpoints.load_params(rd, cfg, global_mesh)
  host = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), params)
  return jax.device_put(host, parallel.replicated(mesh))


def _prediction_annotations(img: dict, insts, max_dets: int) -> list:
  """The saved predictions of one image: at most `max_dets` non-empty instances, best first, as COCO annotations
  (without ids: those are assigned when the round's predictions are assembled)."""
  anns = []
  for inst in insts:
    if len(anns) >= max_dets:
      break
    rle = encode_rle(inst["mask"])
    area = int(inst["mask"].sum())
    if area == 0:
      continue
    x0, y0, x1, y1 = inst["box"]
    anns.append({"image_id": img["id"], "category_id": int(inst["category"]) + 1, "segmentation": rle,
                 "area": float(area), "bbox": [float(x0), float(y0), float(max(x1 - x0, 0.0)),
                                               float(max(y1 - y0, 0.0))],
                 "iscrowd": 0, "score": round(float(inst["score"]), 6)})
  return anns


def predict_round(cfg, settings: Settings, rd: str, labels: dict, images_root: str, r: int, progress: bool = True,
                  log: Callable = print) -> str:
  """Round r's detector on the labels' images -> `rd/predictions/annotations.json` (see the module docstring).

  The predictions go through a shard run directory (`zipjax.io.shards.RunDir` in `rd/predictions`): one record
  per image (key: its position in the labels' `images`; its annotations, or its error), one shard file per chunk
  of `predict_chunk` images, chunk k on process k % count. A chunk whose images the ledger lists is not redone;
  the run directory's identity (the round and the images) keeps shards of other images from being reused. Process
  0 assembles the records in key order into annotations.json and errors.json, then deletes the shards."""

  out_dir = os.path.join(rd, PREDICTIONS_DIR)
  final = os.path.join(out_dir, LABELS_FILE)
  pindex, pcount = _process()
  images = labels["images"]
  chunk = settings.predict_chunk
  n_chunks = -(-len(images) // chunk)
  keys = [f"{i:09d}" for i in range(len(images))]
  run = RunDir(out_dir)
  if pindex == 0:
    run.recover()  # temporary files of a killed write
    identity = {"command": "self-train predict", "round": r, "images_sha256": hashlib.sha256(json.dumps(
        [[img["id"], img["file_name"]] for img in images]).encode("utf-8")).hexdigest()}
    if run.read_job() != identity:  # shards of other images (or none): start afresh
      run.reset(outputs=False)
      run.write_job(identity)
  _barrier(f"selftrain_predict_start_{r}")
  done = {k for k, _ in run.iter_ledger()}
  todo = [k for k in range(n_chunks) if k % pcount == pindex and not done.issuperset(keys[k * chunk:(k + 1) * chunk])]
  agnostic = bool(cfg.data.class_agnostic)
  names = _train_names(rd)
  if todo:
    mesh = parallel.create_mesh([("data", -1)], jax.local_devices())
    params = _local_params(rd, cfg, mesh)
    predictor = Inference(cfg, mesh, names, int(cfg.eval.batch_size), settings.predict_min_score)
    lim = cfg.input
    bs = predictor.batch_size
    writer = run.writer(shard_size=1 << 30, process_index=pindex)  # flushed once per chunk
    bar = tqdm(total=sum(len(images[k * chunk:(k + 1) * chunk]) for k in todo), unit="img",
               desc=f"predict round {r}", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for k in todo:
      for s in range(k * chunk, min((k + 1) * chunk, len(images)), bs):
        batch = []
        for i in range(s, min(s + bs, (k + 1) * chunk, len(images))):
          img = images[i]
          path = os.path.join(images_root, img["file_name"])
          try:
            arr = images_io.load_image(path, int(lim.min_side), int(lim.max_side), float(lim.max_aspect))
          except InputError as e:
            writer.add({"key": keys[i], "error": {"image_id": img["id"], "file_name": img["file_name"],
                                                  "reason": str(e)}})
            continue
          if arr.shape[:2] != (int(img["height"]), int(img["width"])):
            writer.add({"key": keys[i], "error": {
                "image_id": img["id"], "file_name": img["file_name"],
                "reason": f"decoded size {arr.shape[1]}x{arr.shape[0]} differs from the labels' "
                          f"{img['width']}x{img['height']}"}})
            continue
          batch.append((i, arr))
        outs = predictor(params, [a for _, a in batch], class_agnostic=agnostic) if batch else []
        for (i, _), insts in zip(batch, outs):
          writer.add({"key": keys[i], "annotations": _prediction_annotations(images[i], insts,
                                                                              settings.predict_max_dets)})
        bar.update(min(s + bs, (k + 1) * chunk, len(images)) - s)
      writer.flush()
      faults.fault(f"selftrain.predict.{r}")
    bar.close()
  _barrier(f"selftrain_predict_{r}")
  if pindex == 0:
    anns, errors, seen = [], [], 0
    for rec in run.records():
      seen += 1
      if "error" in rec:
        errors.append(rec["error"])
      else:
        anns.extend(rec["annotations"])
    if seen != len(images):
      raise RuntimeError(f"{out_dir}: predictions of {seen} of {len(images)} images found after every process "
                         "finished its chunks")
    for i, a in enumerate(anns):
      a["id"] = i + 1
    info = {"description": f"zipjax self-train round {r}: the detector's predictions on the training images",
            "round": r, "class_agnostic": agnostic, "min_score": settings.predict_min_score,
            "max_dets": settings.predict_max_dets, "images_root": os.path.abspath(images_root),
            "errors": len(errors)}
    cats = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)]
    atomic_write_json(os.path.join(out_dir, "errors.json"), errors)
    _write_compact(final, {"info": info, "images": images, "annotations": anns, "categories": cats})
    fs.rmtree(run.state)  # the shards: annotations.json is the phase's done-marker
    if errors:
      log(f"round {r}: {len(errors)} image(s) skipped in prediction, see {os.path.join(out_dir, 'errors.json')}")
  _barrier(f"selftrain_predicted_{r}")
  return final


# ----------------------------------------------------------------------------------------------- eval
def _with_scores(data: dict) -> dict:
  """A COCO dataset whose non-crowd annotations all have a score (1.0 where missing), for evaluation."""
  anns = [a if "score" in a else dict(a, score=1.0) for a in data["annotations"] if not a.get("iscrowd", 0)]
  return dict(data, annotations=anns)


def _class_aware_ok(data: dict, gt) -> bool:
  """True when every category used by `data`'s annotations is a ground-truth category by name."""
  by_name = gt.category_by_name()
  used = {a["category_id"] for a in data["annotations"]}
  return all(normalize_name(c["name"]) in by_name for c in data["categories"] if c["id"] in used)


def evaluate_file(gt, data: dict) -> dict:
  """{'agnostic': evaluate(...), 'class': evaluate(...) or None} of a labels / predictions dataset."""
  data = _with_scores(data)
  out = {"agnostic": evaluate(gt, data, iou_type="both", class_agnostic=True, only_pred_images=True)}
  out["class"] = (evaluate(gt, data, iou_type="both", class_agnostic=False, only_pred_images=True)
                  if _class_aware_ok(data, gt) else None)
  return out


def evaluate_round(gt_json: str, gt_digest: str, rd: str, r: int) -> dict:
  """Writes `rd/eval.json`: the round's labels and (when predicted) its detector against the ground truth."""
  gt = coco_io.load_ground_truth(gt_json)
  labels = _read_json(os.path.join(rd, LABELS_FILE))
  res = {"round": r, "gt": os.path.abspath(gt_json), "gt_sha256": gt_digest,
         "labels": dict(count=len(labels["annotations"]), images=len(labels["images"]),
                        stats=labels["info"].get("stats"), threshold=labels["info"].get("threshold"),
                        support=labels["info"].get("support"), **evaluate_file(gt, labels))}
  pred_path = os.path.join(rd, PREDICTIONS_DIR, LABELS_FILE)
  if os.path.exists(pred_path):
    preds = _read_json(pred_path)
    res["detector"] = dict(count=len(preds["annotations"]), **evaluate_file(gt, preds))
  else:
    res["detector"] = None
  for part in ("labels", "detector"):
    if res[part] is None:
      continue
    for mode in ("agnostic", "class"):
      if res[part][mode] is not None:
        res[part][mode]["pred"] = os.path.relpath(pred_path if part == "detector" else
                                                  os.path.join(rd, LABELS_FILE), os.path.dirname(rd))
  atomic_write_json(os.path.join(rd, EVAL_FILE), res)
  return res


# ------------------------------------------------------------------------------------------------ run
@dataclasses.dataclass
class SelfTrainResult:
  """What `self_train` did.

  Attributes:
    status: 'done' or 'preempted' (SIGTERM during a round's training).
    exit_code: 0 or EXIT_PREEMPTED.
    rounds: per round {'round', 'labels', 'train': train_done record, 'predictions'?, 'eval'?}.
    report: paths of report.md / metrics.json (with --gt-json), else None.
  """
  status: str
  exit_code: int
  rounds: list
  report: dict | None


def self_train(config, pseudo_json: str, images_root: str, workdir: str, gt_json: str | None = None,
               val_json: str | None = None, val_images_root: str | None = None, progress: bool = True,
               log: Callable = print, skip_bad_images: bool = False) -> SelfTrainResult:
  """Runs (or resumes) the self-training rounds of `workdir`; see the module docstring. `skip_bad_images`: each
  round's training leaves out the images that fail the up-front check (`zipjax.train.trainer.train`)."""

  settings = Settings.from_config(config)
  for flag, path in (("--pseudo-json", pseudo_json), ("--images-root", images_root), ("--gt-json", gt_json),
                     ("--val-json", val_json)):
    if path is not None and not os.path.exists(path):
      raise InputError(f"{flag} {path}: not found")
  if bool(config.get("distributed", False)):
    parallel.initialize(auto=True)
  pindex, _ = _process()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  state = {"pseudo_json": os.path.abspath(pseudo_json), "pseudo_json_sha256": sha256_file(pseudo_json),
           "images_root": os.path.abspath(images_root), "config": task.config_to_dict(config)}
  if pindex == 0:  # refuse other inputs before anything is written; record them once round 0's labels exist
    _check_state(workdir, state, write=False)
  gt_digest = sha256_file(gt_json) if gt_json else None
  _barrier("selftrain_start")
  rounds = []
  for r in range(settings.rounds + 1):
    rd = round_dir(workdir, r)
    os.makedirs(rd, exist_ok=True)
    info = {"round": r}
    # ---- labels
    labels_path = os.path.join(rd, LABELS_FILE)
    if not os.path.exists(labels_path):
      if pindex == 0:
        if r == 0:
          data = _initial_labels(pseudo_json, images_root, run_identity(state))
        else:
          data, stats = _merged_labels(settings, workdir, r, images_root)
          log(f"round {r}: {stats['predicted']} predictions >= {data['info']['threshold']:g}, {stats['added']} new "
              f"labels, {stats['kept']} kept, {stats['replaced']} replaced, {stats['dropped']} dropped, "
              f"{stats['unsupported']} without support -> {stats['labels']} labels")
          faults.fault(f"selftrain.merge.{r}")
        _write_compact(labels_path, data)
      _barrier(f"selftrain_labels_{r}")
    if r == 0 and pindex == 0:
      _check_state(workdir, state)
    info["labels"] = labels_path
    # ---- train
    done_path = os.path.join(rd, TRAIN_DONE)
    cfg = round_config(config, settings, workdir, r)
    if os.path.exists(done_path):
      info["train"] = _read_json(done_path)
    else:
      log(f"round {r}: training {settings.steps[r]} steps on {labels_path}")
      ckdir = os.path.join(rd, "checkpoints")
      faults.fault_when(f"selftrain.train.{r}", lambda: any(n.isdigit() for n in os.listdir(ckdir)))
      res = tr.train(cfg, labels_path, images_root, rd, val_json=val_json, val_images_root=val_images_root,
                     progress=progress, log=log, skip_bad_images=skip_bad_images)
      if res.status == "preempted":
        log("stopped by SIGTERM; rerun the same command to resume")
        return SelfTrainResult("preempted", EXIT_PREEMPTED, rounds, None)
      recs = read_metrics(rd)
      info["train"] = {"round": r, "step": int(res.step), "metrics": recs[-1] if recs else {}}
      if pindex == 0:
        atomic_write_json(done_path, info["train"])
      _barrier(f"selftrain_trained_{r}")
    # ---- predict
    if r < settings.rounds or gt_json:
      pred_path = os.path.join(rd, PREDICTIONS_DIR, LABELS_FILE)
      if not os.path.exists(pred_path):
        predict_round(cfg, settings, rd, _read_json(labels_path), images_root, r, progress=progress, log=log)
      info["predictions"] = pred_path
    # ---- eval
    if gt_json:
      eval_path = os.path.join(rd, EVAL_FILE)
      current = os.path.exists(eval_path) and _read_json(eval_path).get("gt_sha256") == gt_digest
      if pindex == 0 and not current:
        evaluate_round(gt_json, gt_digest, rd, r)
      if pindex == 0 and r > 0:
        worse = label_regressions(_read_json(os.path.join(round_dir(workdir, r - 1), EVAL_FILE)),
                                  _read_json(eval_path))
        if worse:
          log(f"round {r}: WARNING: the labels got worse than round {r - 1}'s: " + ", ".join(worse))
      _barrier(f"selftrain_eval_{r}")
      info["eval"] = eval_path
    rounds.append(info)
  report = None
  if gt_json and pindex == 0:
    evals = [_read_json(i["eval"]) for i in rounds]
    report = write_rounds_report(workdir, evals, [i["train"] for i in rounds], settings=dataclasses.asdict(settings),
                                 inputs={"pseudo_json": state["pseudo_json"], "images_root": state["images_root"],
                                         "gt_json": os.path.abspath(gt_json),
                                         "val_json": os.path.abspath(val_json) if val_json else None})
  _barrier("selftrain_done")
  return SelfTrainResult("done", 0, rounds, report)


__all__ = ["Settings", "SelfTrainResult", "self_train", "round_config", "round_dir", "predict_round",
           "evaluate_file", "evaluate_round", "KILL_ENV", "EXIT_PREEMPTED"]
