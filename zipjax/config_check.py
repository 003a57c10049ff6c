"""One place that validates a zipjax config (a preset of `zipjax.configs` or a `--config` file) after every
override has been applied, before any model is built.

The checks are tables, one per config family:

- `RULES` / `RELATIONS`: the segment / label family (the presets of zipjax/configs.py, configs/{smoke,zip,
  reference,label_coco}.py; `zipjax segment`, `zipjax label`);
- `TRAIN_RULES` / `TRAIN_RELATIONS`: the detector family (configs/train_*.py: groups model, loss, text, data,
  optim, mesh / sharding_rules, checkpoint, eval, detect, input; `zipjax train`, `zipjax detect`), checked by
  `check_train_config`;
- `SELFTRAIN_RULES` / `SELFTRAIN_RELATIONS`: the self-training family (configs/selftrain_*.py: the train rules
  plus the `selftrain` group; `zipjax self-train`), checked by `check_selftrain_config`. The rounds' workdirs
  hold plain train configs (no `selftrain` group), which `zipjax detect` checks as the train family.

A rule table maps each field's dotted path to a `Rule` (type and range; `zipjax.schema`). Every group that a
typed dataclass describes takes its rules from it, where each field's rule is declared beside its default (and
also checks a group built in Python): in the segment family every group (`zipjax.configs.GROUPS`: models,
input, semantic, boundary, discover, sam, scoring, output, label), in the train family `model`
(DetectorConfig), `loss` (LossConfig) and `input` (Limits), and `selftrain` (Settings). The relations are the
checks that involve several fields; a group's own relations are its dataclass's (e.g. `input.max_side >=
input.min_side`), run here through the dataclass so they are reported with the other problems.
`check_config(config, family=...)` walks every leaf of the config and

- refuses a field that has no rule (a typo in a config file, or a new field whose author forgot its rule:
  tests/test_config_check.py runs every preset and configs/*.py through here, so that is a test failure);
- refuses a field the rules need but the config lacks;
- refuses values of the wrong type (a bool is not an int, an int is accepted where a float is expected),
  NaN and infinities, and values outside their range;

and reports every problem at once in one `InputError`. Rules whose kind is `arch` cover a whole subtree
(architecture dicts are checked by the model builders). Another module adds its fields with
`register(path, rule, family=...)`; a family that extends another one is added at run time with `add_family`
(e.g. `add_family("experiment", {"experiment.knob": Int(0)}, base="train")`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from zipjax import weights
from zipjax.configs import GROUPS, Discover, Limits
from zipjax.errors import InputError
from zipjax.jobs.selftrain import Settings
from zipjax.models.detector import DetectorConfig
from zipjax.models.sam2.sam2 import SAM2_SIZES, size_key
from zipjax.models.sam_net.model import SAM_SIZES
from zipjax.schema import (ARCH, BOOL, OPTIONAL_TEXT, PROBABILITY, SEED, TEXT, Choice, Custom, Float, Int, Rule,
                           regex_pairs, rules_of, rules_of_groups)
from zipjax.train.config_parts import TRAIN_GROUPS, Data, Text
from zipjax.train.losses import LossConfig


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
  return regex_pairs(v, _sharding_action)


MESH = Custom("a list of distinct (axis name, size >= 1 or -1) pairs, at most one -1", _mesh)
SHARDING_RULES = Custom("a list of (regex, action) pairs; action: a PartitionSpec tuple of axis names / None, "
                        "'fsdp', 'fsdp:AXIS' or 'replicate' (zipjax/parallel)", _sharding_rules)

# Every field of the presets in zipjax/configs.py: the top-level fields here, each group's rules declared with the
# fields of its typed group (`zipjax.configs.GROUPS`: Models, Limits, Semantic, Boundary, Discover, Sam,
# Scoring, Output, Label)
RULES: dict[str, Rule] = {
    "preset": TEXT,
    "batch_size": Int(1),
    "micro_batch": Int(0),
    **rules_of_groups(GROUPS),
    # device mesh and parameter sharding (zipjax/parallel)
    "mesh": MESH,
    "sharding_rules": SHARDING_RULES,
}


def _get(config, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _micro_batch(config) -> str | None:
  m, b = config.get("micro_batch", 1), _get(config, "batch_size")
  if isinstance(m, int) and isinstance(b, int) and m > 0 and b % m:
    return f"micro_batch = {m} must divide batch_size = {b} (or be 0: the whole batch at once)"
  return None


def _sam_family(config) -> str | None:
  """models.sam.arch (a size name) and a manifest checkpoint name must be of sam.family."""
  family, arch = _get(config, "sam.family"), _get(config, "models.sam.arch")
  if isinstance(arch, str):
    if family == "sam2":
      try:
        size_key(arch)
      except ValueError:
        return (f"models.sam.arch = {arch!r} is not a SAM 2 size ({', '.join(SAM2_SIZES)}) for sam.family = "
                "'sam2'")
    else:
      if (arch if arch.startswith("vit_") else f"vit_{arch}") not in SAM_SIZES:
        return f"models.sam.arch = {arch!r} is not a SAM size ({', '.join(SAM_SIZES)}) for sam.family = 'sam'"
  checkpoint = _get(config, "models.sam.checkpoint")
  try:
    entry = weights.lookup(str(checkpoint))
  except Exception:  # pylint: disable=broad-except
    return None  # a path or Hub name: its family is read from the checkpoint
  if entry["family"] != family:
    return (f"models.sam.checkpoint = {checkpoint!r} is a {entry['family']!r} checkpoint but sam.family = "
            f"{family!r}")
  return None


def _from_dataclass(group: str, build) -> Callable[[Any], str | None]:
  """A relation that runs a config dataclass's own consistency checks (`build(config)` raising InputError), so
  they are reported with the other problems before anything is built."""
  def check(config) -> str | None:
    try:
      build(config)
    except InputError as e:
      return f"config.{group}: {e}"
    return None
  check.__name__ = f"_{group}_consistent"
  return check


# Checks that involve several fields: config -> problem or None (run only when every field passed its rule). A
# group's own relations are its dataclass's (`__post_init__`): those of input (max_side >= min_side) and discover
# (the semantic initialisation's seeds).
RELATIONS: list[Callable[[Any], str | None]] = [
    _from_dataclass("input", Limits.from_config), _from_dataclass("discover", Discover.from_config), _micro_batch,
    _sam_family]


# Every field of configs/train_*.py: the top-level fields here (zipjax/train/trainer.py, zipjax/parallel/), the
# groups' from their typed definitions (zipjax/models/detector.py `DetectorConfig`, zipjax/train/losses.py
# `LossConfig`, zipjax/train/config_parts.py `TRAIN_GROUPS`, zipjax.configs `Limits`).
TRAIN_RULES: dict[str, Rule] = {
    "seed": SEED,
    "total_steps": Int(1),
    "batch_size": Int(1),               # global; a multiple of the mesh's devices (checked by the trainer)
    "log_every": Int(1),
    "init_checkpoint": OPTIONAL_TEXT,   # "" = random backbone
    "init_workdir": OPTIONAL_TEXT,      # "" = none
    "distributed": BOOL,
    "xla_opt_level": Int(-1, 3),        # -1: XLA's default
    # the detector and the set loss: the rules declared with DetectorConfig's and LossConfig's fields
    **rules_of(DetectorConfig, "model."),
    **rules_of(LossConfig, "loss."),
    # text, data, optim, checkpoint, eval, detect: the rules declared with the typed groups' fields
    **rules_of_groups(TRAIN_GROUPS),
    # mesh and FSDP (zipjax/parallel)
    "mesh": MESH,
    "sharding_rules": SHARDING_RULES,
    "fsdp_min_size": Int(0),
    # image decoding limits (as the segment family's)
    **rules_of(Limits, "input."),
}


def _warmup(config) -> str | None:
  w, t = _get(config, "optim.warmup_steps"), _get(config, "total_steps")
  if w > t:
    return f"optim.warmup_steps = {w} must be <= total_steps = {t}"
  return None


TRAIN_RELATIONS: list[Callable[[Any], str | None]] = [
    _from_dataclass("input", Limits.from_config), _from_dataclass("data", Data.from_config), _warmup,
    _from_dataclass("text", Text.from_config),
    _from_dataclass("model", lambda config: DetectorConfig.from_config(config.model)),
    _from_dataclass("loss", lambda config: LossConfig.from_config(config.loss))]


# The `selftrain` group of configs/selftrain_*.py over the train rules: the rules declared with the fields of
# zipjax/jobs/selftrain.py `Settings`.
SELFTRAIN_GROUP_RULES: dict[str, Rule] = rules_of(Settings, "selftrain.")
SELFTRAIN_RULES: dict[str, Rule] = {**TRAIN_RULES, **SELFTRAIN_GROUP_RULES}
SELFTRAIN_RELATIONS: list[Callable[[Any], str | None]] = TRAIN_RELATIONS + [
    _from_dataclass("selftrain", Settings.from_config)]

# family name -> (name of its rule table global, name of its relations global, hint for a missing field);
# tables are looked up by name at call time, so a test may swap a table for a copy
_FAMILIES: dict[str, tuple[str, str, str]] = {
    "segment": ("RULES", "RELATIONS", "every preset has it; start from zipjax.configs"),
    "train": ("TRAIN_RULES", "TRAIN_RELATIONS", "every configs/train_*.py has it; start from configs/train_smoke.py"),
    "selftrain": ("SELFTRAIN_RULES", "SELFTRAIN_RELATIONS",
                  "every configs/selftrain_*.py has it; start from configs/selftrain_smoke.py"),
}
_EXTRA: dict[str, tuple[dict, list]] = {}  # families added with add_family


def family_tables(family: str = "segment") -> tuple[dict, list, str]:
  """(rules, relations, hint) of a config family."""
  if family in _EXTRA:
    rules, relations = _EXTRA[family]
    return rules, relations, f"every {family} config has it"
  if family not in _FAMILIES:
    raise KeyError(f"unknown config family {family!r}; known: {sorted(set(_FAMILIES) | set(_EXTRA))}")
  rules_name, relations_name, hint = _FAMILIES[family]
  return globals()[rules_name], globals()[relations_name], hint


def register(path: str, rule: Rule, family: str = "segment") -> None:
  """Adds (or replaces) the rule of a field, for modules that add fields to a family's configs."""
  family_tables(family)[0][path] = rule


