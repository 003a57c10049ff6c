"""Connected components, stats and relabelling vs scipy.ndimage / skimage."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage
from skimage import measure

from zipjax.errors import InputError
from zipjax.ops import components

# a few fixed shapes keep jit recompilation bounded
SHAPES = [(1, 1), (1, 9), (7, 1), (5, 6), (16, 16), (13, 29)]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
  """True when label maps a and b induce the same partition (0 = background in both)."""
  if not np.array_equal(a == 0, b == 0):
    return False
  fa, fb = a[a != 0], b[b != 0]
  pairs = np.unique(np.stack([fa, fb]), axis=1)
  return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@st.composite
def masks(draw):
  shape = draw(st.sampled_from(SHAPES))
  density = draw(st.floats(0.0, 1.0))
  seed = draw(st.integers(0, 2**31 - 1))
  return np.random.default_rng(seed).random(shape) < density


@settings(max_examples=60, deadline=None)
@given(masks(), st.sampled_from([4, 8]))
def test_label_matches_skimage_and_scipy(mask, connectivity):
  labels, n = components.label(jnp.asarray(mask), connectivity=connectivity)
  labels = np.asarray(labels)
  ref = measure.label(mask, connectivity=1 if connectivity == 4 else 2, background=0)
  # numbering is specified (raster order of the first cell), so skimage's labels match exactly
  np.testing.assert_array_equal(labels, ref)
  assert int(n) == ref.max()
  structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
  sp, ns = ndimage.label(mask, structure=structure)
  assert ns == int(n) and same_partition(labels, sp)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SHAPES), st.integers(1, 6), st.integers(0, 2**31 - 1), st.sampled_from([4, 8]))
def test_multivalued_roots_are_components_of_each_value(shape, n_values, seed, connectivity):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, n_values + 1, shape)
  roots = np.asarray(components.component_roots(jnp.asarray(ids), connectivity=connectivity))
  ref = np.zeros(shape, np.int64)
  offset = 0
  for v in range(1, n_values + 1):
    lab = measure.label(ids == v, connectivity=1 if connectivity == 4 else 2, background=0)
    ref[lab > 0] = lab[lab > 0] + offset
    offset += lab.max()
  assert same_partition(roots + 1, ref)
  # the root is the first (smallest flat index) cell of its component
  flat = np.arange(ids.size).reshape(shape)
  for r in np.unique(roots):
    assert flat[roots == r].min() == r


@settings(max_examples=40, deadline=None)
@given(masks(), st.integers(0, 2**31 - 1))
def test_regionprops_and_root_stats_match_skimage(mask, seed):
  weight = np.random.default_rng(seed).random(mask.shape) < 0.5
  labels, n = components.label(jnp.asarray(mask))
  ref = measure.label(mask, connectivity=1, background=0)
  props = measure.regionprops(ref)
  m = 8
  out = {k: np.asarray(v) for k, v in components.regionprops(labels, m).items()}
  for i in range(m):
    if i < len(props):
      assert out["valid"][i] and out["area"][i] == props[i].area
      assert tuple(out["bbox"][i]) == tuple(props[i].bbox)
    else:
      assert not out["valid"][i] and out["area"][i] == 0 and not out["bbox"][i].any()
  roots = components.component_roots(jnp.asarray(mask), jnp.asarray(mask))
  rs = {k: np.asarray(v) for k, v in components.root_stats(roots, jnp.asarray(weight)).items()}
  flat = np.arange(mask.size)
  for p in props:
    root = flat[(ref == p.label).reshape(-1)].min()
    assert rs["area"][root] == p.area and tuple(rs["bbox"][root]) == tuple(p.bbox)
    assert rs["weight_sum"][root] == weight[ref == p.label].sum()
  nonroot = np.ones(mask.size + 1, bool)
  nonroot[[flat[(ref == p.label).reshape(-1)].min() for p in props]] = False
  nonroot[-1] = False  # the background bucket
  assert not rs["area"][nonroot].any()
  assert rs["area"][-1] == (~mask).sum()


def test_long_snake_converges_exactly():
  # a serpentine path: one component whose geodesic diameter is ~ h*w/2
  h, w = 31, 40
  mask = np.zeros((h, w), bool)
  mask[::2] = True
  for r in range(1, h, 2):
    mask[r, w - 1 if (r // 2) % 2 == 0 else 0] = True
  labels, n = components.label(jnp.asarray(mask))
  assert int(n) == 1
  np.testing.assert_array_equal(np.asarray(labels), measure.label(mask, connectivity=1))


@settings(max_examples=20, deadline=None)
@given(masks(), st.integers(0, 2**31 - 1))
def test_relabel_keeps_raster_order_of_kept_components(mask, seed):
  roots = components.component_roots(jnp.asarray(mask), jnp.asarray(mask))
  n_cells = mask.size
  keep = np.random.default_rng(seed).random(n_cells + 1) < 0.5
  labels, n = components.relabel(roots, jnp.asarray(keep))
  ref = measure.label(mask, connectivity=1)
  flat = np.arange(n_cells)
  expect = np.zeros_like(ref)
  k = 0
  for lab in range(1, ref.max() + 1):
    if keep[flat[(ref == lab).reshape(-1)].min()]:
      k += 1
      expect[ref == lab] = k
  np.testing.assert_array_equal(np.asarray(labels), expect)
  assert int(n) == k


def test_bad_connectivity():
  with pytest.raises(InputError):
    components.label(jnp.ones((3, 3), bool), connectivity=6)
