"""`zipjax detect` end to end on a briefly trained tiny workdir: the outputs of `zipjax segment` (results.json,
annotations.json with RLE masks and scores, overlays, errors.json, run.json), loadable by pycocotools and
accepted by `zipjax eval`; a bad file is reported and skipped; free class names; errors exit 2."""
import json
import os
import subprocess
import sys

import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from zipjax import cli
from zipjax.commands.segment import apply_overrides, load_config_file
from zipjax.data import synthetic
from zipjax.eval import evaluate
from zipjax.train import trainer as tr

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = ["--config.model.input_size=64", "--config.model.width=32", "--config.model.layers=1",
        "--config.model.heads=1", "--config.model.embed_dim=32", "--config.model.mask_dim=16",
        "--config.model.pixel_width=16", "--config.model.stem_width=8", "--config.model.top_k=10",
        "--config.text.arch.transformer_width=32", "--config.data.max_instances=4", "--config.batch_size=4",
        "--config.total_steps=6", "--config.optim.warmup_steps=2", "--config.xla_opt_level=0",
        "--config.mesh=[('data', 1)]", "--config.checkpoint.every=3", "--config.detect.batch_size=3",
        "--config.detect.score_threshold=0.0"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  d = tmp_path_factory.mktemp("detect")
  synthetic.generate(d / "train", 8, seed=31, min_side=40, max_side=70, max_objects=3)
  synthetic.generate(d / "val", 4, seed=32, min_side=40, max_side=70, max_objects=3)
  config = apply_overrides(load_config_file("configs/train_smoke.py"), TINY)
  res = tr.train(config, str(d / "train" / "annotations.json"), str(d / "train" / "images"), str(d / "w"),
                 progress=False, log=lambda m: None)
  assert res.status == "done" and res.step == 6
  return d


def test_detect_outputs(workdir, tmp_path, capsys):
  d = workdir
  (tmp_path / "broken.png").write_bytes(b"not a png")
  out = tmp_path / "out"
  names = ["circle", "rectangle", "triangle", "ellipse", "star"]
  rc = cli.main(["detect", str(d / "val" / "images"), str(tmp_path / "broken.png"), "--workdir", str(d / "w"),
                 "--classes", ",".join(names), "--out", str(out), "--config.detect.overlay_max_side=64"])
  assert rc == 0, capsys.readouterr().err
  results = json.loads((out / "results.json").read_text())
  ann = json.loads((out / "annotations.json").read_text())
  errors = json.loads((out / "errors.json").read_text())
  run = json.loads((out / "run.json").read_text())
  assert [e["path"] for e in errors] == [str(tmp_path / "broken.png")] and "not an image" in errors[0]["reason"]
  assert run["detected"] == 4 and run["skipped"] == 1 and run["info"]["checkpoint_step"] == 6
  assert [c["name"] for c in ann["categories"]] == names
  assert len(ann["images"]) == 4 and len(list((out / "overlays").iterdir())) == 4
  # top_k = 10 detections per image (score threshold 0), each a scored RLE mask of the image's size
  assert len(results) == len(ann["annotations"]) == 40
  sizes = {im["id"]: (im["height"], im["width"]) for im in ann["images"]}
  for r in results:
    assert tuple(r["segmentation"]["size"]) == sizes[r["image_id"]]
    assert 0.0 <= r["score"] <= 1.0 and r["category_name"] in names
    x, y, w, h = r["bbox"]
    assert 0 <= x and 0 <= y and x + w <= sizes[r["image_id"]][1] + 1e-3 and y + h <= sizes[r["image_id"]][0] + 1e-3
    assert mask_utils.area(dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())) >= 0
  coco = COCO(str(out / "annotations.json"))
  assert len(coco.getAnnIds()) == 40
  # zipjax eval accepts the outputs against the validation ground truth (images matched by file name)
  gt = json.loads((d / "val" / "annotations.json").read_text())
  for im in gt["images"]:
    im["file_name"] = str(d / "val" / "images" / im["file_name"])
  for agnostic in (False, True):
    m = evaluate(gt, json.loads((out / "annotations.json").read_text()), class_agnostic=agnostic)
    assert m["num_pred"] == 40 and 0.0 <= m["bbox"]["AP"] <= 1.0 and 0.0 <= m["segm"]["AP"] <= 1.0
  # open vocabulary: other names, other categories; scores differ with the queries
  out2 = tmp_path / "out2"
  assert cli.main(["detect", str(d / "val" / "images" / "000001.png"), "--workdir", str(d / "w"),
                   "--classes", "red thing,blue shape", "--out", str(out2), "--no-overlays"]) == 0
  ann2 = json.loads((out2 / "annotations.json").read_text())
  assert [c["name"] for c in ann2["categories"]] == ["red thing", "blue shape"]
  assert not (out2 / "overlays").exists()
  first = sorted(a["score"] for a in ann["annotations"] if a["image_id"] == 1)
  assert sorted(a["score"] for a in ann2["annotations"]) != first


