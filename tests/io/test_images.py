"""Robust image decoding and class-name parsing (zipjax/io/images.py): one test per kind of bad input."""

import numpy as np
import pytest
from PIL import Image

from zipjax.errors import InputError
from zipjax.io.images import find_images, load_image, parse_class_names


def _rgb(h=40, w=60, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_roundtrip(tmp_path):
  a = _rgb()
  Image.fromarray(a).save(tmp_path / "a.png")
  np.testing.assert_array_equal(load_image(tmp_path / "a.png"), a)


def test_grayscale_to_rgb(tmp_path):
  g = _rgb()[..., 0]
  Image.fromarray(g, "L").save(tmp_path / "g.png")
  out = load_image(tmp_path / "g.png")
  assert out.shape == (40, 60, 3)
  np.testing.assert_array_equal(out, np.repeat(g[..., None], 3, -1))


def test_rgba_drops_alpha(tmp_path):
  a = _rgb()
  rgba = np.concatenate([a, np.full(a.shape[:2] + (1,), 7, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  np.testing.assert_array_equal(load_image(tmp_path / "a.png"), a)


def test_16bit_scaled(tmp_path):
  v = np.random.default_rng(1).integers(0, 65536, (40, 60)).astype(np.uint16)
  Image.fromarray(v).save(tmp_path / "d.png")  # mode I;16
  assert Image.open(tmp_path / "d.png").mode.startswith("I")
  out = load_image(tmp_path / "d.png")
  assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
  np.testing.assert_array_equal(out[..., 1], np.round(v / 257.0).astype(np.uint8))


def test_cmyk_jpeg(tmp_path):
  Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
  out = load_image(tmp_path / "c.jpg")
  assert out.shape == (40, 60, 3) and out.dtype == np.uint8
  ref = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))
  np.testing.assert_array_equal(out, ref)


def test_exif_rotation_applied(tmp_path):
  a = _rgb(40, 60)
  img = Image.fromarray(a)
  exif = img.getexif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise for display
  img.save(tmp_path / "r.jpg", exif=exif, quality=100)
  out = load_image(tmp_path / "r.jpg")
  assert out.shape == (60, 40, 3)
  raw = np.asarray(Image.open(tmp_path / "r.jpg").convert("RGB"))
  np.testing.assert_array_equal(out, np.rot90(raw, k=-1))


def _corrupt_png() -> bytes:
  """A real PNG whose compressed pixel data is overwritten with garbage (header intact)."""
  import io  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(_rgb(64, 64)).save(buf, format="PNG")
  data = bytearray(buf.getvalue())
  start = data.index(b"IDAT") + 8
  data[start:start + 400] = np.random.default_rng(5).integers(0, 256, 400, dtype=np.uint8).tobytes()
  return bytes(data)


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_bytes(_corrupt_png()), "corrupt or truncated"),
    (lambda p: p.write_text("just some text, not an image"), "not an image"),
])
def test_corrupt_and_non_images(tmp_path, make, reason):
  p = tmp_path / "bad.png"
  make(p)
  with pytest.raises(InputError, match=reason):
    load_image(p)


def test_truncated_jpeg(tmp_path):
  Image.fromarray(_rgb(200, 200)).save(tmp_path / "t.jpg", quality=90)
  data = (tmp_path / "t.jpg").read_bytes()
  (tmp_path / "t.jpg").write_bytes(data[:len(data) // 2])
  with pytest.raises(InputError, match="truncated"):
    load_image(tmp_path / "t.jpg")


def test_missing_and_directory(tmp_path):
  with pytest.raises(InputError, match="not found"):
    load_image(tmp_path / "nope.png")
  with pytest.raises(InputError, match="directory"):
    load_image(tmp_path)


@pytest.mark.parametrize("size,reason", [((20, 100), "too small"), ((8200, 1000), "too large"),
                                         ((40, 2000), "too elongated")])
def test_size_limits(tmp_path, size, reason):
  Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "s.png")
  with pytest.raises(InputError, match=reason):
    load_image(tmp_path / "s.png")
  # exactly at the limits is accepted
  Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
  assert load_image(tmp_path / "ok.png").shape == (32, 32, 3)


def test_find_images(tmp_path):
  for n in ("b.png", "a.JPG", "notes.txt"):
    (tmp_path / n).write_bytes(b"x")
  single = tmp_path / "notes.txt"
  assert find_images([tmp_path, single]) == [str(tmp_path / "a.JPG"), str(tmp_path / "b.png"), str(single)]
  with pytest.raises(InputError):
    find_images([tmp_path / "empty"] if (tmp_path / "empty").mkdir() is None else [])


def test_class_names():
  assert parse_class_names(" orange , traffic   light,Äpfel 🍎") == ["orange", "traffic light", "Äpfel 🍎"]
  assert parse_class_names(file_lines=["# vocabulary\n", "cat\n", "\n", "dog\n"]) == ["cat", "dog"]
  with pytest.raises(InputError, match="empty"):
    parse_class_names("cat,,dog")
  with pytest.raises(InputError, match="empty"):
    parse_class_names("cat, ")
  with pytest.raises(InputError, match="no class names"):
    parse_class_names("")
  with pytest.raises(InputError, match="duplicate class name 'Cat'"):
    parse_class_names("cat,dog,Cat")
