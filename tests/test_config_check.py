"""zipjax.config_check: every field of every preset and config file has a rule (the segment / label family and the
train family of configs/train_*.py, the self-train family of configs/selftrain_*.py); bad values (CLI overrides
included) are refused, all problems in one error; every numeric field's intended bounds, stated independently of
the rules (`BOUNDS`), hold."""
import copy
import glob
import math
import os

import ml_collections
import pytest
from ml_collections.config_flags import config_path

from zipjax import cli, config_check, configs
from zipjax.commands.common import apply_overrides
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
  with config.unlocked():  # what a config built without the presets (or an old run's config.json) can hold
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


def test_presets_and_config_files_are_locked(tmp_path):
  """A misspelt field fails where it is set, naming the nearest field: in a preset (every group, also those
  the zip preset replaces), and in a config file (one line, also for a group the file added); a config file
  adds a group of its own inside `config.unlocked()`; changing a field stays allowed."""
  for preset in (configs.zip(), configs.reference()):
    with pytest.raises(AttributeError, match='Did you mean "max_instances"'):
      preset.discover.max_instnces = 8
    with pytest.raises(AttributeError):
      preset.batch_sise = 2
    preset.discover.max_instances = 8
  good = tmp_path / "good.py"
  good.write_text("import ml_collections\nfrom zipjax import configs\n\ndef get_config():\n"
                  "  config = configs.zip()\n  config.batch_size = 2\n  group = ml_collections.ConfigDict()\n"
                  "  group.workers = 1\n  with config.unlocked():\n    config.mine = group\n  return config\n")
  config = load_config_file(str(good))
  assert config.batch_size == 2 and config.mine.workers == 1
  with pytest.raises(AttributeError):
    config.mine.worker = 2   # the file's own group is locked once loaded
  typo = tmp_path / "typo.py"
  typo.write_text("from zipjax import configs\n\ndef get_config():\n  config = configs.zip()\n"
                  "  config.scoring.nms_treshold = 0.3\n  return config\n")
  with pytest.raises(InputError) as e:
    load_config_file(str(typo))
  msg = str(e.value)
  assert "\n" not in msg and "no config field 'nms_treshold' (did you mean 'nms_threshold'?)" in msg, msg


def test_register_extends_the_table(monkeypatch):
  monkeypatch.setattr(config_check, "RULES", dict(config_check.RULES))
  config = configs.zip()
  with config.unlocked():
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
  import zipjax.commands.segment as segment_cmd  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(segment_cmd, "build_engine", lambda *a, **k: pytest.fail("models were built"))
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
  with config.unlocked():
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
    ("model.width", 63, "config.model: detector config: width 63 is not a multiple of heads 2"),
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
  with config.unlocked():
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
  with config.unlocked():
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
  from zipjax.train.task import config_to_dict  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(detect, "checkpoint_step", lambda w: pytest.fail("the workdir's checkpoints were read"))
  (tmp_path / "w").mkdir()
  atomic_write_json(str(tmp_path / "w" / "config.json"), config_to_dict(train_config))
  rc = cli.main(["detect", os.path.join(ROOT, "examples", "oranges.png"), "--workdir", str(tmp_path / "w"),
                 "--classes", "orange", "--out", str(tmp_path / "o"), "--config.detect.score_threshold=2"])
  err = capsys.readouterr().err
  assert rc == 2 and "config.detect.score_threshold = 2" in err and "Traceback" not in err, err


