"""End-to-end parity of the `reference` preset with the PyTorch + NumPy reference pipeline
(tests/reference/zip_pipeline.py): random-weight small CLIP ViT (surgery) and ModifiedResNet, same image,
identical instance label maps, masks and boxes."""
import numpy as np
import pytest
import torch

from tests.reference import clip_ref, zip_pipeline
from zipjax import configs
from zipjax.clip import ClipModel
from zipjax.convert.clip import convert_state_dict
from zipjax.engine import Engine
from zipjax.io.text_cache import prompt_templates
from zipjax.ops import resize

torch.set_grad_enabled(False)

VIT = dict(embed_dim=64, image_resolution=64, vision_layers=3, vision_width=64, vision_patch_size=16,
           **clip_ref.TINY_TEXT)
RN = dict(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
          vision_patch_size=None, **clip_ref.TINY_TEXT)
NAMES = ["orange", "wooden table", "sky"]


def scene(seed: int, h: int = 150, w: int = 200) -> np.ndarray:
  """Discs and a rectangle on a two-tone background, with pixel noise (uint8 RGB).

  The noise matters: flat colours give near-identical boundary features whose k-means assignment is decided
  by rounding (distance gaps ~1e-9), where float32 and float64 references legitimately disagree.
  """
  rng = np.random.default_rng(seed)
  img = np.zeros((h, w, 3), np.uint8)
  img[:] = rng.integers(0, 256, 3)
  img[h // 2:] = rng.integers(0, 256, 3)
  yy, xx = np.mgrid[:h, :w]
  for _ in range(5):
    cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), rng.integers(12, 30)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
  r0, c0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
  img[r0:r0 + 40, c0:c0 + 60] = rng.integers(0, 256, 3)
  noisy = img.astype(np.float32) + rng.normal(0, 12, img.shape)
  return np.clip(noisy, 0, 255).astype(np.uint8)


def _config():
  config = configs.reference()
  config.semantic.input_size = 224
  config.boundary.input_size = 480
  config.discover.min_instance_cells = 30
  return config


def reference_models():
  """(torch ViT, torch ModifiedResNet, zipjax ViT, zipjax ResNet): the same random weights in both (also the
  models of bench/engine.py and bench/segment.py)."""
  vit = clip_ref.make_clip(seed=3, **VIT)
  rn = clip_ref.make_clip(seed=4, **RN)
  # A tiny random ResNet with randomised BatchNorm statistics (make_clip's default) collapses layer3 to a
  # near-constant vector (nearest-centroid distances ~1e-6 of |x|^2), where k-means assignments are decided
  # by float rounding. BatchNorm as a plain gain of 1/sqrt(0.3) keeps the features spatially varied, like a
  # trained network's, so the comparison tests the pipeline rather than rounding.
  for m in rn.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.zero_()
      m.bias.zero_()
      m.running_var.fill_(0.3)
      m.weight.fill_(1.0)
  cfg_v, var_v = convert_state_dict(clip_ref.state_dict_numpy(vit))
  cfg_r, var_r = convert_state_dict(clip_ref.state_dict_numpy(rn))
  return vit, rn, ClipModel(cfg_v.replace(surgery_depth=2), var_v), ClipModel(cfg_r, var_r)


@pytest.fixture(scope="module")
def models():
  return reference_models()


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_preset_matches_torch_numpy_pipeline(models, seed):
  vit, rn, jvit, jrn = models
  config = _config()
  image = scene(seed)
  ref = zip_pipeline.reference_pipeline(
      image, NAMES, vit, rn, prompt_templates(), config.semantic.input_size, config.boundary.input_size,
      surgery_depth=2, discover_kwargs={"min_instance_cells": config.discover.min_instance_cells})
  eng = Engine(config, models=(jvit, jrn, None), text_cache=None)
  eng.set_classes(NAMES)
  out = eng.segment([image, scene(seed + 10)], masks="bool")[0]  # a batch of two; the first is compared
  np.testing.assert_allclose(out["probs"], ref["probs"], rtol=1e-4, atol=1e-6)
  assert list(out["present"]) == [0, 1, 2]  # no classification-first in `reference`
  assert out["labels"].shape == ref["labels"].shape
  np.testing.assert_array_equal(out["labels"], ref["labels"])
  n_ref = int(sum(lab.max() for lab in ref["labels"]))
  assert n_ref >= 2, "the scene must produce instances for the comparison to mean something"
  # instances: full-resolution masks (torch legacy nearest of the label maps) and swapped-scale boxes
  hh, ww = image.shape[:2]
  gh, gw = ref["labels"].shape[1:]
  iy, ix = resize.nearest_indices(gh, hh), resize.nearest_indices(gw, ww)
  expected = []
  for c, lab in enumerate(ref["labels"]):
    full = lab[iy][:, ix]
    for k, box in enumerate(ref["boxes"][c]):
      expected.append((c, np.clip(box, 0, [ww, hh, ww, hh]), full == k + 1))
  got = out["instances"]
  assert len(got) == len(expected) == n_ref
  # all scores of a class are equal (its image-level probability); order: by score, then class/raster order
  key = lambda e: (-float(ref["probs"][e[0]]), e[0])  # noqa: E731
  expected.sort(key=key)
  for g, (c, box, mask) in zip(got, expected):
    assert g["category"] == c
    np.testing.assert_allclose(g["box"], box, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(g["mask"], mask)
    assert g["score"] == pytest.approx(float(ref["probs"][c]), rel=1e-4)


def test_empty_class_slots_change_nothing(models):
  """With classification first, the engine runs P static class slots per image and masks the empty ones: the
  automatic P (every class a slot, some empty) gives exactly the result of P = the number of present classes
  (no empty slot)."""
  _, _, jvit, jrn = models
  image = scene(0)
  outs = []
  for slots in (0, None):
    config = _config()
    config.scoring.update(classification_first=True, presence_threshold=0.2)
    if slots is None:  # as many slots as the first run found present classes
      slots = len(outs[0]["present"])
      assert 0 < slots < len(NAMES), "the scene must leave a class absent, or no slot is empty"
    config.scoring.max_present_classes = slots
    eng = Engine(config, models=(jvit, jrn, None), text_cache=None)
    eng.set_classes(NAMES)
    outs.append(eng.segment([image], masks="bool")[0])
  np.testing.assert_array_equal(outs[0]["present"], outs[1]["present"])
  np.testing.assert_array_equal(outs[0]["labels"], outs[1]["labels"])
  assert len(outs[0]["instances"]) == len(outs[1]["instances"]) > 0
  for a, b in zip(outs[0]["instances"], outs[1]["instances"]):
    assert (a["category"], a["score"], a["box"]) == (b["category"], b["score"], b["box"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
