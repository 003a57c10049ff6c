"""Presets of zipjax as `ml_collections.ConfigDict`s.

Two presets (see ../shared/zip_method.md):

- `reference()`: reproduces the released Zip code (ChengShiest/Zip-Your-CLIP, `zip_utils.py`) exactly, quirks
  included, each behind a switch.
- `zip()`: the method as the paper describes it, with the quirks fixed and zipjax's semantic-aware k-means
  initialisation (documented in `zipjax/ops/kmeans.py`).

Each pipeline stage owns one sub-config (`config.discover`, and later `config.semantic`, `config.sam`, ...), so
stages can be added without touching the others. Every threshold used by a kernel is a field here.
"""
from __future__ import annotations

import ml_collections


def _discover_reference() -> ml_collections.ConfigDict:
  """Discovery (k-means, fragments, instances) exactly as the released code does it."""
  c = ml_collections.ConfigDict()
  # k-means on the boundary features (raw, Euclidean)
  c.num_clusters = 20             # K (static; the maximum K when init == 'semantic')
  c.max_iters = 100               # Lloyd iterations at most
  c.rtol = 1e-5                   # stop when allclose(new, old, rtol, atol) (torch.allclose semantics)
  c.atol = 1e-8
  c.init = "linspace"             # 'linspace': rows round(linspace(0, h*w-1, K)); 'semantic': see kmeans.py
  # semantic-aware initialisation (init == 'semantic' only)
  c.semantic = ml_collections.ConfigDict()
  c.semantic.min_foreground_clusters = 2    # seeds drawn from activated cells, at least
  c.semantic.cells_per_cluster = 256        # one more foreground seed per this many activated cells
  c.semantic.background_clusters = 6        # seeds drawn from non-activated cells (all cells if none)
  # activation: act = A > activation_factor * mean(A) (A at full resolution), resized with legacy nearest
  c.activation_factor = 0.7
  # candidate clusters: the top_k most common values of cluster_id * act (ties: first raster occurrence)
  c.top_k_clusters = 20
  c.count_background_in_top_k = True  # quirk: value 0 (non-activated) takes one of the top_k places
  # fragments = components of a whole candidate cluster; keep if both hold
  c.min_activated_fraction = 0.3  # activated cells / fragment cells > this
  c.max_bbox_ratio = 3.0          # bbox area (exclusive max) / fragment cells < this
  # instances = components of the union of kept fragments
  c.min_instance_cells = 100      # drop instances with fewer cells
  c.connectivity = 4              # 4-connectivity (skimage connectivity=1); 8 also supported
  # padded outputs
  c.max_instances = 64            # instance boxes / areas are padded to this with a `valid` mask
  c.max_fragments = 512           # fragment lists (debug outputs) are padded to this
  # label propagation loop of the connected components kernel (0 = until converged, the default)
  c.max_cc_iters = 0
  # box coordinates in image space: the released code swaps the x / y scale factors
  c.swap_box_scale = True
  return c


def reference() -> ml_collections.ConfigDict:
  """The `reference` preset: parity with the released code."""
  config = ml_collections.ConfigDict()
  config.preset = "reference"
  config.discover = _discover_reference()
  return config


def zip() -> ml_collections.ConfigDict:  # pylint: disable=redefined-builtin
  """The `zip` preset: the paper's method with the released code's quirks fixed."""
  config = ml_collections.ConfigDict()
  config.preset = "zip"
  d = _discover_reference()
  d.init = "semantic"
  d.num_clusters = 24
  d.count_background_in_top_k = False  # every activated cluster can be a candidate
  d.top_k_clusters = 24
  d.swap_box_scale = False
  config.discover = d
  return config


PRESETS = {"reference": reference, "zip": zip}


def get_preset(name: str) -> ml_collections.ConfigDict:
  """Preset by name ('reference' or 'zip')."""
  from zipjax.errors import InputError  # pylint: disable=g-import-not-at-top
  if name not in PRESETS:
    raise InputError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]()
