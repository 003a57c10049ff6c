"""The self-training report: every round's labels and detector against the ground truth, side by side.

`write_rounds_report(workdir, evals, trains, settings, inputs)` turns the per-round evaluations that
`zipjax.jobs.selftrain.evaluate_round` writes (`W/round_<r>/eval.json`) into:
  - `W/metrics.json`: inputs, settings, one record per round (label counts and merge statistics, the 12 COCO
    stats of the labels and of the detector's predictions, class-agnostic and class-aware, box and mask, the
    final training loss and validation metrics, the threshold and support the labels were made with, and
    `worse`: the label metrics that fell by more than REGRESSION_TOL from the previous round, see
    `label_regressions`) and, per comparison (labels / detector x agnostic / class),
    the `zipjax.eval.compare`-shaped result with every round as a run (precision-recall curves included);
  - `W/report.md`: round tables (percent; box and mask side by side, rounds that made the labels worse marked
    WORSE and listed at the top), then the full comparison tables of `zipjax.eval.report`;
  - `W/plots/rounds.png` (mask and box AR100 / AP50 of labels and detector against the round) and
    `W/plots/pr_<labels|detector>_<agnostic|class>_<bbox|segm>.png` (precision-recall curves of every round).
Every file is written atomically, metrics.json last; the contents are a function of the evaluations, so a
resumed run writes the same metrics.json as an uninterrupted one, and a rerun that finds the same metrics.json
(and every plot) leaves the files untouched.
"""
from __future__ import annotations

import io
import json
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from zipjax.eval.coco import STAT_NAMES
from zipjax.eval.report import IOU_LABEL, comparison_table, markdown_table, pct, plot_pr
from zipjax.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

IOU_TYPES = ("segm", "bbox")
TABLE_STATS = ("AR100", "AP50", "AP")
PARTS = ("labels", "detector")
MODES = ("agnostic", "class")
MODE_LABEL = {"agnostic": "class-agnostic", "class": "class-aware"}


def _stats(result) -> dict | None:
  """The 12 COCO stats per iou type of an `evaluate` result (None stays None)."""
  if result is None:
    return None
  return {t: {k: result[t][k] for k in STAT_NAMES} for t in IOU_TYPES if t in result}


def _val_metrics(train: dict) -> dict | None:
  m = (train or {}).get("metrics") or {}
  val = {k[len("eval/"):]: v for k, v in m.items() if k.startswith("eval/")}
  return val or None


# label quality a round must not lower by more than REGRESSION_TOL (class-agnostic, against the ground truth)
WATCHED = (("bbox", "AP50"), ("segm", "AP50"), ("bbox", "AR100"), ("segm", "AR100"))
WATCHED_LABEL = {"bbox": "box", "segm": "mask"}
REGRESSION_TOL = 0.01


def label_regressions(prev_eval: dict, cur_eval: dict, tol: float = REGRESSION_TOL) -> list:
  """['box AP50 0.612 -> 0.598', ...]: the watched class-agnostic label metrics that fell by more than `tol`
  from the previous round's evaluation (`eval.json`) to this one's."""
  out = []
  a, b = prev_eval["labels"]["agnostic"], cur_eval["labels"]["agnostic"]
  for t, k in WATCHED:
    x, y = a[t][k], b[t][k]
    if x is not None and y is not None and y < x - tol:
      out.append(f"{WATCHED_LABEL[t]} {k} {x:.3f} -> {y:.3f}")
  return out


def round_records(evals: list, trains: list, thresholds) -> list:
  """One summary record per round (what metrics.json's `rounds` holds)."""
  out = []
  for k, (ev, tr) in enumerate(zip(evals, trains)):
    r = ev["round"]
    lab, det = ev["labels"], ev.get("detector")
    threshold = None if r == 0 else (lab["threshold"] if lab.get("threshold") is not None else thresholds[r - 1])
    rec = {"round": r, "threshold": threshold, "support": lab.get("support"),
           "worse": label_regressions(evals[k - 1], ev) if k > 0 else [],
           "labels": {"count": lab["count"], "images": lab["images"], "stats": lab.get("stats"),
                      "agnostic": _stats(lab["agnostic"]), "class": _stats(lab["class"])},
           "detector": None if det is None else {"count": det["count"], "agnostic": _stats(det["agnostic"]),
                                                 "class": _stats(det["class"])},
           "train": {"step": (tr or {}).get("step"), "loss": ((tr or {}).get("metrics") or {}).get("loss"),
                     "val": _val_metrics(tr)}}
    out.append(rec)
  return out


