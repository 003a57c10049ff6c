"""Gallery benchmark: build time for 1,000 images (first build vs rebuild with thumbnails reused), a 10,000-image
run sampled to 1,000 (--max-images), peak memory, output sizes, and screenshot sizes in headless Chromium.

Run from the repository root:

  python bench/gallery.py                      # 1,000 images, plus a 10,000-image run sampled to 1,000
  python bench/gallery.py --big 0              # skip the 10,000-image run
  python bench/gallery.py --images 200 --big 2000 --size 96x72   # quicker

Inputs are synthetic (tests/gallery/synth.py): small noisy RGB PNGs with 0-4 elliptical instances each, an
annotations.json as `zipjax segment` writes it, errors.json and run.json. Every build runs in a fresh
subprocess (`python -c ... build_gallery(...)`), so the peak RSS column (VmHWM) is that build's process (the
baseline row is the same process importing zipjax and building nothing); times are the build's own wall time, without
the interpreter start. The rebuild row re-runs the same command on the same output folder: thumbnails and
display copies are found in the cache, pages are compared and not rewritten. Baseline for the ratio = the
first build.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.gallery import synth  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, resource, sys, time
from zipjax.gallery.build import build_gallery
args = json.loads(sys.argv[1])
t = time.perf_counter()
res = build_gallery(**args) if args else None
dt = time.perf_counter() - t
def hwm_mb():  # peak RSS of this process image (ru_maxrss would include the forking parent's, Linux keeps it)
  try:
    with open("/proc/self/status") as f:
      return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
  except (OSError, StopIteration):
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "rss_mb": hwm_mb(),
                  "rendered": res.thumbs_rendered if res else 0, "reused": res.thumbs_reused if res else 0,
                  "shown": res.shown if res else 0, "total": res.total if res else 0}))
"""


def child_build(**kwargs) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(kwargs)], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def du(path: str) -> tuple[int, int]:
  """(bytes, files) under `path`."""
  total = n = 0
  for d, _, names in os.walk(path):
    for name in names:
      total += os.path.getsize(os.path.join(d, name))
      n += 1
  return total, n


def screenshots(index: str, page: str) -> list:
  """[(what, width, height, PNG bytes)] of the index and an image page at 1280 x 900, or [] without Chromium."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from tests.gallery.cdp import Browser, find_chromium  # pylint: disable=import-outside-toplevel
  if find_chromium() is None:
    return []
  rows = []
  with Browser() as br:
    for what, url in (("index", index), ("image page", page)):
      t = time.perf_counter()
      br.open("file://" + url, 1280, 900)
      load = time.perf_counter() - t
      png = br.screenshot()
      w, h = Image.open(io.BytesIO(png)).size
      rows.append((what, w, h, len(png), load))
      if what == "index":
        br.click("button.cls[data-cat='1']")
        png2 = br.screenshot()
        rows.append(("index, class filter on", w, h, len(png2), None))
  return rows


def table(headers, rows) -> str:
  cols = [headers] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cols) for i in range(len(headers))]
  line = lambda r: "  ".join(c.ljust(widths[i]) for i, c in enumerate(r))
  return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cols[1:]])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=1000)
  p.add_argument("--big", type=int, default=10000, help="images of the sampled run (0 = skip)")
  p.add_argument("--size", default="160x120", help="image size WxH")
  p.add_argument("--workers", type=int, default=None)
  p.add_argument("--keep", metavar="DIR", help="build under DIR and keep it (default: a temporary folder)")
  args = p.parse_args()
  w, h = (int(v) for v in args.size.split("x"))
  base = args.keep or tempfile.mkdtemp(prefix="zipjax-bench-gallery-")
  print(f"# zipjax gallery bench: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, images {w}x{h} px; folder {base}")
  rows = []
  try:
    t = time.perf_counter()
    s = synth.make_run(os.path.join(base, "small"), n_images=args.images, size=(h, w))
    print(f"# wrote {args.images} images in {time.perf_counter() - t:.1f}s")
    n_ann = len(s["dataset"]["annotations"])
    opts = {"run_dir": s["run"], "max_images": None, "workers": args.workers}
    base_row = child_build()
    first = child_build(**opts)
    second = child_build(**opts)
    rows.append((f"{args.images} images, first build", f"{first['seconds']:.2f}", "1.00",
                 f"{first['seconds'] / args.images * 1e3:.1f}", first["rendered"], first["reused"],
                 f"{first['rss_mb']:.0f}"))
    rows.append((f"{args.images} images, rebuild (cache)", f"{second['seconds']:.2f}",
                 f"{first['seconds'] / second['seconds']:.1f}x faster",
                 f"{second['seconds'] / args.images * 1e3:.1f}", second["rendered"], second["reused"],
                 f"{second['rss_mb']:.0f}"))
    out = os.path.join(s["run"], "gallery")
    sizes = {sub: du(os.path.join(out, sub)) for sub in ("thumbs", "images", "pages")}
    index_bytes = os.path.getsize(os.path.join(out, "index.html"))
    ann_bytes = os.path.getsize(os.path.join(s["run"], "annotations.json"))
    if args.big:
      t = time.perf_counter()
      big = synth.make_run(os.path.join(base, "big"), n_images=args.big, size=(h, w), seed=1)
      print(f"# wrote {args.big} images in {time.perf_counter() - t:.1f}s")
      bopts = {"run_dir": big["run"], "max_images": args.images, "workers": args.workers}
      b1 = child_build(**bopts)
      b2 = child_build(**bopts)
      big_ann = os.path.getsize(os.path.join(big["run"], "annotations.json"))
      rows.append((f"{args.big} images -> {args.images} shown, first", f"{b1['seconds']:.2f}",
                   f"{b1['seconds'] / first['seconds']:.2f}x the {args.images}-image build",
                   f"{b1['seconds'] / args.images * 1e3:.1f}", b1["rendered"], b1["reused"], f"{b1['rss_mb']:.0f}"))
      rows.append((f"{args.big} images -> {args.images} shown, rebuild", f"{b2['seconds']:.2f}",
                   f"{b1['seconds'] / b2['seconds']:.1f}x faster", f"{b2['seconds'] / args.images * 1e3:.1f}",
                   b2["rendered"], b2["reused"], f"{b2['rss_mb']:.0f}"))
    rows.append(("baseline (import only)", "-", "-", "-", "-", "-", f"{base_row['rss_mb']:.0f}"))
    print()
    print(table(["run", "seconds", "ratio", "ms/image shown", "thumbs drawn", "thumbs reused", "peak RSS MB"],
                rows))
    print()
    print(table(["output", "bytes", "files", "bytes/file"],
                [(f"annotations.json ({n_ann} instances)", ann_bytes, 1, ann_bytes)]
                + ([(f"annotations.json, {args.big}-image run", big_ann, 1, big_ann)] if args.big else [])
                + [("index.html", index_bytes, 1, index_bytes)]
                + [(f"{sub}/", b, n, b // max(n, 1)) for sub, (b, n) in sizes.items()]))
    shots = screenshots(os.path.join(out, "index.html"), os.path.join(out, "pages", "4.html"))
    print()
    if shots:
      print(table(["screenshot (headless Chromium)", "width", "height", "PNG bytes", "load s"],
                  [(a, b, c, d, "-" if e is None else f"{e:.2f}") for a, b, c, d, e in shots]))
    else:
      print("screenshots: no Chromium installed (apt-get install -y chromium)")
  finally:
    if not args.keep:
      shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
  main()
