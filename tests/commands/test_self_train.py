"""`zipjax self-train` CLI and settings: registration, every refusal before any training starts (exit 2 with the
reason), the per-round train configs. The job itself is tested in tests/jobs/test_selftrain.py."""
import json
import os

import pytest

from zipjax import cli
from zipjax.commands.segment import apply_overrides, load_config_file
from zipjax.errors import InputError
from zipjax.jobs import selftrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "selftrain_smoke.py")


def _config(*overrides):
  config = load_config_file(CONFIG)
  apply_overrides(config, list(overrides))
  return config


@pytest.fixture()
def pseudo(tmp_path):
  from zipjax.data import synthetic
  synthetic.generate(tmp_path / "d", 2, seed=3, min_side=48, max_side=56, max_objects=2, score=True)
  return tmp_path / "d"


def _run(capsys, *args):
  code = cli.main(list(args))
  return code, capsys.readouterr()


def test_registered():
  assert cli.COMMANDS["self-train"] == "self_train"
  with pytest.raises(SystemExit):
    cli.main(["self-train", "--help"])


def test_defaults_are_cutlers():
  s = selftrain.Settings.from_config(load_config_file(os.path.join(ROOT, "configs", "selftrain_vit_b16.py")))
  assert (s.rounds, s.thresholds, s.max_dets, s.mode, s.init) == (2, (0.7, 0.65), 30, "union", "previous")
  assert s.steps == (160_000,) * 3
  smoke = selftrain.Settings.from_config(_config())
  assert smoke.steps == (int(_config().total_steps),) * 3


@pytest.mark.parametrize("overrides,msg", [
    (["--config.selftrain.rounds=3"], "give one threshold per round"),
    (["--config.selftrain.thresholds=[0.7,1.5]"], "thresholds = [0.7, 1.5]: must be a list"),
    (["--config.selftrain.steps=[10,20]"], "one positive value per round 0..2"),
    (["--config.selftrain.steps=[10,0,5]"], "steps = [10, 0, 5]: must be"),
    (["--config.selftrain.mode=intersect"], "selftrain.mode"),
    (["--config.selftrain.init=latest"], "selftrain.init"),
    (["--config.selftrain.dedup_iou=0"], "dedup_iou"),
    (["--config.selftrain.max_dets=0"], "max_dets"),
    (["--config.selftrain.rounds=-1"], "rounds = -1: must be an integer >= 0"),
])
def test_bad_settings(overrides, msg):
  with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("]", r"\]")):
    selftrain.Settings.from_config(_config(*overrides))


def test_steps_forms():
  assert selftrain.Settings.from_config(_config("--config.selftrain.steps=[7]")).steps == (7, 7, 7)
  config = _config()
  with config.selftrain.unlocked():
    del config.selftrain["steps"]
    config.selftrain.steps = 9  # a config file may give an int
  assert selftrain.Settings.from_config(config).steps == (9, 9, 9)
  assert selftrain.Settings.from_config(_config("--config.selftrain.steps=[5,6,7]")).steps == (5, 6, 7)
  s = selftrain.Settings.from_config(_config("--config.selftrain.rounds=0", "--config.selftrain.thresholds=[]"))
  assert s.rounds == 0 and s.thresholds == () and len(s.steps) == 1


def test_round_configs(tmp_path):
  config = _config("--config.selftrain.steps=[30,20,10]", "--config.init_workdir=/runs/earlier")
  s = selftrain.Settings.from_config(config)
  cfgs = [selftrain.round_config(config, s, str(tmp_path), r) for r in range(3)]
  assert [c.total_steps for c in cfgs] == [30, 20, 10]
  assert cfgs[0].init_workdir == "/runs/earlier"  # round 0: the config's own initialisation
  assert cfgs[1].init_workdir == str(tmp_path / "round_0") and cfgs[2].init_workdir == str(tmp_path / "round_1")
  assert all("selftrain" not in c for c in cfgs) and "selftrain" in config  # the config itself is not modified
  base = _config("--config.selftrain.init=base")
  sb = selftrain.Settings.from_config(base)
  assert selftrain.round_config(base, sb, str(tmp_path), 2).init_workdir == ""
  # a round config is a train config: the same fields as train_smoke (class-agnostic + DropLoss set)
  train = load_config_file(os.path.join(ROOT, "configs", "train_smoke.py"))
  assert sorted(cfgs[0].keys()) == sorted(train.keys())
  assert cfgs[0].data.class_agnostic and cfgs[0].loss.drop_loss