def comparisons(evals: list) -> dict:
  """{'labels/agnostic': compare-shaped result, ...}: the rounds as runs; absent when no round has it."""
  out = {}
  for part in PARTS:
    for mode in MODES:
      runs = [(ev["round"], ev[part][mode]) for ev in evals if ev.get(part) and ev[part][mode] is not None]
      if not runs:
        continue
      first = runs[0][1]
      out[f"{part}/{mode}"] = {
          "gt": first["gt"],
          "settings": {"iou_types": list(first["iou_types"]), "class_agnostic": mode == "agnostic",
                       "backend": first["backend"], "only_pred_images": True},
          "runs": [{"name": f"round {r} {part}", "pred": m.get("pred", ""), "metrics": m} for r, m in runs]}
  return out


def plot_rounds(records: list) -> bytes:
  """PNG bytes: AR100 and AP50 of the labels and the detector against the round, mask and box."""

  fig = Figure(figsize=(10, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  for ax, t in zip(axes, IOU_TYPES):
    for part, style in (("labels", "-o"), ("detector", "--s")):
      for stat in ("AR100", "AP50"):
        pts = [(rec["round"], rec[part]["agnostic"][t][stat]) for rec in records
               if rec[part] is not None and rec[part]["agnostic"] is not None
               and rec[part]["agnostic"][t][stat] is not None]
        if pts:
          ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, label=f"{part} {stat}")
    ax.set_xticks([rec["round"] for rec in records])
    ax.set_xlabel("round")
    ax.set_ylabel("percent")
    ax.set_ylim(0, 100)
    ax.set_title(f"{IOU_LABEL[t]}, class-agnostic, against the ground truth")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


def _round_table(records: list, part: str, mode: str):
  headers = ["round"]
  if part == "labels":
    headers += ["threshold", "labels", "new", "kept", "replaced", "unsupported"]
  else:
    headers += ["predictions", "final loss"]
  headers += [f"{IOU_LABEL[t]} {s}" for t in IOU_TYPES for s in TABLE_STATS]
  rows = []
  for rec in records:
    res = rec[part]
    if res is None or res[mode] is None:
      continue
    row = [str(rec["round"])]
    if part == "labels":
      st = res.get("stats") or {}
      row += ["-" if rec["threshold"] is None else f"{rec['threshold']:g}", str(res["count"]),
              str(st.get("added", "-")), str(st.get("kept", "-")), str(st.get("replaced", "-")),
              str(st.get("unsupported", "-"))]
    else:
      loss = rec["train"]["loss"]
      row += [str(res["count"]), "-" if loss is None else f"{loss:.4g}"]
    row += [pct(res[mode][t][s]) for t in IOU_TYPES for s in TABLE_STATS]
    if part == "labels" and mode == "agnostic":
      row.append("WORSE: " + "; ".join(rec.get("worse") or []) if rec.get("worse") else "")
    rows.append(row)
  if part == "labels" and mode == "agnostic":
    headers.append("vs previous round")
  return headers, rows


def _guards(settings: dict) -> str:
  """The label guards of the settings, as a sentence tail ('' when none is on)."""
  parts = []
  if settings.get("calibrate"):
    parts.append(f"thresholds calibrated (quantile {settings['calibrate']:g} of the agreeing predictions' scores; "
                 "the configured ones are floors)")
  if settings.get("support_quantile"):
    parts.append(f"labels need support (quantile {settings['support_quantile']:g})")
  if settings.get("rescore"):
    parts.append("kept labels rescored")
  if settings.get("protect"):
    parts.append("labels made by a round are protected")
  return ("; " + ", ".join(parts)) if parts else ""


def markdown(records: list, comps: dict, settings: dict, inputs: dict, plots: dict) -> str:
  out = ["# Self-training report", "",
         f"- Pseudo-labels (round 0): `{inputs['pseudo_json']}`; images: `{inputs['images_root']}`",
         f"- Ground truth: `{inputs['gt_json']}` (only the images of each file are scored)",
         f"- Rounds 0..{settings['rounds']}; thresholds {list(settings['thresholds'])}; merge `{settings['mode']}` "
         f"(mask-IoU de-duplication at {settings['dedup_iou']:g}, at most {settings['max_dets']} new labels per "
         f"image); init `{settings['init']}`; steps {list(settings['steps'])}" + _guards(settings),
         "", "Numbers are percent. Labels are scored as detections (a label without a score counts as 1.0). A "
         f"round whose labels lost more than {REGRESSION_TOL:g} (fraction) of box or mask AP50 or AR100 "
         "(class-agnostic) against the previous round is marked WORSE.", ""]
  worse = [rec for rec in records if rec.get("worse")]
  out.append("**Rounds whose labels got worse: " + ", ".join(f"round {rec['round']} ({'; '.join(rec['worse'])})"
                                                           for rec in worse) + "**" if worse else
             "No round made the labels worse (box and mask AP50 / AR100, class-agnostic).")
  out += ["", f"![rounds]({plots['rounds']})"]
  for part, title in (("labels", "Labels of each round"),
                      ("detector", "Detector of each round: its predictions on the training images")):
    for mode in MODES:
      headers, rows = _round_table(records, part, mode)
      out += ["", f"## {title} ({MODE_LABEL[mode]})", ""]
      if rows:
        out.append(markdown_table(headers, rows))
      else:
        out.append("(not evaluated: " + ("the category names are not ground-truth categories, or the detector "
                                         "is class-agnostic)" if mode == "class" else "no predictions)"))
  val_rows = [(rec["round"], rec["train"]["val"]) for rec in records if rec["train"]["val"]]
  if val_rows:
    keys = [k for k in ("agnostic/segm_AR100", "agnostic/segm_AP50", "agnostic/segm_AP", "agnostic/bbox_AP50",
                        "class/segm_AP50", "class/bbox_AP50") if any(k in v for _, v in val_rows)]
    rows = [[str(r)] + [pct(None if v.get(k) is None or v.get(k) < 0 else v[k]) for k in keys] for r, v in val_rows]
    out += ["", "## Detector of each round on the validation set", "",
            markdown_table(["round"] + keys, rows)]
  out += ["", "## Precision-recall, every round", ""]
  for key, files in plots["pr"].items():
    for t, name in files.items():
      out += [f"![{key} {IOU_LABEL[t]}]({name})", ""]
  out += ["## Full comparison tables"]
  for key, comp in comps.items():
    part, mode = key.split("/")
    out += ["", f"### {part}, {MODE_LABEL[mode]}", "", markdown_table(*comparison_table(comp, anchors=False))]
  return "\n".join(out) + "\n"


def write_rounds_report(workdir, evals: list, trains: list, settings: dict, inputs: dict) -> dict:
  """Writes W/plots/*.png, W/report.md and W/metrics.json (see the module docstring); returns their paths."""
  workdir = os.fspath(workdir)
  records = round_records(evals, trains, list(settings["thresholds"]))
  comps = comparisons(evals)
  payload = json.loads(json.dumps({"inputs": inputs, "settings": settings, "rounds": records, "comparisons": comps}))
  plots = {"rounds": "plots/rounds.png",
           "pr": {key: {t: f"plots/pr_{key.replace('/', '_')}_{t}.png" for t in comp["settings"]["iou_types"]}
                  for key, comp in comps.items()}}
  paths = {"report": os.path.join(workdir, "report.md"), "metrics": os.path.join(workdir, "metrics.json")}
  files = [paths["report"], os.path.join(workdir, plots["rounds"])] + [
      os.path.join(workdir, n) for names in plots["pr"].values() for n in names.values()]
  try:  # the same report is already there (a rerun of a finished run): leave every file untouched
    with open(paths["metrics"], encoding="utf-8") as f:
      if json.load(f) == payload and all(os.path.exists(p) for p in files):
        return dict(paths, plots=plots)
  except (OSError, ValueError):
    pass
  atomic_write_bytes(os.path.join(workdir, plots["rounds"]), plot_rounds(records))
  for key, comp in comps.items():
    for t, name in plots["pr"][key].items():
      atomic_write_bytes(os.path.join(workdir, name), plot_pr(comp, t))
  atomic_write_text(paths["report"], markdown(records, comps, settings, inputs, plots))
  atomic_write_json(paths["metrics"], payload)
  return dict(paths, plots=plots)


__all__ = ["round_records", "comparisons", "plot_rounds", "write_rounds_report", "label_regressions", "WATCHED",
           "REGRESSION_TOL"]
