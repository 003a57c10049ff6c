"""zipjax.config_check: every field of every preset and config file has a rule (the segment / label family and the
train family of configs/train_*.py, the self-train family of configs/selftrain_*.py); bad values (CLI overrides included) are refused, all problems in one error."""
import copy
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


@pytest.mark.parametrize("family", ["segment", "train"])
def test_every_rule_names_a_field(family):
  """No stale rules: each rule's field exists in the zip preset (segment family) / configs/train_smoke.py."""
  config = configs.zip() if family == "segment" else load_config_file(os.path.join(ROOT, "configs",
                                                                                    "train_smoke.py"))
  for path in config_check.family_tables(family)[0]:
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


def _set(config, path, value):
  """config[a][b][c] = value for path 'a.b.c', whatever the field's type."""
  node = config
  *parents, leaf = path.split(".")
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  return config


@pytest.mark.parametrize("path", sorted(config_check.RULES))
def test_each_field_refuses_a_bad_value(path):
  config = _set(configs.zip(), path, _bad_value(config_check.RULES[path]))
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


# ---------------------------------------------------------------------------------------- the train family
TRAIN_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "train_*.py")))


@pytest.fixture(scope="module")
def train_config():
  return load_config_file(os.path.join(ROOT, "configs", "train_smoke.py"))


@pytest.mark.parametrize("path", TRAIN_FILES, ids=os.path.basename)
def test_every_train_config_file_passes_the_train_rules(path):
  assert TRAIN_FILES and config_check.config_problems(load_config_file(path), family="train") == []


def test_a_train_field_without_a_rule_fails(train_config):
  """What the file test above catches: a field added to configs/train_*.py (or a typo) without a rule."""
  config = copy.deepcopy(train_config)
  config.optim.lr_warmup = 3  # not a field
  del config.loss["drop_loss"]
  with pytest.raises(InputError) as e:
    config_check.check_train_config(config)
  msg = str(e.value)
  assert "2 problems" in msg and "config.optim.lr_warmup: unknown field" in msg and "train rules" in msg
  assert "config.loss.drop_loss: missing" in msg


@pytest.mark.parametrize("path", sorted(config_check.TRAIN_RULES))
def test_each_train_field_refuses_a_bad_value(train_config, path):
  config = _set(copy.deepcopy(train_config), path, _bad_value(config_check.TRAIN_RULES[path]))
  with pytest.raises(InputError, match=f"config.{path} = "):
    config_check.check_train_config(config)


@pytest.mark.parametrize("field,value,message", [
    ("optim.warmup_steps", 500, "optim.warmup_steps = 500 must be <= total_steps = 300"),
    ("data.min_scale", 2.0, "data.max_scale = 1.4 must be >= data.min_scale = 2.0"),
    ("model.patch_size", 24, "config.model: detector config: input_size 128 is not a multiple of patch_size 24"),
    ("model.drop_path", 1.0, "config.model: detector config: drop_path must be in [0, 1)"),
    ("text.arch.transformer_heads", 3, "transformer_width = 64 must be a multiple of text.arch.transformer_heads"),
    ("input.min_side", 9000, "input.max_side = 8192 must be >= input.min_side = 9000"),
])
def test_train_relations(train_config, field, value, message):
  config = _set(copy.deepcopy(train_config), field, value)
  with pytest.raises(InputError) as e:
    config_check.check_train_config(config)
  assert message in str(e.value)


def test_add_family_extends_a_base_family(train_config, monkeypatch):
  """A module's own group over the train rules, added at run time."""
  monkeypatch.setattr(config_check, "_EXTRA", {})
  config = copy.deepcopy(train_config)
  config.experiment = ml_collections.ConfigDict({"rounds": 2, "mode": "union"})
  with pytest.raises(InputError, match="config.experiment.rounds: unknown field"):
    config_check.check_train_config(config)
  config_check.add_family("experiment", {"experiment.rounds": config_check.Int(0),
                                         "experiment.mode": config_check.Choice("union", "replace")})
  config_check.check_config(config, family="experiment")
  config.experiment.rounds = -1
  config.optim.lr = math.nan  # the base family's rules apply too
  with pytest.raises(InputError, match="2 problems") as e:
    config_check.check_config(config, family="experiment")
  assert "config.experiment.rounds = -1" in str(e.value) and "config.optim.lr = nan" in str(e.value)
  config = copy.deepcopy(config)
  config.experiment.rounds, config.optim.lr = 1, 1e-3
  del config.experiment["mode"]
  with pytest.raises(InputError, match="config.experiment.mode: missing"):
    config_check.check_config(config, family="experiment")


