"""Host-side preprocessing reproduces PIL/torchvision semantics exactly."""
import numpy as np
import pytest
import torch
from PIL import Image

from zipjax import preprocess as pp


def _image(w, h, seed=0):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("wh,expected", [((640, 480), (2730, 2048)), ((480, 640), (2048, 2730)),
                                         ((2048, 3000), (2048, 3000)), ((333, 333), (2048, 2048)),
                                         ((4000, 3001), (2729, 2048))])
def test_shorter_side_size(wh, expected):
  assert pp.shorter_side_size(*wh, 2048) == expected


def test_normalize_equals_totensor_normalize():
  img = _image(37, 23)
  # torchvision ToTensor + Normalize, written with torch ops: float32 div by 255, then sub mean / div std
  t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
  mean = torch.tensor(pp.CLIP_MEAN).view(3, 1, 1)
  std = torch.tensor(pp.CLIP_STD).view(3, 1, 1)
  ref = t.sub(mean).div(std).permute(1, 2, 0).numpy()
  np.testing.assert_array_equal(pp.normalize(img), ref)


def test_resizes_are_pil_bicubic():
  img = _image(640, 480)
  sq = pp.clip_surgery_input(img)
  assert sq.shape == (512, 512, 3)
  np.testing.assert_array_equal(sq, pp.normalize(img.resize((512, 512), Image.BICUBIC)))
  b = pp.boundary_input(img)
  assert b.shape == (2048, 2730, 3)
  np.testing.assert_array_equal(b, pp.normalize(img.resize((2730, 2048), Image.BICUBIC)))


def test_modes_are_converted_to_rgb():
  gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
  out = pp.clip_surgery_input(gray, 16)
  assert out.shape == (16, 16, 3)
  raw = out * pp.CLIP_STD + pp.CLIP_MEAN  # back to [0, 1]: the gray level repeated in R, G and B
  np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-6)
  np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-6)
  rgba = Image.new("RGBA", (5, 5), (10, 20, 30, 0))
  np.testing.assert_array_equal(pp.normalize(rgba), pp.normalize(Image.new("RGB", (5, 5), (10, 20, 30))))
  with pytest.raises(ValueError, match="uint8"):
    pp.normalize(np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("wh,multiple,expected", [((640, 480), 128, (2688, 2048)), ((480, 640), 128, (2048, 2688)),
                                                  ((640, 427), 128, (3072, 2048)), ((640, 480), 0, (2730, 2048)),
                                                  ((100, 100), 128, (2048, 2048))])
def test_shorter_side_with_size_multiple(wh, multiple, expected):
  """zipjax's bucketing option: the longer side rounded to the nearest multiple, the shorter side exact."""
  assert pp.resize_shorter_side(_image(*wh), 2048, multiple).size == expected
