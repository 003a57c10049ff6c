"""The set loss against NumPy: hand-checked focal / dice / BCE values, a float64 NumPy + scipy reference of the
whole loss (matching included) on random outputs, DropLoss masking, and gradients against finite differences."""
import functools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import expit

import jax
import jax.numpy as jnp

from zipjax.errors import InputError
from zipjax.train import losses
from zipjax.train.losses import LossConfig, set_loss

B, N, Q, T, E, HM = 3, 16, 3, 4, 8, 8


# ------------------------------------------------------------------------------------------------ NumPy reference
def _sig(x):
  return expit(x)


def _softplus(x):
  return np.logaddexp(0.0, x)


def _np_focal(x, t, alpha, gamma):
  p = _sig(x)
  ce = _softplus(-x) * t + _softplus(x) * (1 - t)
  p_t = p * t + (1 - p) * (1 - t)
  out = ce * (1 - p_t) ** gamma
  return out * (alpha * t + (1 - alpha) * (1 - t)) if alpha >= 0 else out


def _xyxy(b):
  return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _np_iou_giou(a, b):
  """xyxy [n, 4], [m, 4] -> iou, giou [n, m] (float64)."""
  a, b = a[:, None], b[None]
  wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
  inter = wh[..., 0] * wh[..., 1]
  area = lambda r: np.clip(r[..., 2] - r[..., 0], 0, None) * np.clip(r[..., 3] - r[..., 1], 0, None)  # noqa: E731
  union = area(a) + area(b) - inter
  ewh = np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2])
  enc = ewh[..., 0] * ewh[..., 1]
  iou = inter / union
  return iou, iou - (enc - union) / enc


def np_set_loss(out, batch, cfg: LossConfig):
  """Per-image float64 reference of set_loss (full-resolution masks, no mask cost)."""
  o = {k: np.asarray(v, np.float64) for k, v in out.items()}
  res = {k: [] for k in ("class", "box_l1", "giou", "dice", "mask_bce", "objectness")}
  for b in range(o["pred_logits"].shape[0]):
    valid = np.asarray(batch["valid"][b], bool)
    qv = np.asarray(batch["query_valid"][b], bool)
    tb = np.asarray(batch["boxes"][b], np.float64)[valid]
    lab = np.asarray(batch["labels"][b])[valid]
    tm = np.asarray(batch["masks"][b], np.float64)[valid].reshape(valid.sum(), HM * HM)
    logits, boxes = o["pred_logits"][b], o["pred_boxes"][b]
    n = logits.shape[0]
    num = max(1, valid.sum())
    x = logits[:, lab]  # [N, t]
    p = _sig(x)
    cost = cfg.cost_class * (cfg.focal_alpha * (1 - p) ** cfg.focal_gamma * _softplus(-x)
                             - (1 - cfg.focal_alpha) * p ** cfg.focal_gamma * _softplus(x))
    cost += cfg.cost_l1 * np.abs(boxes[:, None] - tb[None]).sum(-1)
    iou, giou = _np_iou_giou(_xyxy(boxes), _xyxy(tb))
    cost -= cfg.cost_giou * giou
    g = int(np.sqrt(n))
    c = (np.arange(g) + 0.5) / g
    cx, cy = np.meshgrid(c, c)  # token k = row k // g, column k % g
    t = _xyxy(tb)
    inside = ((cx.reshape(-1, 1) >= t[:, 0]) & (cx.reshape(-1, 1) <= t[:, 2]) & (cy.reshape(-1, 1) >= t[:, 1])
              & (cy.reshape(-1, 1) <= t[:, 3]))  # [N, t]
    cost += cfg.cost_center * (1 - inside)
    rows, cols = linear_sum_assignment(cost)
    pred = np.zeros(len(tb), int)
    pred[cols] = rows
    matched = np.zeros(n, bool)
    matched[pred] = True
    keep = np.ones(n, bool)
    if cfg.drop_loss:
      max_iou = iou.max(1) if len(tb) else np.zeros(n)
      keep = matched | (max_iou >= cfg.drop_loss_iou)
    target = np.zeros_like(logits)
    target[pred, lab] = 1.0
    focal = _np_focal(logits, target, cfg.focal_alpha, cfg.focal_gamma) * keep[:, None] * qv[None]
    res["class"].append(focal.sum() / num)
    pb = boxes[pred]
    res["box_l1"].append(np.abs(pb - tb).sum() / num)
    res["giou"].append((1 - np.diag(_np_iou_giou(_xyxy(pb), _xyxy(tb))[1])).sum() / num if len(tb) else 0.0)
    ml = o["mask_embed"][b][pred] @ o["pixel_embed"][b].reshape(-1, o["pixel_embed"].shape[-1]).T  # [t, HW]
    pm = _sig(ml)
    dice = 1 - (2 * (pm * tm).sum(1) + 1) / (pm.sum(1) + tm.sum(1) + 1)
    bce = (_softplus(-ml) * tm + _softplus(ml) * (1 - tm)).mean(1)
    res["dice"].append(dice.sum() / num)
    res["mask_bce"].append(bce.sum() / num)
    alpha, gamma = (cfg.focal_alpha, cfg.focal_gamma) if cfg.objectness_loss == "focal" else (-1.0, 0.0)
    res["objectness"].append((_np_focal(o["objectness"][b], matched.astype(float), alpha, gamma) * keep).sum() / num)
  metrics = {k: float(np.mean(v)) for k, v in res.items()}
  w = {"class": cfg.class_weight, "box_l1": cfg.l1_weight, "giou": cfg.giou_weight, "dice": cfg.dice_weight,
       "mask_bce": cfg.mask_bce_weight, "objectness": cfg.objectness_weight}
  metrics["loss"] = sum(w[k] * metrics[k] for k in w)
  return metrics


