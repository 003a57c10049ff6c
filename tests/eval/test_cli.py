"""`zipjax eval` end to end through zipjax.cli.main."""
import json
import os

import pytest
from PIL import Image

from tests.eval import synth
from zipjax.cli import main
from zipjax.eval import evaluate


@pytest.fixture
def files(tmp_path):
  gt = synth.dataset(n_images=2)
  synth.add_gt(gt, 1, 10, 0, 0, 40, 40)
  synth.add_gt(gt, 2, 11, 10, 10, 60, 60)
  synth.add_gt(gt, 2, 10, 100, 80, 30, 30, iscrowd=1)
  perfect = synth.perfect_predictions(gt)
  half = [perfect[0], synth.pred(2, 80, 0, 40, 40, 0.99, category_name="dog")]
  paths = {}
  for name, obj in {"gt": gt, "zip": perfect, "ref": half}.items():
    paths[name] = str(tmp_path / f"{name}.json")
    with open(paths[name], "w") as f:
      json.dump(obj, f)
  return paths, tmp_path


def test_single_run_writes_metrics_report_and_plots(files, capsys):
  paths, tmp = files
  out = tmp / "out"
  assert main(["eval", "--gt", paths["gt"], "--pred", paths["zip"], "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "AP75" in printed and "100.0" in printed and "CutLER [published]" in printed
  assert sorted(os.listdir(out)) == ["metrics.json", "pr_bbox.png", "pr_segm.png", "report.md"]
  metrics = json.loads((out / "metrics.json").read_text())
  run = metrics["runs"][0]
  assert run["name"] == "zip" and run["metrics"]["segm"]["AP"] == pytest.approx(1.0)
  assert run["metrics"]["num_crowd"] == 1
  assert metrics["published_anchors"]["setting"] == "published, COCO val2017, class-agnostic"
  report = (out / "report.md").read_text()
  assert "## Run: zip" in report and "![mask precision-recall](pr_segm.png)" in report
  assert "FreeSOLO [published]" in report and "Per-category AP" in report
  for png in ("pr_bbox.png", "pr_segm.png"):
    with Image.open(out / png) as im:
      assert im.format == "PNG" and im.size[0] > 200


def test_comparison_of_several_files(files, capsys):
  paths, tmp = files
  out = tmp / "cmp"
  assert main(["eval", "--gt", paths["gt"], "--pred", paths["ref"], "--pred", paths["zip"],
               "--name", "reference", "--name", "zip", "--class-agnostic", "--iou-type", "segm",
               "--backend", "faster-coco-eval", "--no-anchors", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "[published]" not in printed
  metrics = json.loads((out / "metrics.json").read_text())
  assert [r["name"] for r in metrics["runs"]] == ["reference", "zip"]
  assert metrics["settings"] == {"iou_types": ["segm"], "class_agnostic": True,
                                 "backend": "faster-coco-eval", "only_pred_images": False}
  direct = evaluate(paths["gt"], paths["ref"], iou_type="segm", class_agnostic=True)
  assert metrics["runs"][0]["metrics"]["segm"]["AP"] == pytest.approx(direct["segm"]["AP"], abs=1e-6)
  assert 0 < direct["segm"]["AP"] < 1
  assert sorted(os.listdir(out)) == ["metrics.json", "pr_segm.png", "report.md"]
  report = (out / "report.md").read_text()
  assert "| reference |" in report and "| zip |" in report and "Per-category AP" not in report


def test_bad_input_is_reported_with_the_record(files, capsys):
  paths, tmp = files
  with open(paths["zip"]) as f:
    preds = json.load(f)
  preds[1]["image_id"] = 42
  bad = tmp / "bad.json"
  bad.write_text(json.dumps(preds))
  out = tmp / "never"
  assert main(["eval", "--gt", paths["gt"], "--pred", str(bad), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "zipjax eval: error:" in err and "bad.json: prediction 1 (image_id 42)" in err
  assert not out.exists()
  assert main(["eval", "--gt", paths["gt"], "--pred", paths["zip"], "--name", "a", "--name", "b"]) == 2
  assert "one name per prediction file" in capsys.readouterr().err


def test_outputs_replace_atomically(files, monkeypatch):
  paths, tmp = files
  out = tmp / "out"
  assert main(["eval", "--gt", paths["gt"], "--pred", paths["zip"], "--out", str(out), "--no-plots"]) == 0
  before = (out / "metrics.json").read_bytes()

  def failing_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    main(["eval", "--gt", paths["gt"], "--pred", paths["ref"], "--out", str(out), "--no-plots"])
  assert (out / "metrics.json").read_bytes() == before
  assert sorted(os.listdir(out)) == ["metrics.json", "report.md"]  # no temporary files left behind


def test_help_documents_formats(capsys):
  with pytest.raises(SystemExit):
    main(["eval", "--help"])
  text = capsys.readouterr().out
  for word in ("--class-agnostic", "--backend", "category_name", "metrics.json", "--name", "anchors"):
    assert word in text
