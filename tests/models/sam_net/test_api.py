"""Public API: preprocessing, box transform and post-processing against segment_anything; input errors."""
import functools
import importlib
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import zipjax
from tests.models.sam_net.helpers import RTOL, build_torch_sam, nchw, rel_err, torch_and_flax
from tests.reference import sam_modules
from zipjax import sam as zsam
from zipjax.errors import InputError
from zipjax.models.sam_net.model import SamConfig


@functools.lru_cache(maxsize=1)
def _sam_transforms():
  """segment_anything.utils.transforms, imported with a stand-in for torchvision (not installed here).

  Only `ResizeLongestSide.apply_image` touches torchvision; for a PIL image torchvision's
  `resize(img, [h, w])` is `img.resize((w, h), BILINEAR)`, which the stand-in reproduces. `apply_boxes`,
  `apply_coords` and `get_preprocess_shape` are segment_anything's own code.
  """
  sam_modules()  # registers the bare segment_anything package
  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.transforms",
                                           "torchvision.transforms.functional")}
  fn = types.ModuleType("torchvision.transforms.functional")
  fn.resize = lambda img, size: img.resize((size[1], size[0]), Image.BILINEAR)
  fn.to_pil_image = Image.fromarray
  tv, tvt = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
  tv.transforms, tvt.functional = tvt, fn
  sys.modules.update({"torchvision": tv, "torchvision.transforms": tvt,
                      "torchvision.transforms.functional": fn})
  try:
    sys.modules.pop("segment_anything.utils.transforms", None)
    sys.modules.pop("segment_anything.utils", None)
    return importlib.import_module("segment_anything.utils.transforms")
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


@functools.lru_cache(maxsize=1)
def _torch_sam_1024():
  return build_torch_sam(SamConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                                   encoder_global_attn_indexes=(1,)), seed=5)


