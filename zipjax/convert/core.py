"""Declared key tables: PyTorch state dict -> Flax variables, with strict checks.

A converter for a model family is a list of `Rule`s. Each rule matches torch keys with a regular expression
(full match) and names the Flax variable path (collection first, '/'-separated, regex groups allowed) and the
layout transform. `apply_rules` fails loudly, naming the checkpoint file and the key, on any torch key that no
rule matches, on any Flax variable left without a value, and on any shape that differs from what the Flax
module expects.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np

from zipjax.errors import CheckpointError
from zipjax.models.tree import unflatten


@dataclasses.dataclass(frozen=True)
class Transform:
  """A layout change from a torch tensor to a Flax array (and the inverse of its shape, for messages)."""
  name: str
  forward: Callable[[np.ndarray], np.ndarray]
  torch_shape: Callable[[tuple], tuple]


IDENTITY = Transform("identity", lambda w: w, lambda s: tuple(s))
# nn.Linear.weight [out, in] -> Dense kernel [in, out]; also used for in_proj_weight [3D, D] -> [D, 3D].
LINEAR = Transform("linear", lambda w: w.T, lambda s: tuple(s)[::-1])
# nn.Conv2d.weight [out, in, kh, kw] -> Conv kernel [kh, kw, in, out].
CONV = Transform("conv", lambda w: w.transpose(2, 3, 1, 0),
                 lambda s: (s[3], s[2], s[0], s[1]))
# nn.ConvTranspose2d.weight [in, out, kh, kw] -> [kh, kw, in, out] (zipjax's ConvTransposeStride layout;
# a plain transpose, no spatial flip: see zipjax/models/sam_net/common.py).
CONV_TRANSPOSE = Transform("conv_transpose", lambda w: w.transpose(2, 3, 0, 1),
                           lambda s: (s[2], s[3], s[0], s[1]))
DROP = Transform("drop", lambda w: w, lambda s: tuple(s))


@dataclasses.dataclass(frozen=True)
class Rule:
  """torch key regex (full match) -> Flax path template ('collection/a/b', may use \\1 groups).

  `rename`, if given, is applied to the expanded template (e.g. `flax_path` below, which turns a dotted torch
  path into the Flax one).
  """
  pattern: str
  target: str
  transform: Transform = IDENTITY
  rename: Callable[[str], str] | None = None

  def match(self, key: str):
    m = re.fullmatch(self.pattern, key)
    if m is None:
      return None
    out = m.expand(self.target)
    return self.rename(out) if self.rename else out


def flax_path(dotted: str) -> str:
  """The naming convention of zipjax modules: torch 'a.b.3.c' -> Flax 'a/b_3/c'.

  A numeric path component (an nn.Sequential / nn.ModuleList index) joins its parent with '_'.
  """
  return re.sub(r"\.(\d+)(?=\.|$)", r"_\1", dotted).replace(".", "/")


def apply_rules(state_dict: Mapping[str, np.ndarray], rules: Iterable[Rule],
                expected: Mapping[str, tuple], source: str,
                torch_name: Callable[[str], str] | None = None, check_only: bool = False) -> dict | None:
  """Maps every torch key through `rules` and checks the result against `expected` shapes.

  Args:
    state_dict: torch key -> numpy array (any float dtype; upcast to float32).
    rules: the declared table; the first matching rule wins.
    expected: Flax path ('params/visual/conv1/kernel') -> shape, from `jax.eval_shape` of the module.
    source: the checkpoint's name, for error messages.
    torch_name: Flax path -> the torch key expected for it, to name missing keys in errors
      (default: a best-effort inverse of the rule templates).
    check_only: check keys and shapes only (no array is read or converted); returns None.

  Returns:
    Nested Flax variables {'params': ..., 'batch_stats': ...} of float32 numpy arrays.
  """
  rules = list(rules)
  errors: list[str] = []
  flat: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  seen: set[str] = set()
  for key, value in state_dict.items():
    for rule in rules:
      target = rule.match(key)
      if target is not None:
        break
    else:
      errors.append(f"key '{key}' {tuple(np.shape(value))} is not in the key table (unexpected key)")
      continue
    if rule.transform is DROP:
      continue
    if target in flat:
      errors.append(f"keys '{origin[target]}' and '{key}' both map to '{target}'")
      continue
    if target not in expected:
      errors.append(f"key '{key}' maps to '{target}', which the model does not have (unexpected key)")
      continue
    seen.add(target)
    want = tuple(expected[target])
    torch_want = rule.transform.torch_shape(want)
    if tuple(np.shape(value)) != torch_want:
      errors.append(f"key '{key}': expected shape {torch_want}, found {tuple(np.shape(value))}")
      continue
    origin[target] = key
    if check_only:
      flat[target] = None
      continue
    arr = np.asarray(rule.transform.forward(np.asarray(value)))
    if np.issubdtype(arr.dtype, np.floating):
      arr = arr.astype(np.float32)
    flat[target] = np.array(arr, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
  for target in sorted(set(expected) - seen):
    torch_key = torch_name(target) if torch_name else _guess_torch_key(target, rules)
    errors.append(f"missing key '{torch_key}' (for '{target}', shape {tuple(expected[target])})")
  if errors:
    shown = errors[:20]
    more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
    raise CheckpointError(f"{source}: checkpoint does not match the model:\n  " + "\n  ".join(shown) + more)
  return None if check_only else unflatten(flat)


def _guess_torch_key(target: str, rules: Iterable[Rule]) -> str:
  """Best-effort inverse of a rule, only for naming a missing key in an error message."""
  for rule in rules:
    if rule.transform is DROP:
      continue
    tmpl = re.escape(rule.target)
    # turn \\1, \\2 ... back into capture groups
    tmpl = re.sub(r"\\\\(\d)", lambda m: r"(?P<g%s>.+?)" % m.group(1), tmpl)
    m = re.fullmatch(tmpl, target)
    if m is None:
      continue
    key = rule.pattern
    for name in sorted(m.groupdict(), key=lambda n: int(n[1:])):
      key = re.sub(r"\([^()]*\)", lambda _: m.group(name), key, count=1)
    return key.replace("\\.", ".").replace("\\", "")
  return target


def key_shape(sd: Mapping[str, np.ndarray], key: str, source: str, family: str) -> tuple:
  """The shape of `sd[key]`, read to infer the architecture; CheckpointError if the key is missing."""
  if key not in sd:
    raise CheckpointError(f"{source}: missing key '{key}', needed to infer the {family} architecture")
  return tuple(np.shape(sd[key]))


def count_indices(sd: Mapping[str, np.ndarray], prefix: str) -> int:
  """How many `prefix`N.* entries (N = 0, 1, ...) the keys hold: the largest N + 1, 0 for none."""
  idx = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
  return max(idx) + 1 if idx else 0


def same_setting(got, want) -> bool:
  """A side config's value equals the one zipjax computes with (floats within 1e-12)."""
  return got == want or (isinstance(want, float) and isinstance(got, (int, float)) and abs(got - want) < 1e-12)


