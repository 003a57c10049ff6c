"""Typed config groups (zipjax/schema.py): a field's rule is declared once, beside its default, and both the
dataclass built in Python and the config check of a config file's group apply it."""
import copy
import dataclasses

import pytest

from zipjax import config_check, configs, schema
from zipjax.commands.segment import load_config_file
from zipjax.errors import InputError
from zipjax.jobs import selftrain
from zipjax.jobs.selftrain import Settings
from zipjax.models.detector import DetectorConfig
from zipjax.train import config_parts
from zipjax.train.losses import LossConfig

GROUPS = ((DetectorConfig, "model."), (LossConfig, "loss."), (Settings, "selftrain."),
          *((cls, name + ".") for name, cls in configs.GROUPS.items()),  # the segment family's, input included
          *((cls, name + ".") for name, cls in config_parts.TRAIN_GROUPS.items()))  # text, data, optim, ...


def _leaves(obj, prefix):
  """{dotted path: value} of a typed group's fields, nested groups flattened."""
  out = {}
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    out.update(_leaves(value, f"{prefix}{f.name}.") if "group" in f.metadata else {prefix + f.name: value})
  return out


@pytest.mark.parametrize("cls,prefix", GROUPS)
def test_every_field_has_a_rule_and_the_check_uses_it(cls, prefix):
  rules = schema.rules_of(cls, prefix)
  defaults = _leaves(cls(), prefix)
  assert list(rules) == list(defaults)
  for table in (config_check.SELFTRAIN_RULES, config_check.TRAIN_RULES, config_check.RULES):
    if any(k.startswith(prefix) for k in table):  # no second rule for a field, in any family
      assert {k: table[k] for k in table if k.startswith(prefix)} == rules
  for path, value in defaults.items():  # the defaults pass their own rules
    assert rules[path].problem(value) is None, path


@pytest.mark.parametrize("name", sorted(configs.GROUPS))
def test_the_presets_are_built_from_the_typed_groups(name):
  """The reference preset's groups are the typed groups' defaults; the zip preset's read back as valid groups
  equal to the presets' values."""
  cls = configs.GROUPS[name]
  assert configs.reference()[name].to_dict() == dataclasses.asdict(cls())
  z = configs.zip()
  assert dataclasses.asdict(cls.from_config(z)) == z[name].to_dict()


