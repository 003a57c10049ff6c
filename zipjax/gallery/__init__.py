"""`zipjax gallery`: a static HTML gallery of any zipjax output folder (segment, label, detect, a round).

- `build_gallery(run_dir, out=None, max_images=1000, gt=None, images_root=None, ...)` writes the site
  (zipjax/gallery/build.py: what is read and how the work stays bounded);
- `gallery_hint(out_dir)`: the one line that output commands print to tell the user how to look at the results.

Modules: `source` (annotations.json indexed in one streaming pass), `render` (thumbnails, display copies, cache
keys), `match` (per-image true positives / misses / false positives against a ground truth), `site` (HTML),
`static/` (the CSS and the plain JavaScript the pages load).
"""
from __future__ import annotations

from zipjax.gallery.build import (DEFAULT_IMAGE_SIZE, DEFAULT_MAX_IMAGES, DEFAULT_THUMB_SIZE, build_gallery,
                                  gallery_hint)

__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_MAX_IMAGES", "DEFAULT_THUMB_SIZE", "build_gallery", "gallery_hint"]
