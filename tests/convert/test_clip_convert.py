"""OpenAI CLIP checkpoint conversion: TorchScript archives and state dicts made at test time, strict checks,
clear errors, atomic output, torch-free loading."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.reference import clip_modules
from tests.reference.clip_ref import TINY_TEXT, make_clip, nchw, rel_err
from zipjax import CheckpointError, load_clip
from zipjax.cli import main as cli_main
from zipjax.convert.clip import convert_state_dict, infer_config
from zipjax.models.clip_net import ARCHITECTURES

TOL = 1e-5
SMALL_VIT = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=16,
                 **TINY_TEXT)
SMALL_RN = dict(embed_dim=64, image_resolution=64, vision_layers=(1, 2, 1, 1), vision_width=16,
                vision_patch_size=None, **TINY_TEXT)
torch.set_grad_enabled(False)


def _fp16_model(arch):
  """A random model with OpenAI's fp16 weights (clip.model.convert_weights), plus an fp32 copy of it."""
  model = make_clip(**arch)
  clip_modules()[0].convert_weights(model)
  ref = make_clip(**arch)
  ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
  return model, ref


def _save_torchscript(model, path, res):
  """A TorchScript archive like OpenAI's: traced, fp16 weights, and the three integer entries."""
  for name, value in (("input_resolution", res), ("context_length", 77), ("vocab_size", 49408)):
    if hasattr(model, name):
      delattr(model, name)
    model.register_buffer(name, torch.tensor(value))
  traced = torch.jit.trace(model, (torch.randn(1, 3, res, res).half(), torch.zeros(1, 77, dtype=torch.long)),
                           check_trace=False)
  traced.save(str(path))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("arch", [SMALL_VIT, SMALL_RN], ids=["vit", "resnet"])
def test_torchscript_archive(tmp_path, arch):
  model, ref = _fp16_model(arch)
  path = tmp_path / "model.pt"
  _save_torchscript(model, path, arch["image_resolution"])
  clip = load_clip(path)
  res = arch["image_resolution"]
  x = np.random.default_rng(0).standard_normal((2, res, res, 3)).astype(np.float32)
  assert rel_err(clip.encode_image(x), ref.encode_image(nchw(x)).numpy()) < TOL
  tokens = torch.from_numpy(np.asarray(__import__("zipjax.models.tokenizer", fromlist=["x"])
                                       .get_tokenizer().tokenize(["a cat", "two dogs"]))).long()
  assert rel_err(clip.encode_text(["a cat", "two dogs"]), ref.encode_text(tokens).numpy()) < TOL


