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


# Candidate mode for real: T >= 2 targets and N > T^2 predictions, so `assign` (candidates=None) reduces the search
# to the union of each target's T cheapest predictions. The lemma needs all T of them (module docstring of
# zipjax.train.matcher): the cases below are built so that keeping T - 1 per target loses the optimum.
CB, CN, CT = 8, 40, 6  # 6 * 6 < 40


def _shared_cheapest(rng):
  """Every target ranks the SAME T predictions cheapest, and the same one of them last (the others in random
  order; the rest cost 10 + noise): the union of the T cheapest is exactly those T, all of them needed, while
  with T - 1 per target the union would hold T - 1 predictions for T targets."""
  cost = 10.0 + rng.random((CB, CN, CT))
  for b in range(CB):
    shared = rng.choice(CN, CT, replace=False)
    cost[b, shared[:-1], :] = rng.random((CT - 1, CT))
    cost[b, shared[-1], :] = 1.0 + rng.random(CT)
  return cost.astype(np.float32)


def _needs_the_t_th_cheapest(rng):
  """The optimum matches some target to its T-th cheapest prediction while the union of every target's T - 1
  cheapest still has >= T predictions (so a one-short reduction gives a feasible but worse matching).

  Targets 0..T-2 share the T - 1 cheapest predictions S (cost ~0); their T-th cheapest is a private prediction
  B_t (cost ~1). The last target ("the intruder") has S minus one element, plus its own C (cost ~5), as its
  T - 1 cheapest, the last element of S at ~6. Inside the one-short union S + {C}: intruder -> C, others -> S,
  about 5. The optimum: intruder -> S, one other target -> its B_t, about 1. Predictions and targets are
  shuffled per problem; small noise breaks ties."""
  cost = np.full((CB, CN, CT), 100.0) + rng.random((CB, CN, CT))
  for b in range(CB):
    pred = rng.permutation(CN)
    tgt = rng.permutation(CT)
    s, c, own = pred[:CT - 1], pred[CT - 1], pred[CT:2 * CT - 1]
    others, intruder = tgt[:CT - 1], tgt[CT - 1]
    for k, t in enumerate(others):
      cost[b, s, t] = 0.01 * rng.random(CT - 1)
      cost[b, own[k], t] = 1.0 + 0.01 * rng.random()
    cost[b, s[:-1], intruder] = 0.01 * rng.random(CT - 2)
    cost[b, c, intruder] = 5.0 + 0.01 * rng.random()
    cost[b, s[-1], intruder] = 6.0 + 0.01 * rng.random()
  return cost.astype(np.float32)


def _check_against_one_short(cost, valid):
  """The case is a real test of the reduction: the optimum restricted to each valid target's T - 1 cheapest
  predictions (union) is infeasible or strictly worse than scipy's unrestricted optimum."""
  n, t = cost.shape
  a = cost[:, valid].astype(np.float64)
  k = max(1, t - 1)
  union = np.unique(np.argsort(a, axis=0, kind="stable")[:k].ravel())
  full = _scipy_cost(cost, valid)
  if len(union) < a.shape[1]:
    return True
  r, c = linear_sum_assignment(a[union])
  return a[union][r, c].sum() > full + 1e-3


@pytest.mark.parametrize("make", [_shared_cheapest, _needs_the_t_th_cheapest])
def test_candidate_mode_needs_every_targets_t_cheapest(make):
  rng = np.random.default_rng(11)
  cost = make(rng)
  valid = np.ones((CB, CT), bool)
  assert all(_check_against_one_short(cost[b], valid[b]) for b in range(CB))  # the cases bite
  for cand in (None, True):  # None: T * T < N, the reduction is on by default
    index = _batch(cost, valid, candidates=cand)
    for b in range(CB):
      _check(cost[b], valid[b], index[b], rtol=1e-6, atol=1e-5)


def test_candidate_mode_adversarial_with_padded_targets():
  """Padded targets (valid=False) take no candidate slots: the valid targets still get their T cheapest each
  (T counts the padded targets too, so the reduction keeps more than needed, never fewer)."""
  rng = np.random.default_rng(12)
  cost = _needs_the_t_th_cheapest(rng)
  valid = np.ones((CB, CT), bool)
  valid[::2, 0] = False
  index = _batch(cost, valid)
  for b in range(CB):
    _check(cost[b], valid[b], index[b], rtol=1e-6, atol=1e-5)


def test_candidate_mode_union_of_t_squared_predictions():
  """Every target has its own T cheapest predictions (disjoint, shuffled): the union holds T^2 predictions, the
  most the reduced search keeps; none may be cut."""
  rng = np.random.default_rng(13)
  cost = (10.0 + rng.random((CB, CN, CT))).astype(np.float32)
  for b in range(CB):
    own = rng.permutation(CN)[:CT * CT].reshape(CT, CT)
    for t in range(CT):
      cost[b, own[t], t] = rng.random(CT)
  valid = np.ones((CB, CT), bool)
  index = _batch(cost, valid)
  for b in range(CB):
    _check(cost[b], valid[b], index[b], rtol=1e-6, atol=1e-5)