def test_detect_errors(workdir, tmp_path, capsys):
  d = workdir
  assert cli.main(["detect", str(d / "val" / "images"), "--workdir", str(tmp_path), "--classes", "a",
                   "--out", str(tmp_path / "o")]) == 2
  assert "not a zipjax train workdir" in capsys.readouterr().err
  assert cli.main(["detect", str(d / "val" / "images"), "--workdir", str(d / "w"), "--classes", "a,,b",
                   "--out", str(tmp_path / "o")]) == 2
  assert "empty" in capsys.readouterr().err
  assert cli.main(["detect", str(d / "val" / "images"), "--workdir", str(d / "w"), "--classes", "a",
                   "--out", str(tmp_path / "o"), "--config.detect.nope=1"]) == 2
  assert "no such config field" in capsys.readouterr().err
  empty = tmp_path / "empty_w"
  empty.mkdir()
  (empty / "config.json").write_text((d / "w" / "config.json").read_text())
  assert cli.main(["detect", str(d / "val" / "images"), "--workdir", str(empty), "--classes", "a",
                   "--out", str(tmp_path / "o")]) == 2
  assert "checkpoints" in capsys.readouterr().err


def test_hostile_text_tower_checkpoint_never_runs(workdir, tmp_path):
  """`--config.init_checkpoint` names the CLIP whose text tower embeds the class names: hostile files are
  refused in one line (exit 2) and never run (the other commands: tests/convert/test_untrusted.py)."""
  from tests.convert import malicious
  d = workdir
  evil = malicious.make_all(tmp_path)
  cases = [(f"detect {kind}", ["detect", str(d / "val" / "images" / "000001.png"), "--workdir", str(d / "w"),
                               "--classes", "a", "--out", str(tmp_path / f"o_{kind}"),
                               f"--config.init_checkpoint={path}"]) for kind, path in evil.items()]
  results = malicious.run_cli(cases, tmp_path)
  assert not malicious.markers(tmp_path)
  bad = malicious.failures(cases, results, evil)
  assert not bad, "\n".join(bad)


def test_a_finished_workdir_given_other_data_is_refused(workdir):
  """The data is part of a run's identity: a finished run rerun on other images is refused (it used to say
  'nothing to do'); with its own data it has nothing to do."""
  from zipjax.errors import InputError
  d = workdir
  config = apply_overrides(load_config_file("configs/train_smoke.py"), TINY)
  res = tr.train(config, str(d / "train" / "annotations.json"), str(d / "train" / "images"), str(d / "w"),
                 progress=False, log=lambda m: None)
  assert res.status == "already_done"
  with pytest.raises(InputError, match="checkpoint was made with another dataset"):
    tr.train(config, str(d / "val" / "annotations.json"), str(d / "val" / "images"), str(d / "w"),
             progress=False, log=lambda m: None)


def test_corrupt_checkpoint_is_named_and_the_previous_one_used(workdir, tmp_path, capsys):
  """A truncated latest checkpoint is called corrupt (not 'does not match the model') and detect falls back to
  the previous checkpoint, saying so (stderr, run.json); with every checkpoint corrupt it is one line, exit 2; a
  checkpoint of another model is still 'does not match', with the differences."""
  import glob
  import shutil
  d = workdir
  w = tmp_path / "w"
  shutil.copytree(d / "w", w)

  def truncate(step):
    for f in glob.glob(str(w / "checkpoints" / str(step) / "state" / "ocdbt.process_0" / "d" / "*")):
      # every data file cut to its first 16 bytes: which file holds the parameters (and which half of it) varies
      # between runs, so cutting each in half sometimes left every parameter readable
      data = open(f, "rb").read()
      open(f, "wb").write(data[:16])

  img = str(d / "val" / "images" / "000001.png")

  def detect(out, *extra):
    # a fresh process each time: orbax's tensorstore cache pool serves a checkpoint this process (or an earlier
    # test in it) has read from memory, so a truncation in place is invisible in-process
    return subprocess.run([sys.executable, "-m", "zipjax", "detect", img, "--workdir", str(w), "--classes", "a",
                           "--out", str(tmp_path / out), *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                                                ZIPJAX_XLA_CACHE="0"))

  truncate(6)
  r = detect("o", "--no-overlays")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checkpoint 6 is corrupt" in r.stderr and "using the previous checkpoint, 3" in r.stderr, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
  run = json.loads((tmp_path / "o" / "run.json").read_text())
  assert run["info"]["checkpoint_step"] == 3 and "corrupt" in run["info"]["note"]
  truncate(3)
  r = detect("o2")
  assert r.returncode == 2, r.stderr[-3000:]
  err = r.stderr.strip().splitlines()
  # one line; orbax's abandoned read coroutines used to print a traceback per array at exit
  assert "checkpoint 3 is corrupt" in err[-1] and "no earlier checkpoint" in err[-1], r.stderr[-3000:]
  assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
  assert cli.main(["detect", img, "--workdir", str(d / "w"), "--classes", "a", "--out", str(tmp_path / "o3"),
                   "--config.model.mask_dim=8"]) == 2
  err = capsys.readouterr().err
  assert "does not match the model" in err and "difference(s)" in err and "corrupt" not in err, err
