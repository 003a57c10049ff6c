"""One place that validates a zipjax config (a preset of `zipjax.configs` or a `--config` file) after every
override has been applied, before any model is built.

The checks are a table: `RULES` maps each field's dotted path to a `Rule` (type and range), and `RELATIONS`
holds the checks that involve several fields (e.g. `input.max_side >= input.min_side`). `check_config` walks
every leaf of the config and

- refuses a field that has no rule (a typo in a config file, or a new field whose author forgot its rule:
  tests/test_config_check.py runs every preset and configs/*.py through here, so that is a test failure);
- refuses a field the rules need but the config lacks;
- refuses values of the wrong type (a bool is not an int, an int is accepted where a float is expected),
  NaN and infinities, and values outside their range;

and reports every problem at once in one `InputError`. Rules whose kind is `arch` cover a whole subtree
(architecture dicts are checked by the model builders). Another module adds its fields with `register`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Callable

from zipjax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one config field may hold.

  Attributes:
    kind: 'int', 'float', 'bool', 'str' (non-empty), 'choice' (one of `choices`) or 'arch' (a non-empty
      architecture name, or a dict of architecture fields; the whole subtree is this rule's).
    lo: smallest allowed value (numbers), or None.
    hi: largest allowed value (numbers), or None.
    lo_open: `lo` itself is not allowed.
    choices: the allowed values of a 'choice' field.
  """
  kind: str
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  choices: tuple = ()
  custom: Callable[[Any], bool] | None = None
  text: str = ""

  def describe(self) -> str:
    if self.kind == "custom":
      return self.text
    if self.kind == "choice":
      return "one of " + ", ".join(repr(c) for c in self.choices)
    if self.kind == "bool":
      return "a boolean"
    if self.kind == "str":
      return "a non-empty string"
    if self.kind == "arch":
      return "an architecture name or a dict of architecture fields"
    what = "an integer" if self.kind == "int" else "a finite number"
    if self.lo is not None and self.hi is not None and not self.lo_open:
      return f"{what} in [{self.lo:g}, {self.hi:g}]"
    if self.lo is not None:
      return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}" + (
          f" and <= {self.hi:g}" if self.hi is not None else "")
    if self.hi is not None:
      return f"{what} <= {self.hi:g}"
    return what

  def problem(self, value: Any) -> str | None:
    """Why `value` does not fit, or None."""
    if self.kind == "custom":
      try:
        ok = bool(self.custom(value))
      except (TypeError, ValueError, KeyError, IndexError):
        ok = False
      return None if ok else f"must be {self.describe()}"
    if self.kind == "bool":
      return None if isinstance(value, bool) else f"must be {self.describe()}"
    if self.kind == "str":
      return None if isinstance(value, str) and value.strip() else f"must be {self.describe()}"
    if self.kind == "choice":
      ok = any(value == c and type(value) is type(c) for c in self.choices)  # 4.0 is not the choice 4
      return None if ok else f"must be {self.describe()}"
    if self.kind == "arch":
      if isinstance(value, str) and value.strip():
        return None
      if isinstance(value, Mapping) or hasattr(value, "to_dict"):
        return None
      return f"must be {self.describe()}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return f"must be {self.describe()}"
    if self.kind == "int" and not isinstance(value, int):
      return f"must be {self.describe()}"
    if not math.isfinite(value):
      return f"must be {self.describe()} (NaN and infinities are refused)"
    if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
      return f"must be {self.describe()}"
    if self.hi is not None and value > self.hi:
      return f"must be {self.describe()}"
    return None


def Int(lo: int | None = None, hi: int | None = None) -> Rule:  # pylint: disable=invalid-name
  return Rule("int", lo, hi)


def Float(lo: float | None = None, hi: float | None = None,  # pylint: disable=invalid-name
          lo_open: bool = False) -> Rule:
  return Rule("float", lo, hi, lo_open)


def Choice(*choices) -> Rule:  # pylint: disable=invalid-name
  return Rule("choice", choices=tuple(choices))