def test_refusals(tmp_path, pseudo, capsys):
  base = ["self-train", "--config", CONFIG, "--pseudo-json", str(pseudo / "annotations.json"), "--images-root",
          str(pseudo / "images"), "--workdir", str(tmp_path / "w"), "--no-progress"]
  code, out = _run(capsys, *base[:4], str(tmp_path / "missing.json"), *base[5:])
  assert code == 2 and "--pseudo-json" in out.err and "not found" in out.err
  code, out = _run(capsys, *base, "--gt-json", str(tmp_path / "nope.json"))
  assert code == 2 and "--gt-json" in out.err
  code, out = _run(capsys, *base[:2], os.path.join(ROOT, "configs", "train_smoke.py"), *base[3:])
  assert code == 2 and "no 'selftrain' group" in out.err
  code, out = _run(capsys, *base, "--config.selftrain.rounds=5")
  assert code == 2 and "one threshold per round" in out.err
  # pseudo-labels without masks: refused when round 0's labels are made, before any training
  data = json.load(open(pseudo / "annotations.json"))
  del data["annotations"][0]["segmentation"]
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(data))
  code, out = _run(capsys, *base[:4], str(bad), *base[5:])
  assert code == 2 and "no segmentation" in out.err
  assert not (tmp_path / "w" / "round_0" / "annotations.json").exists()
  assert not (tmp_path / "w" / "selftrain.json").exists()  # nothing recorded by a refused run
  # a workdir started with other pseudo-labels (or another config) is refused
  state = {"pseudo_json": str(bad), "pseudo_json_sha256": selftrain.sha256_file(str(bad)),
           "images_root": str(pseudo / "images"), "config": json.loads(_config().to_json())}
  (tmp_path / "w" / "selftrain.json").write_text(json.dumps(state))
  code, out = _run(capsys, *base, "--config.selftrain.mode=replace")
  assert code == 2 and "pseudo_json_sha256" in out.err and "config.selftrain" in out.err
  assert "config.model" not in out.err
  assert json.loads((tmp_path / "w" / "selftrain.json").read_text()) == state


def test_a_workdir_that_lost_selftrain_json_adopts_no_other_inputs(tmp_path, pseudo, capsys):
  """Round 0's labels carry the run's identity: with selftrain.json deleted, other pseudo-labels are refused up
  front (they used to take over the finished rounds silently); the same inputs recreate selftrain.json."""
  from zipjax.train import task
  w = tmp_path / "w"
  state = {"pseudo_json": str(pseudo / "annotations.json"),
           "pseudo_json_sha256": selftrain.sha256_file(str(pseudo / "annotations.json")),
           "images_root": str(pseudo / "images"), "config": task.config_to_dict(_config())}
  labels = selftrain._initial_labels(str(pseudo / "annotations.json"), str(pseudo / "images"),
                                     selftrain.run_identity(state))
  (w / "round_0").mkdir(parents=True)
  (w / "round_0" / "annotations.json").write_text(json.dumps(labels))
  other = tmp_path / "other.json"
  data = json.load(open(pseudo / "annotations.json"))
  data["annotations"] = data["annotations"][:1]
  other.write_text(json.dumps(data))
  base = ["self-train", "--config", CONFIG, "--images-root", str(pseudo / "images"), "--workdir", str(w),
          "--no-progress"]
  code, out = _run(capsys, *base, "--pseudo-json", str(other))
  assert code == 2 and "no selftrain.json (deleted?)" in out.err and "other inputs or config" in out.err, out.err
  assert not (w / "selftrain.json").exists()
  selftrain._check_state(str(w), state)  # the same inputs: accepted, recorded again
  assert json.loads((w / "selftrain.json").read_text())["pseudo_json_sha256"] == state["pseudo_json_sha256"]
  (w / "selftrain.json").unlink()
  del labels["info"]["run_identity"]  # rounds made before the identity was recorded: cannot be checked
  (w / "round_0" / "annotations.json").write_text(json.dumps(labels))
  with pytest.raises(InputError, match="inputs that cannot be checked"):
    selftrain._check_state(str(w), state)
