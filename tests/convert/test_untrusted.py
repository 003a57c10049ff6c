"""Hostile checkpoints on every command that reads one: a TorchScript archive whose `__setstate__` calls
`torch.from_file(marker, True, n)`, a plain pickle whose `__reduce__` calls `os.system`, and a torch.save file
whose `__reduce__` calls `builtins.open`. Each command runs in a subprocess (one interpreter for all of them, so
the test stays fast; each through `zipjax.cli.main`, the CLI's own argument parsing and error reporting), must
exit 2 with one line naming the file, and no marker file may appear. (`zipjax detect`, which needs a trained
workdir: tests/commands/test_detect.py.)"""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.convert import malicious
from tests.reference.clip_ref import make_clip
from zipjax.convert.clip import convert_file
from zipjax.data import synthetic

SMALL_VIT = dict(embed_dim=64, image_resolution=64, vision_layers=2, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                 transformer_layers=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("untrusted")
  evil = malicious.make_all(d)
  torch.save(make_clip(**SMALL_VIT).state_dict(), d / "clip_sd.pt")
  convert_file(d / "clip_sd.pt", d / "clip_ok")  # a good CLIP for the slots before the hostile one
  (d / "images").mkdir()
  Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(d / "images" / "a.png")
  synthetic.generate(d / "shapes", 2, seed=3, min_side=40, max_side=48, max_objects=1)
  return d, evil


def _cases(d, evil):
  ok, img = str(d / "clip_ok"), str(d / "images" / "a.png")
  shapes = d / "shapes"
  cases = []
  for kind, path in evil.items():
    f = str(path)
    seg = ["segment", img, "--classes", "cat", "--config", "configs/smoke.py"]
    label = ["label", str(d / "images"), "--classes", "cat", "--config", "configs/smoke.py"]
    slots = [("semantic", f, ok, ok), ("boundary", ok, f, ok), ("sam", ok, ok, f)]
    cases += [
        (f"convert clip {kind}", ["convert", "clip", f, str(d / f"out_cc_{kind}")]),
        (f"convert sam {kind}", ["convert", "sam", f, str(d / f"out_cs_{kind}")]),
        (f"embed --clip {kind}", ["embed", "--clip", f, "--image", img, "--texts", "cat"]),
    ]
    for slot, sem, bnd, sam in slots:
      cases.append((f"segment {slot} {kind}", seg + ["--out", str(d / f"out_seg_{slot}_{kind}"),
                                                   "--clip-semantic", sem, "--clip-boundary", bnd, "--sam", sam]))
      cases.append((f"label {slot} {kind}", label + [
          "--out", str(d / f"out_label_{slot}_{kind}"), f"--config.models.semantic.checkpoint={sem}",
          f"--config.models.boundary.checkpoint={bnd}", f"--config.models.sam.checkpoint={sam}"]))
    data = ["--images-root", str(shapes / "images"), "--no-progress", f"--config.init_checkpoint={f}"]
    cases += [
        (f"train {kind}", ["train", "--config", "configs/train_smoke.py", "--train-json",
                           str(shapes / "annotations.json"), "--workdir", str(d / f"w_train_{kind}")] + data),
        (f"self-train {kind}", ["self-train", "--config", "configs/selftrain_smoke.py", "--pseudo-json",
                                str(shapes / "annotations.json"), "--workdir", str(d / f"w_self_{kind}")] + data),
    ]
  return cases


def test_hostile_checkpoints_never_run_on_any_command(files, tmp_path):
  d, evil = files
  cases = _cases(d, evil)
  results = malicious.run_cli(cases, tmp_path)
  assert not malicious.markers(d)  # nothing ran
  bad = malicious.failures(cases, results, evil)
  assert not bad, "\n".join(bad)
