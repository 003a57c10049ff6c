"""DETR-style set loss of the detector: Hungarian matching, sigmoid focal class loss, L1 + GIoU box loss,
dice + sigmoid BCE mask loss, objectness loss, optional CutLER DropLoss.

    loss, metrics = set_loss(out, batch, cfg, rng=None)

- `out`: the detector's output dict (zipjax.models.detector: pred_boxes [B, N, 4] cxcywh in [0, 1],
  pred_logits [B, N, Q], objectness [B, N], mask_embed [B, N, E], pixel_embed [B, Hm, Hm, E]). Mask logits
  are gathered for the matched tokens only (`detector.mask_logits`), so no model call is needed here.
- `batch`: boxes float32 [B, T, 4] cxcywh normalised by S, labels int32 [B, T] (query index), masks bool
  [B, T, Hm, Hm], valid bool [B, T], query_valid bool [B, Q] (other keys are ignored).
- `cfg`: a `LossConfig`, or any mapping / ConfigDict with its fields (`config.loss`).
- `rng`: a key for the point sampling of the mask loss / mask cost (only used when `mask_points` or
  `cost_mask_points` > 0; default key 0).
Returns a float32 scalar and a dict of float32 scalar metrics: loss, class, box_l1, giou, dice, mask_bce,
objectness (unweighted, per image, averaged over the batch), num_matched (valid targets per image),
matched_iou (mean box IoU of matched pairs), dropped (fraction of tokens DropLoss removed).

Matching (no gradient): cost[b, n, t] = cost_class * focal(n, label_t) + cost_l1 * |box_n - box_t|_1 +
cost_giou * (-GIoU(box_n, box_t)) (+ cost_mask * (dice + BCE) on `cost_mask_points` sampled pixels, off by
default; + cost_center when the token's cell centre is outside the target's box, off by default), where focal
is the difference of the positive and negative sigmoid focal terms (Deformable DETR, OWL-ViT). Non-finite costs are sanitised and padded targets priced above the maximum; the exact matcher
(`zipjax.train.matcher`) also leaves padded targets unassigned.

Losses, each summed over its elements and divided per image by max(1, number of valid targets), then
averaged over the batch:
- class: sigmoid focal loss (alpha, gamma) over all tokens x valid queries; the target is 1 at (matched
  token, its target's label), 0 elsewhere.
- box: L1 of cxcywh and 1 - GIoU, over matched pairs.
- mask: dice (1 - (2 sum p t + 1) / (sum p + sum t + 1)) and mean sigmoid BCE per matched mask, on all Hm x Hm
  pixels or on `mask_points` uniformly sampled pixels per image.
- objectness: target 1 for matched tokens, 0 otherwise; focal or plain BCE (`objectness_loss`).
- DropLoss (`drop_loss`, CutLER): unmatched tokens whose predicted box has IoU < `drop_loss_iou` with every
  valid target get no class and no objectness loss (pseudo-labels miss objects; do not punish finding them).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from zipjax.errors import InputError
from zipjax.models.detector import cell_centres, mask_logits
from zipjax.ops import box_ops
from zipjax.schema import BOOL, PROBABILITY, Choice, Float, Int, check, from_mapping, setting
from zipjax.train import matcher

NON_NEGATIVE = Float(0.0)  # a cost or loss weight (< 0 would reward the error)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Weights and options of the set loss; each field's rule (type and range) is declared with it
  (`zipjax.schema.setting`), and the config check of `config.loss` uses the same rules.

  Attributes:
    focal_alpha: sigmoid focal alpha (class loss, class cost, focal objectness).
    focal_gamma: sigmoid focal gamma.
    cost_class: matching weight of the focal class cost.
    cost_l1: matching weight of the L1 box cost.
    cost_giou: matching weight of the -GIoU cost.
    cost_mask: matching weight of the point-sampled dice + BCE mask cost (0: off).
    cost_mask_points: sampled pixels for the mask cost.
    cost_center: matching cost added when the prediction's token cell centre lies outside the target's box (0:
      off). POTO's spatial prior for one-to-one matching of dense per-location predictions: a target is
      given to a token inside it whenever one is free, so the token that learns an object's box sees it.
    class_weight: weight of the focal class loss.
    l1_weight: weight of the L1 box loss.
    giou_weight: weight of the GIoU loss.
    dice_weight: weight of the dice loss.
    mask_bce_weight: weight of the mask BCE loss.
    objectness_weight: weight of the objectness loss.
    objectness_loss: 'focal' or 'bce'.
    mask_points: sampled pixels per image for the mask loss (0: every pixel of the Hm x Hm map).
    drop_loss: CutLER's DropLoss on the class and objectness losses.
    drop_loss_iou: IoU threshold of DropLoss.
  """
  focal_alpha: float = setting(0.25, PROBABILITY)
  focal_gamma: float = setting(2.0, NON_NEGATIVE)
  cost_class: float = setting(2.0, NON_NEGATIVE)
  cost_l1: float = setting(5.0, NON_NEGATIVE)
  cost_giou: float = setting(2.0, NON_NEGATIVE)
  cost_mask: float = setting(0.0, NON_NEGATIVE)
  cost_mask_points: int = setting(1024, Int(1))
  cost_center: float = setting(0.0, NON_NEGATIVE)
  class_weight: float = setting(2.0, NON_NEGATIVE)
  l1_weight: float = setting(5.0, NON_NEGATIVE)
  giou_weight: float = setting(2.0, NON_NEGATIVE)
  dice_weight: float = setting(2.0, NON_NEGATIVE)
  mask_bce_weight: float = setting(2.0, NON_NEGATIVE)
  objectness_weight: float = setting(1.0, NON_NEGATIVE)
  objectness_loss: str = setting("focal", Choice("focal", "bce"))
  mask_points: int = setting(0, Int(0))
  drop_loss: bool = setting(False, BOOL)
  drop_loss_iou: float = setting(0.01, PROBABILITY)

  def __post_init__(self):
    check(self, "loss config")

  @classmethod
  def from_config(cls, config: Mapping[str, Any] | Any) -> "LossConfig":
    """From a LossConfig, dict or ml_collections ConfigDict (`config.loss`); unknown keys are an error."""
    return config if isinstance(config, cls) else from_mapping(cls, config, "loss config")