# ------------------------------------------------------------------- intended bounds, stated independently
# test_each_*field_refuses_a_bad_value above take their bad value from the rule under test (lo - 1), so a wrong
# bound (say `semantic.text_batch_size >= 0`) is invisible to them. This table states what each numeric field
# may hold from what the field MEANS (the comments of zipjax/configs.py, configs/train_smoke.py,
# configs/selftrain_smoke.py and the modules they name), not from config_check's tables: values that must be
# refused and values that must pass, the passing ones at the boundary where there is one (so a rule that is too
# strict fails as well). It is the contract the rules implement; keep it when the schema is rewritten.
# Rows: (family, field, must refuse, must pass, why; fields set first for both). "train" rows are checked in the
# train and the self-train family (which extends it).
_POS = "a count / size / period: 0 or less hangs, divides by zero or builds empty arrays"
BOUNDS = [
    # ---- segment / label family (zipjax/configs.py)
    ("segment", "batch_size", [0, -1], [1], "images per step: 0 makes no progress"),
    ("segment", "micro_batch", [-1], [0, 1], "images vmapped together: 0 = the whole batch, negative is meaningless"),
    ("segment", "models.seed", [-1], [0, 12345], "a seed: non-negative"),
    ("segment", "input.min_side", [0, -1], [1], "refuse shorter sides below it: 0 admits 0-pixel images (the "
     "resize divides by the side)"),
    ("segment", "input.max_side", [0, 31], [32], "refuse longer sides above it: below min_side refuses all"),
    ("segment", "input.max_aspect", [0.0, 0.5], [1.0], "long / short >= 1 always: below 1 refuses every image"),
    ("segment", "semantic.input_size", [0, -16], [16], "the resized square's side"),
    ("segment", "semantic.logit_scale", [0.0, -1.0], [1e-3], "softmax temperature: 0 makes every class "
     "equally likely, < 0 reverses the ranking"),
    ("segment", "semantic.text_batch_size", [0, -1], [1], "prompts per text-encoder call: " + _POS),
    ("segment", "boundary.input_size", [0, -1], [1], "the resized shorter side"),
    ("segment", "boundary.stage", [-1, 5], [0, 4], "ModifiedResNet output: 0 = stem, 1..4 = layer1..layer4"),
    ("segment", "boundary.size_multiple", [-1], [0, 1], "round the longer side to a multiple (0: exact size)"),
    ("segment", "boundary.bucket_ratios", [[], [0.5], [1.5, 1.0], [1.0, 1.0]], [[1.0], [1.0, 2.0]],
     "long / short ratios of the buckets: >= 1, increasing, at least one"),
    ("segment", "discover.num_clusters", [0, -1], [1], "k-means K: " + _POS, {"discover.init": "linspace"}),
    ("segment", "discover.max_iters", [0, -1], [1], "Lloyd iterations: one at least gives an assignment"),
    ("segment", "discover.rtol", [-1e-5], [0.0], "a tolerance: non-negative"),
    ("segment", "discover.atol", [-1e-8], [0.0], "a tolerance: non-negative"),
    ("segment", "discover.semantic.min_foreground_clusters", [-1], [0], "a count of seeds"),
    ("segment", "discover.semantic.cells_per_cluster", [0, -1], [1], "one more seed per this many cells: 0 "
     "divides by zero"),
    ("segment", "discover.semantic.background_clusters", [-1], [0], "a count of seeds"),
    ("segment", "discover.activation_factor", [-0.1], [0.0], "a factor of the mean activation"),
    ("segment", "discover.top_k_clusters", [0, -1], [1], "candidate clusters: " + _POS),
    ("segment", "discover.min_activated_fraction", [-0.1, 1.0, 1.5], [0.0, 0.99],
     "keep a fragment if activated / cells > this: the fraction is <= 1, so 1 or more keeps nothing ever"),
    ("segment", "discover.max_bbox_ratio", [0.0, 0.5, 1.0], [1.01, 3.0],
     "keep a fragment if bbox area / cells < this: the ratio is >= 1, so 1 or less keeps nothing ever"),
    ("segment", "discover.min_instance_cells", [-1], [0], "a cell count"),
    ("segment", "discover.connectivity", [0, 6], [4, 8], "4- or 8-connectivity"),
    ("segment", "discover.max_instances", [0, -1], [1], "static padded instance count: " + _POS),
    ("segment", "discover.max_fragments", [0, -1], [1], "static padded fragment count: " + _POS),
    ("segment", "discover.max_cc_iters", [-1], [0, 1], "propagation rounds (0: until converged)"),
    ("segment", "sam.mask_threshold", [math.nan, math.inf], [-5.0, 0.0], "a logit: any finite number"),
    ("segment", "sam.max_boxes", [0, -1], [1], "static box prompts per call: " + _POS),
    ("segment", "scoring.presence_threshold", [-0.1, 1.1], [0.0, 1.0], "a probability"),
    ("segment", "scoring.nms_threshold", [-0.1, 1.1], [0.0, 1.0], "a mask IoU"),
    ("segment", "scoring.min_score", [-0.1, 1.1], [0.0, 1.0], "a score in [0, 1]"),
    ("segment", "scoring.max_per_image", [0, -1], [1], "top-k: " + _POS),
    ("segment", "scoring.max_present_classes", [-1], [0, 1], "static class slots (0: the automatic bound)"),
    ("segment", "output.overlay_max_side", [0, -1], [1], "a side in pixels"),
    ("segment", "label.shard_size", [0, -1], [1], "images per shard file: 0 never writes one"),
    ("segment", "label.workers", [0, -1], [1], "decoding threads: 0 decodes nothing"),
    ("segment", "label.prefetch", [0, -1], [1], "buffered images: 0 as a queue bound means no bound"),
    ("segment", "label.max_pending", [-1], [0, 1], "queued images at most (0: automatic); < 0 queues none"),
    ("segment", "mesh", [[], [("data", 0)], [("data", -1), ("model", -1)]], [[("data", -1)], [("data", 1)]],
     "axis sizes >= 1, or -1 (the rest) once"),
    # ---- train family (configs/train_smoke.py; the self-train family has every one of these)
    ("train", "seed", [-1], [0], "a seed: non-negative"),
    ("train", "total_steps", [0, -1], [1], "training steps: 0 trains nothing (the schedule divides by it)",
     {"optim.warmup_steps": 0}),
    ("train", "batch_size", [0, -1], [1], "examples per step: " + _POS),
    ("train", "log_every", [0, -1], [1], "a period in steps: step % 0"),
    ("train", "xla_opt_level", [-2, 4], [-1, 0, 3], "XLA backend level 0..3, -1: XLA's default"),
    ("train", "model.input_size", [0, -16], [16], "input side, a multiple of the patch (16)"),
    ("train", "model.patch_size", [0, -16], [4, 32], "patch side: divides input_size 128, a power-of-two "
     "multiple of mask_stride 4"),
    ("train", "model.width", [0, -2], [2], "ViT width, a multiple of heads (2)"),
    ("train", "model.layers", [0, -1], [1], "ViT depth"),
    ("train", "model.heads", [0, -1], [1], "attention heads: width % 0 divides by zero"),
    ("train", "model.embed_dim", [0, -1], [1], "query width"),
    ("train", "model.mask_stride", [0, 3], [1, 16], "pixel-embedding stride: a power of two dividing the patch"),
    ("train", "model.mask_dim", [0, -1], [1], "mask embedding width"),
    ("train", "model.pixel_width", [0, -1], [1], "pixel decoder channels"),
    ("train", "model.stem_width", [-1], [0, 1], "stem channels (0: no stem)"),
    ("train", "model.prior_prob", [0.0, 1.0, -0.5], [0.5, 1e-6], "a probability whose logit is a bias: 0 and 1 "
     "give infinite logits"),
    ("train", "model.drop_path", [-0.1, 1.0], [0.0, 0.9], "a drop rate < 1 (1 drops every block)"),
    ("train", "model.top_k", [0, -1], [1], "detections kept per image"),
    ("train", "model.mask_nms", [-0.1, 1.1], [0.0, 0.5, 1.0], "a mask IoU (0: no suppression)"),
    ("train", "loss.focal_alpha", [-0.1, 1.1], [0.0, 1.0], "a class balance weight in [0, 1]"),
    ("train", "loss.focal_gamma", [-1.0], [0.0], "a focusing exponent: non-negative"),
    *[("train", f"loss.{k}", [-1.0], [0.0], "a cost / loss weight: non-negative (< 0 rewards the error)")
      for k in ("cost_class", "cost_l1", "cost_giou", "cost_mask", "cost_center", "class_weight", "l1_weight",
                "giou_weight", "dice_weight", "mask_bce_weight", "objectness_weight")],
    ("train", "loss.cost_mask_points", [0, -1], [1], "sampled pixels of the mask cost: a mean over 0 points"),
    ("train", "loss.mask_points", [-1], [0, 1], "sampled pixels of the mask loss (0: every pixel)"),
    ("train", "loss.drop_loss_iou", [-0.1, 1.1], [0.0, 1.0], "a box IoU"),
    *[("train", f"text.arch.{k}", [0, -1], [1], "text tower size") for k in (
        "context_length", "vocab_size", "transformer_width", "transformer_layers")],
    ("train", "text.arch.transformer_heads", [0, -1], [1], "attention heads: width % 0 divides by zero"),
    ("train", "text.seed", [-1], [0], "a seed: non-negative"),
    ("train", "data.seed", [-1], [0], "a seed: non-negative"),
    ("train", "data.fraction_seed", [-1], [0], "a seed: non-negative"),
    ("train", "data.workers", [-1], [0, 1], "decoding processes (0: in the main process)"),
    ("train", "data.threads", [-1], [0, 1], "prefetch threads (0: one)"),
    ("train", "data.max_instances", [0, -1], [1], "T targets per image: static size of the matcher's problem"),
    ("train", "data.min_scale", [0.0, -0.5], [0.1], "a scale: 0 makes a 0-pixel image"),
    ("train", "data.max_scale", [0.0, 0.5], [0.6], "a scale >= min_scale (0.6)"),
    ("train", "data.hflip", [-0.1, 1.5], [0.0, 1.0], "a probability"),
    ("train", "data.min_area", [-1.0], [0.0], "an area in pixels"),
    ("train", "data.fraction", [0.0, -0.1, 1.1], [0.01, 1.0], "a fraction of the images: 0 leaves an empty "
     "dataset (an epoch of no batches)"),
    ("train", "data.min_score", [-0.1, 1.1], [0.0, 1.0], "a score in [0, 1]"),
    ("train", "optim.lr", [0.0, -1e-3], [1e-6], "a learning rate: 0 trains nothing (freeze with lr_multipliers)"),
    ("train", "optim.end_factor", [-0.1], [0.0, 1.0], "a factor of lr: non-negative"),
    ("train", "optim.warmup_steps", [-1, 301], [0, 300], "warm-up steps within total_steps (300)"),
    ("train", "optim.weight_decay", [-0.1], [0.0], "a decay rate: non-negative"),
    ("train", "optim.b1", [-0.1, 1.0], [0.0, 0.999], "Adam decay: the bias correction divides by 1 - b1**t, 0 "
     "at b1 = 1 (NaN parameters)"),
    ("train", "optim.b2", [-0.1, 1.0], [0.0, 0.999], "Adam decay: the bias correction divides by 1 - b2**t, 0 "
     "at b2 = 1 (NaN parameters)"),
    ("train", "optim.eps", [0.0, -1e-8], [1e-12], "Adam's denominator offset: 0 divides 0 by 0 for a zero "
     "gradient"),
    ("train", "optim.clip_norm", [-1.0], [0.0, 1.0], "a gradient norm (0: no clipping)"),
    ("train", "optim.lr_multipliers", [[("^x", -1.0)], [("(", 1.0)]], [[], [("^x", 0.0)]],
     "(regex, multiplier >= 0): 0 freezes, < 0 ascends"),
    ("train", "fsdp_min_size", [-1], [0], "an element count"),
    ("train", "checkpoint.every", [0, -1], [1], "a period in steps: step % 0"),
    ("train", "checkpoint.keep", [0, -1], [1], "checkpoints kept: 0 deletes the one a resume needs"),
    ("train", "eval.every", [-1], [0, 1], "a period in steps (0: only at the end)"),
    ("train", "eval.batch_size", [0, -1], [1], "images per call: " + _POS),
    ("train", "eval.score_threshold", [-0.1, 1.1], [0.0, 1.0], "a score in [0, 1]"),
    ("train", "detect.batch_size", [0, -1], [1], "images per call: " + _POS),
    ("train", "detect.score_threshold", [-0.1, 1.1], [0.0, 1.0], "a score in [0, 1]"),
    ("train", "detect.overlay_max_side", [0, -1], [1], "a side in pixels"),
    ("train", "input.min_side", [0, -1], [1], "as the segment family's"),
    ("train", "input.max_side", [0, 31], [32], "as the segment family's"),
    ("train", "input.max_aspect", [0.0, 0.5], [1.0], "as the segment family's"),
    ("train", "mesh", [[], [("data", 0)]], [[("data", -1)]], "as the segment family's"),
    # ---- self-train family (configs/selftrain_smoke.py: rounds 2)
    ("selftrain", "selftrain.rounds", [-1], [0, 1], "rounds after round 0 (0: round 0 only)"),
    ("selftrain", "selftrain.thresholds", [[1.5, 0.2], [-0.1, 0.2]], [[0.0, 1.0]], "scores in [0, 1]"),
    ("selftrain", "selftrain.max_dets", [0, -1], [1], "new labels per image and round"),
    ("selftrain", "selftrain.dedup_iou", [0.0, -0.1, 1.1], [0.01, 1.0], "a mask IoU > 0: at 0 every pair of "
     "labels is one object"),
    ("selftrain", "selftrain.min_area", [-1.0], [0.0], "an area in pixels"),
    ("selftrain", "selftrain.steps", [0, -1, [0], [10, 0, 10]], [1, [], [1], [1, 1, 1]],
     "steps per round: each >= 1"),
    ("selftrain", "selftrain.predict_min_score", [-0.1, 1.1], [0.0, 1.0], "a score in [0, 1]"),
    ("selftrain", "selftrain.predict_max_dets", [0, -1], [1], "saved predictions per image"),
    ("selftrain", "selftrain.predict_chunk", [0, -1], [1], "images per prediction shard: 0 never finishes one"),
    ("selftrain", "selftrain.calibrate", [-0.1, 1.0], [0.0, 0.5], "a quantile < 1 of the agreeing scores (0: the "
     "fixed thresholds); 1 would keep only the single best prediction's score as the threshold"),
    ("selftrain", "selftrain.support_quantile", [-0.1, 1.0], [0.0, 0.1], "a quantile < 1 (0: no support needed)"),
]

