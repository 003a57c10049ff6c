"""The JAX Hungarian matcher against scipy.optimize.linear_sum_assignment: identical optimal total cost on
random cost matrices (square, rectangular, padded targets, ties, large values, integer costs, adversarial
structure), under jit and vmap, and the exactness of the candidate reduction."""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import jax
import jax.numpy as jnp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zipjax.train import matcher


def _scipy_cost(cost: np.ndarray, valid: np.ndarray) -> float:
  """Optimal total cost over the valid targets (columns) of cost [N, T]."""
  sub = cost[:, valid]
  if sub.shape[1] == 0:
    return 0.0
  r, c = linear_sum_assignment(sub.astype(np.float64))
  return float(sub.astype(np.float64)[r, c].sum())


def _check(cost: np.ndarray, valid: np.ndarray, index: np.ndarray, rtol: float = 0.0, atol: float = 0.0):
  """index [T] is a valid assignment of the valid targets whose cost equals scipy's optimum."""
  n, t = cost.shape
  assert index.shape == (t,)
  assert np.all(index[~valid] == -1), "padded targets must stay unassigned"
  chosen = index[valid]
  assert np.all((chosen >= 0) & (chosen < n))
  assert len(set(chosen.tolist())) == len(chosen), "a prediction is matched twice"
  ours = float(cost[chosen, np.nonzero(valid)[0]].astype(np.float64).sum())
  ref = _scipy_cost(cost, valid)
  assert ours == pytest.approx(ref, rel=rtol, abs=atol), (ours, ref)


def _batch(cost, valid, **kw):
  return np.asarray(matcher.match(jnp.asarray(cost), jnp.asarray(valid), **kw))


# Few distinct shapes (each compiles once): batches of 16, square 8 x 8 and rectangular 30 x 12 (N x T).
B, N, T = 16, 30, 12


@pytest.mark.parametrize("n,t", [(8, 8), (N, T)])
def test_random_float_costs_match_scipy(n, t):
  rng = np.random.default_rng(n * 100 + t)
  cost = rng.standard_normal((B, n, t)).astype(np.float32)
  valid = np.ones((B, t), bool)
  index = _batch(cost, valid)
  for b in range(B):
    _check(cost[b], valid[b], index[b], rtol=1e-5, atol=1e-5)


def test_integer_costs_and_ties_are_exact():
  """Integer costs (many ties: values 0..3) are handled exactly: float32 sums of small integers are exact."""
  rng = np.random.default_rng(1)
  cost = rng.integers(0, 4, (B, N, T)).astype(np.float32)
  cost[0] = 1.0  # all equal
  cost[1, :, :] = np.arange(N, dtype=np.float32)[:, None]  # identical columns
  valid = np.ones((B, T), bool)
  index = _batch(cost, valid)
  for b in range(B):
    _check(cost[b], valid[b], index[b])


def test_padded_targets_are_unassigned():
  rng = np.random.default_rng(2)
  cost = rng.random((B, N, T)).astype(np.float32)
  valid = rng.random((B, T)) < 0.6
  valid[0] = False  # no target at all
  valid[1] = True
  cost[2, :, ~valid[2]] = -100.0  # padded targets that would be attractive must still be ignored
  index = _batch(cost, valid)
  for b in range(B):
    _check(cost[b], valid[b], index[b], rtol=1e-5, atol=1e-5)


def test_large_values_and_non_finite():
  rng = np.random.default_rng(3)
  cost = (rng.random((B, N, T)) * 1e6).astype(np.float32).round()  # integers up to 1e6: exact in float32
  valid = np.ones((B, T), bool)
  index = _batch(cost, valid)
  for b in range(B):
    _check(cost[b], valid[b], index[b], rtol=1e-7)
  # NaN / Inf entries are priced above every finite one: an optimum that avoids them is found.
  bad = rng.random((B, N, T)).astype(np.float32)
  bad[:, 0, :] = np.nan
  bad[:, 1, :] = np.inf
  index = _batch(bad, valid)
  assert not np.any(np.isin(index, [0, 1]))
  for b in range(B):
    _check(bad[b, 2:], valid[b], index[b] - 2, rtol=1e-5, atol=1e-6)


def test_adversarial_structure_long_augmenting_paths():
  """Rank-one costs c_ij = x_i y_j (sorted) force long augmenting paths; plus costs with a huge dynamic range."""
  rng = np.random.default_rng(4)
  x = np.sort(rng.random((B, N)), axis=1)
  y = np.sort(rng.random((B, T)), axis=1)
  cost = (x[:, :, None] * y[:, None, :]).astype(np.float32)  # [B, N, T]
  valid = np.ones((B, T), bool)
  index = _batch(cost, valid)
  for b in range(B):
    _check(cost[b], valid[b], index[b], rtol=1e-5, atol=1e-6)
  wide = (rng.standard_normal((B, N, T)) * 10.0 ** rng.integers(-3, 4, (B, N, T))).astype(np.float32)
  index = _batch(wide, valid)
  for b in range(B):
    _check(wide[b], valid[b], index[b], rtol=1e-5, atol=1e-3)


def test_candidate_reduction_is_exact():
  """With N > T^2 the search runs on the union of each target's T cheapest predictions; forcing it on or off
  gives scipy's optimum either way, including when all targets prefer the same few predictions."""
  rng = np.random.default_rng(5)
  cost = rng.random((B, 60, 5)).astype(np.float32)
  cost[:8, :8, :] -= 2.0  # every target's cheapest predictions are the same 8
  cost[8:] = rng.integers(0, 3, (8, 60, 5)).astype(np.float32)  # ties
  valid = rng.random((B, 5)) < 0.8
  for cand in (True, False):
    index = _batch(cost, valid, candidates=cand)
    for b in range(B):
      _check(cost[b], valid[b], index[b], rtol=1e-6, atol=1e-6)


def test_unbatched_assign_under_jit_and_errors():
  rng = np.random.default_rng(6)
  cost = rng.random((N, T)).astype(np.float32)
  index = np.asarray(jax.jit(matcher.assign)(jnp.asarray(cost)))
  _check(cost, np.ones(T, bool), index, rtol=1e-6)
  assert matcher.assign(jnp.zeros((3, 0))).shape == (0,)
  with pytest.raises(ValueError, match="at least as many predictions"):
    matcher.assign(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"\[B, N, T\]"):
    matcher.match(jnp.zeros((2, 3)))


def test_matched_predictions():
  index = jnp.array([[2, -1, 0], [1, 3, -1]], jnp.int32)
  got = np.asarray(matcher.matched_predictions(index, 4))
  np.testing.assert_array_equal(got, [[1, 0, 1, 0], [0, 1, 0, 1]])


@settings(max_examples=40, deadline=None)
@given(cost=hnp.arrays(np.int8, (N, T), elements=st.integers(-3, 3)),
       valid=hnp.arrays(np.bool_, (T,)), scale=st.sampled_from([1.0, 0.5, 1e3]))
def test_hypothesis_small_integer_costs(cost, valid, scale):
  """Property test: for any small-integer cost (dense ties) and padding mask, scipy's optimum (compiled once:
  the example is the first of a batch of the test shape)."""
  c = cost.astype(np.float32) * np.float32(scale)
  batch = np.broadcast_to(c, (B, N, T)).copy()
  index = _batch(batch, np.broadcast_to(valid, (B, T)).copy())
  _check(c, valid, index[0])