def add_family(name: str, rules: Mapping[str, Rule], base: str | None = "train",
               relations: list | tuple = ()) -> dict:
  """Adds a config family: `base`'s rules and relations (if any) plus `rules` and `relations`; returns its table.
  E.g. the self-training configs: `add_family("selftrain", {"selftrain.rounds": Int(0), ...})`."""
  base_rules, base_relations = ({}, []) if base is None else family_tables(base)[:2]
  table = {**base_rules, **dict(rules)}
  _EXTRA[name] = (table, list(base_relations) + list(relations))
  return table


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


def config_problems(config, rules: Mapping[str, Rule] | None = None, family: str = "segment") -> list[str]:
  """Every problem of `config` as a list of messages (empty when it is valid), against `family`'s tables (or
  the rule table `rules` with that family's relations)."""
  family_rules, relations, hint = family_tables(family)
  rules = family_rules if rules is None else rules
  problems, seen = [], set()
  for path, value in _leaves(config, rules):
    seen.add(path)
    rule = rules.get(path)
    if rule is None:
      problems.append(f"config.{path}: unknown field (no validation rule; a typo, or a field that the "
                      f"{family} rules of zipjax.config_check do not know)")
      continue
    why = rule.problem(value)
    if why:
      problems.append(f"config.{path} = {value!r}: {why}")
  for path in rules:
    if path not in seen:
      problems.append(f"config.{path}: missing ({hint})")
  if not problems:
    problems.extend(p for p in (check(config) for check in relations) if p)
  return problems


