"""Typed config groups: the rule of each field (type and range) declared once, beside its default.

A config group that a frozen dataclass describes (the segment family's groups in `zipjax.configs.GROUPS`,
`config.model`: `zipjax.models.detector.DetectorConfig`, `config.loss`: `zipjax.train.losses.LossConfig`,
`config.selftrain`: `zipjax.jobs.selftrain.Settings`) declares each field with `setting(default, rule)` (a
nested group with `group(cls)`); from that one declaration

- the dataclass validates itself (`check(self, "detector config")` in `__post_init__`: every field's rule, then
  its own relations between fields), so a group built in Python is checked like one read from a config file;
- `zipjax.config_check` takes the group's rules (`rules_of(DetectorConfig, "model.")`) into its tables, so a
  config file's group is checked before anything runs, with every other problem, by the same rules;
- `from_mapping(cls, group, what)` builds the dataclass from a config group (a dict or ConfigDict), refusing
  unknown keys.

`Rule` (and the shorthands `Int`, `Float`, `Choice`, `Custom`, `BOOL`, `TEXT`, `ARCH`, `PROBABILITY`) is what one
field may hold.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, Callable, ClassVar

import ml_collections

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
    hi_open: `hi` itself is not allowed.
  """
  kind: str
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  choices: tuple = ()
  custom: Callable[[Any], bool] | None = None
  text: str = ""
  hi_open: bool = False

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
    if self.lo is not None and self.hi is not None:
      return f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
    if self.lo is not None:
      return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
    if self.hi is not None:
      return f"{what} {'<' if self.hi_open else '<='} {self.hi:g}"
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
    if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
      return f"must be {self.describe()}"
    return None


def Int(lo: int | None = None, hi: int | None = None) -> Rule:  # pylint: disable=invalid-name
  return Rule("int", lo, hi)


def Float(lo: float | None = None, hi: float | None = None,  # pylint: disable=invalid-name
          lo_open: bool = False, hi_open: bool = False) -> Rule:
  return Rule("float", lo, hi, lo_open, hi_open=hi_open)


def Choice(*choices) -> Rule:  # pylint: disable=invalid-name
  return Rule("choice", choices=tuple(choices))


def Custom(text: str, check: Callable[[Any], bool]) -> Rule:  # pylint: disable=invalid-name
  """A field checked by `check(value) -> bool`; `text` says what it must be."""
  return Rule("custom", custom=check, text=text)


BOOL = Rule("bool")
TEXT = Rule("str")
OPTIONAL_TEXT = Custom("a string (may be empty)", lambda v: isinstance(v, str))
ARCH = Rule("arch")
PROBABILITY = Float(0.0, 1.0)
SEED = Int(0, 2**31 - 1)


def regex_pairs(v, second: Callable[[Any], bool]) -> bool:
  """Whether `v` is a list of (regex, x) pairs whose regexes compile and whose x pass `second` (for `Custom`)."""
  if not isinstance(v, (list, tuple)):
    return False
  for pattern, x in v:
    try:
      re.compile(pattern)
    except re.error:
      return False
    if not second(x):
      return False
  return True


def setting(default: Any, rule: Rule):
  """A dataclass field with its default and its rule (see the module docstring)."""
  return dataclasses.field(default=default, metadata={"rule": rule})


def group(cls, default: Callable[[], Any] | None = None):
  """A dataclass field holding a nested typed group `cls` (its fields' rules are the group's; `default` makes
  the default instance, `cls()` if None)."""
  return dataclasses.field(default_factory=default or cls, metadata={"group": cls})


def rules_of(cls, prefix: str = "") -> dict[str, Rule]:
  """{prefix + dotted field name: rule} of a dataclass's `setting` fields (and its nested groups'), in
  declaration order."""
  out = {}
  for f in dataclasses.fields(cls):
    if "group" in f.metadata:
      out.update(rules_of(f.metadata["group"], f"{prefix}{f.name}."))
    elif "rule" in f.metadata:
      out[prefix + f.name] = f.metadata["rule"]
  return out