# ------------------------------------------------------------------------------------------ other layouts
@dataclasses.dataclass(frozen=True)
class Rename:
  """A key of another library's layout -> the key of the layout a family's `Rule` table reads.

  `pattern` (full match) -> `target` (may use \\1 groups), through `transform` (a `Transform`, applied to the
  array; DROP drops the key). `part=(i, n)`: the array is piece i of n concatenated along axis 0 into the
  target (e.g. q, k, v projections -> one in_proj_weight); all n pieces must be present. `tied`: the key is
  a tied copy of another that maps to the same target (e.g. transformers SamModel's shared positional
  embedding, saved under two names): when both are present their values must be equal. `split=n`: the array
  is n equal pieces along axis 0, piece i going to `target` with '{i}' replaced by i (e.g. transformers
  Sam2Model's one point_embed [4, C] -> point_embeddings.0..3 [1, C]).
  """
  pattern: str
  target: str
  transform: Transform = IDENTITY
  part: tuple[int, int] | None = None
  tied: bool = False
  split: int | None = None

  def match(self, key: str):
    m = re.fullmatch(self.pattern, key)
    return None if m is None else m.expand(self.target)


TRANSPOSE = Transform("transpose", lambda w: w.T, lambda s: tuple(s)[::-1])


@dataclasses.dataclass(frozen=True)
class Layout:
  """A checkpoint layout of a model family: its name, the key table it is read with, and for a foreign
  layout the `Rename` table that turns it into the family's own layout (`renames` empty: the family's own).

  `anchors`: keys (regexes) that a checkpoint of this layout always has; `refuse(keys)`: an optional check
  returning an error message for a checkpoint of this layout that zipjax cannot read (or None).
  """
  name: str
  table: tuple
  anchors: tuple[str, ...]
  renames: tuple[Rename, ...] = ()
  refuse: Callable | None = None

  def unfit(self, keys) -> list[str]:
    """The keys no rule of this layout's table matches."""
    rules = self.renames or self.table
    return [k for k in keys if not any(r.match(k) is not None for r in rules)]


