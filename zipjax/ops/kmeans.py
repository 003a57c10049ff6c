"""Lloyd k-means as one jitted `lax.while_loop`, and its two initialisations.

Lloyd (`kmeans`) follows the released Zip code step for step:
  * assignment: argmin of the squared Euclidean distance, written as one matmul
    `|x|^2 - 2 x c^T + |c|^2` (what `torch.cdist` does for large inputs); ties go to the lowest cluster index;
  * update: per-cluster sums as a one-hot matmul, divided by the counts; an empty cluster keeps its centroid;
  * stop after the update when `allclose(new, old, rtol, atol)` (torch semantics:
    `|new - old| <= atol + rtol * |old|`) or after `max_iters` iterations. The returned assignment is the last
    one computed, i.e. the one the last update was made from, as in the released loop.
Centroids can be masked out (`valid=False`): they never win the argmin, so the number of clusters can vary
under a static maximum K.

Initialisations:
  * `linspace_indices` (`init='linspace'`, the released code): rows `round(linspace(0, n-1, K))`, with torch's
    float32 linspace arithmetic and round-half-to-even.
  * `semantic_init` (`init='semantic'`, the `zip` preset): zipjax's own design of the paper's semantic-aware
    initialisation, which the paper describes (centres seeded from the activated regions, number of clusters
    chosen from the activation) but whose code was not released:
      1. number of clusters from the activation: with `n_act` activated cells,
         `k_fg = clip(ceil(n_act / cells_per_cluster), min_foreground_clusters, K - background_clusters)`
         (and at most `n_act`; 0 when nothing is activated), `k_bg = background_clusters`,
         `K_eff = k_fg + k_bg <= K`; centroids `K_eff..K-1` are masked out;
      2. foreground seeds: `k_fg` activated cells spread evenly along the raster order of the activated cells
         (the reference's linspace rule applied inside the activated region), so every activated object
         gets seeds in proportion to its area instead of the background taking most of them;
      3. background seeds: `k_bg` non-activated cells chosen the same way among the non-activated cells (all
         cells when everything is activated), so that the background has its own clusters and object
         fragments are not merged with it.
    Everything is deterministic, has static shapes, and every number is a config field
    (`config.discover.semantic.*`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zipjax.errors import InputError


def linspace_indices(n: int, k: int) -> np.ndarray:
  """Rows `round(linspace(0, n - 1, k))` as the released code computes them (torch float32 linspace).

  torch's scalar linspace kernel: `step = (end - start) / (k - 1)` in float32, the first half `start + step*i`,
  the second half `end - step*(k - 1 - i)`; `torch.round` rounds half to even, as `np.round`.

  Args:
    n: number of rows (h * w).
    k: number of clusters.

  Returns:
    int64 [k] row indices, strictly increasing.

  Raises:
    InputError: when the rounded indices are not unique (n < k); the released code would then run with fewer
      centroids than clusters and index past its centroid array.
  """
  if k < 1:
    raise InputError(f"k-means needs at least one cluster, got {k}")
  if k == 1:
    return np.zeros((1,), np.int64)
  start, end = np.float32(0), np.float32(n - 1)
  step = (end - start) / np.float32(k - 1)
  i = np.arange(k)
  first = start + step * i.astype(np.float32)
  second = end - step * (k - 1 - i).astype(np.float32)
  pos = np.where(i < k // 2, first, second).astype(np.float32)
  idx = np.round(pos).astype(np.int64)
  if len(np.unique(idx)) != k:
    raise InputError(f"k-means with K={k} needs at least K distinct rows, got {n} feature cells")
  return idx


def _sq_distances(x: jax.Array, x_sq: jax.Array, c: jax.Array) -> jax.Array:
  """[N, K] squared distances |x|^2 - 2 x c^T + |c|^2."""
  c_sq = jnp.sum(c * c, axis=-1)  # [K]
  xc = jnp.dot(x, c.T, precision=jax.lax.Precision.HIGHEST)  # [N, K]
  return x_sq[:, None] - 2.0 * xc + c_sq[None, :]


def assign(x: jax.Array, centroids: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Nearest valid centroid of every row of `x` [N, C] -> int32 [N] (ties: lowest index)."""
  x_sq = jnp.sum(x * x, axis=-1)  # [N]
  d = _sq_distances(x, x_sq, centroids)  # [N, K]
  if valid is not None:
    d = jnp.where(valid[None, :], d, jnp.inf)
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("max_iters", "rtol", "atol", "center"))
def kmeans(x: jax.Array, init: jax.Array, valid: jax.Array | None = None, *, max_iters: int = 100,
           rtol: float = 1e-5, atol: float = 1e-8,
           center: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Lloyd k-means from given initial centroids.

  Args:
    x: float32 [N, C] points.
    init: float32 [K, C] initial centroids.
    valid: optional bool [K]; masked-out centroids never win the assignment (and stay unchanged).
    max_iters: at most this many assignment + update steps.
    rtol: relative tolerance of the allclose stop.
    atol: absolute tolerance of the allclose stop.
    center: compute the assignment distances on data shifted by its mean. Distances (and so, in exact
      arithmetic, the assignment) are unchanged, but |x|^2 - 2 x.c + |c|^2 loses far less to float32
      cancellation when the features share a large common component (as raw CNN features do). Centroid
      updates and the stop rule still use the unshifted values. Off = the released code's arithmetic.

  Returns:
    (labels int32 [N] in 0..K-1, centroids float32 [K, C] after the last update, iterations run int32 []).
  """
  if max_iters < 1:
    raise InputError(f"max_iters must be >= 1, got {max_iters}")
  x = x.astype(jnp.float32)
  k = init.shape[0]
  if valid is None:
    valid = jnp.ones((k,), bool)
  shift = jnp.mean(x, axis=0) if center else jnp.zeros((x.shape[-1],), jnp.float32)  # [C]
  xs = x - shift if center else x  # [N, C]
  xs_sq = jnp.sum(xs * xs, axis=-1)  # [N]

  def body(state):
    it, c, _, _ = state
    cs = c - shift if center else c  # [K, C]
    d = jnp.where(valid[None, :], _sq_distances(xs, xs_sq, cs), jnp.inf)  # [N, K]
    labels = jnp.argmin(d, axis=-1).astype(jnp.int32)  # [N]
    onehot = (labels[:, None] == jnp.arange(k, dtype=jnp.int32)[None, :]).astype(jnp.float32)  # [N, K]
    sums = jnp.dot(onehot.T, x, precision=jax.lax.Precision.HIGHEST)  # [K, C]
    counts = jnp.sum(onehot, axis=0)  # [K]
    # XLA rewrites `a / broadcast(b)` as `a * broadcast(1 / b)`, which is not correctly rounded; the barrier
    # keeps a true division, so means match torch's / NumPy's `sum / count` bit for bit when sums are exact
    denom = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.maximum(counts, 1.0)[:, None], sums.shape))
    new = jnp.where(counts[:, None] > 0, sums / denom, c)  # [K, C]
    done = jnp.all(jnp.abs(new - c) <= atol + rtol * jnp.abs(c))
    return it + 1, new, labels, done

  def cond(state):
    it, _, _, done = state
    return jnp.logical_and(it < max_iters, jnp.logical_not(done))

  n = x.shape[0]
  state = (jnp.int32(0), init.astype(jnp.float32), jnp.zeros((n,), jnp.int32), jnp.bool_(False))
  it, c, labels, _ = jax.lax.while_loop(cond, body, state)
  return labels, c, it


def _spread_pick(pool: jax.Array, count: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Up to `k` cells of boolean `pool` [N] spread evenly along raster order, `count` (traced) of them.

  Seed j < count is the pool cell of rank round(j * (n_pool - 1) / (count - 1)) (rank 0 when count == 1).

  Returns:
    (int32 [k] cell indices, bool [k] valid = j < count).
  """
  n_pool = jnp.sum(pool.astype(jnp.int32))
  j = jnp.arange(k, dtype=jnp.float32)
  denom = jnp.maximum(count - 1, 1).astype(jnp.float32)
  rank = jnp.round(j * (n_pool - 1).astype(jnp.float32) / denom).astype(jnp.int32)  # [k]
  rank = jnp.clip(rank, 0, jnp.maximum(n_pool - 1, 0))
  csum = jnp.cumsum(pool.astype(jnp.int32))  # [N]
  idx = jnp.searchsorted(csum, rank + 1, side="left").astype(jnp.int32)  # first cell with csum == rank+1
  idx = jnp.clip(idx, 0, pool.shape[0] - 1)
  valid = (jnp.arange(k) < count) & (n_pool > 0)
  return idx, valid


def semantic_init(x: jax.Array, act: jax.Array, k: int, *, min_foreground_clusters: int,
                  cells_per_cluster: int, background_clusters: int) -> tuple[jax.Array, jax.Array]:
  """zipjax's semantic-aware initialisation (see the module docstring).

  Args:
    x: float32 [N, C] features (raster order).
    act: bool [N] activation at feature resolution.
    k: static maximum number of clusters K.
    min_foreground_clusters: at least this many seeds in the activated region (when it has that many cells).
    cells_per_cluster: one foreground seed per this many activated cells (rounded up).
    background_clusters: seeds among the non-activated cells.

  Returns:
    (init centroids float32 [K, C], valid bool [K]); valid centroids come first (foreground, then background).
  """
  if background_clusters >= k or background_clusters < 0:
    raise InputError(f"semantic.background_clusters must be in [0, K={k}), got {background_clusters}")
  if cells_per_cluster < 1:
    raise InputError(f"semantic.cells_per_cluster must be >= 1, got {cells_per_cluster}")
  act = act.astype(bool)
  n_act = jnp.sum(act.astype(jnp.int32))
  k_fg = jnp.maximum((n_act + cells_per_cluster - 1) // cells_per_cluster, min_foreground_clusters)
  k_fg = jnp.minimum(jnp.minimum(k_fg, k - background_clusters), n_act)  # 0 when nothing is activated
  bg_pool = jnp.where(jnp.any(~act), ~act, jnp.ones_like(act))
  n_bg = jnp.sum(bg_pool.astype(jnp.int32))
  k_bg = jnp.minimum(jnp.int32(background_clusters), n_bg)
  k_bg = jnp.where(k_fg + k_bg == 0, 1, k_bg)  # at least one cluster
  fg_idx, fg_valid = _spread_pick(act, k_fg, k)
  bg_idx, bg_valid = _spread_pick(bg_pool, k_bg, k)
  slot = jnp.arange(k)
  # slots [0, k_fg) take foreground seeds, [k_fg, k_fg + k_bg) background seeds
  bg_slot = jnp.clip(slot - k_fg, 0, k - 1)
  idx = jnp.where(slot < k_fg, fg_idx, bg_idx[bg_slot])  # [K]
  valid = jnp.where(slot < k_fg, fg_valid, bg_valid[bg_slot] & (slot - k_fg < k_bg))  # [K]
  return x[idx].astype(jnp.float32), valid
