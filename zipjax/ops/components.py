"""Connected components on a grid, per-component statistics and raster-order relabelling, all jitted.

No host callback: labelling is Shiloach-Vishkin-style hooking with pointer jumping inside `lax.while_loop`.

Representation. A component is identified by its *root*, the flat (raster) index of its first cell, which is
also its smallest flat index. `component_roots` returns, for every cell, the root of its component (`N = h*w`
for background cells). Root-indexed statistics (`root_stats`) are dense arrays of size `N + 1`, so nothing in
the labelling itself depends on a maximum component count. Relabelling to `1..n` in raster order of the first
cell (`relabel`) is a cumulative sum over the roots; padded per-label lists (`regionprops`) take a static
`max_components` and return a `valid` mask.

Algorithm of `component_roots` (each cell holds a parent pointer `L`, initially itself; pointers only ever
decrease, so the parent graph stays a forest whose roots are the smallest index of their tree):
  1. `cand[i]` = the smallest `L` among `i` and its connected neighbours (same id, both foreground);
  2. hooking: the root `L[i]` of every cell takes `min(L[L[i]], cand[i])` (a scatter-min), merging trees
     that touch;
  3. pointer jumping `L = L[L]` until every cell points at a root;
  repeated until `L` no longer changes. At the fixed point no two neighbours in the same component have
  different roots, so each component is one tree, rooted at its smallest flat index.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from zipjax.errors import InputError

# (drow, dcol) neighbour offsets per connectivity
_OFFSETS = {
    4: ((-1, 0), (1, 0), (0, -1), (0, 1)),
    8: ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)),
}


def _offsets(connectivity: int):
  if connectivity not in _OFFSETS:
    raise InputError(f"connectivity must be 4 or 8, got {connectivity}")
  return _OFFSETS[connectivity]


def _shift(a: jax.Array, dr: int, dc: int, fill) -> jax.Array:
  """out[r, c] = a[r + dr, c + dc] (fill outside) for a [h, w]."""
  h, w = a.shape
  p = jnp.pad(a, ((1, 1), (1, 1)), constant_values=fill)  # [h+2, w+2]
  return p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]  # [h, w]


@functools.partial(jax.jit, static_argnames=("connectivity", "max_iters"))
def component_roots(ids: jax.Array, foreground: jax.Array | None = None, *, connectivity: int = 4,
                    max_iters: int = 0) -> jax.Array:
  """Root (flat index of the first cell) of every cell's connected component.

  Two neighbouring cells are connected when both are foreground and have the same id, so one call labels the
  components of every value of a multi-valued map at once (e.g. the fragments of all k-means clusters).

  Args:
    ids: int [h, w] region ids (a bool mask works too).
    foreground: optional bool [h, w]; cells outside belong to no component. Default: all cells.
    connectivity: 4 or 8.
    max_iters: cap on the hooking rounds (0: until converged, which always terminates).

  Returns:
    int32 [h, w]: root flat index per foreground cell, `h*w` for background cells.
  """
  offsets = _offsets(connectivity)
  h, w = ids.shape
  n = h * w
  if foreground is None:
    foreground = jnp.ones((h, w), bool)
  foreground = foreground.astype(bool)
  # static adjacency: same[k][r, c] = cell (r, c) is connected to its neighbour at offsets[k]
  same = []
  for dr, dc in offsets:
    nb_ids = _shift(ids, dr, dc, 0)
    nb_fg = _shift(foreground, dr, dc, False)
    same.append(foreground & nb_fg & (nb_ids == ids))
  flat = jnp.arange(n, dtype=jnp.int32)
  sentinel = jnp.int32(n)
  parent = jnp.concatenate([jnp.where(foreground.reshape(-1), flat, sentinel), sentinel[None]])  # [n+1]

  def jump(p):
    def body(s):
      q, _ = s
      q2 = q[q]
      return q2, jnp.any(q2 != q)
    p, _ = jax.lax.while_loop(lambda s: s[1], body, (p, jnp.bool_(True)))
    return p

  def round_(state):
    p, _, it = state
    lab = p[:n].reshape(h, w)  # [h, w]
    cand = lab
    for k, (dr, dc) in enumerate(offsets):
      cand = jnp.minimum(cand, jnp.where(same[k], _shift(lab, dr, dc, n), n))
    cand = cand.reshape(-1)  # [n]
    hooked = p.at[p[:n]].min(cand)  # roots take the smallest neighbouring root
    hooked = hooked.at[:n].min(cand)
    new = jump(hooked)
    return new, jnp.any(new != p), it + 1

  def cond(state):
    _, changed, it = state
    if max_iters > 0:
      return jnp.logical_and(changed, it < max_iters)
    return changed

  parent, _, _ = jax.lax.while_loop(cond, round_, (parent, jnp.bool_(True), jnp.int32(0)))
  return parent[:n].reshape(h, w)  # [h, w]


@jax.jit
def root_stats(roots: jax.Array, weight: jax.Array | None = None) -> dict[str, jax.Array]:
  """Root-indexed statistics of the components given by `roots` (from `component_roots`).

  Args:
    roots: int32 [h, w] root per cell (`h*w` for background).
    weight: optional bool/int [h, w]; its per-component sum is returned as `weight_sum`.

  Returns:
    dict of arrays of size N + 1 (N = h*w; index = root, entry N collects the background):
      area int32, bbox int32 [N+1, 4] as (min_row, min_col, max_row + 1, max_col + 1) (exclusive max, the
      order of skimage's `regionprops.bbox`), weight_sum int32 (when `weight` is given).
  """
  h, w = roots.shape
  n = h * w
  seg = roots.reshape(-1)  # [N]
  rows = jnp.repeat(jnp.arange(h, dtype=jnp.int32), w)  # [N]
  cols = jnp.tile(jnp.arange(w, dtype=jnp.int32), h)  # [N]
  ones = jnp.ones((n,), jnp.int32)
  area = jax.ops.segment_sum(ones, seg, num_segments=n + 1)
  r0 = jax.ops.segment_min(rows, seg, num_segments=n + 1)
  c0 = jax.ops.segment_min(cols, seg, num_segments=n + 1)
  r1 = jax.ops.segment_max(rows, seg, num_segments=n + 1) + 1
  c1 = jax.ops.segment_max(cols, seg, num_segments=n + 1) + 1
  empty = area == 0
  bbox = jnp.where(empty[:, None], 0, jnp.stack([r0, c0, r1, c1], axis=-1))  # [N+1, 4]
  out = {"area": area, "bbox": bbox}
  if weight is not None:
    wflat = weight.reshape(-1).astype(jnp.int32)  # [N]
    out["weight_sum"] = jax.ops.segment_sum(wflat, seg, num_segments=n + 1)
  return out


@jax.jit
def relabel(roots: jax.Array, keep: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Labels 1..n in raster order of each component's first cell; 0 for background and dropped components.

  Args:
    roots: int32 [h, w] from `component_roots`.
    keep: optional bool [h*w + 1] root-indexed: keep the component rooted there.

  Returns:
    (labels int32 [h, w], n int32 []).
  """
  h, w = roots.shape
  n = h * w
  seg = roots.reshape(-1)  # [N]
  flat = jnp.arange(n, dtype=jnp.int32)
  is_root = seg == flat  # [N]
  if keep is not None:
    is_root = is_root & keep[:n]
  number = jnp.cumsum(is_root.astype(jnp.int32))  # [N]
  number = jnp.concatenate([number, jnp.zeros((1,), jnp.int32)])  # [N+1]
  kept = is_root[jnp.minimum(seg, n - 1)] & (seg < n)
  labels = jnp.where(kept, number[seg], 0).reshape(h, w)  # [h, w]
  return labels, number[n - 1]


@functools.partial(jax.jit, static_argnames=("connectivity", "max_iters"))
def label(mask: jax.Array, *, connectivity: int = 4, max_iters: int = 0) -> tuple[jax.Array, jax.Array]:
  """Connected components of a boolean mask, as `skimage.measure.label(mask, connectivity=1 or 2)`.

  Returns:
    (labels int32 [h, w] with 1..n in raster order of the first cell, 0 background; n int32 []).
  """
  mask = mask.astype(bool)
  roots = component_roots(mask, mask, connectivity=connectivity, max_iters=max_iters)
  return relabel(roots)


@functools.partial(jax.jit, static_argnames=("max_components",))
def regionprops(labels: jax.Array, max_components: int) -> dict[str, jax.Array]:
  """Area and bounding box of labels 1..max_components (index i holds label i + 1).

  Args:
    labels: int [h, w], 0 = background.
    max_components: static length of the padded outputs; labels above it are left out.

  Returns:
    dict: area int32 [M], bbox int32 [M, 4] (min_row, min_col, max_row + 1, max_col + 1), valid bool [M]
    (area > 0).
  """
  h, w = labels.shape
  m = max_components
  seg = labels.reshape(-1).astype(jnp.int32) - 1  # [N]; background -> -1 (dropped)
  seg = jnp.where(seg < 0, m, seg)  # out of range -> dropped by the segment ops
  rows = jnp.repeat(jnp.arange(h, dtype=jnp.int32), w)  # [N]
  cols = jnp.tile(jnp.arange(w, dtype=jnp.int32), h)  # [N]
  area = jax.ops.segment_sum(jnp.ones_like(seg), seg, num_segments=m)
  r0 = jax.ops.segment_min(rows, seg, num_segments=m)
  c0 = jax.ops.segment_min(cols, seg, num_segments=m)
  r1 = jax.ops.segment_max(rows, seg, num_segments=m) + 1
  c1 = jax.ops.segment_max(cols, seg, num_segments=m) + 1
  valid = area > 0
  bbox = jnp.where(valid[:, None], jnp.stack([r0, c0, r1, c1], axis=-1), 0)  # [M, 4]
  return {"area": area, "bbox": bbox, "valid": valid}
