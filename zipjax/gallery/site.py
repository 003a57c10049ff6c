"""HTML of the gallery: the index page (classes, histograms, filters, thumbnails, errors) and one page per image.

Pages are static HTML that reads without JavaScript (every thumbnail and every instance row is in the markup);
`static/gallery.js` adds the filters and paging on the index (by setting `hidden` on the thumbnail figures) and
draws each instance of an image page on its own canvas layer from the RLE in the page's JSON block (a toggle
per instance shows or hides its layer). Nothing is fetched: no network, no server, works from file://.
Markup is deterministic (no timestamps), so unchanged inputs give byte-identical pages.
"""
from __future__ import annotations

import html
import json
import math
import re

import numpy as np

from zipjax.gallery.render import hex_colour

HIST_BINS = 20
PAGE_SIZES = (24, 60, 120, 240)


# bidirectional controls (e.g. U+202E RIGHT-TO-LEFT OVERRIDE, which makes 'gnp.exe' read 'exe.png') and other
# invisible control characters: shown as visible \\uXXXX text, never passed to the browser raw
_INVISIBLE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def visible(s: str) -> str:
  """`s` with bidi controls and other invisible control characters written as visible `\\uXXXX`."""
  return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", s)


def esc(s) -> str:
  return html.escape(visible(str(s)), quote=True)


def script_json(obj) -> str:
  """JSON safe inside a <script> element (no '</script>', no '<!--'); bidi and control characters in strings
  arrive in the page as visible `\\uXXXX` text."""
  text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
  text = _INVISIBLE.sub(lambda m: f"\\\\u{ord(m.group()):04x}", text)
  return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fmt_score(s) -> str:
  return "-" if s is None or (isinstance(s, float) and math.isnan(s)) else f"{s:.3f}"


def fmt_num(v, digits: int = 1) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return f"{v:.{digits}f}".rstrip("0").rstrip(".") if digits else str(int(round(v)))


def _head(title: str, css: str) -> str:
  return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
          f"<title>{esc(title)}</title>\n<link rel=\"stylesheet\" href=\"{css}\">\n</head>\n")


SCORE_LIMIT = 1e12  # the score axis spans at most [-1e12, 1e12]; scores beyond count in the end bins


def histogram_range(scores: np.ndarray) -> tuple[float, float]:
  """[lo, hi] of the score axis: [0, 1] unless scores fall outside (at most +-SCORE_LIMIT)."""
  s = np.clip(scores[np.isfinite(scores)], -SCORE_LIMIT, SCORE_LIMIT)
  lo = min(0.0, float(s.min())) if s.size else 0.0
  hi = max(1.0, float(s.max())) if s.size else 1.0
  return lo, hi


def histogram_counts(scores: np.ndarray, lo: float, hi: float, bins: int = HIST_BINS) -> np.ndarray:
  """int64 [bins]: numpy.histogram of the finite scores over [lo, hi] (last bin closed; scores outside the
  range are counted in the end bins)."""
  s = np.clip(scores[np.isfinite(scores)], lo, hi)
  return np.histogram(s, bins=bins, range=(lo, hi))[0].astype(np.int64)