# ------------------------------------------------------------------------------------------------ data
def _random_case(seed):
  rng = np.random.default_rng(seed)
  cxcy = rng.uniform(0.2, 0.8, (B, N, 2))
  out = {"pred_logits": rng.normal(-1.0, 2.0, (B, N, Q)), "pred_boxes": np.concatenate(
             [cxcy, rng.uniform(0.05, 0.4, (B, N, 2))], -1),
         "objectness": rng.normal(-1.0, 2.0, (B, N)), "mask_embed": rng.normal(0, 1, (B, N, E)),
         "pixel_embed": rng.normal(0, 0.5, (B, HM, HM, E))}
  out = {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}
  valid = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)  # padded targets, one empty image
  batch = {"boxes": np.concatenate([rng.uniform(0.2, 0.8, (B, T, 2)), rng.uniform(0.05, 0.4, (B, T, 2))],
                                   -1).astype(np.float32),
           "labels": rng.integers(0, 2, (B, T)).astype(np.int32), "masks": rng.random((B, T, HM, HM)) < 0.3,
           "valid": valid, "query_valid": np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)}
  out["pred_logits"] = jnp.where(jnp.asarray(batch["query_valid"])[:, None, :], out["pred_logits"], -1e6)
  return out, batch


@functools.lru_cache(maxsize=None)
def _jit_loss(cfg: LossConfig):
  """One compiled set_loss per config (shapes repeat across tests)."""
  return jax.jit(lambda o, b, r: set_loss(o, b, cfg, r))


def _loss(out, batch, cfg, rng=None):
  return _jit_loss(cfg)(out, batch, jax.random.key(0) if rng is None else rng)


# ------------------------------------------------------------------------------------------------ tests
def test_focal_dice_bce_hand_checked():
  x = jnp.array([0.0, 0.0, 2.0], jnp.float32)
  t = jnp.array([1.0, 0.0, 1.0], jnp.float32)
  got = np.asarray(losses.sigmoid_focal_loss(x, t, 0.25, 2.0))
  p2 = 1 / (1 + np.exp(-2.0))
  want = [0.25 * 0.25 * np.log(2), 0.75 * 0.25 * np.log(2), 0.25 * (1 - p2) ** 2 * np.log1p(np.exp(-2.0))]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # gamma 0, no alpha: plain BCE
  np.testing.assert_allclose(np.asarray(losses.sigmoid_focal_loss(x, t, -1.0, 0.0)),
                             [np.log(2), np.log(2), np.log1p(np.exp(-2.0))], rtol=1e-6)
  # dice of p = 0.5 everywhere on targets [1, 1, 0, 0]: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
  z = jnp.zeros((4,), jnp.float32)
  m = jnp.array([1.0, 1.0, 0.0, 0.0], jnp.float32)
  assert float(losses.dice_loss(z, m)) == pytest.approx(0.4, abs=1e-7)
  assert float(losses.sigmoid_bce(z, m)) == pytest.approx(np.log(2), abs=1e-7)
  big = jnp.array([30.0, 30.0, -30.0, -30.0], jnp.float32)
  assert float(losses.dice_loss(big, m)) == pytest.approx(0.0, abs=1e-6)
  # focal cost: positive term minus negative term at p = 0.5
  assert float(losses.focal_cost(jnp.float32(0.0), 0.25, 2.0)) == pytest.approx((0.25 - 0.75) * 0.25 * np.log(2))


