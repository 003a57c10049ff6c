"""Discovery (zip_method.md sections 3-4): k-means clusters -> fragments -> instances, per image and class.

For one image and one class, with boundary features F [h, w, C] and activation act [h, w]:
  1. cluster ids 1..K = Lloyd k-means on the rows of F (`ops.kmeans`), linspace or semantic initialisation;
  2. candidate clusters = the `top_k_clusters` most common values of `cluster_id * act` over the whole map,
     ties by first occurrence in raster order, value 0 skipped (`count_background_in_top_k`: 0 takes one of
     the places, the released code's quirk);
  3. fragments = connected components of every whole cluster (all clusters at once: neighbours connect when
     their cluster ids are equal); keep a fragment of a candidate cluster when
     activated cells / cells > `min_activated_fraction` and bbox area (exclusive max) / cells < `max_bbox_ratio`;
  4. instances = connected components of the union of kept fragments, without those under
     `min_instance_cells` cells, numbered 1..n in raster order of their first cell (0 = background).

The ratios are computed in float32 where the released code uses float64. For a ratio a/n of cell counts and a
threshold p/q with a small denominator (0.3, 3) the two decide identically: a/n != p/q implies
|a/n - p/q| >= 1/(q n), far above float32 rounding for any feature map below 2^20 cells, and a/n == p/q rounds
to the same float as the threshold in both precisions.

Everything is jitted with static shapes; the config becomes the hashable typed group `zipjax.configs.Discover`
(a static argument).
`discover_batch` maps over images and classes with `vmap`; with the `linspace` initialisation the k-means
clustering does not depend on the class and runs once per image.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from zipjax import configs
from zipjax.errors import InputError
from zipjax.ops import components
from zipjax.ops import kmeans as kmeans_ops
from zipjax.ops import resize


# --------------------------------------------------------------------------------------------- building blocks
def cluster(features: jax.Array, activation: jax.Array, p: configs.Discover) -> tuple[jax.Array, jax.Array]:
  """k-means cluster ids of the feature cells.

  Args:
    features: float32 [h, w, C].
    activation: bool [h, w] (used by the semantic initialisation only).
    p: parameters.

  Returns:
    (int32 [h, w] cluster ids 1..K, int32 [] Lloyd iterations run).
  """
  h, w, c = features.shape
  x = features.reshape(h * w, c).astype(jnp.float32)  # [h*w, C]
  if p.init == "linspace":
    idx = kmeans_ops.linspace_indices(h * w, p.num_clusters)
    init, valid = x[idx], None
  else:
    init, valid = kmeans_ops.semantic_init(
        x, activation.reshape(-1), p.num_clusters,  # activation [h*w]
        min_foreground_clusters=p.semantic.min_foreground_clusters,
        cells_per_cluster=p.semantic.cells_per_cluster,
        background_clusters=p.semantic.background_clusters)
  labels, _, iters = kmeans_ops.kmeans(x, init, valid, max_iters=p.max_iters, rtol=p.rtol, atol=p.atol,
                                         center=p.center_features)
  return (labels + 1).reshape(h, w), iters  # [h, w]


def candidate_clusters(ids: jax.Array, activation: jax.Array, p: configs.Discover) -> jax.Array:
  """bool [K + 1] indexed by cluster id: the cluster is examined for fragments (index 0 is never)."""
  k = p.num_clusters
  n = ids.size
  values = (ids * activation.astype(ids.dtype)).reshape(-1)  # [h*w], 0 where not activated
  counts = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), values, num_segments=k + 1)  # [K+1]
  first = jax.ops.segment_min(jnp.arange(n, dtype=jnp.int32), values, num_segments=k + 1)  # [K+1]
  present = counts > 0
  ranked = present if p.count_background_in_top_k else present.at[0].set(False)
  # rank[v] = number of ranked values ahead of v (more common, or as common and seen earlier)
  ahead = (counts[None, :] > counts[:, None]) | ((counts[None, :] == counts[:, None]) &
                                                  (first[None, :] < first[:, None]))  # [K+1, K+1]
  rank = jnp.sum(ahead & ranked[None, :], axis=1)
  cand = ranked & (rank < p.top_k_clusters)
  return cand.at[0].set(False)


def select_fragments(ids: jax.Array, activation: jax.Array, candidates: jax.Array,
                     p: configs.Discover) -> dict[str, jax.Array]:
  """Fragments (components of whole clusters) and the selection rule.

  Returns:
    dict: mask bool [h, w] union of kept fragments; roots int32 [h, w] fragment root per cell; keep bool
    [h*w + 1] root-indexed kept flag.
  """
  h, w = ids.shape
  n = h * w
  roots = components.component_roots(ids, connectivity=p.connectivity, max_iters=p.max_cc_iters)
  st = components.root_stats(roots, activation)
  area = st["area"]  # [N+1]
  bbox = st["bbox"]  # [N+1, 4]
  bbox_area = (bbox[:, 2] - bbox[:, 0]) * (bbox[:, 3] - bbox[:, 1])  # [N+1]
  safe_area = jnp.maximum(area, 1).astype(jnp.float32)
  frac = st["weight_sum"].astype(jnp.float32) / safe_area
  ratio = bbox_area.astype(jnp.float32) / safe_area
  cluster_of_root = jnp.concatenate([ids.reshape(-1), jnp.zeros((1,), ids.dtype)])  # [N+1]
  keep = ((area > 0) & candidates[cluster_of_root] & (frac > p.min_activated_fraction) &
          (ratio < p.max_bbox_ratio))
  keep = keep.at[n].set(False)
  mask = keep[roots.reshape(-1)].reshape(h, w)  # [h, w]
  return {"mask": mask, "roots": roots, "keep": keep}


def build_instances(mask: jax.Array, p: configs.Discover) -> tuple[jax.Array, jax.Array]:
  """Instances = components of `mask` with at least `min_instance_cells` cells -> (labels [h, w], n)."""
  mask = mask.astype(bool)
  roots = components.component_roots(mask, mask, connectivity=p.connectivity, max_iters=p.max_cc_iters)
  st = components.root_stats(roots)
  keep = st["area"] >= p.min_instance_cells
  return components.relabel(roots, keep)


def fragments_list(roots: jax.Array, keep: jax.Array, max_fragments: int) -> dict[str, jax.Array]:
  """Kept fragments as a padded list (raster order of their first cell): root, area and bbox [M, 4]."""
  n = roots.size
  (idx,) = jnp.nonzero(keep, size=max_fragments, fill_value=n)  # [M] kept roots in raster order
  valid = idx < n
  st = components.root_stats(roots)
  return {"root": jnp.where(valid, idx, 0), "area": jnp.where(valid, st["area"][idx], 0),
          "bbox": jnp.where(valid[:, None], st["bbox"][idx], 0), "valid": valid}


@functools.partial(jax.jit, static_argnames=("p",))
def _select_and_build(ids, activation, p: configs.Discover):
  """Steps 2-4 for one class given cluster ids."""
  activation = activation.astype(bool)
  cand = candidate_clusters(ids, activation, p)
  frag = select_fragments(ids, activation, cand, p)
  labels, n = build_instances(frag["mask"], p)
  return labels, n, frag


@functools.partial(jax.jit, static_argnames=("p",))
def _discover_one(features, activation, p: configs.Discover) -> dict[str, jax.Array]:
  """Steps 1-4 for one image and one class; padded instance list from `regionprops`."""
  ids, iters = cluster(features, activation, p)
  labels, n, frag = _select_and_build(ids, activation, p)
  props = components.regionprops(labels, p.max_instances)
  return {"labels": labels, "num_instances": n, "areas": props["area"], "bboxes": props["bbox"],
          "valid": props["valid"], "cluster_ids": ids, "fragment_mask": frag["mask"],
          "fragments": fragments_list(frag["roots"], frag["keep"], p.max_fragments), "kmeans_iters": iters}


# ------------------------------------------------------------------------------------------------- public API
def _check(features, activation, p: configs.Discover, batched: bool):
  features = jnp.asarray(features)
  activation = jnp.asarray(activation)
  want_f = 4 if batched else 3
  want_a = 4 if batched else 2
  name = "discover_batch" if batched else "discover"
  if features.ndim != want_f:
    raise InputError(f"{name}: features must have {want_f} dims ({'[B, h, w, C]' if batched else '[h, w, C]'}),"
                     f" got shape {features.shape}")
  if activation.ndim != want_a:
    raise InputError(f"{name}: activation must have {want_a} dims ({'[B, n_cls, h, w]' if batched else '[h, w]'}),"
                     f" got shape {activation.shape}")
  spatial = features.shape[-3:-1]
  if tuple(activation.shape[-2:]) != tuple(spatial):
    raise InputError(f"{name}: activation {activation.shape} does not match the feature grid {spatial}")
  if batched and activation.shape[0] != features.shape[0]:
    raise InputError(f"{name}: batch sizes differ: features {features.shape[0]}, activation {activation.shape[0]}")
  if not jnp.issubdtype(features.dtype, jnp.floating):
    raise InputError(f"{name}: features must be floating point, got {features.dtype}")
  if spatial[0] * spatial[1] < p.num_clusters:
    raise InputError(f"{name}: {spatial[0]}x{spatial[1]} feature cells are fewer than K={p.num_clusters}")
  return features, activation.astype(bool)


def discover(features, activation, config=None) -> jax.Array:
  """Instances of one class in one image.

  Args:
    features: float32 [h, w, C] boundary features.
    activation: bool [h, w] class activation at feature resolution.
    config: a preset (`zipjax.configs.reference()` / `zip()`), its `discover` sub-config, or None (reference).

  Returns:
    int32 [h, w] label map: 0 = background, 1..n = instances in raster order of their first cell.
  """
  p = configs.Discover.from_config(config)
  features, activation = _check(features, activation, p, batched=False)
  return _discover_one(features, activation, p)["labels"]


def discover_instances(features, activation, config=None) -> dict[str, jax.Array]:
  """`discover` with its intermediate and padded outputs.

  Returns:
    dict: labels int32 [h, w]; num_instances int32 []; areas int32 [max_instances]; bboxes int32
    [max_instances, 4] (min_row, min_col, max_row + 1, max_col + 1) of labels 1..max_instances; valid bool
    [max_instances]; cluster_ids int32 [h, w] (1..K); fragment_mask bool [h, w]; fragments: the kept
    fragments padded to max_fragments (`fragments_list`); kmeans_iters int32 [].
  """
  p = configs.Discover.from_config(config)
  features, activation = _check(features, activation, p, batched=False)
  return _discover_one(features, activation, p)


@functools.partial(jax.jit, static_argnames=("p",))
def _discover_batch(features, activation, p: configs.Discover) -> jax.Array:
  if p.init == "linspace":  # clusters do not depend on the class: once per image
    ids, _ = jax.vmap(lambda f: cluster(f, None, p))(features)  # [B, h, w]
    per_class = jax.vmap(lambda i, a: _select_and_build(i, a, p)[0], in_axes=(None, 0))  # over classes
    return jax.vmap(per_class)(ids, activation)  # [B, n_cls, h, w]
  one = lambda f, a: _discover_one(f, a, p)["labels"]  # noqa: E731
  return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(features, activation)  # [B, n_cls, h, w]


def discover_batch(features, activation, config=None) -> jax.Array:
  """`discover` over a batch of images and classes (vmap; works on sharded inputs under jit).

  Args:
    features: float32 [B, h, w, C].
    activation: bool [B, n_cls, h, w].
    config: as for `discover`.

  Returns:
    int32 [B, n_cls, h, w] label maps.
  """
  p = configs.Discover.from_config(config)
  features, activation = _check(features, activation, p, batched=True)
  return _discover_batch(features, activation, p)


@functools.partial(jax.jit, static_argnames=("p",))
def _discover_slots(features, activation, count, p: configs.Discover) -> jax.Array:
  b, n_slots, h, w = activation.shape
  if p.init == "linspace":  # clusters do not depend on the class: once per image
    ids, _ = jax.vmap(lambda f: cluster(f, None, p))(features)  # [B, h, w]
  else:
    ids = jnp.zeros((b, h, w), jnp.int32)

  def one(f, i, a):
    if p.init != "linspace":
      i, _ = cluster(f, a, p)
    return _select_and_build(i, a, p)[0]

  def body(k, labels):
    act = jax.lax.dynamic_index_in_dim(activation, k, axis=1, keepdims=False)  # [B, h, w]
    lab = jax.vmap(one)(features, ids, act)  # [B, h, w]
    lab = jnp.where((k < count)[:, None, None], lab, 0)
    return jax.lax.dynamic_update_index_in_dim(labels, lab, k, axis=1)

  labels = jnp.zeros((b, n_slots, h, w), jnp.int32)
  return jax.lax.fori_loop(0, jnp.minimum(jnp.max(count), n_slots), body, labels)  # [B, n_slots, h, w]


def discover_slots_fn(config=None):
  """Like `discover_batch_fn`, for padded class slots: `(features [B,h,w,C], activation [B,P,h,w], count [B])
  -> labels [B, P, h, w]` where only the first `count[b]` slots of image b are discovered (the others are 0).

  The slots run in a loop of max(count) iterations, each vmapped over the images, so the cost follows the
  number of present classes instead of the static P; an image's labels do not depend on the other images.
  """
  p = configs.Discover.from_config(config)
  return functools.partial(_discover_slots, p=p)


def discover_batch_fn(config=None):
  """The jittable batched function `(features [B,h,w,C], activation [B,n_cls,h,w]) -> labels` for `config`,
  for callers that wrap it in their own `jax.jit` (e.g. with explicit in/out shardings)."""
  p = configs.Discover.from_config(config)
  return functools.partial(_discover_batch, p=p)


def activation_from_similarity(similarity, grid_size: tuple[int, int], config=None) -> jax.Array:
  """Class activation at feature resolution from a full-resolution similarity map.

  `act = nearest(A) > activation_factor * mean(A)` with the mean over the full-resolution map and PyTorch's
  legacy nearest resize (`src = floor(dst * in / out)`, `zipjax.ops.resize.nearest_indices`).

  Args:
    similarity: float [..., H, W] similarity maps (e.g. [n_cls, H, W]).
    grid_size: (h, w) of the feature grid.
    config: as for `discover` (uses `discover.activation_factor`).

  Returns:
    bool [..., h, w].
  """
  factor = configs.Discover.from_config(config).activation_factor
  a = jnp.asarray(similarity, jnp.float32)
  if a.ndim < 2:
    raise InputError(f"similarity must be [..., H, W], got shape {a.shape}")
  t = jnp.mean(a, axis=(-2, -1), keepdims=True) * jnp.float32(factor)
  iy = resize.nearest_indices(a.shape[-2], grid_size[0])
  ix = resize.nearest_indices(a.shape[-1], grid_size[1])
  small = jnp.take(jnp.take(a, iy, axis=-2), ix, axis=-1)  # [..., h, w]
  return small > t


__all__ = ["discover", "discover_instances", "discover_batch",
           "discover_batch_fn", "discover_slots_fn", "activation_from_similarity", "cluster",
           "candidate_clusters", "select_fragments", "build_instances", "fragments_list"]