def histogram_svg(counts: np.ndarray, lo: float, hi: float, colour: str, width: int = 200,
                  height: int = 40) -> str:
  """Inline SVG bars (one <rect> per bin, its count in a <title> and data-count)."""
  n = len(counts)
  top = max(int(counts.max()) if n else 0, 1)
  bw = width / n
  parts = [f'<svg class="hist" width="{width}" height="{height + 12}" viewBox="0 0 {width} {height + 12}" '
           f'role="img" aria-label="score histogram">']
  parts.append(f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>')
  for i, c in enumerate(counts.tolist()):
    h = height * c / top
    a, b = lo + (hi - lo) * i / n, lo + (hi - lo) * (i + 1) / n
    parts.append(f'<rect class="bar" data-count="{c}" x="{i * bw + 0.5:.2f}" y="{height - h:.2f}" '
                 f'width="{bw - 1:.2f}" height="{h:.2f}" fill="{colour}"><title>{a:.2f}-{b:.2f}: {c}</title></rect>')
  parts.append(f'<text x="0" y="{height + 11}" font-size="10" fill="#666">{lo:g}</text>')
  parts.append(f'<text x="{width}" y="{height + 11}" font-size="10" fill="#666" text-anchor="end">{hi:g}</text>')
  parts.append("</svg>")
  return "".join(parts)


# ------------------------------------------------------------------------------------------------ index
def index_html(ctx: dict) -> str:
  """The index page. `ctx` keys: title, source, summary (list of str), warnings, problems, sampling (str|None),
  classes ([{pos, name, colour, count, images, mean, hist, }]), hist_range, gt (dict|None), figures (list),
  errors ([{path, reason}]), errors_note, version."""
  lo, hi = ctx["hist_range"]
  out = [_head(ctx["title"], "static/gallery.css"), '<body class="index">\n<header>\n']
  out.append(f'<h1>{esc(ctx["title"])}</h1>\n<p class="source">{esc(ctx["source"])}</p>\n')
  out.append('<p class="summary" id="summary">' + " &middot; ".join(esc(s) for s in ctx["summary"]) + "</p>\n")
  for w in ctx["warnings"]:
    out.append(f'<p class="warn">{esc(w)}</p>\n')
  if ctx["sampling"]:
    out.append(f'<p class="note" id="sampling">{esc(ctx["sampling"])}</p>\n')
  if ctx["problems"]:
    out.append('<details class="problems" id="problems"><summary>'
               f'{len(ctx["problems"])} problem(s) in the inputs</summary><ul>\n')
    out.extend(f"<li>{esc(p)}</li>\n" for p in ctx["problems"])
    out.append("</ul></details>\n")
  out.append("</header>\n")

  # classes
  out.append('<section id="classes">\n<h2>Classes</h2>\n<table class="classes">\n<thead><tr><th>class</th>'
             '<th>instances</th><th>images</th><th>mean score</th>'
             f'<th>score histogram ({HIST_BINS} bins, all images of the run)</th></tr></thead>\n<tbody>\n')
  for c in ctx["classes"]:
    out.append(f'<tr data-cat="{c["pos"]}"><td><button class="cls" data-cat="{c["pos"]}" title="show only this '
               f'class"><span class="sw" style="background:{c["colour"]}"></span>{esc(c["name"])}</button></td>'
               f'<td class="num count">{c["count"]}</td><td class="num">{c["images"]}</td>'
               f'<td class="num">{fmt_score(c["mean"])}</td>'
               f'<td>{histogram_svg(c["hist"], lo, hi, c["colour"])}</td></tr>\n')
  out.append("</tbody>\n</table>\n</section>\n")

  gt = ctx["gt"]
  if gt:
    out.append('<section id="gt-summary">\n<h2>Against the ground truth</h2>\n')
    out.append(f'<p>{esc(gt["source"])}: over the {gt["images"]} shown image(s) that are in the ground truth, '
               f'<span class="tp" id="gt-tp">{gt["tp"]}</span> true positive(s), '
               f'<span class="miss" id="gt-fn">{gt["fn"]}</span> miss(es), '
               f'<span class="fp" id="gt-fp">{gt["fp"]}</span> false positive(s)'
               + (f', {gt["ignored"]} on crowd regions (ignored)' if gt["ignored"] else "")
               + f'. {esc(gt["rule"])}</p>\n')
    if gt["unmatched"]:
      out.append(f'<p class="muted">{gt["unmatched"]} shown image(s) are not in the ground truth.</p>\n')
    out.append("</section>\n")

  n_err = len(ctx["errors"])
  out.append(f'<nav class="tabs"><button id="tab-images" class="on">Images ({len(ctx["figures"])})</button>'
             f'<button id="tab-errors">Errors ({n_err})</button></nav>\n')
  out.append(f'<section id="filters" data-lo="{lo:g}" data-hi="{hi:g}">\n'
             '<label>class <select id="f-class"><option value="">all classes</option>')
  out.extend(f'<option value="{c["pos"]}">{esc(c["name"])}</option>' for c in ctx["classes"])
  out.append("</select></label>\n")
  out.append(f'<label>score &ge; <input id="f-min" type="number" step="0.05" min="{lo:g}" max="{hi:g}" '
             f'value="{lo:g}"></label>\n'
             f'<label>score &le; <input id="f-max" type="number" step="0.05" min="{lo:g}" max="{hi:g}" '
             f'value="{hi:g}"></label>\n'
             '<label><input id="f-empty" type="checkbox"> only images with no instances</label>\n'
             '<label>sort <select id="f-sort"><option value="file">file order</option>'
             '<option value="n">most instances</option><option value="maxdesc">highest score</option>'
             '<option value="maxasc">lowest top score</option>')
  if gt:
    out.append('<option value="fp">most false positives</option><option value="fn">most misses</option>')
  out.append("</select></label>\n<label>per page <select id=\"f-size\">")
  out.extend(f'<option value="{s}"{" selected" if s == 60 else ""}>{s}</option>' for s in PAGE_SIZES)
  out.append('</select></label>\n<button id="f-reset">reset</button>\n<span id="f-count" class="muted"></span>\n'
             '</section>\n')
  pager = ('<div class="pager"><button class="prev">&lsaquo; previous</button><span class="info"></span>'
           '<button class="next">next &rsaquo;</button></div>\n')
  out.append(pager)
  out.append('<section id="grid" class="grid">\n')
  for f in ctx["figures"]:
    out.append(figure_html(f))
  out.append("</section>\n")
  out.append(pager)

  out.append('<section id="errors" hidden>\n<h2>Skipped files</h2>\n')
  if ctx["errors_note"]:
    out.append(f'<p class="warn">{esc(ctx["errors_note"])}</p>\n')
  if n_err:
    out.append('<table class="errors"><thead><tr><th>file</th><th>reason</th></tr></thead>\n<tbody>\n')
    out.extend(f"<tr><td>{esc(e['path'])}</td><td>{esc(e['reason'])}</td></tr>\n" for e in ctx["errors"])
    out.append("</tbody></table>\n")
  else:
    out.append("<p>No file was skipped.</p>\n")
  out.append("</section>\n")
  out.append(f'<footer class="muted"><p>zipjax gallery {esc(ctx["version"])}: open this file in a browser; '
             "everything is in this folder.</p></footer>\n")
  out.append('<script src="static/gallery.js"></script>\n</body>\n</html>\n')
  return "".join(out)


def figure_html(f: dict) -> str:
  """One thumbnail: data-inst = 'class:score' per instance (class = position in the class table)."""
  inst = " ".join(f"{c}:{'' if s is None else format(s, '.4f')}" for c, s in f["inst"])
  gt_attrs, gt_caption = "", ""
  if f.get("match") is not None:
    m = f["match"]
    gt_attrs = f' data-tp="{m["tp"]}" data-fp="{m["fp"]}" data-fn="{m["fn"]}"'
    gt_caption = (f'<br><span class="tp">{m["tp"]} TP</span> &middot; <span class="miss">{m["fn"]} miss</span>'
                  f' &middot; <span class="fp">{m["fp"]} FP</span>')
  scores = [s for _, s in f["inst"] if s is not None]
  top = f" &middot; top {max(scores):.2f}" if scores else ""
  flag = ' <span class="warn">image missing</span>' if f["missing"] else ""
  return (f'<figure class="thumb" data-id="{f["id"]}" data-n="{len(f["inst"])}" data-inst="{inst}"{gt_attrs}>'
          f'<a href="{esc(f["page"])}"><img src="{esc(f["thumb"])}" width="{f["tw"]}" height="{f["th"]}" '
          f'loading="lazy" alt="{esc(f["name"])}"></a><figcaption>{esc(f["name"])}{flag}<br>'
          f'<span class="counts">{len(f["inst"])} instance(s){top}</span>{gt_caption}</figcaption></figure>\n')


# ------------------------------------------------------------------------------------------------ pages
def page_html(ctx: dict) -> str:
  """An image page. `ctx` keys: title, position, total, prev, next, meta (list of str), notes, display
  ({src, w, h} | None), missing (str|None), width, height, canvas (w, h), pred (rows), gt (rows | None),
  gt_summary (str|None), data (the JSON block)."""
  out = [_head(ctx["title"], "../static/gallery.css"), '<body class="page">\n<nav class="top">'
         '<a href="../index.html">&uarr; index</a>']
  out.append(f'<a rel="prev" href="{esc(ctx["prev"])}">&lsaquo; previous</a>' if ctx["prev"] else
             '<span class="muted">&lsaquo; previous</span>')
  out.append(f'<span>{ctx["position"]} / {ctx["total"]}</span>')
  out.append(f'<a rel="next" href="{esc(ctx["next"])}">next &rsaquo;</a>' if ctx["next"] else
             '<span class="muted">next &rsaquo;</span>')
  out.append("</nav>\n")
  out.append(f'<h1>{esc(ctx["title"])}</h1>\n<p class="meta">' + " &middot; ".join(ctx["meta"]) + "</p>\n")
  for n in ctx["notes"]:
    out.append(f'<p class="warn">{esc(n)}</p>\n')
  if ctx["gt_summary"]:
    out.append(f'<p id="gt-counts">{ctx["gt_summary"]}</p>\n')
  out.append('<div class="panels">\n')
  sets = [("pred", "predictions", ctx["pred"])] + ([("gt", "ground truth", ctx["gt"])] if ctx["gt"] is not None
                                                     else [])
  for key, label, rows in sets:
    out.append(f'<div class="panel" id="panel-{key}"><h2>{label} ({len(rows)})</h2>\n')
    out.append(_stage(key, ctx))
    out.append(f'<p><button data-all="{key}" data-on="1">all on</button> '
               f'<button data-all="{key}" data-on="0">all off</button></p>\n</div>\n')
  out.append("</div>\n")
  for key, label, rows in sets:
    out.append(_instance_table(key, "instances" if key == "pred" else "ground-truth instances", rows,
                               ctx["gt"] is not None))
  out.append(f'<script type="application/json" id="page-data">{script_json(ctx["data"])}</script>\n')
  out.append('<script src="../static/gallery.js"></script>\n</body>\n</html>\n')
  return "".join(out)


def _stage(key: str, ctx: dict) -> str:
  cw, ch = ctx["canvas"]
  style = f"aspect-ratio: {cw} / {ch}; max-width: {cw}px"
  up = ' upscaled' if ctx["display"] and ctx["display"]["w"] < cw else ""
  inner = ""
  if ctx["display"]:
    d = ctx["display"]
    inner = f'<img src="{esc(d["src"])}" width="{d["w"]}" height="{d["h"]}" alt="">'
  else:
    inner = f'<div class="missing">{esc(ctx["missing"] or "image missing")}</div>'
  return f'<div class="stage{up}" id="stage-{key}" style="{style}">{inner}</div>\n'


def _instance_table(key: str, label: str, rows: list, with_gt: bool) -> str:
  out = [f'<h2>{label}</h2>\n<table class="instances" id="table-{key}"><thead><tr><th>show</th><th>#</th>'
         '<th>class</th><th>score</th><th>area</th><th>box x, y, w, h</th>'
         + ("<th>match (IoU)</th>" if with_gt else "") + "</tr></thead>\n<tbody>\n"]
  if not rows:
    out.append(f'<tr><td colspan="{7 if with_gt else 6}" class="muted">no instances</td></tr>\n')
  for r in rows:
    box = ", ".join(fmt_num(v, 1) for v in r["box"])
    match = f'<td class="{r["status"]}">{esc(r["match"])}</td>' if with_gt else ""
    out.append(f'<tr data-k="{r["k"]}"><td><input type="checkbox" class="toggle" data-set="{key}" '
               f'data-k="{r["k"]}" checked aria-label="show instance {r["k"] + 1}"></td>'
               f'<td><span class="sw" style="background:{r["colour"]}"></span>{r["k"] + 1}</td>'
               f'<td>{esc(r["name"])}</td><td class="num">{fmt_score(r["score"])}</td>'
               f'<td class="num">{fmt_num(r["area"], 0)}</td><td class="num">{box}</td>{match}</tr>\n')
  out.append("</tbody></table>\n")
  return "".join(out)


__all__ = ["HIST_BINS", "esc", "script_json", "histogram_range", "histogram_counts", "histogram_svg",
           "index_html", "figure_html", "page_html", "hex_colour"]