def rules_of_groups(groups: Mapping[str, Any]) -> dict[str, Rule]:
  """{'<name>.<field>': rule} of every group of `groups` ({config name: typed group}), in their order."""
  return {path: rule for name, cls in groups.items() for path, rule in rules_of(cls, f"{name}.").items()}


def check(obj, what: str) -> None:
  """Raises InputError naming every field of `obj` (a dataclass instance) that breaks its rule; `what` names the
  group: 'detector config' ("detector config: width = 0: ...") or a dotted prefix ('selftrain.': "selftrain.mode
  = ...")."""
  bad = []
  for f in dataclasses.fields(obj):
    rule = f.metadata.get("rule")
    why = rule.problem(getattr(obj, f.name)) if rule is not None else None
    if why:
      bad.append(f"{what if what.endswith('.') else ''}{f.name} = {getattr(obj, f.name)!r}: {why}")
  if bad:
    raise InputError(("" if what.endswith(".") else f"{what}: ") + "; ".join(bad))


class Group:
  """A typed config group: a frozen dataclass whose fields are declared with `setting` (default and rule; the doc
  in the class's `Attributes:`) or `group` (a nested group); `NAME` is its place in a config (`config.discover`)."""
  NAME: ClassVar[str] = ""

  def __post_init__(self):
    check(self, f"{self.NAME}.")  # every field's rule; a group with relations checks them after this

  @classmethod
  def from_config(cls, config=None):
    """From a config holding the group (`config.<NAME>`), the group itself, an instance, or None (defaults)."""
    if isinstance(config, cls):
      return config
    if config is None:
      return cls()
    if cls.NAME in config and hasattr(config[cls.NAME], "keys"):
      config = config[cls.NAME]
    return from_mapping(cls, config, f"{cls.NAME} config")


def unknown_keys(cls, keys) -> list[str]:
  """The `keys` that are not fields of the dataclass `cls`, sorted."""
  return sorted(set(keys) - {f.name for f in dataclasses.fields(cls)})


def from_mapping(cls, values: Mapping[str, Any] | Any, what: str):
  """`cls(**values)` of a dict or ml_collections ConfigDict (an integer given for a `float` field becomes a
  float, a list given for a `tuple` field of a `Group` a tuple, a mapping given for a nested group that group; missing keys
  take their defaults); keys that are not fields of `cls` are an error."""
  d = dict(values.to_dict() if hasattr(values, "to_dict") else values)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = unknown_keys(cls, d)
  if unknown:
    raise InputError(f"unknown {what} keys: {unknown}; known: {sorted(fields)}")
  for k, v in d.items():
    kind = str(fields[k].type)
    if "group" in fields[k].metadata and not isinstance(v, fields[k].metadata["group"]):
      d[k] = from_mapping(fields[k].metadata["group"], v, f"{what} {k}")
    elif kind == "float" and isinstance(v, int) and not isinstance(v, bool):
      d[k] = float(v)
    elif kind.startswith("tuple") and isinstance(v, list) and issubclass(cls, Group):  # hashable
      d[k] = tuple(v)
  return cls(**d)


def config_group(cls, what: str, **changes):
  """A config group (an ml_collections ConfigDict) for a config file: the typed group `cls`' defaults with
  `changes`, checked by the rules; an unknown name is refused; tuples become lists (what `--config.KEY=[...]`
  overrides)."""
  unknown = unknown_keys(cls, changes)
  if unknown:
    raise InputError(f"unknown {what} settings {unknown}; known: {sorted(f.name for f in dataclasses.fields(cls))}")
  values = dataclasses.asdict(from_mapping(cls, dataclasses.asdict(cls()) | changes, f"{what} config"))
  return ml_collections.ConfigDict({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})


__all__ = ["Rule", "Int", "Float", "Choice", "Custom", "BOOL", "TEXT", "OPTIONAL_TEXT", "ARCH", "PROBABILITY",
           "SEED", "regex_pairs", "setting", "group", "rules_of", "rules_of_groups", "check", "Group",
           "unknown_keys", "from_mapping", "config_group"]