def detect_layout(sd: Mapping, layouts: Iterable[Layout], source: str, family: str) -> Layout:
  """The layout of `sd`: the first whose key table maps every key and whose anchors are present; else the
  first whose anchors are present (its strict table then names the keys that do not fit).

  Raises:
    CheckpointError: when no layout's anchors are present, naming the nearest layout (fewest keys its table
      does not map) and the first keys that do not fit it.
  """
  keys = list(sd)
  layouts = list(layouts)
  anchored = [layout for layout in layouts
              if all(any(re.fullmatch(a, k) for k in keys) for a in layout.anchors)]
  chosen = next((layout for layout in anchored if not layout.unfit(keys)), anchored[0] if anchored else None)
  if chosen is not None:
    msg = chosen.refuse(keys) if chosen.refuse else None
    if msg:
      raise CheckpointError(f"{source}: {msg}")
    return chosen
  scored = sorted(((len(layout.unfit(keys)), i, layout) for i, layout in enumerate(layouts)))
  n_bad, _, nearest = scored[0]
  bad = nearest.unfit(keys)
  missing = [a for a in nearest.anchors if not any(re.fullmatch(a, k) for k in keys)]
  shown = ", ".join(f"'{k}'" for k in bad[:5]) + (", ..." if len(bad) > 5 else "")
  detail = (f"{n_bad} of {len(keys)} keys do not fit it, first {shown}; " if bad else "") + \
      f"no key matches {', '.join(repr(a) for a in missing[:3])}"
  known = ", ".join(layout.name for layout in layouts)
  raise CheckpointError(f"{source}: matches no known {family} layout ({known}); nearest: {nearest.name}: "
                        f"{detail}")


def translate(sd: Mapping[str, np.ndarray], renames: Iterable[Rename], source: str) -> dict[str, np.ndarray]:
  """Applies a `Rename` table: every key must match a rule; concatenated targets need all their pieces,
  with the same trailing shape. The result is read by the family's own `Rule` table (which checks shapes)."""
  renames = list(renames)
  out: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  parts: dict[str, dict[int, tuple[str, np.ndarray]]] = {}
  counts: dict[str, int] = {}
  errors: list[str] = []
  for key, value in sd.items():
    rule = next((r for r in renames if r.match(key) is not None), None)
    if rule is None:
      errors.append(f"key '{key}' {tuple(np.shape(value))} is not in the key table (unexpected key)")
      continue
    if rule.transform is DROP:
      continue
    target = rule.match(key)
    arr = rule.transform.forward(np.asarray(value))
    if rule.split is not None:
      n = rule.split
      if arr.ndim == 0 or arr.shape[0] % n:
        errors.append(f"key '{key}' {tuple(arr.shape)} does not split into {n} equal pieces along axis 0")
        continue
      for i, piece in enumerate(np.split(arr, n, axis=0)):
        t = target.replace("{i}", str(i))
        if t in out:
          errors.append(f"keys '{origin[t]}' and '{key}' both map to '{t}'")
          continue
        out[t], origin[t] = piece, key
      continue
    if rule.part is None:
      if target in out and (rule.tied or origin.get(target + "#tied")):
        if np.shape(out[target]) != np.shape(arr) or not np.array_equal(out[target], arr):
          errors.append(f"keys '{origin[target]}' and '{key}' are tied copies of '{target}' but differ")
        continue
      if target in out or target in parts:
        errors.append(f"keys '{origin.get(target, '?')}' and '{key}' both map to '{target}'")
        continue
      out[target], origin[target] = arr, key
      if rule.tied:
        origin[target + "#tied"] = key
    else:
      i, n = rule.part
      slot = parts.setdefault(target, {})
      if target in out or i in slot:
        errors.append(f"key '{key}' maps to piece {i} of '{target}', which is already set")
        continue
      slot[i] = (key, arr)
      counts[target] = n
  for target, slot in parts.items():
    n = counts[target]
    if len(slot) != n:
      have = ", ".join(f"'{k}'" for k, _ in slot.values())
      errors.append(f"'{target}' needs {n} pieces, found {len(slot)} ({have}): a piece is missing")
      continue
    pieces = [slot[i][1] for i in range(n)]
    if len({p.shape[1:] for p in pieces}) != 1:
      errors.append(f"pieces of '{target}' have different shapes: "
                    + ", ".join(f"'{slot[i][0]}' {slot[i][1].shape}" for i in range(n)))
      continue
    out[target] = np.concatenate(pieces, axis=0)
    origin[target] = slot[0][0]
  if errors:
    shown = errors[:20]
    more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
    raise CheckpointError(f"{source}: checkpoint does not match the model:\n  " + "\n  ".join(shown) + more)
  return out
