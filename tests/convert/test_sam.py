"""SAM converter: round trip through the CLI, torch-free loading, strict key/shape errors naming the file."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import zipjax
from tests.models.sam_net.helpers import RTOL, build_torch_sam, nchw, rel_err, state_dict_numpy
from zipjax.cli import main as cli_main
from zipjax.convert.sam import convert_state_dict
from zipjax.convert.store import save_converted
from zipjax.errors import CheckpointError
from zipjax.models.sam_net.model import SamConfig

# Tiny architecture, but with B/L/H-style structure: windowed blocks 0, 2 and global blocks 1, 3.
CFG = SamConfig.tiny()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def torch_sam():
  return build_torch_sam(CFG, seed=21)


@pytest.fixture(scope="module")
def pth(torch_sam, tmp_path_factory):
  path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
  torch.save(torch_sam.state_dict(), path)
  return str(path)


def _save(tmp_path, sd, name="bad.pth"):
  path = tmp_path / name
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, path)
  return str(path)


def _reference_outputs(torch_sam, pixels, boxes):
  emb = torch_sam.image_encoder(nchw(pixels))
  sparse, dense = torch_sam.prompt_encoder(points=None, boxes=torch.from_numpy(boxes[0]), masks=None)
  logits, iou = torch_sam.mask_decoder(emb[:1], torch_sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
  return emb.numpy().transpose(0, 2, 3, 1), logits.numpy(), iou.numpy()


def test_round_trip_cli_convert_then_load(torch_sam, pth, tmp_path, capsys):
  dst = str(tmp_path / "sam_tiny")
  assert cli_main(["convert", "sam", pth, dst]) == 0
  out = capsys.readouterr().out
  assert "SAM custom (width 64, depth 4, image 128)" in out and dst in out
  assert sorted(os.listdir(dst)) == ["config.json", "params.npz"]

  rng = np.random.default_rng(0)
  pixels = rng.standard_normal((1, 128, 128, 3)).astype(np.float32)
  boxes = np.array([[[5, 6, 70, 90], [30, 0, 127, 64]]], np.float32)
  want_emb, want_logits, want_iou = _reference_outputs(torch_sam, pixels, boxes)
  from_dir = zipjax.load_sam(dst)
  from_pth = zipjax.load_sam(pth)
  assert from_dir.config == from_pth.config == CFG
  outs = []
  for model in (from_dir, from_pth):
    emb = model.image_embeddings(pixels)
    logits, iou = model.predict_boxes(emb, boxes, multimask=True)
    assert rel_err(emb, want_emb) < RTOL
    assert rel_err(logits[0], want_logits) < RTOL
    assert rel_err(iou[0], want_iou) < RTOL
    outs.append((np.asarray(emb), np.asarray(logits), np.asarray(iou)))
  for a, b in zip(*outs):
    np.testing.assert_array_equal(a, b)  # converted dir == direct .pth, bit for bit
  assert zipjax.load_sam(dst, dtype="bfloat16", remat=True).config.dtype == "bfloat16"
  with pytest.raises(ValueError, match="only compute options"):
    zipjax.load_sam(dst, img_size=256)


def test_converted_dir_loads_without_torch(pth, tmp_path):
  dst = str(tmp_path / "converted")
  assert cli_main(["convert", "sam", pth, dst]) == 0
  code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
          "import numpy as np, zipjax\n"
          f"m = zipjax.load_sam({dst!r})\n"
          "e = m.image_embeddings(np.zeros((1, 128, 128, 3), np.float32))\n"
          "l, i = m.predict_boxes(e, np.array([[[0, 0, 64, 64]]], np.float32))\n"
          "assert l.shape == (1, 1, 1, 32, 32) and np.isfinite(np.asarray(l)).all()\n"
          "print('ok', 'torch' in sys.modules and sys.modules['torch'] is not None)\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip() == "ok False"


def _load_error(tmp_path, sd) -> str:
  """Saves `sd`, loads it with load_sam, and returns the CheckpointError message (which must name the file)."""
  path = _save(tmp_path, sd)
  with pytest.raises(CheckpointError) as e:
    zipjax.load_sam(path)
  assert path in str(e.value)
  return str(e.value)


def test_missing_key_names_file_and_key(torch_sam, tmp_path):
  sd = state_dict_numpy(torch_sam)
  del sd["mask_decoder.transformer.layers.1.norm3.weight"]
  msg = _load_error(tmp_path, sd)
  assert "missing key 'mask_decoder.transformer.layers.1.norm3.weight'" in msg


def test_misshapen_key_names_expected_and_found(torch_sam, tmp_path):
  sd = state_dict_numpy(torch_sam)
  sd["image_encoder.blocks.2.mlp.lin2.weight"] = np.zeros((64, 200), np.float32)
  msg = _load_error(tmp_path, sd)
  assert "key 'image_encoder.blocks.2.mlp.lin2.weight': expected shape (64, 256), found (64, 200)" in msg


def test_unexpected_key_is_an_error(torch_sam, tmp_path):
  sd = state_dict_numpy(torch_sam)
  sd["mask_decoder.extra_head.weight"] = np.zeros((3, 3), np.float32)
  path = _save(tmp_path, sd)
  with pytest.raises(CheckpointError,
                     match=r"'mask_decoder.extra_head.weight' \(3, 3\) is not in the key table"):
    zipjax.load_sam(path)


def test_truncated_file(pth, tmp_path):
  data = open(pth, "rb").read()
  path = tmp_path / "truncated.pth"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
    zipjax.load_sam(str(path))
  assert str(path) in str(e.value)


def test_clip_checkpoint_is_rejected_by_name(tmp_path, capsys):
  sd = {"visual.conv1.weight": np.zeros((8, 3, 4, 4), np.float32),
        "visual.class_embedding": np.zeros((8,), np.float32),
        "text_projection": np.zeros((8, 8), np.float32), "logit_scale": np.zeros((), np.float32)}
  path = _save(tmp_path, sd, "ViT-B-16.pt")
  with pytest.raises(CheckpointError) as e:
    zipjax.load_sam(path)
  assert path in str(e.value) and "looks like a CLIP checkpoint" in str(e.value)
  assert cli_main(["convert", "sam", path, str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "zipjax convert: error:" in err and "ViT-B-16.pt" in err and "CLIP" in err
  assert not os.path.exists(tmp_path / "out")


def test_wrong_family_or_size_converted_dir(torch_sam, tmp_path):
  cfg, variables = convert_state_dict(state_dict_numpy(torch_sam), "x")
  clip_dir = save_converted(tmp_path / "clip", "clip", {}, {"params": {}})
  with pytest.raises(CheckpointError, match="is a converted 'clip' checkpoint, expected 'sam'"):
    zipjax.load_sam(clip_dir)
  # config.json says ViT-B but the parameters are the tiny model's
  wrong = save_converted(tmp_path / "wrong", "sam", SamConfig.from_size("vit_b").to_dict(with_compute=False),
                         variables)
  with pytest.raises(CheckpointError, match=r"do not match config.json: 'params/image_encoder/blocks_0/attn/"
                                            r"proj/bias': expected \(768,\), found \(64,\)"):
    zipjax.load_sam(wrong)
  assert cfg == CFG


def test_fp16_checkpoint_upcast(torch_sam, tmp_path):
  sd = {k: v.half() if v.is_floating_point() else v for k, v in torch_sam.state_dict().items()}
  path = tmp_path / "half.pth"
  torch.save(sd, path)
  model = zipjax.load_sam(str(path))
  leaf = model.variables["params"]["image_encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert leaf.dtype == np.float32
  want = sd["image_encoder.blocks.0.attn.qkv.weight"].float().numpy().T
  np.testing.assert_array_equal(np.asarray(leaf), want)