@pytest.mark.parametrize("overrides", [{}, {"drop_loss": True, "drop_loss_iou": 0.05, "objectness_loss": "bce",
                                            "focal_alpha": 0.3, "cost_class": 1.0, "cost_l1": 1.0, "cost_giou": 1.0},
                                       {"cost_center": 4.0}])
def test_set_loss_matches_numpy_reference(overrides):
  cfg = LossConfig(**overrides)
  for seed in range(3):
    out, batch = _random_case(seed)
    loss, metrics = _loss(out, batch, cfg)
    ref = np_set_loss(out, batch, cfg)
    for k, v in ref.items():
      assert float(metrics[k]) == pytest.approx(v, rel=1e-4, abs=1e-5), (seed, k, float(metrics[k]), v)
    assert float(loss) == pytest.approx(ref["loss"], rel=1e-4)
    assert float(metrics["num_matched"]) == pytest.approx(np.mean(batch["valid"].sum(1)))


def test_drop_loss_masks_only_unmatched_tokens_away_from_targets():
  """One target; token 0 sits on it, token 1 overlaps it, token 2 is far away. With DropLoss the class and
  objectness losses lose token 2's terms only: the difference equals token 2's focal terms."""
  boxes = np.array([[[0.3, 0.3, 0.2, 0.2], [0.35, 0.35, 0.2, 0.2], [0.85, 0.85, 0.1, 0.1]]], np.float32)
  logits = np.array([[[0.5], [-1.0], [1.5]]], np.float32)
  obj = np.array([[0.2, -0.5, 1.0]], np.float32)
  out = {"pred_boxes": jnp.asarray(boxes), "pred_logits": jnp.asarray(logits), "objectness": jnp.asarray(obj),
         "mask_embed": jnp.zeros((1, 3, 2)), "pixel_embed": jnp.zeros((1, 4, 4, 2))}
  batch = {"boxes": boxes[:, :1], "labels": np.zeros((1, 1), np.int32), "masks": np.zeros((1, 1, 4, 4), bool),
           "valid": np.ones((1, 1), bool), "query_valid": np.ones((1, 1), bool)}
  _, plain = _loss(out, batch, LossConfig())
  _, dropped = _loss(out, batch, LossConfig(drop_loss=True))
  token2_class = _np_focal(1.5, 0.0, 0.25, 2.0)
  token2_obj = _np_focal(1.0, 0.0, 0.25, 2.0)
  assert float(plain["class"]) - float(dropped["class"]) == pytest.approx(token2_class, rel=1e-5)
  assert float(plain["objectness"]) - float(dropped["objectness"]) == pytest.approx(token2_obj, rel=1e-5)
  assert float(dropped["dropped"]) == pytest.approx(1 / 3)
  assert float(plain["dropped"]) == 0.0
  # what DropLoss keeps: the matched token's positive term and token 1's negative terms
  want = _np_focal(0.5, 1.0, 0.25, 2.0) + _np_focal(-1.0, 0.0, 0.25, 2.0)
  assert float(dropped["class"]) == pytest.approx(want, rel=1e-5)