def Custom(text: str, check: Callable[[Any], bool]) -> Rule:  # pylint: disable=invalid-name
  """A field checked by `check(value) -> bool`; `text` says what it must be."""
  return Rule("custom", custom=check, text=text)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ratios(v) -> bool:
  return (isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(r) and r >= 1.0 for r in v)
          and list(v) == sorted(set(v)))


def _mesh(v) -> bool:
  names = [a[0] for a in v]
  return (isinstance(v, (list, tuple)) and len(v) > 0 and len(set(names)) == len(names) and
          all(isinstance(a, (list, tuple)) and len(a) == 2 and isinstance(a[0], str) and a[0] and
              isinstance(a[1], int) and not isinstance(a[1], bool) and (a[1] >= 1 or a[1] == -1) for a in v) and
          sum(a[1] == -1 for a in v) <= 1)


def _sharding_action(a) -> bool:
  if a is None or a in ("replicate", "fsdp"):
    return True
  if isinstance(a, str):
    return a.startswith("fsdp:") and len(a) > 5
  return isinstance(a, (list, tuple)) and all(
      d is None or isinstance(d, str) or (isinstance(d, (list, tuple)) and all(isinstance(x, str) for x in d))
      for d in a)


def _sharding_rules(v) -> bool:
  import re  # pylint: disable=import-outside-toplevel
  for rule in v:
    pattern, action = rule
    try:
      re.compile(pattern)
    except re.error:
      return False
    if not _sharding_action(action):
      return False
  return isinstance(v, (list, tuple))


MESH = Custom("a list of distinct (axis name, size >= 1 or -1) pairs, at most one -1", _mesh)
SHARDING_RULES = Custom("a list of (regex, action) pairs; action: a PartitionSpec tuple of axis names / None, "
                        "'fsdp', 'fsdp:AXIS' or 'replicate' (zipjax/parallel)", _sharding_rules)
BOOL = Rule("bool")
TEXT = Rule("str")
ARCH = Rule("arch")
PROBABILITY = Float(0.0, 1.0)

# Every field of the presets in zipjax/configs.py (see the comments there for what each one does).
RULES: dict[str, Rule] = {
    "preset": TEXT,
    "batch_size": Int(1),
    # models
    "models.semantic.checkpoint": TEXT,
    "models.semantic.arch": ARCH,
    "models.boundary.checkpoint": TEXT,
    "models.boundary.arch": ARCH,
    "models.sam.checkpoint": TEXT,
    "models.sam.arch": ARCH,
    "models.semantic.dtype": Choice("float32", "bfloat16"),
    "models.boundary.dtype": Choice("float32", "bfloat16"),
    "models.sam.dtype": Choice("float32", "bfloat16"),
    "models.seed": Int(0, 2**31 - 1),
    # image decoding limits
    "input.min_side": Int(1),
    "input.max_side": Int(1),
    "input.max_aspect": Float(1.0),
    # CLIP Surgery
    "semantic.input_size": Int(1),
    "semantic.prompt_ensemble": BOOL,
    "semantic.feature_norm": Choice("tokens", "channels"),
    "semantic.logit_scale": Float(0.0, lo_open=True),
    "semantic.text_batch_size": Int(1),
    # boundary prior
    "boundary.input_size": Int(1),
    "boundary.stage": Int(0, 4),
    "boundary.size_multiple": Int(0),
    "boundary.bucket_ratios": Custom("a non-empty increasing list of long/short side ratios >= 1",
                                     _ratios),
    # discovery
    "discover.num_clusters": Int(1),
    "discover.max_iters": Int(1),
    "discover.rtol": Float(0.0),
    "discover.atol": Float(0.0),
    "discover.init": Choice("linspace", "semantic"),
    "discover.center_features": BOOL,
    "discover.semantic.min_foreground_clusters": Int(0),
    "discover.semantic.cells_per_cluster": Int(1),
    "discover.semantic.background_clusters": Int(0),
    "discover.activation_factor": Float(0.0),
    "discover.top_k_clusters": Int(1),
    "discover.count_background_in_top_k": BOOL,
    "discover.min_activated_fraction": PROBABILITY,
    "discover.max_bbox_ratio": Float(0.0, lo_open=True),
    "discover.min_instance_cells": Int(0),
    "discover.connectivity": Choice(4, 8),
    "discover.max_instances": Int(1),
    "discover.max_fragments": Int(1),
    "discover.max_cc_iters": Int(0),
    "discover.pad_classes": BOOL,
    "discover.swap_box_scale": BOOL,
    # SAM refinement
    "sam.enabled": BOOL,
    "sam.multimask": BOOL,
    "sam.mask_threshold": Float(),
    "sam.max_boxes": Int(1),
    # scores, NMS, top-k
    "scoring.classification_first": BOOL,
    "scoring.presence_threshold": PROBABILITY,
    "scoring.nms": BOOL,
    "scoring.nms_threshold": PROBABILITY,
    "scoring.min_score": PROBABILITY,
    "scoring.max_per_image": Int(1),
    "scoring.max_present_classes": Int(0),
    # outputs
    "output.overlays": BOOL,
    "output.overlay_max_side": Int(1),
    # device mesh and parameter sharding (zipjax/parallel)
    "mesh": MESH,
    "sharding_rules": SHARDING_RULES,
    # zipjax label (zipjax/jobs/label.py)
    "label.shard_size": Int(1),
    "label.workers": Int(1),
    "label.prefetch": Int(1),
    "label.max_pending": Int(0),
    "label.tfds_image_feature": TEXT,
}


