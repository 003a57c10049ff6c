"""Host preparation of the engine (zipjax/pipeline/buckets.py): buckets, feature-grid sizes, the exact activation
vectors, pixel tables and prepared arrays, against direct computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from zipjax import configs, preprocess
from zipjax.errors import InputError
from zipjax.models.clip_resnet import ModifiedResNet
from zipjax.ops import resize
from zipjax.pipeline import buckets


def _spec(config, sam=1024):
  return buckets.PrepSpec.from_config(config, (32, 32), sam)


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_trunk_grid_matches_the_resnet(stage):
  net = ModifiedResNet((1, 1, 1, 1), 64, 2, 64, 16)
  for h, w in [(384, 512), (97, 131), (33, 40), (64, 64)]:
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    shape = jax.eval_shape(lambda v, x: net.apply(v, x, stage, method=ModifiedResNet.trunk),
                           jax.eval_shape(net.init, jax.random.key(0), x), x).shape
    assert buckets.trunk_grid(h, w, stage) == tuple(shape[1:3])


def test_zip_buckets():
  spec = _spec(configs.zip())
  assert spec.num_buckets == len(spec.bucket_shapes) == 27
  assert spec.bucket_shape(spec.bucket_of(360, 480)) == (2048, 2688)
  assert spec.bucket_shape(spec.bucket_of(480, 360)) == (2688, 2048)
  assert spec.bucket_shape(spec.bucket_of(500, 500)) == (2048, 2048)
  assert spec.bucket_shape(spec.bucket_of(100, 1600)) == (2048, 32768)  # 16:1, the last ratio
  assert spec.bucket_shape(spec.bucket_of(100, 3000)) == (2048, 32768)  # beyond it: squeezed to it
  assert spec.grid(spec.bucket_of(360, 480)) == (128, 168)
  # images whose old `size_multiple` rounding lands on a bucket shape get exactly that boundary input
  hits = 0
  for h, w in [(360, 480), (427, 640), (480, 640), (640, 427), (360, 640), (500, 500), (333, 500), (612, 612)]:
    old = preprocess.resize_shorter_side(Image.new("RGB", (w, h)), 2048, 128).size[::-1]
    if old in spec.bucket_shapes:
      hits += 1
      assert spec.bucket_shape(spec.bucket_of(h, w)) == old
  assert hits >= 6
  # nearest ratio in log scale, per orientation
  for h, w in [(100, 141), (141, 100), (100, 290), (77, 300)]:
    a = max(h, w) / min(h, w)
    r = min(spec.bucket_ratios, key=lambda r: abs(np.log(a / r)))
    hb, wb = spec.bucket_shape(spec.bucket_of(h, w))
    assert (hb > wb) == (h > w) and max(hb, wb) == buckets.bucket_long_side(2048, r, 128)


def test_exact_buckets_for_the_reference_preset():
  spec = _spec(configs.reference(), sam=0)
  assert spec.exact and spec.num_buckets is None
  for h, w in [(150, 200), (333, 500), (500, 333), (97, 97)]:
    want = preprocess.shorter_side_size(w, h, 2048)
    assert spec.bucket_shape(spec.bucket_of(h, w)) == (want[1], want[0])


def test_bad_bucket_configs():
  config = configs.zip()
  config.boundary.bucket_ratios = ()
  with pytest.raises(InputError, match="empty"):
    _spec(config)
  config.boundary.bucket_ratios = (0.5, 1.0)
  with pytest.raises(InputError, match=">= 1"):
    _spec(config)


@pytest.mark.parametrize("size,grid,feat", [((37, 53), (5, 7), (4, 6)), ((480, 360), (32, 32), (128, 96)),
                                            ((20, 20), (14, 14), (24, 24))])
def test_activation_vectors_are_exact(size, grid, feat):
  """mean(upsample(G)) == u^T G v and nearest(upsample(G)) == rows G cols^T (float64 references)."""
  hh, ww = size
  g = np.random.default_rng(0).random(grid)
  full = resize.bilinear_rows(grid[0], hh).astype(np.float64) @ g @ resize.bilinear_rows(grid[1], ww).T
  spec = buckets.PrepSpec(semantic_size=32, token_grid=grid, boundary_short=32, size_multiple=0, bucket_ratios=(),
                       bucket_shapes=(), stage=3, sam_size=0, swap_box_scale=False)
  u, v = buckets._column_means(grid[0], hh), buckets._column_means(grid[1], ww)
  np.testing.assert_allclose(u @ g @ v, full.mean(), rtol=1e-6)
  rows = resize.bilinear_rows(grid[0], hh, resize.nearest_indices(hh, feat[0]))
  cols = resize.bilinear_rows(grid[1], ww, resize.nearest_indices(ww, feat[1]))
  small = full[resize.nearest_indices(hh, feat[0])][:, resize.nearest_indices(ww, feat[1])]
  np.testing.assert_allclose(rows @ g @ cols.T, small, rtol=1e-6, atol=1e-12)
  assert spec.bucket_of(hh, ww) > 0


def test_pixel_tables_are_bit_exact():
  img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  t = buckets.pixel_tables()
  np.testing.assert_array_equal(t["clip"][np.arange(3), img], preprocess.normalize(img))
  sam, _, _ = preprocess.sam_input(img, 64)
  ih, iw = preprocess.get_preprocess_shape(40, 50, 64)
  small = preprocess.resize_longest_side(img, 64)
  np.testing.assert_array_equal(t["sam"][np.arange(3), small], sam[:ih, :iw])


def test_prepare_matches_preprocess_and_dummy():
  config = configs.zip()
  config.boundary.input_size = 128
  spec = buckets.PrepSpec.from_config(config, (14, 14), 256)
  img = np.random.default_rng(2).integers(0, 256, (90, 130, 3), dtype=np.uint8)
  item = buckets.prepare(img, spec)
  assert item.size == (90, 130)
  dummy = buckets.dummy_arrays(spec, item.bucket)
  assert set(item.arrays) == set(dummy)
  for k, v in dummy.items():
    assert item.arrays[k].shape == v.shape and item.arrays[k].dtype == v.dtype, k
  assert dummy["valid"] == np.asarray(False) and item.arrays["valid"] == np.asarray(True)
  np.testing.assert_array_equal(item.arrays["semantic"], np.asarray(preprocess.resize_square(img, 512)))
  hb, wb = spec.bucket_shape(item.bucket)
  np.testing.assert_array_equal(item.arrays["boundary"],
                                np.asarray(Image.fromarray(img).resize((wb, hb), Image.BICUBIC)))
  ih, iw = item.arrays["sam_size"]
  np.testing.assert_array_equal(item.arrays["sam"][:ih, :iw], preprocess.resize_longest_side(img, 256))
  assert not item.arrays["sam"][ih:].any() and not item.arrays["sam"][:, iw:].any()
  h, w = spec.grid(item.bucket)
  assert item.arrays["pixel_rows"].sum() == 90 and item.arrays["pixel_cols"].sum() == 130
  np.testing.assert_allclose(item.arrays["box_scale"], [130 / w, 90 / h])
  for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((0, 5, 3), np.uint8)):
    with pytest.raises(InputError):
      buckets.prepare(bad, spec)



def test_sam2_input_is_the_square_resize_with_its_table():
  """sam.family = 'sam2': the SAM input is the image resized to the T x T square (no padding), the table gives
  `zipjax.preprocess.sam2_input`'s values bit for bit, boxes scale by T / W and T / H."""
  config = configs.zip()
  config.boundary.input_size = 128
  config.sam.family = "sam2"
  spec = buckets.PrepSpec.from_config(config, (14, 14), 256)
  assert spec.sam_family == "sam2"
  img = np.random.default_rng(3).integers(0, 256, (90, 130, 3), dtype=np.uint8)
  item = buckets.prepare(img, spec)
  np.testing.assert_array_equal(item.arrays["sam"], preprocess.sam2_resize(img, 256))
  assert list(item.arrays["sam_size"]) == [256, 256]
  np.testing.assert_allclose(item.arrays["sam_box_scale"], [256 / 130, 256 / 90])
  pixels, input_size, original = preprocess.sam2_input(img, 256)
  assert input_size == (256, 256) and original == (90, 130)
  np.testing.assert_array_equal(buckets.pixel_tables()["sam2"][np.arange(3), item.arrays["sam"]], pixels)