def test_center_prior_gives_the_target_to_a_token_inside_it():
  """Token 0's box fits the target better, but its cell (top-left of a 2 x 2 grid) is outside the target; token 3's
  cell centre is inside. Without the prior token 0 is matched, with cost_center token 3; a target that contains no
  cell centre is matched as without the prior."""
  boxes = np.array([[[0.66, 0.66, 0.22, 0.22], [0.1, 0.9, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1],
                     [0.7, 0.7, 0.2, 0.2]]], np.float32)
  out = {"pred_boxes": jnp.asarray(boxes), "pred_logits": jnp.zeros((1, 4, 1)), "objectness": jnp.zeros((1, 4)),
         "mask_embed": jnp.zeros((1, 4, 2)), "pixel_embed": jnp.zeros((1, 4, 4, 2))}
  tgt = np.array([[[0.66, 0.66, 0.22, 0.22], [0.5, 0.05, 0.04, 0.04]]], np.float32)  # 2nd: no cell centre inside
  batch = {"boxes": tgt, "labels": np.zeros((1, 2), np.int32), "masks": np.zeros((1, 2, 4, 4), bool),
           "valid": np.ones((1, 2), bool), "query_valid": np.ones((1, 1), bool)}
  cost = jax.jit(losses.matching_cost, static_argnums=2)
  from zipjax.train import matcher  # pylint: disable=import-outside-toplevel
  plain = np.asarray(matcher.match(cost(out, batch, LossConfig()), batch["valid"]))[0]
  prior = np.asarray(matcher.match(cost(out, batch, LossConfig(cost_center=4.0)), batch["valid"]))[0]
  assert plain[0] == 0 and prior[0] == 3
  assert prior[1] == plain[1] == 2  # the nearest box, as without the prior
  c0, c1 = np.asarray(cost(out, batch, LossConfig())), np.asarray(cost(out, batch, LossConfig(cost_center=4.0)))
  np.testing.assert_allclose(c1[0, :, 0] - c0[0, :, 0], [4.0, 4.0, 4.0, 0.0], atol=1e-5)
  np.testing.assert_allclose(c1[0, :, 1] - c0[0, :, 1], [4.0] * 4, atol=1e-5)


def test_mask_cost_and_point_sampling_run_and_are_reproducible():
  """The point-sampled mask cost changes matching costs only through the mask term; point-sampled mask losses
  are reproducible for a key and close to the full-resolution ones with many points."""
  out, batch = _random_case(0)
  cfg = LossConfig(cost_mask=1.0, cost_mask_points=4096)
  cost = jax.jit(losses.matching_cost, static_argnums=2)
  c0 = np.asarray(cost(out, batch, LossConfig(), jax.random.key(1)))
  c1 = np.asarray(cost(out, batch, cfg, jax.random.key(1)))
  assert np.all(np.isfinite(c1)) and not np.allclose(c0, c1)
  # dice + BCE costs are each in [0, inf); the difference on valid targets is positive
  assert np.all((c1 - c0)[0][:, :3] > 0)
  full = _loss(out, batch, LossConfig())[1]
  pts = LossConfig(mask_points=4096)
  a = _loss(out, batch, pts, jax.random.key(3))[1]
  b = _loss(out, batch, pts, jax.random.key(3))[1]
  assert float(a["dice"]) == float(b["dice"])
  assert float(a["mask_bce"]) == pytest.approx(float(full["mask_bce"]), rel=0.05)
  assert float(a["dice"]) == pytest.approx(float(full["dice"]), rel=0.05)


def test_gradients_match_finite_differences():
  """Directional derivative of the loss w.r.t. every output against a central finite difference in float32
  (the match and the DropLoss mask are piecewise constant: the step is small enough not to change them)."""
  out, batch = _random_case(1)
  cfg = LossConfig()
  f = lambda o: _loss(o, batch, cfg)[0]  # noqa: E731
  grads = jax.jit(jax.grad(lambda o: set_loss(o, batch, cfg)[0]))(out)
  rng = np.random.default_rng(0)
  for key in out:
    d = rng.standard_normal(out[key].shape).astype(np.float32)
    if key == "pred_logits":
      d = d * batch["query_valid"][:, None, :]
    eps = 1e-3
    fd = (float(f({**out, key: out[key] + eps * d})) - float(f({**out, key: out[key] - eps * d}))) / (2 * eps)
    an = float(jnp.sum(grads[key] * d))
    assert an == pytest.approx(fd, rel=2e-2, abs=2e-3), (key, an, fd)


def test_config_and_input_errors():
  with pytest.raises(InputError, match="unknown loss config keys"):
    LossConfig.from_config({"class_weigth": 1.0})
  with pytest.raises(InputError, match="objectness_loss"):
    LossConfig(objectness_loss="l2")
  out, batch = _random_case(0)
  with pytest.raises(InputError, match="mask resolution"):
    set_loss(out, {**batch, "masks": np.zeros((B, T, 4, 4), bool)}, LossConfig())
