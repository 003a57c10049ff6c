"""`zipjax gallery`: a static HTML gallery of any zipjax output folder (segment, label, detect, a round).

- `build_gallery(run_dir, out=None, max_images=1000, gt=None, images_root=None, ...)` writes the site
  (zipjax/gallery/build.py: what is read and how the work stays bounded);
- `gallery_hint(out_dir)`: the one line that output commands print to tell the user how to look at the results.

Modules: `source` (annotations.json indexed in one streaming pass), `render` (thumbnails, display copies, cache
keys), `match` (per-image true positives / misses / false positives against a ground truth), `site` (HTML),
`static/` (the CSS and the plain JavaScript the pages load). Importing this package is cheap: the heavy modules
load when `build_gallery` is called.
"""
from __future__ import annotations

import os
import shlex

DEFAULT_MAX_IMAGES = 1000
DEFAULT_THUMB_SIZE = 256
DEFAULT_IMAGE_SIZE = 1600


def gallery_hint(out_dir) -> str:
  """The command that builds the gallery of `out_dir`, as one line for a command's final summary."""
  out_dir = os.fspath(out_dir)
  return (f"look at the results: zipjax gallery {shlex.quote(out_dir)}  "
          f"(then open {os.path.join(out_dir, 'gallery', 'index.html')})")


def build_gallery(*args, **kwargs):
  """See `zipjax.gallery.build.build_gallery`."""
  from zipjax.gallery.build import build_gallery as build  # pylint: disable=import-outside-toplevel
  return build(*args, **kwargs)


__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_MAX_IMAGES", "DEFAULT_THUMB_SIZE", "build_gallery", "gallery_hint"]