@pytest.mark.parametrize("hw", [(480, 640), (333, 500), (1200, 37), (1024, 1024), (17, 23)])
def test_preprocess_image_matches_segment_anything(hw):
  transforms = _sam_transforms()
  rng = np.random.default_rng(hw[0])
  image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
  pixels, input_size, original_size = zsam.preprocess_image(image)
  rl = transforms.ResizeLongestSide(1024)
  resized = rl.apply_image(image)
  assert input_size == resized.shape[:2] == rl.get_preprocess_shape(*hw, 1024)
  assert original_size == hw
  want = _torch_sam_1024().preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].contiguous())
  np.testing.assert_allclose(pixels, want[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-6)


def test_apply_boxes_matches_segment_anything():
  transforms = _sam_transforms()
  rng = np.random.default_rng(0)
  boxes = rng.uniform(0, 600, (7, 4))
  for size in [(480, 640), (333, 500), (640, 427)]:
    want = transforms.ResizeLongestSide(1024).apply_boxes(boxes, size)
    got = zsam.apply_boxes(boxes, size)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("original", [(480, 640), (333, 500)])
def test_postprocess_masks_matches_segment_anything(original):
  sam = _torch_sam_1024()
  input_size = zsam.get_preprocess_shape(*original)
  low = (3 * np.random.default_rng(1).standard_normal((4, 3, 256, 256))).astype(np.float32)
  want = sam.postprocess_masks(torch.from_numpy(low), input_size, original).numpy()
  logits = np.asarray(zsam.postprocess_masks(low, input_size, original, return_logits=True))
  assert logits.shape == want.shape == (4, 3, *original)
  assert rel_err(logits, want) < 1e-5
  masks = np.asarray(zsam.postprocess_masks(low, input_size, original))
  assert masks.dtype == bool
  decided = np.abs(want) > 1e-4
  np.testing.assert_array_equal(masks[decided], want[decided] > 0)


# ---------------------------------------------------------------------------------------------- bad input
@functools.lru_cache(maxsize=1)
def _tiny():
  return torch_and_flax(SamConfig.tiny(), seed=2)


def test_boxes_outside_frame_are_clamped():
  _, model, _ = _tiny()
  emb = model.image_embeddings(np.random.default_rng(0).standard_normal((1, 128, 128, 3)).astype(np.float32))
  outside = np.array([[[-10.0, -5.0, 300.0, 100.0], [20.0, 30.0, 500.0, 129.0]]], np.float32)
  clamped = np.array([[[0.0, 0.0, 128.0, 100.0], [20.0, 30.0, 128.0, 128.0]]], np.float32)
  a = model.predict_boxes(emb, outside)
  b = model.predict_boxes(emb, clamped)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_box_input_errors():
  _, model, _ = _tiny()
  emb = np.zeros((2, 8, 8, 64), np.float32)
  good = np.tile(np.array([[[0, 0, 10, 10]]], np.float32), (2, 1, 1))
  bad = good.copy()
  bad[1, 0, 2] = np.nan
  with pytest.raises(InputError, match=r"non-finite coordinates in image 1, box 0"):
    model.predict_boxes(emb, bad)
  bad[1, 0, 2] = np.inf
  with pytest.raises(InputError, match="non-finite"):
    model.predict_boxes(emb, bad)
  inverted = good.copy()
  inverted[0, 0] = [50, 0, 10, 10]
  with pytest.raises(InputError, match=r"inverted box .* image 0, box 0"):
    model.predict_boxes(emb, inverted)
  with pytest.raises(InputError, match=r"boxes must be \[B, M, 4\]"):
    model.predict_boxes(emb, good[:1])
  with pytest.raises(InputError, match=r"embeddings must be \[B, 8, 8, 64\]"):
    model.predict_boxes(emb[:, :4], good)


def test_zero_boxes_give_empty_outputs():
  _, model, _ = _tiny()
  emb = np.zeros((2, 8, 8, 64), np.float32)
  for multimask, k in ((False, 1), (True, 3)):
    logits, iou = model.predict_boxes(emb, np.zeros((2, 0, 4), np.float32), multimask=multimask)
    assert logits.shape == (2, 0, k, 32, 32) and iou.shape == (2, 0, k)


def test_pixel_input_errors():
  _, model, _ = _tiny()
  with pytest.raises(InputError, match=r"pixels must be \[B, 128, 128, 3\]"):
    model.image_embeddings(np.zeros((1, 64, 64, 3), np.float32))
  with pytest.raises(InputError, match="floating point"):
    model.image_embeddings(np.zeros((1, 128, 128, 3), np.uint8))
  with pytest.raises(InputError, match="empty batch"):
    model.image_embeddings(np.zeros((0, 128, 128, 3), np.float32))
  with pytest.raises(InputError, match="RGB uint8"):
    zsam.preprocess_image(np.zeros((10, 10), np.uint8))
  with pytest.raises(InputError, match="RGB uint8"):
    zsam.preprocess_image(np.zeros((10, 10, 3), np.float32))


def test_jitted_once_per_shape_and_end_to_end_tiny():
  """Encoder + boxes through the public object equal torch end to end; a second call does not recompile."""
  sam, model, _ = _tiny()
  rng = np.random.default_rng(4)
  pixels = rng.standard_normal((2, 128, 128, 3)).astype(np.float32)
  boxes = np.array([[[3, 4, 60, 70], [0, 0, 127, 127], [40, 10, 90, 50]]] * 2, np.float32)
  emb = model.image_embeddings(pixels)
  logits, iou = model.predict_boxes(emb, boxes, multimask=True)
  t_emb = sam.image_encoder(nchw(pixels))
  for i in range(2):
    sparse, dense = sam.prompt_encoder(points=None, boxes=torch.from_numpy(boxes[i]), masks=None)
    want_l, want_iou = sam.mask_decoder(t_emb[i:i + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    assert rel_err(logits[i], want_l) < RTOL
    assert rel_err(iou[i], want_iou) < RTOL

  def cache_sizes():  # compiled executables held by the jitted functions
    return model._boxes[True]._cache_size(), model._embed._cache_size()  # pylint: disable=protected-access

  compiled = cache_sizes()
  model.predict_boxes(emb + 1.0, boxes + 1.0, multimask=True)
  model.image_embeddings(pixels * 2)
  assert cache_sizes() == compiled


def test_random_init_model():
  cfg = SamConfig.tiny(encoder_depth=2, encoder_global_attn_indexes=(1,))
  a = zsam.SamModel.random(cfg, seed=0)
  b = zsam.SamModel.random(cfg, seed=0)
  c = zsam.SamModel.random(cfg, seed=1)
  pixels = np.random.default_rng(0).standard_normal((1, 128, 128, 3)).astype(np.float32)
  ea, eb, ec = (m.image_embeddings(pixels) for m in (a, b, c))
  np.testing.assert_array_equal(ea, eb)
  assert rel_err(ea, ec) > 0.1
  assert zsam.SamModel.random("vit_b", encoder_depth=1, encoder_global_attn_indexes=(0,), img_size=224,
                              window_size=7).config.encoder_embed_dim == 768
  assert zipjax.load_sam is zsam.load_sam


def test_segment_boxes_end_to_end_matches_segment_anything_flow():
  """uint8 image + boxes in original pixels -> masks at the original size, as SamPredictor would do."""
  sam, model, _ = _tiny()
  transforms = _sam_transforms()
  rng = np.random.default_rng(9)
  image = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
  boxes = np.array([[10, 5, 80, 60], [0, 0, 149, 89], [100, 30, 140, 85]], np.float32)
  masks, iou, logits = model.segment_boxes(image, boxes, multimask=True)

  rl = transforms.ResizeLongestSide(128)
  resized = rl.apply_image(image)
  x = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].contiguous().float())
  t_boxes = torch.from_numpy(rl.apply_boxes(boxes, image.shape[:2])).float()
  sparse, dense = sam.prompt_encoder(points=None, boxes=t_boxes, masks=None)
  want_logits, want_iou = sam.mask_decoder(sam.image_encoder(x), sam.prompt_encoder.get_dense_pe(), sparse,
                                           dense, True)
  want_full = sam.postprocess_masks(want_logits, resized.shape[:2], image.shape[:2]).numpy()
  assert masks.shape == want_full.shape == (3, 3, 90, 150) and masks.dtype == bool
  assert rel_err(logits, want_logits) < RTOL
  assert rel_err(iou, want_iou) < RTOL
  decided = np.abs(want_full) > 1e-5 * np.abs(want_full).max()  # skip logits within rounding of 0
  assert decided.mean() > 0.99
  np.testing.assert_array_equal(np.asarray(masks)[decided], want_full[decided] > 0)
  with pytest.raises(InputError, match=r"boxes must be \[M, 4\]"):
    model.segment_boxes(image, boxes[None])


def test_config_table_and_validation():
  for name, (dim, depth, heads, glob) in {"vit_b": (768, 12, 12, (2, 5, 8, 11)),
                                          "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
                                          "vit_h": (1280, 32, 16, (7, 15, 23, 31))}.items():
    cfg = SamConfig.from_size(name)
    assert (cfg.encoder_embed_dim, cfg.encoder_depth, cfg.encoder_num_heads,
            cfg.encoder_global_attn_indexes) == (dim, depth, heads, glob)
    assert (cfg.img_size, cfg.patch_size, cfg.window_size, cfg.embedding_size) == (1024, 16, 14, 64)
    assert cfg.size_name() == name and SamConfig.from_size(name[-1]) == cfg
    assert SamConfig.from_dict(cfg.to_dict()) == cfg
    assert "dtype" not in cfg.to_dict(with_compute=False)
  assert SamConfig.tiny().size_name() is None
  with pytest.raises(ValueError, match="unknown SAM size"):
    SamConfig.from_size("vit_x")
  with pytest.raises(ValueError, match="dtype"):
    SamConfig.tiny(dtype="int8")
  with pytest.raises(ValueError, match="fused_attention"):
    SamConfig.tiny(fused_attention="flash")
  with pytest.raises(ValueError, match="outside depth"):
    SamConfig.tiny(encoder_global_attn_indexes=(4,))
  with pytest.raises(ValueError, match="unknown SAM config fields"):
    SamConfig.from_dict({"encoder_width": 3})
