"""Prompt encoder + mask decoder parity with segment_anything: boxes, points, masks; multimask on and off."""
import functools

import jax
import numpy as np
import pytest
import torch

from tests.models.sam_net.helpers import RTOL, nchw, nhwc, rel_err, torch_and_flax
from zipjax.convert.core import CONV_TRANSPOSE
from zipjax.models.sam_net.common import ConvTransposeStride
from zipjax.models.sam_net.model import Sam, SamConfig

# Full-size prompt encoder and decoder (256 channels, 64x64 embedding, 1024 frame) behind a tiny encoder
# (the encoder is not run here; it only has to exist for the converter).
DECODER_CFG = SamConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                        encoder_global_attn_indexes=(1,))


@functools.lru_cache(maxsize=1)
def _models():
  return torch_and_flax(DECODER_CFG, seed=7)


def _prompts(kind: str, n: int, rng: np.random.Generator):
  s = DECODER_CFG.img_size
  points = boxes = masks = None
  if "points" in kind:
    coords = rng.uniform(0, s, (n, 3, 2)).astype(np.float32)
    labels = np.array([[1, 0, -1], [0, 1, 1], [1, 1, 0]][:n] * (n // 3 + 1))[:n].astype(np.int64)
    points = (coords, labels)
  if "boxes" in kind:
    xy0 = rng.uniform(0, s * 0.6, (n, 2))
    wh = rng.uniform(16, s * 0.4, (n, 2))
    boxes = np.concatenate([xy0, xy0 + wh], axis=1).astype(np.float32)
  if "masks" in kind:
    masks = (4 * rng.standard_normal((n, 256, 256, 1))).astype(np.float32)
  return points, boxes, masks


@pytest.mark.parametrize("kind,multimask", [
    ("boxes", False), ("boxes", True), ("points", False), ("points", True), ("points+boxes", True),
    ("boxes+masks", False), ("masks", True),
])
def test_decoder_parity(kind, multimask):
  sam, model, _ = _models()
  rng = np.random.default_rng(abs(hash(kind)) % 1000 + multimask)
  n = 3
  points, boxes, masks = _prompts(kind, n, rng)
  emb = rng.standard_normal((64, 64, 256)).astype(np.float32)

  t_points = None if points is None else (torch.from_numpy(points[0]), torch.from_numpy(points[1]))
  t_boxes = None if boxes is None else torch.from_numpy(boxes)
  t_sparse, t_dense = sam.prompt_encoder(points=t_points, boxes=t_boxes,
                                         masks=None if masks is None else nchw(masks))
  want_masks, want_iou = sam.mask_decoder(image_embeddings=nchw(emb[None]),
                                          image_pe=sam.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=t_sparse, dense_prompt_embeddings=t_dense,
                                          multimask_output=multimask)

  v = model.variables
  sparse, dense = model.module.apply(v, points=points, boxes=boxes, masks=masks,
                                     method=lambda m, **kw: m.prompt_encoder(**kw))
  assert sparse.shape == tuple(t_sparse.shape)
  if sparse.shape[1]:
    assert rel_err(sparse, t_sparse) < RTOL
  assert rel_err(dense, nhwc(t_dense)) < RTOL
  pe = model.module.apply(v, method=lambda m: m.prompt_encoder.get_dense_pe())
  assert rel_err(pe, nhwc(sam.prompt_encoder.get_dense_pe())) < RTOL

  decode = jax.jit(functools.partial(model.module.apply, method=Sam.decode, multimask_output=multimask))
  got_masks, got_iou = decode(v, emb, points=points, boxes=boxes, masks=masks)
  k = 3 if multimask else 1
  assert got_masks.shape == tuple(want_masks.shape) == (n, k, 256, 256)
  assert got_iou.shape == tuple(want_iou.shape) == (n, k)
  assert rel_err(got_masks, want_masks) < RTOL
  assert rel_err(got_iou, want_iou) < RTOL


def test_predict_boxes_batched_matches_per_image_torch():
  """SamModel.predict_boxes: B images x M boxes in one call == segment_anything image by image."""
  sam, model, _ = _models()
  rng = np.random.default_rng(11)
  b, m = 2, 5
  emb = rng.standard_normal((b, 64, 64, 256)).astype(np.float32)
  boxes = np.stack([_prompts("boxes", m, rng)[1] for _ in range(b)])  # [B, M, 4]
  for multimask in (False, True):
    logits, iou = model.predict_boxes(emb, boxes, multimask=multimask)
    k = 3 if multimask else 1
    assert logits.shape == (b, m, k, 256, 256) and iou.shape == (b, m, k)
    for i in range(b):
      sparse, dense = sam.prompt_encoder(points=None, boxes=torch.from_numpy(boxes[i]), masks=None)
      want_l, want_iou = sam.mask_decoder(nchw(emb[i:i + 1]), sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                          multimask)
      assert rel_err(logits[i], want_l) < RTOL
      assert rel_err(iou[i], want_iou) < RTOL


def test_conv_transpose_kernel_mapping():
  """torch ConvTranspose2d(k=2, s=2) [in, out, kh, kw] -> ConvTransposeStride [kh, kw, in, out]."""
  torch.manual_seed(0)
  layer = torch.nn.ConvTranspose2d(8, 4, kernel_size=2, stride=2)
  x = np.random.default_rng(0).standard_normal((2, 5, 7, 8)).astype(np.float32)
  want = nhwc(layer(nchw(x)))
  params = {"params": {"kernel": CONV_TRANSPOSE.forward(layer.weight.numpy()), "bias": layer.bias.numpy()}}
  assert params["params"]["kernel"].shape == (2, 2, 8, 4)
  assert CONV_TRANSPOSE.torch_shape((2, 2, 8, 4)) == tuple(layer.weight.shape)
  got = np.asarray(ConvTransposeStride(4, 2).apply(params, x))
  assert got.shape == want.shape == (2, 10, 14, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # the spatial flip that flax.linen.ConvTranspose(transpose_kernel=False) would need is NOT applied here
  flipped = {"params": {"kernel": params["params"]["kernel"][::-1, ::-1], "bias": params["params"]["bias"]}}
  assert not np.allclose(ConvTransposeStride(4, 2).apply(flipped, x), want, atol=1e-3)
