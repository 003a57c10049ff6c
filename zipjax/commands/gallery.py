"""`zipjax gallery DIR [--out DIR/gallery] [--max-images N] [--gt GT.json] [--images-root ROOT]`: a static
HTML gallery of a zipjax output folder (segment, label, detect, a self-training round).

Reads DIR/annotations.json (+ errors.json, run.json when present) and the images; writes a self-contained site
(HTML, CSS, a little plain JavaScript; no server, no network) that opens from the file system:
  index.html        per-class counts and score histograms, filters (class, score range, images with no
                    instances), thumbnails with the instances drawn, paging, the skipped files and why;
  pages/<id>.html   one page per image: the image with a toggle per instance, the instance table; with --gt
                    the ground truth beside it and the true positives / misses / false positives at mask IoU 0.5.
Thumbnails and image copies are cached by content: a re-run renders only what changed. A run with more than
--max-images images is sampled deterministically (by a hash of the file name); the index says so.
Relative file names are looked up under --images-root, else the root the run recorded, else DIR; only images
strictly inside --images-root (else the run's recorded inputs or root) are shown and copied: an absolute name,
a ../ path or a symlink leading outside is refused per image (see zipjax/gallery/build.py).
"""
from __future__ import annotations

import sys

from zipjax.errors import InputError


def add_parser(sub):
  import argparse  # pylint: disable=import-outside-toplevel

  from zipjax.gallery import DEFAULT_IMAGE_SIZE, DEFAULT_MAX_IMAGES, DEFAULT_THUMB_SIZE
  p = sub.add_parser("gallery", help="static HTML gallery of a zipjax output folder (open it in a browser)",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("dir", metavar="DIR", help="zipjax output folder (holds annotations.json)")
  p.add_argument("--out", metavar="DIR", help="where to write the gallery (default: DIR/gallery)")
  p.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES, metavar="N",
                 help=f"images with a page at most; larger runs are sampled by file-name hash (default "
                      f"{DEFAULT_MAX_IMAGES}; 0 = all)")
  p.add_argument("--gt", metavar="GT.json", help="COCO ground truth: drawn beside the predictions, with per-image "
                                                 "true positives, misses and false positives at IoU 0.5")
  p.add_argument("--class-agnostic", action="store_true", help="with --gt: match regardless of class")
  p.add_argument("--images-root", metavar="ROOT", help="folder the relative file names are under")
  p.add_argument("--thumb-size", type=int, default=DEFAULT_THUMB_SIZE, metavar="PX",
                 help=f"thumbnail size, longer side (default {DEFAULT_THUMB_SIZE})")
  p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, metavar="PX",
                 help=f"image size on the pages, longer side (default {DEFAULT_IMAGE_SIZE})")
  p.add_argument("--workers", type=int, metavar="N", help="rendering threads (default: min(4, CPUs))")
  p.add_argument("--overwrite", action="store_true",
                 help="build into an existing --out folder that is not a gallery (its index.html is replaced and "
                      "files named like gallery files are removed)")
  return p


def run(args) -> int:
  from zipjax.gallery.build import build_gallery  # pylint: disable=import-outside-toplevel
  if args.max_images is not None and args.max_images < 0:
    raise InputError(f"--max-images must be >= 0 (0 = all), got {args.max_images}")
  if args.workers is not None and args.workers < 1:
    raise InputError(f"--workers must be >= 1, got {args.workers}")

  def progress(done, total):
    if sys.stderr.isatty():
      print(f"\rgallery: {done}/{total} images", end="" if done < total else "\n", file=sys.stderr, flush=True)

  res = build_gallery(args.dir, out=args.out, max_images=args.max_images or None, gt=args.gt,
                      images_root=args.images_root, class_agnostic=args.class_agnostic,
                      thumb_size=args.thumb_size, image_size=args.image_size, workers=args.workers,
                      progress=progress, overwrite=args.overwrite)
  sampled = f" (a sample of {res.total})" if res.shown < res.total else ""
  print(f"gallery of {res.shown} image(s){sampled} in {res.seconds:.1f}s: thumbnails {res.thumbs_rendered} "
        f"drawn, {res.thumbs_reused} reused; image copies {res.displays_rendered} written, {res.displays_reused} "
        f"reused" + (f"; {res.missing} image(s) missing" if res.missing else ""))
  print(f"index: {res.index}")
  print(f"open:  {res.url}")
  return 0