_BASE_FILES = {"train": "train_smoke.py", "selftrain": "selftrain_smoke.py"}
_BASE_CACHE: dict = {}


def _base(family):
  if family == "segment":
    return configs.zip()
  if family not in _BASE_CACHE:
    _BASE_CACHE[family] = load_config_file(os.path.join(ROOT, "configs", _BASE_FILES[family]))
  return copy.deepcopy(_BASE_CACHE[family])


def _bound_cases():
  for row in BOUNDS:
    family, path, bad, good, why = row[:5]
    extra = row[5] if len(row) > 5 else {}
    for fam in (("train", "selftrain") if family == "train" else (family,)):
      yield pytest.param(fam, path, bad, good, extra, id=f"{fam}:{path}")


@pytest.mark.parametrize("family,path,bad,good,extra", list(_bound_cases()))
def test_intended_bounds(family, path, bad, good, extra):
  """Each value the table refuses gives exactly one problem, naming the field; each value it passes gives none."""
  leaf = path.rsplit(".", 1)[-1]
  for value in bad:
    config = _base(family)
    for k, v in extra.items():
      _set(config, k, v)
    problems = config_check.config_problems(_set(config, path, value), family=family)
    assert len(problems) == 1 and leaf in problems[0], (path, value, problems)
  for value in good:
    config = _base(family)
    for k, v in extra.items():
      _set(config, k, v)
    assert config_check.config_problems(_set(config, path, value), family=family) == [], (path, value)


