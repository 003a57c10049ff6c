"""Image encoder parity with segment_anything (random weights, float32)."""
import dataclasses
import time

import numpy as np
import pytest

from tests.models.sam_net.helpers import RTOL, nchw, nhwc, rel_err, torch_and_flax
from zipjax.models.sam_net.model import SAM_SIZES, SamConfig


def _reduced(size: str, depth: int, glob, img_size: int) -> SamConfig:
  """Official width/heads (head dim 64 for B/L, 80 for H) at reduced depth and image size."""
  dim, _, heads, _ = SAM_SIZES[size]
  return SamConfig(encoder_embed_dim=dim, encoder_depth=depth, encoder_num_heads=heads,
                   encoder_global_attn_indexes=glob, img_size=img_size)


def _check_encoder(cfg: SamConfig, batch: int, seed: int = 0, also_fused: bool = False):
  sam, model, inferred = torch_and_flax(cfg, seed)
  assert inferred == cfg  # the converter recovered the architecture from shapes alone
  rng = np.random.default_rng(seed)
  pixels = rng.standard_normal((batch, cfg.img_size, cfg.img_size, 3)).astype(np.float32)
  want = nhwc(sam.image_encoder(nchw(pixels)))
  got = np.asarray(model.image_embeddings(pixels))
  assert got.shape == want.shape == (batch, cfg.embedding_size, cfg.embedding_size, cfg.prompt_embed_dim)
  err = rel_err(got, want)
  assert err < RTOL, f"relative error {err:.2e} >= {RTOL}"
  if also_fused:  # relative positions folded into q/k for jax.nn.dot_product_attention
    fused = np.asarray(model.with_options(fused_attention=True).image_embeddings(pixels))
    assert rel_err(fused, want) < RTOL
  return err


def test_encoder_tiny_with_window_padding():
  # 8x8 tokens, window 3 -> padded to 9x9: exercises window_partition padding (zeros attended to).
  _check_encoder(SamConfig.tiny(), batch=2)


def test_encoder_vit_l_structure_reduced():
  # ViT-L width 1024 / 16 heads (head dim 64); windowed, global, windowed, global; 256 px = 16x16 tokens
  # (window 14 pads to 28: 4 windows per image).
  _check_encoder(_reduced("vit_l", 4, (1, 3), 256), batch=1)


def test_encoder_vit_h_structure_reduced():
  # ViT-H width 1280 / 16 heads (head dim 80, scale not a power of two); 1 windowed then 1 global;
  # 320 px = 20x20 tokens, padded to 28x28 for the windows.
  _check_encoder(_reduced("vit_h", 2, (1,), 320), batch=1, also_fused=True)


@pytest.mark.slow
def test_encoder_vit_b_full_size():
  t = time.time()
  err = _check_encoder(SamConfig.from_size("vit_b"), batch=1)
  print(f"vit_b 1024 encoder: relative error {err:.2e} in {time.time() - t:.0f}s")


def test_rel_pos_tables_must_fit_grid():
  from zipjax.models.sam_net.image_encoder import decomposed_rel_pos_bias
  import jax.numpy as jnp
  with pytest.raises(ValueError, match="do not fit"):
    decomposed_rel_pos_bias(jnp.zeros((1, 16, 2, 4)), jnp.zeros((5, 4)), jnp.zeros((7, 4)), (4, 4))


def test_bfloat16_and_fused_attention_close_to_float32():
  cfg = SamConfig.tiny()
  sam, model, _ = torch_and_flax(cfg, seed=3)
  pixels = np.random.default_rng(3).standard_normal((1, 128, 128, 3)).astype(np.float32)
  want = nhwc(sam.image_encoder(nchw(pixels)))
  fused = model.with_options(fused_attention=True, remat=True)
  assert rel_err(fused.image_embeddings(pixels), want) < RTOL
  bf16 = model.with_options(dtype="bfloat16")
  err = rel_err(bf16.image_embeddings(pixels), want)
  assert err < 5e-2, err  # bfloat16 compute: ~3 significant digits per op
  assert dataclasses.asdict(bf16.config)["dtype"] == "bfloat16"
  # decoder: fused attention equal to the explicit form, bf16 close
  emb = model.image_embeddings(pixels)
  boxes = np.array([[[3, 4, 60, 70], [10, 20, 127, 90]]], np.float32)
  want_l, want_iou = model.predict_boxes(emb, boxes, multimask=True)
  got_l, got_iou = fused.predict_boxes(emb, boxes, multimask=True)
  assert rel_err(got_l, want_l) < RTOL and rel_err(got_iou, want_iou) < RTOL
  got_l, got_iou = bf16.predict_boxes(emb, boxes, multimask=True)
  assert rel_err(got_l, want_l) < 5e-2 and rel_err(got_iou, want_iou) < 5e-2


@pytest.mark.slow  # two backward compiles; remat=True also runs forward in the bf16/fused test
def test_remat_gives_the_same_gradients():
  import jax
  import jax.numpy as jnp
  from zipjax.sam import SamModel
  # one windowed block (window 3 on 4x4 tokens, padded) keeps the two backward compiles short
  cfg = SamConfig.tiny(encoder_depth=1, encoder_global_attn_indexes=(), img_size=64, encoder_embed_dim=32,
                       encoder_num_heads=2, prompt_embed_dim=32)
  model = SamModel.random(cfg, seed=0)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 3)), jnp.float32)
  loss = lambda m: (lambda v: jnp.sum(m.embed_fn(v, x) ** 2))  # noqa: E731
  g_plain = jax.jit(jax.grad(loss(model)))(model.variables)
  g_remat = jax.jit(jax.grad(loss(model.with_options(remat=True))))(model.variables)
  leaves = jax.tree_util.tree_leaves(g_plain)
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
  for a, b in zip(leaves, jax.tree_util.tree_leaves(g_remat)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6 * float(jnp.abs(a).max()))