def _get(config, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _discover_semantic_k(config) -> str | None:
  if _get(config, "discover.init") != "semantic":
    return None
  k, bg = _get(config, "discover.num_clusters"), _get(config, "discover.semantic.background_clusters")
  if bg >= k:
    return (f"discover.semantic.background_clusters = {bg} must be smaller than discover.num_clusters = {k} "
            "(the semantic initialisation needs at least one foreground seed)")
  return None


def _input_sides(config) -> str | None:
  lo, hi = _get(config, "input.min_side"), _get(config, "input.max_side")
  if hi < lo:
    return f"input.max_side = {hi} must be >= input.min_side = {lo}"
  return None


# Checks that involve several fields: config -> problem or None (run only when every field passed its rule).
RELATIONS: list[Callable[[Any], str | None]] = [_input_sides, _discover_semantic_k]


def register(path: str, rule: Rule) -> None:
  """Adds (or replaces) the rule of a field, for modules that add fields to the config."""
  RULES[path] = rule


def _leaves(node, rules: Mapping[str, Rule], prefix: str = ""):
  """(dotted path, value) of every leaf; a subtree covered by an 'arch' rule is one leaf."""
  for key in node.keys():
    path = f"{prefix}{key}"
    value = node[key]
    rule = rules.get(path)
    if hasattr(value, "keys") and not (rule is not None and rule.kind == "arch"):
      yield from _leaves(value, rules, path + ".")
    else:
      yield path, value


def config_problems(config, rules: Mapping[str, Rule] | None = None) -> list[str]:
  """Every problem of `config` as a list of messages (empty when it is valid)."""
  rules = RULES if rules is None else rules
  problems, seen = [], set()
  for path, value in _leaves(config, rules):
    seen.add(path)
    rule = rules.get(path)
    if rule is None:
      problems.append(f"config.{path}: unknown field (no validation rule; a typo, or a field that "
                      "zipjax.config_check.RULES does not know)")
      continue
    why = rule.problem(value)
    if why:
      problems.append(f"config.{path} = {value!r}: {why}")
  for path in rules:
    if path not in seen:
      problems.append(f"config.{path}: missing (every preset has it; start from zipjax.configs)")
  if not problems:
    problems.extend(p for p in (check(config) for check in RELATIONS) if p)
  return problems


def check_config(config, rules: Mapping[str, Rule] | None = None):
  """Validates `config` (see the module docstring); returns it unchanged.

  Raises:
    InputError: listing every problem (field, value, what it must be).
  """
  problems = config_problems(config, rules)
  if problems:
    head = "invalid config value" if len(problems) == 1 else f"invalid config ({len(problems)} problems)"
    raise InputError(head + ":\n  " + "\n  ".join(problems))
  return config


__all__ = ["Rule", "Int", "Float", "Choice", "Custom", "BOOL", "TEXT", "ARCH", "PROBABILITY", "RULES", "RELATIONS",
           "register", "config_problems", "check_config"]