@pytest.mark.parametrize("family", ["segment", "train", "selftrain"])
def test_intended_bounds_cover_every_numeric_field(family):
  """A numeric field added to the rules needs its intended bounds in BOUNDS too (free text, booleans and
  choices excepted; the custom list-valued fields of numbers are listed)."""
  covered = {row[1] for row in BOUNDS if row[0] == family or (family == "selftrain" and row[0] == "train")}
  numeric = {p for p, r in config_check.family_tables(family)[0].items()
             if r.kind in ("int", "float") or p in ("mesh", "boundary.bucket_ratios", "optim.lr_multipliers",
                                                     "selftrain.thresholds", "selftrain.steps")}
  assert numeric <= covered, sorted(numeric - covered)


def test_sam_family_relation():
  """sam.family must agree with models.sam.arch (a size name) and with a manifest checkpoint name."""
  config = configs.zip()
  config.sam.family = "sam2"
  with pytest.raises(InputError, match=r"models.sam.arch = 'vit_h' is not a SAM 2 size"):
    config_check.check_config(config)
  config.models.sam.arch = "base_plus"
  with pytest.raises(InputError, match=r"models.sam.checkpoint = 'sam_vit_h' is a 'sam' checkpoint but "
                                       r"sam.family = 'sam2'"):
    config_check.check_config(config)
  config.models.sam.checkpoint = "sam2.1_hiera_base_plus"
  config_check.check_config(config)
  config.models.sam.checkpoint = "/some/where/sam2.1_hiera_base_plus.pt"  # a path: the checkpoint tells
  config_check.check_config(config)
  config.sam.family = "sam"
  config.models.sam.arch = "vit_h"
  config.models.sam.checkpoint = "sam2.1_hiera_tiny"
  with pytest.raises(InputError, match="is a 'sam2' checkpoint but sam.family = 'sam'"):
    config_check.check_config(config)