# ------------------------------------------------------------------------------------------------ pieces
def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Elementwise sigmoid focal loss (Lin et al. 2017): alpha_t (1 - p_t)^gamma BCE(logits, targets).
  alpha < 0 disables the alpha weighting."""
  p = jax.nn.sigmoid(logits)
  ce = jax.nn.softplus(-logits) * targets + jax.nn.softplus(logits) * (1.0 - targets)
  p_t = p * targets + (1.0 - p) * (1.0 - targets)
  loss = ce * (1.0 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
  return loss


def focal_cost(logits: jax.Array, alpha: float, gamma: float) -> jax.Array:
  """Matching cost of calling each logit positive: positive focal term minus negative focal term."""
  p = jax.nn.sigmoid(logits)
  pos = alpha * (1.0 - p) ** gamma * jax.nn.softplus(-logits)
  neg = (1.0 - alpha) * p ** gamma * jax.nn.softplus(logits)
  return pos - neg


def dice_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[..., P] logits and {0, 1} targets -> [...] 1 - (2 sum p t + 1) / (sum p + sum t + 1)."""
  p = jax.nn.sigmoid(logits)
  num = 2.0 * jnp.sum(p * targets, axis=-1) + 1.0
  return 1.0 - num / (jnp.sum(p, axis=-1) + jnp.sum(targets, axis=-1) + 1.0)


def sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[..., P] -> [...] mean binary cross-entropy with logits."""
  return jnp.mean(jax.nn.softplus(-logits) * targets + jax.nn.softplus(logits) * (1.0 - targets), axis=-1)


def _sample_points(rng: jax.Array, b: int, hw: int, points: int) -> jax.Array:
  """int32 [B, P] uniformly drawn flat pixel indices (with replacement)."""
  return jax.random.randint(rng, (b, points), 0, hw, dtype=jnp.int32)


def _gather_points(maps: jax.Array, idx: jax.Array) -> jax.Array:
  """maps [B, K, H, W], idx [B, P] -> [B, K, P]."""
  b, k = maps.shape[:2]
  flat = maps.reshape(b, k, -1)  # [B, K, H*W]
  return jnp.take_along_axis(flat, idx[:, None, :], axis=2)  # [B, K, P]


# ------------------------------------------------------------------------------------------------ matching
def matching_cost(out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], cfg: LossConfig,
                  rng: jax.Array | None = None) -> jax.Array:
  """Sanitised cost [B, N, T] (no gradient); padded targets priced above every valid entry."""
  out = jax.lax.stop_gradient(dict(out))
  logits, boxes = out["pred_logits"], out["pred_boxes"]
  b, n, q = logits.shape
  t = batch["boxes"].shape[1]
  labels = jnp.clip(batch["labels"].astype(jnp.int32), 0, q - 1)
  valid = batch["valid"].astype(bool)
  tgt_logits = jnp.take_along_axis(logits, jnp.broadcast_to(labels[:, None, :], (b, n, t)), axis=2)  # [B,N,T]
  cost = cfg.cost_class * focal_cost(tgt_logits, cfg.focal_alpha, cfg.focal_gamma)
  tb = batch["boxes"].astype(jnp.float32)
  cost += cfg.cost_l1 * jnp.sum(jnp.abs(boxes[:, :, None, :] - tb[:, None, :, :]), axis=-1)  # [B, N, T]
  cost -= cfg.cost_giou * box_ops.pairwise_giou(box_ops.cxcywh_to_xyxy(boxes), box_ops.cxcywh_to_xyxy(tb))
  if cfg.cost_center > 0:
    g = int(round(n ** 0.5))
    if g * g != n:
      raise InputError(f"loss.cost_center needs a square token grid, got {n} predictions")
    cc = jnp.asarray(cell_centres(g))  # [N, 2]
    txy = box_ops.cxcywh_to_xyxy(tb)  # [B, T, 4]
    inside = ((cc[None, :, None, 0] >= txy[:, None, :, 0]) & (cc[None, :, None, 0] <= txy[:, None, :, 2])
              & (cc[None, :, None, 1] >= txy[:, None, :, 1]) & (cc[None, :, None, 1] <= txy[:, None, :, 3]))
    cost += cfg.cost_center * (1.0 - inside.astype(cost.dtype))
  if cfg.cost_mask > 0:
    rng = jax.random.key(0) if rng is None else rng
    pe = out["pixel_embed"]  # [B, Hm, Wm, E]
    idx = _sample_points(rng, b, pe.shape[1] * pe.shape[2], cfg.cost_mask_points)  # [B, P]
    pe_pts = jnp.take_along_axis(pe.reshape(b, -1, pe.shape[-1]), idx[..., None], axis=1)  # [B, P, E]
    x = jnp.einsum("bne,bpe->bnp", out["mask_embed"], pe_pts)  # [B, N, P] logits
    tm = _gather_points(batch["masks"].astype(jnp.float32), idx)  # [B, T, P]
    p = jax.nn.sigmoid(x)
    dice = 1.0 - (2.0 * jnp.einsum("bnp,btp->bnt", p, tm) + 1.0) / (
        jnp.sum(p, -1)[:, :, None] + jnp.sum(tm, -1)[:, None, :] + 1.0)  # [B, N, T]
    bce = (jnp.einsum("bnp,btp->bnt", jax.nn.softplus(-x), tm)
           + jnp.einsum("bnp,btp->bnt", jax.nn.softplus(x), 1.0 - tm)) / x.shape[-1]  # [B, N, T]
    cost += cfg.cost_mask * (dice + bce)
  cost = matcher.sanitize(cost)
  high = jnp.max(cost, initial=0.0) + 1.0
  return jnp.where(valid[:, None, :], cost, high)


# ------------------------------------------------------------------------------------------------ loss
def set_loss(out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], cfg: Any,
             rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The set loss and its metrics (see the module docstring)."""
  cfg = LossConfig.from_config(cfg)
  logits, boxes = out["pred_logits"], out["pred_boxes"]
  b, n, q = logits.shape
  t = batch["boxes"].shape[1]
  hm, wm = out["pixel_embed"].shape[1:3]
  if batch["masks"].shape[1:] != (t, hm, wm):
    raise InputError(f"batch masks must be [B, T={t}, {hm}, {wm}] (mask resolution), got {batch['masks'].shape}")
  if n < t:
    raise InputError(f"more targets per image ({t}) than predictions ({n})")
  valid = batch["valid"].astype(bool)  # [B, T]
  query_valid = batch["query_valid"].astype(bool)  # [B, Q]
  labels = jnp.clip(batch["labels"].astype(jnp.int32), 0, q - 1)
  tb = batch["boxes"].astype(jnp.float32)
  rng_cost, rng_mask = jax.random.split(jax.random.key(0) if rng is None else rng)
  num = jnp.maximum(jnp.sum(valid, axis=1).astype(jnp.float32), 1.0)  # [B]
  vf = valid.astype(jnp.float32)

  pred_index = matcher.match(matching_cost(out, batch, cfg, rng_cost), valid)  # [B, T], -1 for padding
  pred_index = jnp.where(valid, pred_index, -1)
  matched = matcher.matched_predictions(pred_index, n)  # [B, N]
  safe_index = jnp.maximum(pred_index, 0)

  # Class targets [B, N, Q]: 1 at (matched token, label of its target).
  rows = jnp.where(pred_index >= 0, pred_index, n)  # [B, T] (n: dropped by the scatter)
  cls_target = jnp.zeros((b, n, q), jnp.float32).at[jnp.arange(b)[:, None], rows, labels].set(1.0, mode="drop")

  # DropLoss: unmatched tokens that overlap no valid target lose their background losses.
  pred_xyxy = box_ops.cxcywh_to_xyxy(boxes)
  tgt_xyxy = box_ops.cxcywh_to_xyxy(tb)
  iou = box_ops.pairwise_iou(jax.lax.stop_gradient(pred_xyxy), tgt_xyxy)  # [B, N, T]
  max_iou = jnp.max(jnp.where(valid[:, None, :], iou, 0.0), axis=2, initial=0.0)  # [B, N]
  if cfg.drop_loss:
    keep = matched | (max_iou >= cfg.drop_loss_iou)
  else:
    keep = jnp.ones((b, n), bool)
  keep_f = keep.astype(jnp.float32)

  focal = sigmoid_focal_loss(logits, cls_target, cfg.focal_alpha, cfg.focal_gamma)  # [B, N, Q]
  focal = focal * (keep_f[:, :, None] * query_valid[:, None, :].astype(jnp.float32))
  loss_class = jnp.sum(focal, axis=(1, 2)) / num  # [B]

  pb = jnp.take_along_axis(boxes, safe_index[..., None], axis=1)  # [B, T, 4]
  loss_l1 = jnp.sum(jnp.sum(jnp.abs(pb - tb), axis=-1) * vf, axis=1) / num
  giou = box_ops.elementwise_giou(box_ops.cxcywh_to_xyxy(pb), tgt_xyxy)  # [B, T]
  loss_giou = jnp.sum((1.0 - giou) * vf, axis=1) / num
  matched_iou = box_ops.elementwise_iou(box_ops.cxcywh_to_xyxy(pb), tgt_xyxy)  # [B, T]

  ml = mask_logits(out, safe_index)  # [B, T, Hm, Wm]
  tm = batch["masks"].astype(jnp.float32)  # [B, T, Hm, Wm]
  if cfg.mask_points:
    idx = _sample_points(rng_mask, b, hm * wm, cfg.mask_points)  # [B, P]
    ml, tm = _gather_points(ml, idx), _gather_points(tm, idx)  # [B, T, P]
  else:
    ml, tm = ml.reshape(b, t, hm * wm), tm.reshape(b, t, hm * wm)  # [B, T, Hm*Wm]
  loss_dice = jnp.sum(dice_loss(ml, tm) * vf, axis=1) / num
  loss_bce = jnp.sum(sigmoid_bce(ml, tm) * vf, axis=1) / num

  obj_target = matched.astype(jnp.float32)
  if cfg.objectness_loss == "focal":
    obj = sigmoid_focal_loss(out["objectness"], obj_target, cfg.focal_alpha, cfg.focal_gamma)  # [B, N]
  else:
    obj = sigmoid_focal_loss(out["objectness"], obj_target, -1.0, 0.0)
  loss_obj = jnp.sum(obj * keep_f, axis=1) / num

  parts = {"class": loss_class, "box_l1": loss_l1, "giou": loss_giou, "dice": loss_dice, "mask_bce": loss_bce,
           "objectness": loss_obj}
  weights = {"class": cfg.class_weight, "box_l1": cfg.l1_weight, "giou": cfg.giou_weight,
             "dice": cfg.dice_weight, "mask_bce": cfg.mask_bce_weight, "objectness": cfg.objectness_weight}
  metrics = {k: jnp.mean(v) for k, v in parts.items()}
  loss = sum(weights[k] * metrics[k] for k in parts)
  metrics["loss"] = loss
  metrics["num_matched"] = jnp.mean(jnp.sum(vf, axis=1))
  metrics["matched_iou"] = jnp.sum(matched_iou * vf) / jnp.maximum(jnp.sum(vf), 1.0)
  metrics["dropped"] = jnp.mean(1.0 - keep_f)
  return loss, metrics


__all__ = ["LossConfig", "set_loss", "matching_cost", "sigmoid_focal_loss", "focal_cost", "dice_loss",
           "sigmoid_bce"]
