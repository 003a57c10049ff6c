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


def test_every_image_is_checked_before_step_0(shapes, tmp_path, capsys):
  """A missing, a corrupt and a resized training image are listed in one error before anything is built (a
  resumed run used to die at the step that met the first one, every time); the validation file likewise;
  --skip-bad-images leaves them out."""
  import shutil

  from PIL import Image
  images = tmp_path / "images"
  shutil.copytree(shapes / "images", images)
  names = sorted(p.name for p in images.iterdir())
  (images / names[0]).unlink()
  (images / names[1]).write_bytes(b"not an image")
  Image.new("RGB", (7, 9)).save(images / names[2])
  args = ["train", "--config", "configs/train_smoke.py", "--train-json", str(shapes / "annotations.json"),
          "--images-root", str(images), "--no-progress"]
  assert cli.main(args + ["--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "3 of 3 training image(s) cannot be used" in err, err
  assert f"{names[0]}: file not found" in err and f"{names[1]}: not an image" in err
  assert f"{names[2]}: the image is 7x9" in err and "--skip-bad-images" in err
  assert not list((tmp_path / "w").glob("checkpoints/*"))  # no step was trained or saved
  assert cli.main(args + ["--workdir", str(tmp_path / "w2"), "--skip-bad-images"]) == 2
  assert "no training images left" in capsys.readouterr().err
  # the validation file: checked with the training images, before the model is built
  assert cli.main(args[:6] + [str(shapes / "images"), "--no-progress", "--workdir", str(tmp_path / "w3"),
                              "--val-json", str(shapes / "annotations.json"), "--val-images-root", str(images)]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "3 of 3 validation image(s) cannot be used" in err, err


def test_a_refused_run_leaves_the_workdir_unclaimed_and_names_the_file(shapes, tmp_path, capsys):
  """A run refused after the config checks (here: a batch that cannot be split) writes no config.json (a corrected
  rerun is not told the workdir belongs to another config) and starts no checkpoint manager; a bad record is
  named with its file, not `<memory>`."""
  w = tmp_path / "w"
  assert _train(shapes, w, "--config.batch_size=3") == 2
  err = capsys.readouterr().err.strip()
  assert "multiple" in err and "\n" not in err and "Traceback" not in err, err
  assert not (w / "config.json").exists() and not (w / "checkpoints").exists()
  data = json.loads((shapes / "annotations.json").read_text())
  data["annotations"][0]["category_id"] = 999
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(data))
  assert cli.main(["train", "--config", "configs/train_smoke.py", "--train-json", str(bad), "--images-root",
                   str(shapes / "images"), "--workdir", str(w)]) == 2
  err = capsys.readouterr().err
  assert f"{bad}: annotation 0" in err and "<memory>" not in err, err
