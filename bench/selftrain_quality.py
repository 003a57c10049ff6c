"""Self-training from degraded pseudo-labels on held-out generated data: do the rounds improve boxes and masks?

    python bench/selftrain_quality.py [--config configs/selftrain_shapes.py] [--work /tmp/selftrain_quality] \
        [--images 200] [--config.KEY=VALUE ...]

1. Data: bench/heldout_shapes.py, `--images` images (`--seed`, default 5; seeds 3 and 4 were used to choose
   configs/selftrain_shapes.py's settings): the truth, and pseudo-labels of the same images
   with its own corruptions (35% of the objects missing, the rest dilated / eroded / cut / given a stray fragment
   / merged with a neighbour, false background labels; `--degrade`).
2. `zipjax self-train` (in this process, one CPU device) with `--gt-json` the truth: every round's labels are
   scored against it (class-agnostic, pycocotools) by the job itself (W/metrics.json, W/report.md).
3. The table: per round, box and mask AP50 and AR100 of the labels (and of the detector's predictions); the
   goal: after the last round all four label numbers above round 0's (the pseudo-labels), and no round lowering
   any of them by more than 0.01 (the report's WORSE flag). Wall and CPU time and the load average are printed.
Exit 0 either way (it measures).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]

KEYS = (("bbox", "AP50"), ("segm", "AP50"), ("bbox", "AR100"), ("segm", "AR100"))


def run(config: str, overrides: list, work: str, images: int, seed: int = 5, log=print) -> dict:
  from bench import heldout_shapes  # pylint: disable=import-outside-toplevel
  from zipjax import cli  # pylint: disable=import-outside-toplevel
  clean, noisy = os.path.join(work, f"clean_{images}_s{seed}"), os.path.join(work, f"noisy_{images}_s{seed}")
  if not os.path.exists(os.path.join(clean, "annotations.json")):
    heldout_shapes.generate(clean, images, seed=seed)
  if not os.path.exists(os.path.join(noisy, "annotations.json")):
    heldout_shapes.generate(noisy, images, seed=seed, degraded=True)
  w = os.path.join(work, "run")
  if os.path.exists(w):
    shutil.rmtree(w)
  load0 = os.getloadavg()
  t0 = time.perf_counter()
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  rc = cli.main(["self-train", "--config", config, "--pseudo-json", os.path.join(noisy, "annotations.json"),
                 "--images-root", os.path.join(noisy, "images"), "--gt-json", os.path.join(clean, "annotations.json"),
                 "--workdir", w, "--no-progress", "--config.mesh=[('data', 1)]"] + list(overrides))
  if rc != 0:
    raise RuntimeError(f"zipjax self-train failed with exit {rc}")
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  with open(os.path.join(w, "metrics.json"), encoding="utf-8") as f:
    m = json.load(f)
  rows = []
  for rec in m["rounds"]:
    lab = rec["labels"]["agnostic"]
    det = (rec["detector"] or {}).get("agnostic")
    rows.append({"round": rec["round"], "count": rec["labels"]["count"], "threshold": rec["threshold"],
                 "support": rec.get("support"), "stats": rec["labels"]["stats"], "worse": rec.get("worse", []),
                 "labels": {f"{t}_{k}": lab[t][k] for t, k in KEYS},
                 "detector": {f"{t}_{k}": det[t][k] for t, k in KEYS} if det else None})
  first, last = rows[0]["labels"], rows[-1]["labels"]
  improved = all(last[k] > first[k] for k in first)
  no_drop = all(rows[i]["labels"][k] >= rows[i - 1]["labels"][k] - 0.01 for i in range(1, len(rows)) for k in first)
  return {"rows": rows, "improved": improved, "no_round_worse": no_drop, "wall_s": time.perf_counter() - t0,
          "cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), "load_before": list(load0),
          "load_after": list(os.getloadavg()), "report": os.path.join(w, "report.md")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/selftrain_shapes.py")
  p.add_argument("--work", default="/tmp/selftrain_quality")
  p.add_argument("--images", type=int, default=200)
  p.add_argument("--seed", type=int, default=5)
  a, overrides = p.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"unknown arguments {bad} (config overrides are --config.KEY=VALUE)")
  os.makedirs(a.work, exist_ok=True)
  res = run(a.config, overrides, a.work, a.images, a.seed, log=lambda s: print(s, file=sys.stderr))
  print(f"{a.config} {' '.join(overrides)}: {a.images} images (bench/heldout_shapes.py, seed {a.seed}), "
        "class-agnostic, labels against the truth")
  print("round  labels  threshold  support  added kept replaced unsupported | labels: box AP50  mask AP50  "
        "box AR100  mask AR100 | detector: box AP50  mask AP50")
  for r in res["rows"]:
    st = r["stats"] or {}
    lab, det = r["labels"], r["detector"]
    th = "-" if r["threshold"] is None else f"{r['threshold']:.3f}"
    sup = "-" if r["support"] is None else f"{r['support']:.3f}"
    print(f"{r['round']:5d}  {r['count']:6d}  {th:>9}  {sup:>7}  {st.get('added', '-'):>5} {st.get('kept', '-'):>4} "
          f"{st.get('replaced', '-'):>8} {st.get('unsupported', '-'):>11} |  {lab['bbox_AP50']:8.3f}  "
          f"{lab['segm_AP50']:9.3f}  {lab['bbox_AR100']:9.3f}  {lab['segm_AR100']:10.3f} |  "
          + (f"{det['bbox_AP50']:8.3f}  {det['segm_AP50']:9.3f}" if det else "-") + (
              "  WORSE: " + "; ".join(r["worse"]) if r["worse"] else ""))
  print(f"goal: last round above round 0 on all four: {'yes' if res['improved'] else 'NO'}; no round lower by more "
        f"than 0.01: {'yes' if res['no_round_worse'] else 'NO'}")
  print(f"{res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU; load average before {res['load_before'][0]:.2f} / "
        f"after {res['load_after'][0]:.2f} on {os.cpu_count()} cores; report: {res['report']}")
  with open(os.path.join(a.work, "result.json"), "w", encoding="utf-8") as fh:
    json.dump(res, fh, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
