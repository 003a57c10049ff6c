"""Parity of the Flax CLIP towers with OpenAI's PyTorch model (random weights), at several depths.

Tolerance: relative error ||flax - torch|| / ||torch|| < 1e-5 in float32 (matmul precision highest).
"""
import numpy as np
import pytest
import torch

from tests.reference.clip_ref import (TINY_TEXT, make_clip, nchw, rel_err, resnet_stages, state_dict_numpy,
                                      surgery_encode, vit_encode)
from zipjax.clip import ClipModel
from zipjax.convert.clip import convert_state_dict
from zipjax.errors import InputError
from zipjax.models.tokenizer import get_tokenizer

TOL = 1e-5
torch.set_grad_enabled(False)


def _pair(**arch):
  torch_model = make_clip(**arch)
  config, variables = convert_state_dict(state_dict_numpy(torch_model))
  return torch_model, ClipModel(config, variables)


def _pixels(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def vit_b16():
  """Full-size ViT-B/16 image tower (text tower tiny)."""
  return _pair(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               **TINY_TEXT)


@pytest.mark.parametrize("size", [224, 512])
@pytest.mark.parametrize("surgery", [False, True])
def test_vit_b16_parity(vit_b16, size, surgery):
  torch_model, model = vit_b16
  x = _pixels((1, size, size, 3), seed=size)
  if surgery:
    ref = surgery_encode(torch_model.visual, nchw(x)).numpy()
  elif size == 224:
    ref = torch_model.encode_image(nchw(x)).numpy()  # OpenAI's own forward at the native size
  else:
    ref = vit_encode(torch_model.visual, nchw(x)).numpy()
  out = np.asarray(model.encode_image(x, surgery=surgery))
  n = (size // 16) ** 2
  assert out.shape == ((1, 1 + n, 512) if surgery else (1, 512))
  assert rel_err(out, ref) < TOL


def test_vit_surgery_non_square_and_batch():
  """Small ViT, several depths of surgery, a 2-image batch of a non-square input (grid 3x5)."""
  for depth in (1, 3):
    torch_model = make_clip(embed_dim=32, image_resolution=64, vision_layers=3, vision_width=64,
                            vision_patch_size=16, **TINY_TEXT)
    config, variables = convert_state_dict(state_dict_numpy(torch_model))
    model = ClipModel(config.replace(surgery_depth=depth), variables)
    x = _pixels((2, 48, 80, 3), seed=depth)
    ref = surgery_encode(torch_model.visual, nchw(x), surgery_depth=depth).numpy()
    assert rel_err(model.encode_image(x, surgery=True), ref) < TOL
    assert rel_err(model.encode_image(x), vit_encode(torch_model.visual, nchw(x)).numpy()) < TOL


def test_surgery_differs_from_plain_path():
  """The dual path must change the patch tokens (guards against a surgery flag that does nothing)."""
  torch_model, model = _pair(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64,
                             vision_patch_size=16, **TINY_TEXT)
  x = _pixels((1, 32, 32, 3))
  tokens = np.asarray(model.encode_image(x, surgery=True))
  cls = np.asarray(model.encode_image(x))
  # the CLS token of the surgery output is the original path's CLS
  assert rel_err(tokens[:, 0], cls) < TOL
  plain = model.module.apply(model.variables, x, method=lambda m, x: m.visual.ln_post(
      m.visual.transformer(m.visual.tokens(x))) @ m.visual.proj)
  assert rel_err(tokens[:, 1:], np.asarray(plain)[:, 1:]) > 1e-2


def test_text_parity():
  torch_model, model = _pair(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64,
                             vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=128,
                             transformer_heads=2, transformer_layers=3)
  texts = ["a photo of a cat.", "", "Orange", "a jpeg corrupted photo of the traffic light!",
           "naïve café, 42 apples", "<|startoftext|> weird   spacing\t\n"]
  tokens = torch.from_numpy(get_tokenizer().tokenize(texts)).long()
  ref = torch_model.encode_text(tokens).numpy()
  out = np.asarray(model.encode_text(texts))
  assert out.shape == (len(texts), 64)
  assert rel_err(out, ref) < TOL
  for i in range(len(texts)):  # every row, not just the bulk
    assert rel_err(out[i], ref[i]) < TOL


def test_rn50_every_stage():
  torch_model, model = _pair(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                             vision_patch_size=None, **TINY_TEXT)
  x = _pixels((1, 224, 224, 3))
  refs = resnet_stages(torch_model.visual, nchw(x))
  for stage, ref in enumerate(refs):
    out = np.asarray(model.trunk_features(x, stage=stage))
    assert out.shape == tuple(ref.permute(0, 2, 3, 1).shape)
    assert rel_err(out, ref.permute(0, 2, 3, 1).numpy()) < TOL, stage
  assert rel_err(model.encode_image(x), torch_model.encode_image(nchw(x)).numpy()) < TOL


@pytest.mark.slow  # one large program per stage to compile; the default suite runs RN50 at every stage
def test_rn50x64_shaped_every_stage():
  """RN50x64's image tower (layers 3-15-36-10, width 128), random weights, a small input; layer3 (index 3) is the
  boundary feature map Zip uses."""
  stages = (0, 1, 2, 3, 4)
  torch_model, model = _pair(embed_dim=1024, image_resolution=448, vision_layers=(3, 15, 36, 10),
                             vision_width=128, vision_patch_size=None, **TINY_TEXT)
  assert model.config.vision_layers == (3, 15, 36, 10)
  x = _pixels((1, 96, 64, 3))
  refs = resnet_stages(torch_model.visual, nchw(x))
  for stage in stages:
    out = np.asarray(model.trunk_features(x, stage=stage))
    assert rel_err(out, refs[stage].permute(0, 2, 3, 1).numpy()) < TOL, stage
  assert refs[3].shape[1] == 2048  # layer3: 2048 channels at stride 16


def test_no_recompile_and_input_errors():
  model = ClipModel.random(make_tiny_config(), seed=1)
  x = _pixels((1, 32, 32, 3))
  model.encode_image(x, surgery=True)
  before = model._image._cache_size()  # pylint: disable=protected-access
  for seed in range(3):
    model.encode_image(_pixels((1, 32, 32, 3), seed), surgery=True)
  assert model._image._cache_size() == before  # pylint: disable=protected-access
  with pytest.raises(InputError, match="multiple of the patch size"):
    model.encode_image(_pixels((1, 40, 32, 3)))
  with pytest.raises(InputError, match="NHWC"):
    model.encode_image(_pixels((1, 3, 32, 32)))
  with pytest.raises(InputError, match="ModifiedResNet"):
    model.trunk_features(x)
  with pytest.raises(InputError, match="empty"):
    model.encode_text([])


def make_tiny_config():
  from zipjax.models.clip_net import CLIPConfig
  return CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=16,
                    transformer_width=64, transformer_heads=1, transformer_layers=1, surgery_depth=1)
