"""The optimizer from `config.optim`: AdamW, warm-up + cosine decay, per-module learning rates, clipping.

    optax.chain(clip_by_global_norm(clip_norm),
                multi_transform({group: adamw(schedule * multiplier, weight_decay, mask=decay_mask)}, labels))

- Schedule: linear warm-up from 0 to `lr` over `warmup_steps`, then cosine decay to `lr * end_factor` at
  `total_steps` (optax.warmup_cosine_decay_schedule), times the group's multiplier.
- Groups: `optim.lr_multipliers = [(regex, multiplier), ...]`; a parameter's path ('backbone/conv1/kernel',
  see zipjax/parallel/) takes the multiplier of the first regex that matches (`re.search`), 1.0 when
  none does. A multiplier of 0 freezes the group (`optax.set_to_zero`, no optimizer state).
- Weight decay applies to parameters with 2 or more dimensions (kernels, embeddings), not to biases, scales,
  norms or 1-d embeddings (class_embedding), the usual AdamW practice.
"""
from __future__ import annotations

import re
from typing import Callable

import jax
import optax

from zipjax.errors import InputError
from zipjax.parallel import path_name


def schedule(optim, total_steps: int, multiplier: float = 1.0) -> Callable:
  """Learning rate as a function of the step (warm-up + cosine), scaled by `multiplier`."""
  peak = float(optim.lr) * float(multiplier)
  warmup = int(optim.warmup_steps)
  total = int(total_steps)
  if total < 1:
    raise InputError(f"total_steps must be >= 1, got {total}")
  if not 0 <= warmup <= total:
    raise InputError(f"optim.warmup_steps must be in [0, total_steps={total}], got {warmup}")
  return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=warmup,
                                            decay_steps=total, end_value=peak * float(optim.end_factor))


def param_groups(params, rules) -> tuple[dict, list]:
  """(labels pytree of group names, [(group name, multiplier)]) for `optim.lr_multipliers` rules."""
  rules = [(str(p), float(m)) for p, m in rules]
  for p, m in rules:
    try:
      re.compile(p)
    except re.error as e:
      raise InputError(f"optim.lr_multipliers: bad regex {p!r} ({e})") from None
    if m < 0:
      raise InputError(f"optim.lr_multipliers: multiplier of {p!r} must be >= 0, got {m}")
  groups = [("default", 1.0)] + [(f"group{i}", m) for i, (_, m) in enumerate(rules)]

  def label(path, _):
    name = path_name(path)
    for i, (p, _) in enumerate(rules):
      if re.search(p, name):
        return f"group{i}"
    return "default"

  return jax.tree_util.tree_map_with_path(label, params), groups


def decay_mask(params):
  """True for parameters with >= 2 dimensions."""
  return jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)


def make_optimizer(optim, total_steps: int, params) -> tuple[optax.GradientTransformation, dict]:
  """(optimizer, {group: schedule}) for the params pytree (arrays or ShapeDtypeStructs)."""
  labels, groups = param_groups(params, optim.lr_multipliers)
  used = set(jax.tree_util.tree_leaves(labels))
  transforms, schedules = {}, {}
  for name, mult in groups:
    if name not in used:
      transforms[name] = optax.set_to_zero()
      continue
    if mult == 0.0:
      transforms[name] = optax.set_to_zero()
      schedules[name] = lambda step: 0.0 * step
      continue
    sched = schedule(optim, total_steps, mult)
    schedules[name] = sched
    transforms[name] = optax.adamw(sched, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps),
                                   weight_decay=float(optim.weight_decay), mask=decay_mask)
  chain = []
  if float(optim.clip_norm) > 0:
    chain.append(optax.clip_by_global_norm(float(optim.clip_norm)))
  chain.append(optax.multi_transform(transforms, labels))
  return optax.chain(*chain), schedules


__all__ = ["schedule", "param_groups", "decay_mask", "make_optimizer"]
