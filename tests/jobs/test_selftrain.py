"""`zipjax self-train` end to end on a generated dataset whose pseudo-labels miss 40% of the objects and are
jittered (real CLI subprocesses, tiny detector, 1 CPU device, a shared persistent XLA cache):

- two rounds raise the class-agnostic mask AR100 and AP50 of the labels against the true annotations (the
  report's numbers, checked against pycocotools' COCOeval run here directly);
- (slow) SIGKILL in round 1's training, in round 1's prediction and in round 2's merge, each followed by a rerun: the
  labels, predictions, training metrics, evaluations and report equal the uninterrupted run's, byte for byte;
- (slow) fine-tuning the self-trained detector on 10% of the true labels beats the same training from the same
  initialisation as round 0 (random weights here), same steps, on held-out images.
The run is short (steps 200/40/40); tests marked slow fine-tune on it, and repeat the improvement and fine-tuning
checks on twice the images with longer rounds (400/200/200), with a validation split, fine-tuning class-aware.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zipjax.data import synthetic
from zipjax.jobs import selftrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config.model.input_size=64", "--config.model.patch_size=8", "--config.model.width=32",
        "--config.model.layers=1", "--config.model.heads=1", "--config.model.embed_dim=32",
        "--config.model.mask_dim=16", "--config.model.pixel_width=16", "--config.model.stem_width=8",
        "--config.model.top_k=20", "--config.text.arch.transformer_width=32", "--config.data.max_instances=4",
        "--config.optim.lr=5e-3", "--config.optim.warmup_steps=20", "--config.checkpoint.every=10",
        "--config.eval.batch_size=8"]
SELF = ["--config.selftrain.steps=[200,40,40]", "--config.selftrain.predict_chunk=8"]  # thresholds 0.2, 0.25
SHAPES = dict(min_side=48, max_side=64, min_objects=1, max_objects=2, min_object_frac=0.35, max_object_frac=0.6)
NOISE = dict(drop_fraction=0.4, jitter=0.15, score=True)


def _env(cache, **extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", ZIPJAX_CACHE=str(cache), ZIPJAX_XLA_CACHE="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop(selftrain.KILL_ENV, None)
  env.update(extra)
  return env


def _zipjax(args, cache, timeout=1500, **env):
  return subprocess.run([sys.executable, "-m", "zipjax"] + args, cwd=ROOT, env=_env(cache, **env),
                        capture_output=True, text=True, timeout=timeout)


def _self_train_args(d, workdir, extra=()):
  return ["self-train", "--config", "configs/selftrain_smoke.py", "--pseudo-json", str(d / "noisy" /
          "annotations.json"), "--images-root", str(d / "noisy" / "images"), "--gt-json",
          str(d / "clean" / "annotations.json"), "--workdir", str(workdir), "--no-progress"] + TINY + SELF + list(extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("selftrain")
  synthetic.generate(d / "clean", 32, seed=5, **SHAPES)
  synthetic.generate(d / "noisy", 32, seed=5, **SHAPES, **NOISE)
  synthetic.generate(d / "val", 16, seed=6, **SHAPES)
  return d


@pytest.fixture(scope="module")
def reference(data):
  """The uninterrupted run (the XLA cache it fills serves every later run of the module)."""
  w = data / "ref"
  r = _zipjax(_self_train_args(data, w), data / "cache")
  assert r.returncode == 0, r.stderr[-4000:]
  return w, r


def _cocoeval_agnostic(gt_path, labels_path, iou_type):
  """AR100 and AP50 of a labels file against the ground truth, pycocotools directly, all classes merged."""
  gt = json.load(open(gt_path))
  lab = json.load(open(labels_path))
  by_name = {img["file_name"]: img["id"] for img in gt["images"]}
  ids = {img["id"]: by_name[img["file_name"]] for img in lab["images"]}
  for a in gt["annotations"]:
    a["category_id"] = 1
  gt["categories"] = [{"id": 1, "name": "object"}]
  dets = [{"image_id": ids[a["image_id"]], "category_id": 1, "segmentation": a["segmentation"], "bbox": a["bbox"],
           "score": a.get("score", 1.0)} for a in lab["annotations"] if not a.get("iscrowd", 0)]
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(dets), iou_type)
    ev.params.imgIds = sorted(ids.values())
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return {"AR100": float(ev.stats[8]), "AP50": float(ev.stats[1])}


def test_two_rounds_improve_the_labels(data, reference):
  w, run = reference
  assert "self-training done: 3 rounds" in run.stdout and "report:" in run.stdout
  try:  # the gallery command, where this installation has it, is printed for the last round's labels
    from zipjax.gallery import gallery_hint
  except ImportError:
    gallery_hint = None
  if gallery_hint is not None:
    assert run.stdout.splitlines()[-1] == gallery_hint(str(w / "round_2"))
  m = json.load(open(w / "metrics.json"))
  rows = []
  for rec in m["rounds"]:
    seg, box = rec["labels"]["agnostic"]["segm"], rec["labels"]["agnostic"]["bbox"]
    det = rec["detector"]["agnostic"]["segm"]
    rows.append((rec["round"], rec["labels"]["count"], seg["AR100"], seg["AP50"], box["AR100"], box["AP50"],
                 det["AR100"], det["AP50"]))
  print("\nround  labels  mask AR100  mask AP50  box AR100  box AP50  detector mask AR100 / AP50")
  for row in rows:
    print("{:5d}  {:6d}  {:10.3f}  {:9.3f}  {:9.3f}  {:8.3f}  {:.3f} / {:.3f}".format(*row))
  r0, r1, r2 = rows
  # the pseudo-labels miss 40% of the objects: AR100 of round 0 is far from 1; rounds 1 and 2 add the missing
  # objects and replace jittered masks
  for r in (r1, r2):
    assert r[2] > r0[2] + 0.05, rows  # mask AR100
    assert r[3] > r0[3] + 0.05, rows  # mask AP50
    assert r[1] > r0[1], rows         # more labels
  # the numbers in the report are COCOeval's on the label files
  for k, rec in enumerate(m["rounds"]):
    direct = _cocoeval_agnostic(data / "clean" / "annotations.json", w / f"round_{k}" / "annotations.json", "segm")
    np.testing.assert_allclose([rec["labels"]["agnostic"]["segm"]["AR100"], rec["labels"]["agnostic"]["segm"]["AP50"]],
                               [direct["AR100"], direct["AP50"]], rtol=0, atol=1e-12)
  # round 0's labels are the pseudo-labels; the class-aware comparison exists for them (names match the truth)
  assert m["rounds"][0]["labels"]["class"] is not None
  assert m["rounds"][1]["labels"]["class"] is None  # class-agnostic detector: new labels are 'object'
  report = (w / "report.md").read_text()
  for r in rows:
    assert f"| {r[0]} | " in report
  assert f"{100 * r2[2]:.1f}" in report and f"{100 * r2[3]:.1f}" in report
  for png in ["plots/rounds.png", "plots/pr_labels_agnostic_segm.png", "plots/pr_detector_agnostic_bbox.png"]:
    assert (w / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # every round folder is a train workdir whose labels name their images root (gallery, detect, init_workdir)
  lab = json.load(open(w / "round_2" / "annotations.json"))
  assert lab["info"]["images_root"] == str(data / "noisy" / "images") and lab["info"]["round"] == 2
  assert [i["id"] for i in lab["images"]] == [i["id"] for i in json.load(open(data / "noisy" / "annotations.json"))[
      "images"]]
  # a new label's box is its prediction's (the detector's final box), an original pseudo-label keeps its own
  boxes = {}
  for r in (0, 1):
    for p in json.load(open(w / f"round_{r}" / "predictions" / "annotations.json"))["annotations"]:
      boxes.setdefault((p["image_id"], p["segmentation"]["counts"]), []).append(p["bbox"])
  original = {a["id"]: a["bbox"] for a in json.load(open(data / "noisy" / "annotations.json"))["annotations"]}
  new = 0
  for a in lab["annotations"]:
    if "self_round" in a:
      assert a["bbox"] in boxes[(a["image_id"], a["segmentation"]["counts"])]
      new += 1
    else:
      assert a["bbox"] in original.values()
  assert new > 0


def _outputs(w):
  """Every output that must not depend on kills: bytes of labels, predictions, metrics, evaluations, report."""
  files = ["metrics.json", "report.md"]
  for r in range(3):
    files += [f"round_{r}/annotations.json", f"round_{r}/predictions/annotations.json", f"round_{r}/metrics.jsonl",
              f"round_{r}/eval.json", f"round_{r}/train_done.json"]
  return {f: (w / f).read_bytes() for f in files}


@pytest.mark.slow  # 90 s: three killed runs and their reruns (kept out of the default suite's 15 minutes)
def test_kill_at_three_points_and_rerun_equals_uninterrupted(data, reference, tmp_path):
  ref, _ = reference
  w = tmp_path / "killed"
  w.mkdir()
  # round 0 as a finished earlier attempt left it (its own kill-safety is the trainer's test); rounds 1-2 run here
  shutil.copytree(ref / "round_0", w / "round_0")
  shutil.copy(ref / "selftrain.json", w / "selftrain.json")
  args = _self_train_args(data, w)
  cache = data / "cache"

  r = _zipjax(args, cache, **{selftrain.KILL_ENV: "selftrain.train.1"})
  assert r.returncode == -9, r.stderr[-3000:]
  assert any(n.isdigit() for n in os.listdir(w / "round_1" / "checkpoints"))
  assert not (w / "round_1" / "train_done.json").exists()

  r = _zipjax(args, cache, **{selftrain.KILL_ENV: "selftrain.predict.1"})
  assert r.returncode == -9, r.stderr[-3000:]
  assert "resumed" in r.stderr
  assert (w / "round_1" / "train_done.json").exists()
  assert os.listdir(w / "round_1" / "predictions") == [".zipjax"]  # the shard run directory, nothing assembled
  assert len(os.listdir(w / "round_1" / "predictions" / ".zipjax" / "shards")) == 1  # the first chunk's shard

  r = _zipjax(args, cache, **{selftrain.KILL_ENV: "selftrain.merge.2"})
  assert r.returncode == -9, r.stderr[-3000:]
  assert (w / "round_1" / "predictions" / "annotations.json").exists()
  assert not (w / "round_2" / "annotations.json").exists()

  r = _zipjax(args, cache)
  assert r.returncode == 0, r.stderr[-3000:]
  got, want = _outputs(w), _outputs(ref)
  assert [f for f in want if got[f] != want[f]] == []

  # a finished run reruns as a no-op; another config is refused
  before = {f: os.stat(w / f).st_mtime_ns for f in got}
  r = _zipjax(args, cache)
  assert r.returncode == 0 and {f: os.stat(w / f).st_mtime_ns for f in got} == before
  assert _outputs(w) == want
  r = _zipjax(args + ["--config.selftrain.mode=replace"], cache)
  assert r.returncode == 2 and "config.selftrain differ" in r.stderr


def _finetune(data, ref_round, tmp_path, cache, steps, extra=()):
  """`zipjax train` on 10% of the true labels, from `ref_round` and from the same initialisation as round 0."""
  common = ["train", "--config", "configs/train_smoke.py", "--train-json", str(data / "clean" / "annotations.json"),
            "--images-root", str(data / "clean" / "images"), "--val-json", str(data / "val" / "annotations.json"),
            "--val-images-root", str(data / "val" / "images"), "--no-progress", "--config.data.fraction=0.1",
            f"--config.total_steps={steps}", "--config.eval.every=0"] + TINY + list(extra)
  results = {}
  for name, init in (("selftrained", [f"--config.init_workdir={ref_round}"]), ("alone", [])):
    r = _zipjax(common + ["--workdir", str(tmp_path / name)] + init, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    results[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
  return results


@pytest.mark.slow  # 10% fine-tuning on the short run (test_slow_finetune_class_aware: more images, longer rounds)
def test_finetune_from_selftrained_beats_same_init_alone(data, reference, tmp_path):
  ref, _ = reference
  # class-agnostic with DropLoss and 40 steps like rounds 1-2: the XLA programs of the reference run serve
  results = _finetune(data, ref / "round_2", tmp_path, data / "cache", 40,
                      ["--config.data.class_agnostic=True", "--config.loss.drop_loss=True"])
  print("\n10% of the true labels, 40 steps, held-out images (class-agnostic):")
  for name, m in results.items():
    print(f"  {name:12s} mask AP {m['eval/agnostic/segm_AP']:.3f}  AP50 {m['eval/agnostic/segm_AP50']:.3f}  "
          f"AR100 {m['eval/agnostic/segm_AR100']:.3f}  box AP50 {m['eval/agnostic/bbox_AP50']:.3f}  "
          f"AR100 {m['eval/agnostic/bbox_AR100']:.3f}")
  st, alone = results["selftrained"], results["alone"]
  # masks (what the labels were improved on); the tiny detector's boxes stay poor after 40 steps either way
  for k in ("eval/agnostic/segm_AP50", "eval/agnostic/segm_AR100", "eval/agnostic/segm_AP"):
    assert st[k] > alone[k] + (0.05 if k != "eval/agnostic/segm_AP" else 0.01), (k, st[k], alone[k])
  # both trained on the same 3 images (10% of 32, zipjax/data/coco_train.py's seeded subset)
  from zipjax.train.checkpoints import Checkpoints
  for name in results:
    ck = Checkpoints(str(tmp_path / name / "checkpoints"), 1, 1, asynchronous=False, read_only=True)
    meta = ck.restore_meta(ck.latest_step())
    ck.close()
    assert meta["num_images"] == 3 and meta["step"] == 40


# ------------------------------------------------------------------------------------------------- slow
# the default test's regime (tiny detector, 1-2 objects per image), twice the images, longer rounds at the smoke
# config's learning rate; round 1's labels protected and a higher round-2 threshold (without them round 2 redid
# round 1's labels and added wrong ones: mask AP50 0.594 -> 0.529, under round 0's + 0.02, at fc657d5 too)
SLOW_SELF = ["--config.selftrain.steps=[400,200,200]", "--config.selftrain.predict_chunk=32",
             "--config.optim.lr=2e-3", "--config.selftrain.protect=True", "--config.selftrain.thresholds=[0.2,0.3]"]


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("selftrain_slow")
  synthetic.generate(d / "clean", 64, seed=11, **SHAPES)
  synthetic.generate(d / "noisy", 64, seed=11, **SHAPES, **NOISE)
  synthetic.generate(d / "val", 32, seed=12, **SHAPES)
  args = _self_train_args(d, d / "run") + SLOW_SELF + ["--val-json", str(d / "val" / "annotations.json"),
                                                       "--val-images-root", str(d / "val" / "images")]
  r = _zipjax(args, d / "cache", timeout=3600)
  assert r.returncode == 0, r.stderr[-4000:]
  return d


@pytest.mark.slow
def test_slow_two_rounds_improve_the_labels(slow_run):
  m = json.load(open(slow_run / "run" / "metrics.json"))
  print("\nround  labels  mask AR100  mask AP50  box AR100  box AP50  | detector: train mask AR100 / AP50, "
        "val mask AP50")
  rows = []
  for rec in m["rounds"]:
    seg, box, det = (rec["labels"]["agnostic"]["segm"], rec["labels"]["agnostic"]["bbox"],
                     rec["detector"]["agnostic"]["segm"])
    rows.append((rec["round"], rec["labels"]["count"], seg["AR100"], seg["AP50"], box["AR100"], box["AP50"],
                 det["AR100"], det["AP50"], rec["train"]["val"]["agnostic/segm_AP50"]))
    print("{:5d}  {:6d}  {:10.3f}  {:9.3f}  {:9.3f}  {:8.3f}  | {:.3f} / {:.3f}, {:.3f}".format(*rows[-1]))
  for r in rows[1:]:  # measured: AR100 +0.155 / +0.155, AP50 +0.077 / +0.032 (round 2 adds 5 labels)
    assert r[2] > rows[0][2] + 0.05 and r[3] > rows[0][3] + 0.02, rows
  assert "Detector of each round on the validation set" in (slow_run / "run" / "report.md").read_text()


@pytest.mark.slow
def test_slow_finetune_class_aware(slow_run, tmp_path):
  """Class-aware fine-tuning (the 5 shape names as queries) of the class-agnostic self-trained detector on 10% of
  the true labels, 150 steps, against the same from round 0's initialisation. What self-training transfers is
  finding and segmenting objects (class-agnostic metrics, asserted); naming them is learned from the 6 images
  alone either way (class-aware metrics, printed: both near zero with the random tiny text tower here)."""
  results = _finetune(slow_run, slow_run / "run" / "round_2", tmp_path, slow_run / "cache", 150,
                      ["--config.loss.drop_loss=False", "--config.optim.lr=2e-3"])
  print("\n10% of the true labels (6 images), 150 steps, held-out images:")
  for name, m in results.items():
    print(f"  {name:12s} " + "  ".join(f"{k[5:]} {m[k]:.3f}" for k in (
        "eval/agnostic/segm_AP50", "eval/agnostic/segm_AR100", "eval/agnostic/bbox_AP50", "eval/class/segm_AP50",
        "eval/class/segm_AP", "eval/class/bbox_AP50")))
  st, alone = results["selftrained"], results["alone"]
  for k in ("eval/agnostic/segm_AP50", "eval/agnostic/segm_AR100"):  # measured +0.05, +0.16
    assert st[k] > alone[k] + 0.03, (k, st[k], alone[k])