# ------------------------------------------------------------------------------------ the self-train family
SELFTRAIN_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "selftrain_*.py")))


@pytest.fixture(scope="module")
def selftrain_config():
  return load_config_file(os.path.join(ROOT, "configs", "selftrain_smoke.py"))


@pytest.mark.parametrize("path", SELFTRAIN_FILES, ids=os.path.basename)
def test_every_selftrain_config_file_passes_the_selftrain_rules(path):
  config = load_config_file(path)
  assert SELFTRAIN_FILES and config_check.config_problems(config, family="selftrain") == []
  # the group is the only difference from the train family
  assert any("config.selftrain." in p for p in config_check.config_problems(config, family="train"))


@pytest.mark.parametrize("path", sorted(config_check.SELFTRAIN_RULES))
def test_each_selftrain_field_refuses_a_bad_value(selftrain_config, path):
  rule = config_check.SELFTRAIN_RULES[path]
  bad = ([1.5] if path == "selftrain.thresholds" else [0] if path == "selftrain.steps" else _bad_value(rule))
  config = _set(copy.deepcopy(selftrain_config), path, bad)
  with pytest.raises(InputError, match=f"config.{path} = "):
    config_check.check_selftrain_config(config)


@pytest.mark.parametrize("field,value,message", [
    ("selftrain.thresholds", [0.3], "selftrain.thresholds has 1 value(s) for selftrain.rounds = 2"),
    ("selftrain.steps", [10, 20], "selftrain.steps has 2 values"),
])
def test_selftrain_relations(selftrain_config, field, value, message):
  config = _set(copy.deepcopy(selftrain_config), field, value)
  with pytest.raises(InputError) as e:
    config_check.check_selftrain_config(config)
  assert message in str(e.value)


def test_self_train_cli_bad_override_exit_2_before_training(tmp_path, monkeypatch, capsys):
  from zipjax.jobs import selftrain  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(selftrain, "self_train", lambda *a, **k: pytest.fail("self-training started"))
  rc = cli.main(["self-train", "--config", os.path.join(ROOT, "configs", "selftrain_smoke.py"), "--pseudo-json",
                 str(tmp_path / "a.json"), "--images-root", str(tmp_path), "--workdir", str(tmp_path / "w"),
                 "--config.selftrain.mode=intersect", "--config.optim.lr=nan"])
  err = capsys.readouterr().err
  assert rc == 2 and "(2 problems)" in err and "Traceback" not in err, err
  assert "config.selftrain.mode = 'intersect'" in err and "config.optim.lr = nan" in err


@pytest.mark.parametrize("overrides,fields", [
    (["--config.optim.lr=nan"], ["optim.lr"]),
    (["--config.batch_size=0"], ["batch_size"]),
    (["--config.model.dtype=float16"], ["model.dtype"]),
    (["--config.data.hflip=1.5", "--config.checkpoint.keep=0"], ["data.hflip", "checkpoint.keep"]),
    (["--config.sharding_rules=[('.*', 'shard')]"], ["sharding_rules"]),
    (["--config.model.patch_size=24"], ["model"]),
])
def test_train_cli_bad_overrides_exit_2_before_training(tmp_path, monkeypatch, capsys, overrides, fields):
  from zipjax.train import trainer  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("training started"))
  rc = cli.main(["train", "--config", os.path.join(ROOT, "configs", "train_smoke.py"), "--train-json",
                 str(tmp_path / "a.json"), "--images-root", str(tmp_path), "--workdir", str(tmp_path / "w"),
                 *overrides])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith("zipjax train: error: invalid config") and "Traceback" not in err, err
  assert all(f"config.{f}" in err for f in fields), err
  assert len(fields) == 1 or f"({len(fields)} problems)" in err


def test_detect_cli_bad_override_exit_2_before_loading(tmp_path, monkeypatch, capsys, train_config):
  from zipjax.commands import detect  # pylint: disable=import-outside-toplevel
  from zipjax.io.atomic import atomic_write_json  # pylint: disable=import-outside-toplevel
  from zipjax.train.trainer import config_to_dict  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(detect, "checkpoint_step", lambda w: pytest.fail("the workdir's checkpoints were read"))
  (tmp_path / "w").mkdir()
  atomic_write_json(str(tmp_path / "w" / "config.json"), config_to_dict(train_config))
  rc = cli.main(["detect", os.path.join(ROOT, "examples", "oranges.png"), "--workdir", str(tmp_path / "w"),
                 "--classes", "orange", "--out", str(tmp_path / "o"), "--config.detect.score_threshold=2"])
  err = capsys.readouterr().err
  assert rc == 2 and "config.detect.score_threshold = 2" in err and "Traceback" not in err, err
