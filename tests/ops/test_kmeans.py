"""k-means kernel vs a NumPy Lloyd loop with the same init; linspace init vs torch; semantic init rule."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.reference import zip_discover as ref
from zipjax.errors import InputError
from zipjax.ops import kmeans as km


def test_linspace_indices_match_torch():
  for n in list(range(20, 400)) + [21760, 5440, 3072, 100003]:
    for k in (2, 3, 7, 19, 20, 24, 32):
      if n >= k:
        np.testing.assert_array_equal(km.linspace_indices(n, k), ref.linspace_indices_torch(n, k))


def test_linspace_indices_reject_too_few_cells():
  with pytest.raises(InputError):
    km.linspace_indices(19, 20)


def blobs(rng, n_points, n_protos, dim):
  """Well-separated data: integer prototypes far apart, every point exactly one prototype.

  Integer data keeps the cluster sums exact in float32, so both implementations compute bit-identical
  centroids; identical points never split, so no argmin near-ties arise."""
  protos = rng.integers(-40, 41, (n_protos, dim)).astype(np.float32)
  which = rng.integers(0, n_protos, n_points)
  return protos[which]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.integers(2, 16), st.sampled_from([1, 3, 100]))
def test_kmeans_matches_numpy_lloyd(seed, n_protos, k, max_iters):
  rng = np.random.default_rng(seed)
  x = blobs(rng, 300, n_protos, 8)
  idx = km.linspace_indices(len(x), k)
  labels, cent, iters = km.kmeans(jnp.asarray(x), jnp.asarray(x[idx]), max_iters=max_iters)
  ref_labels, ref_iters = ref.kmeans_numpy(x, idx, k, max_iters=max_iters)
  np.testing.assert_array_equal(np.asarray(labels), ref_labels)
  assert int(iters) == ref_iters
  # centroids = means of the final assignment's clusters (empty ones keep theirs)
  for j in range(k):
    if (ref_labels == j).any():
      np.testing.assert_allclose(np.asarray(cent[j]), x[ref_labels == j].mean(0), rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_kmeans_matches_torch_reference_loop(seed):
  rng = np.random.default_rng(seed)
  x = blobs(rng, 400, 9, 16)
  labels, _, iters = km.kmeans(jnp.asarray(x), jnp.asarray(x[km.linspace_indices(400, 20)]))
  t_labels, t_iters = ref.kmeans_torch(x, 20)
  np.testing.assert_array_equal(np.asarray(labels), t_labels)
  assert int(iters) == t_iters


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 7))
def test_masked_centroids_never_win(seed, n_valid):
  rng = np.random.default_rng(seed)
  x = blobs(rng, 200, 6, 8)
  k = 8
  init = x[km.linspace_indices(200, k)]
  valid = np.zeros(k, bool)
  valid[rng.choice(k, n_valid, replace=False)] = True
  labels, cent, iters = km.kmeans(jnp.asarray(x), jnp.asarray(init), jnp.asarray(valid))
  sel = np.nonzero(valid)[0]
  ref_labels, ref_iters = ref.kmeans_numpy(x, None, n_valid, init=init[sel])
  np.testing.assert_array_equal(np.asarray(labels), sel[ref_labels])
  assert int(iters) == ref_iters
  np.testing.assert_array_equal(np.asarray(cent)[~valid], init[~valid])


def test_stop_rule_is_torch_allclose():
  # two 1-d clusters; the first update moves centroids 2 -> 1 and 12 -> 11: not close; then unchanged -> stop
  x = np.array([[0.0], [2.0], [10.0], [12.0]], np.float32)
  labels, cent, iters = km.kmeans(jnp.asarray(x), jnp.asarray(x[[1, 3]]))
  np.testing.assert_array_equal(np.asarray(labels), [0, 0, 1, 1])
  np.testing.assert_array_equal(np.asarray(cent)[:, 0], [1.0, 11.0])
  assert int(iters) == 2
  # |1 - 2| <= rtol * |2| with rtol = 0.5 (torch: relative to the old centroid): stop after the first update
  _, _, iters = km.kmeans(jnp.asarray(x), jnp.asarray(x[[1, 3]]), rtol=0.5)
  assert int(iters) == 1
  _, _, iters = km.kmeans(jnp.asarray(x), jnp.asarray(x[[1, 3]]), rtol=0.49)
  assert int(iters) == 2
  # atol alone: |12 - 11| <= atol
  _, _, iters = km.kmeans(jnp.asarray(x), jnp.asarray(x[[1, 3]]), rtol=0.0, atol=1.0)
  assert int(iters) == 1


def np_semantic_init(x, act, k, min_fg, cells, n_bg):
  """The documented rule of `semantic_init`, in NumPy."""
  n_act = int(act.sum())
  k_fg = min(max(-(-n_act // cells), min_fg), k - n_bg, n_act)
  pool_bg = ~act if (~act).any() else np.ones_like(act)
  k_bg = min(n_bg, int(pool_bg.sum()))
  if k_fg + k_bg == 0:
    k_bg = 1

  def spread(pool, count):
    cells_ = np.nonzero(pool)[0]
    if count == 0:
      return []
    if count == 1:
      return [cells_[0]]
    ranks = [int(np.round(np.float32(j) * np.float32(len(cells_) - 1) / np.float32(count - 1)))
             for j in range(count)]
    return [cells_[r] for r in ranks]

  idx = spread(act, k_fg) + spread(pool_bg, k_bg)
  return x[idx], len(idx)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.0), st.integers(1, 4), st.integers(5, 60),
       st.integers(0, 5))
def test_semantic_init_follows_documented_rule(seed, density, min_fg, cells, n_bg):
  rng = np.random.default_rng(seed)
  n, k = 240, 12
  x = rng.normal(size=(n, 4)).astype(np.float32)
  act = rng.random(n) < density
  init, valid = km.semantic_init(jnp.asarray(x), jnp.asarray(act), k, min_foreground_clusters=min_fg,
                                 cells_per_cluster=cells, background_clusters=n_bg)
  expect, k_eff = np_semantic_init(x, act, k, min_fg, cells, n_bg)
  valid = np.asarray(valid)
  np.testing.assert_array_equal(valid, np.arange(k) < k_eff)
  np.testing.assert_array_equal(np.asarray(init)[:k_eff], expect)


def test_semantic_init_rejects_bad_config():
  x = jnp.zeros((10, 2))
  with pytest.raises(InputError):
    km.semantic_init(x, jnp.ones(10, bool), 4, min_foreground_clusters=1, cells_per_cluster=4,
                     background_clusters=4)


def test_centering_survives_a_large_common_component():
  """Raw CNN features share a big common component; |x|^2 - 2x.c + |c|^2 in float32 then cancels away the
  small distances that separate clusters. With `center=True` the assignment equals a float64 Lloyd loop."""
  rng = np.random.default_rng(3)
  k, c = 6, 64
  centres = rng.standard_normal((k, c)).astype(np.float32) * 0.05
  member = rng.integers(0, k, 600)
  x = (1000.0 + centres[member] + 0.004 * rng.standard_normal((600, c))).astype(np.float32)  # [N, C]
  init_idx = np.array([int(np.flatnonzero(member == j)[0]) for j in range(k)])
  want, _ = ref.kmeans_numpy(x, init_idx, k, max_iters=50)
  labels, _, _ = km.kmeans(jnp.asarray(x), jnp.asarray(x[init_idx]), max_iters=50, center=True)
  np.testing.assert_array_equal(np.asarray(labels), want)
  assert len(np.unique(want)) == k
  assert all(len(np.unique(member[want == j])) == 1 for j in range(k))  # it recovers the planted clusters
  plain, _, _ = km.kmeans(jnp.asarray(x), jnp.asarray(x[init_idx]), max_iters=50, center=False)
  assert np.mean(np.asarray(plain) != want) > 0.05  # the uncentred float32 expansion does lose it here