@pytest.mark.parametrize("group,field,value,why", [
    ("discover", "max_bbox_ratio", 1.0, "discover.max_bbox_ratio = 1.0: must be a finite number > 1"),
    ("discover", "connectivity", 6, "discover.connectivity = 6: must be one of 4, 8"),
    ("scoring", "nms_threshold", 1.5, "scoring.nms_threshold = 1.5: must be a finite number in [0, 1]"),
    ("semantic", "feature_norm", "rows", "semantic.feature_norm = 'rows': must be one of 'tokens', 'channels'"),
    ("boundary", "bucket_ratios", (2.0, 1.0), "boundary.bucket_ratios = (2.0, 1.0): must be a non-empty increasing"),
    ("label", "workers", 0, "label.workers = 0: must be an integer >= 1"),
])
def test_segment_groups_refuse_alike_from_python_and_from_a_config(group, field, value, why):
  with pytest.raises(InputError, match=why.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
    configs.GROUPS[group](**{field: value})
  config = configs.zip()
  config[group][field] = value
  with pytest.raises(InputError) as e:
    config_check.check_config(config)
  assert f"config.{why}" in str(e.value)


def test_nested_group_and_group_relations():
  with pytest.raises(InputError, match="discover.semantic.cells_per_cluster = 0: must be an integer >= 1"):
    configs.Discover.from_config({"semantic": {"cells_per_cluster": 0}})
  with pytest.raises(InputError, match=r"unknown discover config semantic keys: \['cells'\]"):
    configs.Discover.from_config({"semantic": {"cells": 3}})
  with pytest.raises(InputError, match="must be smaller than discover.num_clusters = 6"):
    configs.Discover(init="semantic", num_clusters=6)  # 6 background seeds leave no foreground one
  config = configs.zip()
  config.discover.num_clusters = 6
  with pytest.raises(InputError, match="config.discover: discover.semantic.background_clusters = 6 must be smaller"):
    config_check.check_config(config)
  with pytest.raises(InputError, match="input.max_side = 40 must be >= input.min_side = 64"):
    configs.Limits(min_side=64, max_side=40)
  assert configs.Boundary.from_config({"bucket_ratios": [1.0, 2.0]}).bucket_ratios == (1.0, 2.0)  # hashable


@pytest.mark.parametrize("field,value,why", [
    ("drop_path", 1.0, "drop_path = 1.0: must be a finite number in [0, 1)"),
    ("prior_prob", 1.0, "prior_prob = 1.0: must be a finite number in (0, 1)"),
    ("stem_width", -1, "stem_width = -1: must be an integer >= 0"),
    ("box_source", "tight", "box_source = 'tight': must be one of 'head', 'mask'"),
    ("layers", 2.0, "layers = 2.0: must be an integer >= 1"),
    ("remat", 1, "remat = 1: must be a boolean"),
])
def test_python_and_config_file_refuse_alike(field, value, why):
  """The same bad value, given to the dataclass in Python and to a config file's group, is refused by the same
  rule with the same words."""
  with pytest.raises(InputError, match="detector config: " + why.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[")):
    DetectorConfig(**{field: value})
  config = copy.deepcopy(load_config_file("configs/train_smoke.py"))
  config.model.unlock()
  del config.model[field]
  config.model[field] = value
  with pytest.raises(InputError) as e:
    config_check.check_train_config(config)
  assert f"config.model.{why}" in str(e.value)


def test_every_problem_of_a_group_at_once_and_the_relations_after():
  with pytest.raises(InputError) as e:
    LossConfig(focal_alpha=2.0, mask_points=-1)
  assert str(e.value).count("must be") == 2 and "focal_alpha = 2.0" in str(e.value)
  with pytest.raises(InputError, match="width 30 is not a multiple of heads 4"):
    DetectorConfig(width=30, heads=4)


def test_from_mapping_refuses_unknown_keys_and_takes_floats_as_floats():
  with pytest.raises(InputError, match=r"unknown loss config keys: \['cost_clas'\]"):
    LossConfig.from_config({"cost_clas": 1.0})
  loss = LossConfig.from_config({"cost_class": 3})
  assert loss.cost_class == 3.0 and isinstance(loss.cost_class, float)
  with pytest.raises(InputError, match="mask_points = 1.5: must be an integer"):
    LossConfig.from_config({"mask_points": 1.5})  # an int field is not rounded


def test_selftrain_config_group_is_built_from_the_settings():
  """configs/selftrain_*.py build `config.selftrain` from Settings' declared defaults: the defaults are CutLER's
  recipe, an override is checked by its rule, an unknown name is refused."""
  group = selftrain.config_group(predict_chunk=8)
  assert group.predict_chunk == 8 and group.thresholds == [0.7, 0.65] and group.steps == []
  assert sorted(group.keys()) == sorted(f.name for f in dataclasses.fields(Settings))
  with pytest.raises(InputError, match="selftrain.dedup_iou = 0.0: must be"):
    selftrain.config_group(dedup_iou=0.0)
  with pytest.raises(InputError, match=r"unknown selftrain settings \['round'\]"):
    selftrain.config_group(round=3)


def test_train_groups_for_config_files():
  """configs/train_*.py build text / data / optim / checkpoint / eval / detect from the typed groups: the
  defaults are the real recipe (configs/train_vit_b16.py), a change is checked by its rule, a nested group takes
  a partial dict, an unknown name is refused."""
  vit = load_config_file("configs/train_vit_b16.py")
  for name, cls in config_parts.TRAIN_GROUPS.items():
    assert vit[name].to_dict() == config_parts.group(name).to_dict()
    assert dataclasses.asdict(cls.from_config(vit)) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in vit[name].to_dict().items()}
  text = config_parts.group("text", arch=dict(transformer_width=64, transformer_heads=1))
  assert text.arch.to_dict() == dict(context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                                     transformer_layers=12)
  with pytest.raises(InputError, match="text.arch.transformer_width = 60 must be a multiple of"):
    config_parts.group("text", arch=dict(transformer_width=60))
  with pytest.raises(InputError, match=r"optim.b1 = 1.0: must be a finite number in \[0, 1\)"):
    config_parts.group("optim", b1=1.0)
  with pytest.raises(InputError, match="must be a list of \\(regex, multiplier >= 0\\) pairs"):
    config_parts.group("optim", lr_multipliers=[("(", 1.0)])
  with pytest.raises(InputError, match="data.max_scale = 0.5 must be >= data.min_scale = 0.6"):
    config_parts.group("data", min_scale=0.6, max_scale=0.5)
  with pytest.raises(InputError, match=r"unknown eval settings \['evry'\]"):
    config_parts.group("eval", evry=3)
  with pytest.raises(InputError, match="unknown train config group 'opt'"):
    config_parts.group("opt")
