"""`zipjax train` command line: argument and input errors exit 2 with a message naming the problem, before any
training; a workdir started with another config is refused. (Training, resume and kill-safety:
tests/train/test_trainer_resume.py; learning: tests/train/test_trainer_learns.py.)"""
import json

import pytest

from zipjax import cli
from zipjax.data import synthetic


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  d = tmp_path_factory.mktemp("shapes")
  synthetic.generate(d, 3, seed=5, min_side=40, max_side=60, max_objects=2)
  return d


def _train(shapes, workdir, *extra):
  return cli.main(["train", "--config", "configs/train_smoke.py", "--train-json", str(shapes / "annotations.json"),
                   "--images-root", str(shapes / "images"), "--workdir", str(workdir), "--no-progress",
                   *extra])


def test_input_errors(shapes, tmp_path, capsys):
  assert cli.main(["train", "--config", "configs/train_smoke.py", "--train-json", str(tmp_path / "none.json"),
                   "--images-root", str(shapes), "--workdir", str(tmp_path / "w")]) == 2
  assert "--train-json" in capsys.readouterr().err
  assert _train(shapes, tmp_path / "w", "--config.no_such_field=1") == 2
  assert "no such config field" in capsys.readouterr().err
  assert _train(shapes, tmp_path / "w", "--config.optim.lr=fast") == 2
  assert "expected float" in capsys.readouterr().err
  assert cli.main(["train", "--config", str(tmp_path / "missing.py"), "--train-json", str(shapes /
                   "annotations.json"), "--images-root", str(shapes), "--workdir", str(tmp_path / "w")]) == 2
  assert "file not found" in capsys.readouterr().err
  data = json.loads((shapes / "annotations.json").read_text())
  del data["annotations"][0]["segmentation"]
  (tmp_path / "boxes.json").write_text(json.dumps(data))
  assert cli.main(["train", "--config", "configs/train_smoke.py", "--train-json", str(tmp_path / "boxes.json"),
                   "--images-root", str(shapes / "images"), "--workdir", str(tmp_path / "w2")]) == 2
  assert "no segmentation" in capsys.readouterr().err
  assert _train(shapes, tmp_path / "w3", "--config.batch_size=3") == 2
  assert "multiple" in capsys.readouterr().err
  (tmp_path / "file").write_text("x")  # --workdir checked as segment's --out, before anything is built
  assert _train(shapes, tmp_path / "file" / "w") == 2
  assert "--workdir" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["train", "--config", "configs/train_smoke.py"])  # argparse: required arguments


def test_workdir_of_another_config_is_refused(shapes, tmp_path, capsys):
  w = tmp_path / "w"
  w.mkdir()
  from zipjax.commands.segment import load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file("configs/train_smoke.py")
  config.seed = 7
  (w / "config.json").write_text(config.to_json())
  assert _train(shapes, w) == 2
  err = capsys.readouterr().err
  assert "different config" in err and "seed" in err
