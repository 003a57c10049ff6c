"""Tables, markdown reports and precision-recall plots for `evaluate` / `compare` results.

Tables show percent (COCO papers' convention); `metrics.json` keeps the evaluator's fractions.
"""
from __future__ import annotations

import io
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from zipjax.eval.anchors import ANCHOR_NOTES, ANCHOR_SETTING, ANCHOR_TAG, PUBLISHED_ANCHORS
from zipjax.eval.coco import STAT_NAMES
from zipjax.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

IOU_LABEL = {"bbox": "box", "segm": "mask"}
COMPARE_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"


def pct(v) -> str:
  """Fraction -> percent with one decimal; '-' for undefined."""
  return "-" if v is None else f"{100.0 * v:.1f}"


def text_table(headers, rows) -> str:
  """Plain aligned table (first column left-aligned, the rest right-aligned)."""
  cols = [list(map(str, c)) for c in zip(headers, *rows)]
  widths = [max(len(s) for s in c) for c in cols]

  def line(cells):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

  out = [line(headers), "  ".join("-" * w for w in widths)]
  out += [line(list(map(str, r))) for r in rows]
  return "\n".join(out)


def markdown_table(headers, rows) -> str:
  out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
  out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
  return "\n".join(out)


def stats_table(metrics: dict):
  """(headers, rows): the 12 COCO stats down, box/mask across, for one `evaluate` result."""
  types = metrics["iou_types"]
  headers = ["metric"] + [IOU_LABEL[t] for t in types]
  rows = [[name] + [pct(metrics[t][name]) for t in types] for name in STAT_NAMES]
  return headers, rows


def comparison_table(result: dict, anchors: bool = True):
  """(headers, rows): one row per run (and per published anchor), box/mask stats across."""
  types = result["settings"]["iou_types"]
  headers = ["run"] + [f"{IOU_LABEL[t]} {s}" for t in types for s in COMPARE_STATS]
  rows = [[r["name"]] + [pct(r["metrics"][t][s]) for t in types for s in COMPARE_STATS] for r in result["runs"]]
  if anchors:
    for a in PUBLISHED_ANCHORS:
      cells = [f"{a[t][s]:.1f}" if s in a[t] else "" for t in types for s in COMPARE_STATS]
      if any(cells):
        rows.append([f"{a['name']} {ANCHOR_TAG}"] + cells)
  return headers, rows


def _setting_line(result: dict) -> str:
  s = result["settings"]
  mode = "class-agnostic (all categories merged)" if s["class_agnostic"] else "class-aware (classes by name)"
  images = "images covered by each prediction file" if s["only_pred_images"] else "all ground-truth images"
  return f"{mode}; evaluator {s['backend']}; {images}"


def summary_text(result: dict, anchors: bool = True) -> str:
  """What `zipjax eval` prints: the full stats for one run, or the comparison table for several."""
  lines = [f"ground truth: {result['gt']}", f"setting: {_setting_line(result)}"]
  for r in result["runs"]:
    m = r["metrics"]
    lines.append(f"{r['name']}: {r['pred']} ({m['num_pred']} predictions, {m['num_images']} images, "
                 f"{m['num_gt']} ground-truth instances, {m['num_crowd']} crowd)")
  lines.append("")
  if len(result["runs"]) == 1:
    lines.append(text_table(*stats_table(result["runs"][0]["metrics"])))
  if len(result["runs"]) > 1 or anchors:
    if len(result["runs"]) == 1:
      lines.append("")
    lines.append(text_table(*comparison_table(result, anchors)))
  if anchors:
    lines += [""] + [f"note: {n}" for n in ANCHOR_NOTES]
  return "\n".join(lines)


def markdown_report(result: dict, plots: dict, anchors: bool = True) -> str:
  """The `report.md` text. `plots` maps iou type -> PNG file name (relative to the report)."""
  out = ["# COCO evaluation report", "", f"- Ground truth: `{result['gt']}`", f"- Setting: {_setting_line(result)}"]
  for r in result["runs"]:
    m = r["metrics"]
    out.append(f"- Run **{r['name']}**: `{r['pred']}`: {m['num_pred']} predictions on {m['num_images']} "
               f"images; {m['num_gt']} ground-truth instances ({m['num_crowd']} crowd regions, ignored as COCO "
               "does)")
  out += ["", "Numbers are percent. '-' means undefined (no ground truth in that area range).", "",
          "## Comparison", "", markdown_table(*comparison_table(result, anchors))]
  if anchors:
    out += [""] + [f"> - {n}" for n in ANCHOR_NOTES]
  for r in result["runs"]:
    m = r["metrics"]
    out += ["", f"## Run: {r['name']}", "", markdown_table(*stats_table(m))]
    if not result["settings"]["class_agnostic"]:
      names = m["categories"]
      headers = ["category"] + [f"{IOU_LABEL[t]} AP" for t in m["iou_types"]]
      rows = [[n] + [pct(m[t]["per_category"][n]) for t in m["iou_types"]] for n in names]
      out += ["", "<details><summary>Per-category AP</summary>", "", markdown_table(headers, rows), "",
              "</details>"]
  if plots:
    out += ["", "## Precision-recall", "",
            "Precision averaged over categories, all areas, 100 detections per image."]
    for t, name in plots.items():
      out += ["", f"![{IOU_LABEL[t]} precision-recall]({name})"]
  return "\n".join(out) + "\n"


def plot_pr(result: dict, iou_type: str) -> bytes:
  """PNG bytes: precision-recall curves of every run at IoU 0.50 and averaged over 0.50:0.95."""

  fig = Figure(figsize=(10, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  for ax, key, title in zip(axes, ("iou_0.50", "iou_0.50:0.95"), ("IoU 0.50", "IoU 0.50:0.95 (mean)")):
    for r in result["runs"]:
      curve = r["metrics"][iou_type]["pr_curve"]
      pts = [(x, y) for x, y in zip(curve["recall"], curve[key]) if y is not None]
      stat = "AP50" if key == "iou_0.50" else "AP"
      label = f"{r['name']} ({stat} {pct(r['metrics'][iou_type][stat])})"
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
      else:
        ax.plot([], [], label=label + ", no ground truth")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{IOU_LABEL[iou_type]}: {title}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


def write_report(result: dict, out_dir, anchors: bool = True, plots: bool = True) -> dict:
  """Writes `metrics.json`, `report.md` and `pr_<iou type>.png` into `out_dir`, each file atomically.

  The PNGs are written first and `metrics.json` last, so a complete `metrics.json` means a complete report.

  Returns:
    `{"metrics": path, "report": path, "plots": {iou type: path}}`.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  plot_files, plot_paths = {}, {}
  if plots:
    for t in result["settings"]["iou_types"]:
      plot_files[t] = f"pr_{t}.png"
      plot_paths[t] = atomic_write_bytes(os.path.join(out_dir, plot_files[t]), plot_pr(result, t))
  report = atomic_write_text(os.path.join(out_dir, REPORT_FILE), markdown_report(result, plot_files, anchors))
  payload = dict(result)
  if anchors:
    payload["published_anchors"] = {"setting": ANCHOR_SETTING, "unit": "percent",
                                    "anchors": [dict(a) for a in PUBLISHED_ANCHORS], "notes": list(ANCHOR_NOTES)}
  metrics = atomic_write_json(os.path.join(out_dir, METRICS_FILE), payload)
  return {"metrics": metrics, "report": report, "plots": plot_paths}