def check_config(config, rules: Mapping[str, Rule] | None = None, family: str = "segment"):
  """Validates `config` (see the module docstring); returns it unchanged.

  Raises:
    InputError: listing every problem (field, value, what it must be).
  """
  problems = config_problems(config, rules, family)
  if problems:
    head = "invalid config value" if len(problems) == 1 else f"invalid config ({len(problems)} problems)"
    raise InputError(head + ":\n  " + "\n  ".join(problems))
  return config


def check_train_config(config):
  """`check_config` for the detector family (configs/train_*.py; `zipjax train`, `zipjax detect`)."""
  return check_config(config, family="train")


def check_selftrain_config(config):
  """`check_config` for the self-training family (configs/selftrain_*.py; `zipjax self-train`)."""
  if "selftrain" not in config:
    raise InputError("the config has no 'selftrain' group (use configs/selftrain_*.py; a train config is trained "
                     "with `zipjax train`)")
  return check_config(config, family="selftrain")


__all__ = ["Rule", "Int", "Float", "Choice", "Custom", "BOOL", "TEXT", "OPTIONAL_TEXT", "ARCH", "PROBABILITY",
           "SEED", "MESH", "SHARDING_RULES", "RULES", "RELATIONS", "TRAIN_RULES", "TRAIN_RELATIONS", "SELFTRAIN_RULES",
           "SELFTRAIN_RELATIONS", "register",
           "add_family", "family_tables", "config_problems", "check_config", "check_train_config",
           "check_selftrain_config"]
