"""Box and mask quality of a small detector config on held-out generated data unlike the project's own.

    python bench/box_quality.py [--config configs/train_shapes.py] [--work /tmp/box_quality] \
        [--train-images 400] [--val-images 100] [--budget-s 600] [--config.KEY=VALUE ...]

1. Data: bench/heldout_shapes.py (another generator than zipjax.data.synthetic: other shapes, sizes, backgrounds,
   anti-aliased edges; one class), `--train-images` training images (seed 0) and `--val-images` held-out images
   (`--val-seed`, default 6: seeds 1 and 2 were used to choose the config's and the inference's settings), written
   once under `--work` (or `--data`) and reused.
2. Training: `zipjax train`'s trainer in this process on one CPU device, class-agnostic, the config as given
   plus the overrides, evaluating the held-out images every `eval.every` steps (default here 1000).
3. Learning curve: class-agnostic box and mask AP50 (and AR100) per evaluation, from metrics.jsonl.
4. Final numbers, independently of the trainer's evaluator: `zipjax detect` on the held-out images (score
   threshold 0) and pycocotools' COCOeval run here on its annotations.json, all classes merged: box / mask AP50,
   AP and AR100.
The wall and CPU time of the training (compilation included, evaluation included) and the machine's load
average (os.getloadavg, before and after) are printed; `--budget-s` is the wall-time goal (10 minutes): the
bench says whether training stayed within it and whether the goal numbers (box AP50 >= 0.75, mask AP50 >= 0.65,
box AP50 >= mask AP50) were reached. Exit 0 either way (it measures; tests assert).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]

GOAL = {"bbox_AP50": 0.75, "segm_AP50": 0.65}


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def data_dirs(work: str, train_images: int, val_images: int, val_seed: int = 6) -> tuple:
  """(train dir, held-out dir), generated once per size and seed under `work`."""
  from bench import heldout_shapes  # pylint: disable=import-outside-toplevel
  out = []
  for name, n, seed in (("train", train_images, 0), ("val", val_images, val_seed)):
    d = os.path.join(work, f"data_{name}_{n}_s{seed}")
    if not os.path.exists(os.path.join(d, "annotations.json")):
      heldout_shapes.generate(d, n, seed)
    out.append(d)
  return tuple(out)


def cocoeval_agnostic(gt_path: str, dets: list) -> dict:
  """{'bbox': {AP, AP50, AR100}, 'segm': {...}}: pycocotools COCOeval, every category merged into one."""
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  with open(gt_path, encoding="utf-8") as f:
    gt = json.load(f)
  for a in gt["annotations"]:
    a["category_id"] = 1
  gt["categories"] = [{"id": 1, "name": "object"}]
  dets = [dict(d, category_id=1) for d in dets]
  out = {}
  for iou_type in ("bbox", "segm"):
    with contextlib.redirect_stdout(io.StringIO()):
      coco_gt = COCO()
      coco_gt.dataset = json.loads(json.dumps(gt))
      coco_gt.createIndex()
      ev = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in dets]) if dets else COCO(), iou_type)
      ev.evaluate()
      ev.accumulate()
      ev.summarize()
    out[iou_type] = {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AR100": float(ev.stats[8])}
  return out


def detect_and_eval(workdir: str, val_dir: str, out_dir: str) -> dict:
  """`zipjax detect` on the held-out images + pycocotools on its output (see the module docstring)."""
  from zipjax import cli  # pylint: disable=import-outside-toplevel
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  rc = cli.main(["detect", os.path.join(val_dir, "images"), "--workdir", workdir, "--classes", "object", "--out",
                 out_dir, "--no-overlays", "--config.detect.score_threshold=0.0"])
  if rc != 0:
    raise RuntimeError(f"zipjax detect failed with exit {rc}")
  with open(os.path.join(out_dir, "annotations.json"), encoding="utf-8") as f:
    pred = json.load(f)
  with open(os.path.join(val_dir, "annotations.json"), encoding="utf-8") as f:
    gt_images = {os.path.basename(i["file_name"]): i["id"] for i in json.load(f)["images"]}
  ids = {i["id"]: gt_images[os.path.basename(i["file_name"])] for i in pred["images"]}
  dets = [{"image_id": ids[a["image_id"]], "bbox": a["bbox"], "segmentation": a["segmentation"],
           "score": a["score"]} for a in pred["annotations"]]
  return cocoeval_agnostic(os.path.join(val_dir, "annotations.json"), dets)


def curve(recs: list) -> str:
  lines = ["  step   loss    box AP50  mask AP50  box AR100  mask AR100"]
  for r in recs:
    if "eval/agnostic/bbox_AP50" in r:
      loss = f"{r['loss']:.3f}" if "loss" in r else "  -  "
      lines.append(f"  {r['step']:>5}  {loss:>6}  {r['eval/agnostic/bbox_AP50']:8.3f}  "
                   f"{r['eval/agnostic/segm_AP50']:9.3f}  {r['eval/agnostic/bbox_AR100']:9.3f}  "
                   f"{r['eval/agnostic/segm_AR100']:10.3f}")
  return "\n".join(lines)


def run(config_path: str, overrides: list, work: str, train_images: int, val_images: int,
        budget_s: float, log=print, data: str | None = None, val_seed: int = 6) -> dict:
  """Generates the data, trains, evaluates; returns the measurements (see the module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel

  from zipjax.commands.common import apply_overrides, load_config_file  # pylint: disable=import-outside-toplevel
  from zipjax.config_check import check_train_config  # pylint: disable=import-outside-toplevel
  from zipjax.train import trainer as tr  # pylint: disable=import-outside-toplevel
  from zipjax.train.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  train_dir, val_dir = data_dirs(data or work, train_images, val_images, val_seed)
  config = load_config_file(config_path)
  config = apply_overrides(config, ["--config.mesh=[('data', 1)]", "--config.data.class_agnostic=True",
                                    "--config.eval.every=1000"] + list(overrides))
  config = check_train_config(config)
  workdir = os.path.join(work, "run")
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  load0 = os.getloadavg()
  t0, cpu0 = time.perf_counter(), _cpu()
  res = tr.train(config, os.path.join(train_dir, "annotations.json"), os.path.join(train_dir, "images"), workdir,
                 val_json=os.path.join(val_dir, "annotations.json"), val_images_root=os.path.join(val_dir, "images"),
                 progress=False, log=log)
  wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
  load1 = os.getloadavg()
  recs = read_metrics(workdir)
  final = detect_and_eval(workdir, val_dir, os.path.join(work, "detect"))
  out = {"config": config_path, "overrides": list(overrides), "steps": int(res.step),
         "train_images": train_images, "val_images": val_images, "val_seed": val_seed, "wall_s": wall, "cpu_s": cpu,
         "load_before": list(load0), "load_after": list(load1), "devices": jax.device_count(),
         "curve": [{k: r[k] for k in r if k == "step" or k == "loss" or k.startswith("eval/agnostic/")}
                   for r in recs if "eval/agnostic/bbox_AP50" in r],
         "final": final}
  out["within_budget"] = wall <= budget_s
  out["goal_reached"] = (final["bbox"]["AP50"] >= GOAL["bbox_AP50"] and final["segm"]["AP50"] >= GOAL["segm_AP50"]
                         and final["bbox"]["AP50"] >= final["segm"]["AP50"])
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/train_shapes.py")
  p.add_argument("--work", default="/tmp/box_quality")
  p.add_argument("--data", help="folder of the generated data (default: --work), shared between runs")
  p.add_argument("--train-images", type=int, default=400)
  p.add_argument("--val-images", type=int, default=300)
  p.add_argument("--val-seed", type=int, default=6)
  p.add_argument("--budget-s", type=float, default=600.0)
  a, overrides = p.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"unknown arguments {bad} (config overrides are --config.KEY=VALUE)")
  os.makedirs(a.work, exist_ok=True)
  m = run(a.config, overrides, a.work, a.train_images, a.val_images, a.budget_s,
          log=lambda s: print(s, file=sys.stderr), data=a.data, val_seed=a.val_seed)
  print(f"config {m['config']} {' '.join(m['overrides'])}: {m['steps']} steps, {m['train_images']} training / "
        f"{m['val_images']} held-out images (bench/heldout_shapes.py, seed {m['val_seed']}), class-agnostic")
  print("learning curve (trainer's evaluation on the held-out images, pycocotools):")
  print(curve(m["curve"]))
  f = m["final"]
  print(f"final (zipjax detect + pycocotools COCOeval, class-agnostic): box AP50 {f['bbox']['AP50']:.3f} "
        f"AP {f['bbox']['AP']:.3f} AR100 {f['bbox']['AR100']:.3f} | mask AP50 {f['segm']['AP50']:.3f} "
        f"AP {f['segm']['AP']:.3f} AR100 {f['segm']['AR100']:.3f}")
  print(f"training: {m['wall_s']:.0f} s wall, {m['cpu_s']:.0f} s CPU; load average before "
        f"{m['load_before'][0]:.2f} / after {m['load_after'][0]:.2f} on {os.cpu_count()} cores; "
        f"{'within' if m['within_budget'] else 'OVER'} the {a.budget_s:.0f} s budget; goal (box AP50 >= 0.75, "
        f"mask AP50 >= 0.65, box >= mask) {'reached' if m['goal_reached'] else 'NOT reached'}")
  with open(os.path.join(a.work, "result.json"), "w", encoding="utf-8") as fh:
    json.dump(m, fh, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