def test_state_dict_cli_convert_and_torch_free_load(tmp_path):
  model = make_clip(**SMALL_VIT)
  src = tmp_path / "sd.pt"
  torch.save(model.state_dict(), src)
  dst = tmp_path / "converted"
  assert cli_main(["convert", "clip", str(src), str(dst)]) == 0
  assert sorted(os.listdir(dst)) == ["config.json", "params.npz"]
  x = np.random.default_rng(1).standard_normal((1, 32, 32, 3)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  # load in a fresh interpreter where importing torch fails
  code = (
      "import sys, numpy as np; sys.modules['torch'] = None\n"
      "import jax; jax.config.update('jax_default_matmul_precision', 'highest')\n"
      f"import zipjax; m = zipjax.load_clip({str(dst)!r})\n"
      f"np.save({str(tmp_path / 'out.npy')!r}, np.asarray(m.encode_image(np.load({str(tmp_path / 'x.npy')!r}),"
      " surgery=True)))\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.getcwd())
  from tests.reference.clip_ref import surgery_encode
  ref = surgery_encode(model.visual, nchw(x), surgery_depth=6).numpy()
  assert rel_err(np.load(tmp_path / "out.npy"), ref) < TOL


def test_reconvert_replaces_destination(tmp_path):
  src = tmp_path / "sd.pt"
  torch.save(make_clip(**SMALL_VIT).state_dict(), src)
  dst = tmp_path / "out"
  assert cli_main(["convert", "clip", str(src), str(dst)]) == 0
  torch.save(make_clip(seed=5, **SMALL_RN).state_dict(), src)
  assert cli_main(["convert", "clip", str(src), str(dst)]) == 0
  assert not load_clip(dst).config.is_vit
  assert sorted(os.listdir(tmp_path)) == ["out", "sd.pt"]  # no temporary directories left


def test_interrupted_write_leaves_no_output(tmp_path, monkeypatch):
  src = tmp_path / "sd.pt"
  torch.save(make_clip(**SMALL_VIT).state_dict(), src)
  import zipjax.convert.store as store

  def boom(f, **arrays):
    f.write(b"partial")
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(store.np, "savez", boom)
  assert cli_main(["convert", "clip", str(src), str(tmp_path / "out")]) == 130  # Ctrl-C: one line, exit 130
  assert sorted(os.listdir(tmp_path)) == ["sd.pt"]


def _errors(tmp_path, sd, name="bad.pt"):
  path = tmp_path / name
  torch.save(sd, path)
  with pytest.raises(CheckpointError) as e:
    load_clip(path)
  msg = str(e.value)
  assert str(path) in msg
  return msg


def test_missing_key(tmp_path):
  sd = make_clip(**SMALL_VIT).state_dict()
  del sd["visual.transformer.resblocks.1.mlp.c_fc.weight"]
  msg = _errors(tmp_path, sd)
  assert "missing key 'visual.transformer.resblocks.1.mlp.c_fc.weight'" in msg


def test_misshapen_key(tmp_path):
  sd = make_clip(**SMALL_VIT).state_dict()
  sd["visual.transformer.resblocks.0.ln_2.weight"] = torch.ones(65)
  msg = _errors(tmp_path, sd)
  assert "visual.transformer.resblocks.0.ln_2.weight': expected shape (64,), found (65,)" in msg


def test_unexpected_key(tmp_path):
  sd = make_clip(**SMALL_VIT).state_dict()
  sd["visual.extra_head.weight"] = torch.ones(3)
  assert "'visual.extra_head.weight'" in _errors(tmp_path, sd)


def test_sam_checkpoint_is_rejected(tmp_path):
  sd = {"image_encoder.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
        "mask_decoder.iou_token.weight": torch.zeros(1, 8)}
  assert "SAM checkpoint" in _errors(tmp_path, sd, "sam_vit_b.pth")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_truncated_and_bogus_files(tmp_path):
  src = tmp_path / "full.pt"
  _save_torchscript(make_clip(**SMALL_VIT), src, 32)
  data = src.read_bytes()
  bad = tmp_path / "truncated.pt"
  bad.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated.pt.*cannot be read"):
    load_clip(bad)
  empty = tmp_path / "empty.pt"
  empty.write_bytes(b"")
  with pytest.raises(CheckpointError, match="empty.pt: file is empty"):
    load_clip(empty)
  with pytest.raises(CheckpointError, match="no such file"):
    load_clip(tmp_path / "nope.pt")
  with pytest.raises(CheckpointError, match="not a converted"):
    load_clip(tmp_path)


def test_converted_dir_checks(tmp_path):
  src = tmp_path / "sd.pt"
  torch.save(make_clip(**SMALL_VIT).state_dict(), src)
  dst = tmp_path / "c"
  cli_main(["convert", "clip", str(src), str(dst)])
  (dst / "params.npz").write_bytes(b"garbage")
  with pytest.raises(CheckpointError, match="params.npz"):
    load_clip(dst)
  # the CLI reports errors without a traceback, exit code 2
  assert cli_main(["convert", "clip", str(tmp_path / "missing.pt"), str(tmp_path / "d")]) == 2


_BIG = ("RN50x16", "RN50x64", "ViT-L/14", "ViT-L/14@336px")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _BIG else n
                                  for n in ARCHITECTURES])
def test_published_architectures_layout(name):
  """Every published architecture: OpenAI's module layout (built on the meta device, no memory) is inferred as
  the named config, and every key maps with the right shape."""
  arch = ARCHITECTURES[name]
  kw = {k: v for k, v in arch.to_dict().items() if k not in ("surgery_depth", "dtype")}
  with torch.device("meta"):
    model = clip_modules()[0].CLIP(**kw)
  shapes = {k: v.shape for k, v in model.state_dict().items()}
  assert infer_config(model.state_dict()) == arch
  fake = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}
  config, variables = convert_state_dict(fake, source=name)
  assert config == arch
  assert variables["params"]["logit_scale"].shape == ()