# ------------------------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize("items, path, want", [
    (["--config.batch_size=7"], "batch_size", 7),
    (["--config.batch_size", "7"], "batch_size", 7),  # the space form
    (["--config.discover.center_features=false"], "discover.center_features", False),
    (["--config.discover.center_features", "0"], "discover.center_features", False),  # not `True` + a stray 0
    (["--config.discover.atol=1"], "discover.atol", 1.0),  # an int for a float field
    (["--config.boundary.bucket_ratios=(1, 2)"], "boundary.bucket_ratios", (1, 2)),
    (["--config.boundary.bucket_ratios=1,2"], "boundary.bucket_ratios", (1, 2)),
    (["--config.mesh=[1, 8]"], "mesh", [1, 8]),  # lists: ml_collections has no parser of its own
    (["--config.batch_size=3", "--config.batch_size=5"], "batch_size", 5),  # in order, the last wins
])
def test_overrides_parse_by_the_field_type(items, path, want):
  """`--config.KEY=VALUE` goes through ml_collections' config_flags machinery onto the existing field, in place."""
  config = configs.zip()
  assert apply_overrides(config, items) is config
  got = config_path.get_value(path, config)
  assert got == want and type(got) is type(want), (got, want)


@pytest.mark.parametrize("items, message", [
    (["--config.nosuch=1"], "--config.nosuch: no such config field"),
    (["--config.discover.nosuch=1"], "--config.discover.nosuch: no such config field"),
    (["--config.discover=1"], "--config.discover is a group of fields"),
    (["--config.batch_size=x"], "--config.batch_size: expected int, got 'x'"),
    (["--config.batch_size=1.5"], "--config.batch_size: expected int, got '1.5'"),
    (["--config.discover.atol=small"], "--config.discover.atol: expected float, got 'small'"),
    (["--config.discover.center_features=maybe"], "expected a boolean, got 'maybe'"),
    (["--config.batch_size"], "--config.batch_size: missing value"),
    (["--batch_size=1"], "unrecognised argument '--batch_size=1'"),
])
def test_bad_overrides_are_one_line_errors(items, message):
  with pytest.raises(InputError) as e:
    apply_overrides(configs.zip(), items)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_overrides_of_fields_that_are_none():
  """A field that is None in a config file (e.g. `vision_patch_size` of configs/smoke.py) takes a literal or text."""
  config = ml_collections.ConfigDict({"a": None, "b": None, "s": "x"})
  apply_overrides(config, ["--config.a=16", "--config.b=/some/file.pt", "--config.s=two words"])
  assert (config.a, config.b, config.s) == (16, "/some/file.pt", "two words")
