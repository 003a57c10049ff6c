"""zipjax.config_check: every preset field has a rule; bad values (CLI overrides included) are refused."""
import glob
import math
import os

import ml_collections
import pytest

from zipjax import cli, config_check, configs
from zipjax.commands.segment import load_config_file
from zipjax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the segment / label family (the detector's train_*.py and selftrain_*.py configs have their own groups)
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if not os.path.basename(p).startswith(("train_", "selftrain_")))


def _all_configs():
  out = [(name, fn()) for name, fn in configs.PRESETS.items()]
  out += [(os.path.basename(p), load_config_file(p)) for p in CONFIG_FILES]
  return out


@pytest.mark.parametrize("name,config", _all_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_of_every_preset_and_config_file_has_a_rule_and_passes(name, config):
  """A field added to a preset without a rule in config_check.RULES fails here (unknown field)."""
  assert config_check.config_problems(config) == [], name


def test_every_rule_names_a_preset_field():
  """No stale rules: each rule's field exists in the zip preset."""
  config = configs.zip()
  for path in config_check.RULES:
    node = config
    for part in path.split("."):
      assert part in node, path
      node = node[part]


def _bad_value(rule):
  """A value each rule must refuse."""
  if rule.kind == "int":
    return rule.lo - 1 if rule.lo is not None else 1.5
  if rule.kind == "float":
    return math.nan
  if rule.kind == "bool":
    return 1
  if rule.kind == "choice":
    return "no-such-choice"
  if rule.kind == "str":
    return " "
  return 3  # arch


@pytest.mark.parametrize("path", sorted(config_check.RULES))
def test_each_field_refuses_a_bad_value(path):
  config = configs.zip()
  node = config
  *parents, leaf = path.split(".")
  for p in parents:
    node = node[p]
  value = _bad_value(config_check.RULES[path])
  with node.ignore_type():
    node[leaf] = value
  with pytest.raises(InputError, match=f"config.{path} = "):
    config_check.check_config(config)


def test_unknown_and_missing_fields():
  config = configs.reference()
  config.scoring.nms_threshhold = 0.3  # typo
  del config.output["overlays"]
  with pytest.raises(InputError) as e:
    config_check.check_config(config)
  msg = str(e.value)
  assert "2 problems" in msg and "config.scoring.nms_threshhold: unknown field" in msg
  assert "config.output.overlays: missing" in msg


@pytest.mark.parametrize("value,ok", [(0.0, True), (1.0, True), (0.5, True), (-0.1, False), (1.01, False),
                                      (math.nan, False), (math.inf, False), (True, False), (1, True)])
def test_probability_rule(value, ok):
  assert (config_check.PROBABILITY.problem(value) is None) == ok


def test_relations():
  config = configs.zip()
  config.input.max_side = 16
  config.input.min_side = 32
  with pytest.raises(InputError, match="input.max_side = 16 must be >= input.min_side = 32"):
    config_check.check_config(config)
  config = configs.zip()
  config.discover.semantic.background_clusters = config.discover.num_clusters
  with pytest.raises(InputError, match="background_clusters"):
    config_check.check_config(config)
  config.discover.init = "linspace"  # the relation only matters for the semantic initialisation
  config_check.check_config(config)


def test_register_extends_the_table(monkeypatch):
  monkeypatch.setattr(config_check, "RULES", dict(config_check.RULES))
  config = configs.zip()
  config.extra = ml_collections.ConfigDict({"workers": 0})
  with pytest.raises(InputError, match="config.extra.workers: unknown field"):
    config_check.check_config(config)
  config_check.register("extra.workers", config_check.Int(1))
  with pytest.raises(InputError, match="config.extra.workers = 0: must be an integer >= 1"):
    config_check.check_config(config)
  config.extra.workers = 2
  config_check.check_config(config)


@pytest.mark.parametrize("override,field", [
    ("--config.batch_size=0", "batch_size"),
    ("--config.batch_size=-1", "batch_size"),
    ("--config.scoring.presence_threshold=nan", "scoring.presence_threshold"),
    ("--config.scoring.nms_threshold=-0.2", "scoring.nms_threshold"),
    ("--config.input.min_side=0", "input.min_side"),
    ("--config.discover.connectivity=6", "discover.connectivity"),
])
def test_cli_override_refused_before_models_are_built(tmp_path, monkeypatch, capsys, override, field):
  import zipjax.pipeline.zip as zip_pipeline  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(zip_pipeline, "build_segmenter", lambda *a, **k: pytest.fail("models were built"))
  rc = cli.main(["segment", os.path.join(ROOT, "examples", "oranges.png"), "--classes", "orange",
                 "--random-init", "--config", os.path.join(ROOT, "configs", "smoke.py"), "--out",
                 str(tmp_path / "out"), override])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert f"config.{field} = " in err and "Traceback" not in err
