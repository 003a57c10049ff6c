"""The detector model against NumPy / PyTorch references: heads recomputed from the parameters, the backbone
against OpenAI's PyTorch ViT after `load_backbone` (native and resized grids), init, postprocess, stochastic
depth, remat, bf16, text queries, analytic FLOPs against XLA's count, configs."""
import functools
import importlib.util
import os

import numpy as np
import pytest
import torch
from scipy.special import erf, expit

import jax
import jax.numpy as jnp

from tests.reference.clip_ref import TINY_TEXT, _tokens, make_clip, nchw
from zipjax.clip import ClipModel, load_clip
from zipjax.errors import CheckpointError, InputError
from zipjax.models import detector as det
from zipjax.models.clip_layers import ResidualAttentionBlock
from zipjax.models.clip_net import CLIPConfig
from zipjax.models.detector import Detector, DetectorConfig
from zipjax.models.random_init import random_variables
from zipjax.models.tree import flatten
from zipjax.pipeline import semantic
from zipjax.train.losses import LossConfig

TINY = DetectorConfig(input_size=64, patch_size=16, width=64, layers=1, heads=1, embed_dim=16, mask_stride=8,
                      mask_dim=8, pixel_width=16, stem_width=8, top_k=7)
CLIP_ARCH = dict(embed_dim=16, image_resolution=64, vision_layers=1, vision_width=64, vision_patch_size=16,
                 **TINY_TEXT)
torch.set_grad_enabled(False)


def _inputs(cfg, b=2, q=3, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (b, cfg.input_size, cfg.input_size, 3)).astype(np.uint8)
  queries = rng.standard_normal((b, q, cfg.embed_dim)).astype(np.float32)
  queries /= np.linalg.norm(queries, axis=-1, keepdims=True)
  valid = np.ones((b, q), bool)
  valid[-1, -1] = False
  return image, queries, valid


def _random_init(module, *args):
  """Random variables for `module` from its abstract init (Flax's eager init compiles one RNG kernel per shape)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  flat = {k: tuple(v.shape) for k, v in flatten(shapes).items()}
  return jax.tree_util.tree_map(jnp.asarray, random_variables(flat, 0, std={"in_proj_weight": 0.1}))


def _gelu(x):
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _mlp(p, x, layers=3):
  for i in range(layers):
    x = x @ np.asarray(p[f"dense{i}"]["kernel"], np.float64) + np.asarray(p[f"dense{i}"]["bias"], np.float64)
    if i < layers - 1:
      x = _gelu(x)
  return x


@functools.lru_cache(maxsize=None)
def _forward(cfg):
  """Jitted forward returning (outputs, the merged token features [B, N, W]); one compile per config."""
  def fwd(variables, image, queries, valid):
    out, inter = Detector(cfg).apply(variables, image, queries, valid, capture_intermediates=True,
                                     mutable=["intermediates"])
    return out, inter["intermediates"]["merged_class_token"]["__call__"][0]
  return jax.jit(fwd)


@pytest.fixture(scope="module")
def tiny():
  variables = det.init_variables(TINY, 0)
  # non-zero last layers, so the heads' full formulas are exercised
  rng = np.random.default_rng(1)
  p = variables["params"]
  for head in ("box_head", "objectness_head"):
    k = p[head]["dense2"]["kernel"]
    p[head]["dense2"]["kernel"] = (rng.standard_normal(k.shape) * 0.1).astype(np.float32)
  image, queries, valid = _inputs(TINY)
  out, feats = _forward(TINY)(variables, image, queries, valid)
  feats = np.asarray(feats, np.float64)  # [B, N, W]
  return variables, (image, queries, valid), out, feats


def test_heads_match_numpy(tiny):
  variables, (image, queries, valid), out, feats = tiny
  p = variables["params"]
  b, n = feats.shape[:2]
  assert n == TINY.num_tokens == 16
  boxes = expit(_mlp(p["box_head"], feats) + det.box_bias(TINY.grid))
  np.testing.assert_allclose(np.asarray(out["pred_boxes"]), boxes, rtol=1e-5, atol=1e-6)
  ch = p["class_head"]
  emb = feats @ np.asarray(ch["dense0"]["kernel"], np.float64) + np.asarray(ch["dense0"]["bias"])
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  cos = np.einsum("bnd,bqd->bnq", emb, queries.astype(np.float64))
  shift = feats @ np.asarray(ch["logit_shift"]["kernel"], np.float64) + np.asarray(ch["logit_shift"]["bias"])
  s = feats @ np.asarray(ch["logit_scale"]["kernel"], np.float64) + np.asarray(ch["logit_scale"]["bias"])
  scale = np.where(s > 0, s, np.expm1(s)) + 1
  logits = np.where(valid[:, None, :], (cos + shift) * scale, -1e6)
  np.testing.assert_allclose(np.asarray(out["pred_logits"]), logits, rtol=1e-4, atol=1e-5)
  obj = _mlp(p["objectness_head"], feats)[..., 0]
  np.testing.assert_allclose(np.asarray(out["objectness"]), obj, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["mask_embed"]), _mlp(p["mask_head"], feats), rtol=1e-4, atol=1e-5)
  assert out["pixel_embed"].shape == (b, TINY.mask_size, TINY.mask_size, TINY.mask_dim) == (2, 8, 8, 8)
  # mask_logits: dot products of gathered token embeddings with the pixel map
  idx = np.array([[3, 0, 15], [7, 7, -1]])
  ml = np.asarray(det.mask_logits(out, jnp.asarray(idx)))
  me, pe = np.asarray(out["mask_embed"]), np.asarray(out["pixel_embed"])
  for i in range(2):
    for k in range(3):
      np.testing.assert_allclose(ml[i, k], pe[i] @ me[i, max(idx[i, k], 0)], rtol=1e-5, atol=1e-5)


def test_box_bias_and_untrained_boxes_are_grid_cells():
  bias = det.box_bias(2)
  np.testing.assert_allclose(expit(bias), [[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5],
                                           [0.25, 0.75, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]], atol=1e-6)
  variables = det.init_variables(TINY, 3)
  image, queries, valid = _inputs(TINY)
  out, _ = _forward(TINY)(variables, image, queries, valid)
  np.testing.assert_allclose(np.asarray(out["pred_boxes"][0]), expit(det.box_bias(TINY.grid)), atol=1e-6)
  prior = TINY.prior_prob
  np.testing.assert_allclose(expit(np.asarray(out["objectness"])), prior, rtol=1e-5)


def test_ltrb_boxes_untrained_cells_and_translation_equivariance():
  """box_param='ltrb': an untrained head predicts its own cell (as 'logit' does); the same head output moves a
  token's box by the same amount wherever the token is (the logit parameterisation does not: the sigmoid's slope
  at a border cell is a quarter of a central cell's)."""
  g = 4
  cells = expit(det.box_bias(g))
  np.testing.assert_allclose(np.asarray(det.decode_boxes(jnp.zeros((g * g, 4)), g, "ltrb")), cells, atol=1e-6)
  np.testing.assert_allclose(det.cell_centres(g), cells[:, :2], atol=1e-6)
  raw = jnp.broadcast_to(jnp.asarray([0.3, -0.2, 0.5, 0.1]), (g * g, 4))
  for param in ("ltrb", "logit"):
    moved = np.asarray(det.decode_boxes(raw, g, param)) - cells  # [N, 4] change from the cell
    same = np.allclose(moved, moved[:1], atol=1e-6)
    assert same == (param == "ltrb"), (param, moved[[0, 5]])
  # l, t, r, b = (0.5 / g) exp(raw): the left edge moves out by (exp(0.3) - 1) * half a cell
  box = np.asarray(det.decode_boxes(raw, g, "ltrb"))[5]  # token (1, 1): centre (0.375, 0.375)
  d = 0.5 / g * np.exp([0.3, -0.2, 0.5, 0.1])
  np.testing.assert_allclose(box, [0.375 + (d[2] - d[0]) / 2, 0.375 + (d[3] - d[1]) / 2, d[0] + d[2], d[1] + d[3]],
                             atol=1e-6)
  cfg = TINY.replace(box_param="ltrb")
  out, _ = _forward(cfg)(det.init_variables(cfg, 3), *_inputs(cfg))
  np.testing.assert_allclose(np.asarray(out["pred_boxes"][0]), expit(det.box_bias(cfg.grid)), atol=1e-6)
  with pytest.raises(InputError, match="box_param"):
    TINY.replace(box_param="xyxy")
  with pytest.raises(InputError, match="mask_nms"):
    TINY.replace(mask_nms=1.5)


def test_init_variables_structure_matches_flax_init():
  ours = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), det.init_variables(TINY, 0))
  flax = jax.eval_shape(functools.partial(det._init, TINY), jax.random.key(0))  # pylint: disable=protected-access
  assert ours == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), flax)
  a, b = det.init_variables(TINY, 0), det.init_variables(TINY, jax.random.key(5))
  assert not np.allclose(a["params"]["mask_head"]["dense0"]["kernel"], b["params"]["mask_head"]["dense0"]["kernel"])
  np.testing.assert_array_equal(det.init_variables(TINY, 0)["params"]["backbone"]["conv1"]["kernel"],
                                a["params"]["backbone"]["conv1"]["kernel"])


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
  """A tiny random OpenAI CLIP ViT saved as a PyTorch state dict."""
  model = make_clip(**CLIP_ARCH)
  path = tmp_path_factory.mktemp("clip") / "tiny_vit.pt"
  torch.save(model.state_dict(), path)
  return model, str(path)


@pytest.mark.parametrize("size", [64, 96])
def test_load_backbone_matches_pytorch_clip(clip_file, size):
  """After load_backbone the detector's backbone gives OpenAI's ln_post(transformer(tokens)) for every token,
  at CLIP's own grid (4 x 4) and at a larger one (6 x 6: positional embedding resized bilinearly)."""
  torch_model, path = clip_file
  cfg = TINY.replace(input_size=size, mask_stride=4)
  variables = det.load_backbone(det.init_variables(cfg, 0), load_clip(path), cfg)
  x = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
  visual = torch_model.visual
  ref = visual.ln_post(visual.transformer(_tokens(visual, nchw(x))).permute(1, 0, 2)).numpy()  # [B, 1 + N, W]
  bb = det.ViTBackbone(size, 16, 64, 1, 1)
  got = np.asarray(jax.jit(bb.apply)({"params": variables["params"]["backbone"]}, jnp.asarray(x)))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(variables["params"]["class_head"]["dense0"]["kernel"],
                                visual.proj.numpy())


def test_load_backbone_errors(clip_file):
  path = load_clip(clip_file[1])
  with pytest.raises(CheckpointError, match="vision_width is 64 but the detector needs 32"):
    det.load_backbone(det.init_variables(TINY.replace(width=32, heads=1), 0), path)
  with pytest.raises(CheckpointError, match="vision_layers"):
    det.load_backbone(det.init_variables(TINY.replace(layers=2), 0), path)
  with pytest.raises(CheckpointError, match="vision_heads"):
    det.load_backbone(det.init_variables(TINY.replace(heads=2), 0), path, TINY.replace(heads=2))
  resnet = ClipModel.random(CLIPConfig(embed_dim=16, image_resolution=64, vision_layers=(1, 1, 1, 1),
                                        vision_width=16, vision_patch_size=None, **TINY_TEXT))
  with pytest.raises(CheckpointError, match="ModifiedResNet"):
    det.load_backbone(det.init_variables(TINY, 0), resnet)


def test_postprocess_matches_numpy():
  rng = np.random.default_rng(0)
  b, n, q = 2, TINY.num_tokens, 3
  out = {"pred_boxes": rng.uniform(0.1, 0.9, (b, n, 4)).astype(np.float32),
         "pred_logits": rng.standard_normal((b, n, q)).astype(np.float32),
         "objectness": rng.standard_normal((b, n)).astype(np.float32),
         "mask_embed": rng.standard_normal((b, n, 4)).astype(np.float32),
         "pixel_embed": rng.standard_normal((b, 8, 8, 4)).astype(np.float32)}
  out["pred_logits"][1, :, 2] = -1e6  # padded query
  for mode in ("class", "class_objectness"):
    cfg = TINY.replace(score=mode)  # box_source 'head'
    got = det.postprocess({k: jnp.asarray(v) for k, v in out.items()}, cfg)
    prob = expit(out["pred_logits"].astype(np.float64))
    if mode == "class_objectness":
      prob = np.sqrt(prob * expit(out["objectness"].astype(np.float64))[..., None])
    prob[1, :, 2] = 0.0
    for i in range(b):
      order = np.argsort(-prob[i].reshape(-1), kind="stable")[:7]
      tok, cls = order // q, order % q
      np.testing.assert_allclose(np.asarray(got["scores"][i]), prob[i].reshape(-1)[order], rtol=1e-5)
      np.testing.assert_array_equal(np.asarray(got["tokens"][i]), tok)
      np.testing.assert_array_equal(np.asarray(got["classes"][i]), cls)
      cx, cy, w, h = out["pred_boxes"][i, tok].T
      xyxy = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1), 0, 1) * 64
      np.testing.assert_allclose(np.asarray(got["boxes"][i]), xyxy, rtol=1e-5, atol=1e-4)
      ml = np.einsum("ke,hwe->khw", out["mask_embed"][i, tok], out["pixel_embed"][i])
      np.testing.assert_allclose(np.asarray(got["mask_logits"][i]), ml, rtol=1e-4, atol=1e-4)
    assert not np.any(np.asarray(got["classes"][1])[np.asarray(got["scores"][1]) > 0] == 2)


def test_drop_path_block_and_remat():
  """Stochastic depth: deterministic calls equal CLIP's block; in training each example's output is one of the
  four combinations of kept (scaled by 1/keep) and dropped branches. remat leaves outputs and gradients equal."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 5, 64)), jnp.float32)
  block = det.DropPathBlock(64, 2, drop_path=0.5)
  v = _random_init(block, x)
  ref = jax.jit(ResidualAttentionBlock(64, 2).apply)(v, x)
  np.testing.assert_allclose(np.asarray(jax.jit(block.apply)(v, x)), np.asarray(ref), rtol=1e-6, atol=1e-6)
  train = np.asarray(jax.jit(lambda v, x: block.apply(v, x, False, rngs={"dropout": jax.random.key(1)}))(v, x))
  attn = lambda m, y: m.attn(m._ln(m.ln_1, y))  # noqa: E731  pylint: disable=protected-access
  mlp = lambda m, y: m.mlp(m._ln(m.ln_2, y))  # noqa: E731  pylint: disable=protected-access
  a = jax.jit(lambda v, x: block.apply(v, x, method=attn))(v, x)
  mlp_fn = jax.jit(lambda v, x: block.apply(v, x, method=mlp))
  options = []
  for x1 in (x, x + a / 0.5):
    options += [x1, x1 + mlp_fn(v, x1) / 0.5]
  seen = set()
  for i in range(6):
    errs = [float(jnp.max(jnp.abs(o[i] - train[i]))) for o in options]
    assert min(errs) < 1e-4, errs
    seen.add(int(np.argmin(errs)))
  assert len(seen) > 1  # the draw varies over the batch
  stack = lambda remat: det.BlockStack(64, 2, 2, drop_path=0.3, remat=remat)  # noqa: E731
  sv = _random_init(stack(False), x)
  grads = [jax.jit(jax.grad(lambda p, r=r: jnp.sum(
      stack(r).apply(p, x, False, rngs={"dropout": jax.random.key(2)}) ** 2)))(sv) for r in (False, True)]
  for g0, g1 in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
    g0, g1 = np.asarray(g0, np.float64), np.asarray(g1, np.float64)
    assert np.linalg.norm(g1 - g0) <= 1e-5 * np.linalg.norm(g0)


def test_bfloat16_compute_close_to_float32(tiny):
  variables, (image, queries, valid), out, _ = tiny
  out16, _ = _forward(TINY.replace(dtype="bfloat16"))(variables, image, queries, valid)
  for k in ("pred_boxes", "pred_logits", "objectness"):
    assert out16[k].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out16[k]), np.asarray(out[k]), rtol=0.1, atol=0.05)


def test_text_queries_are_the_prompt_ensemble():
  model = ClipModel.random(CLIPConfig(**CLIP_ARCH), 0)
  templates = ["{}", "a photo of a {}."]
  got = semantic.text_queries(model, ["cat", "traffic light"], templates)
  assert got.shape == (2, 16) and got.dtype == np.float32
  for i, name in enumerate(["cat", "traffic light"]):
    f = np.asarray(model.encode_text([t.format(name) for t in templates]), np.float64)
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    m = f.mean(0)
    np.testing.assert_allclose(got[i], m / np.linalg.norm(m), rtol=1e-5, atol=1e-6)
  with pytest.raises(InputError, match="non-empty strings"):
    semantic.text_queries(model, [])
  with pytest.raises(InputError, match="non-empty strings"):
    semantic.text_queries(model, ["cat", " "])


def test_flops_match_xla_cost_analysis():
  """The analytic count against XLA's own FLOP count of the compiled forward (which also counts elementwise
  work, so it may be a little higher)."""
  cfg = TINY.replace(input_size=128, width=128, heads=2, layers=2, embed_dim=32, mask_stride=4)
  variables = jax.tree_util.tree_map(jnp.asarray, det.init_variables(cfg, 0))
  image, queries, valid = _inputs(cfg, b=1, q=4)
  fwd = jax.jit(lambda v, i, q, m: Detector(cfg).apply(v, i, q, m))
  xla = fwd.lower(variables, image, queries, valid).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  ours = det.flops_per_example(cfg, num_queries=4)
  assert 0.85 < ours / xla["flops"] <= 1.02, (ours, xla["flops"])
  assert det.flops_per_example(cfg, 4, train=True) == pytest.approx(3 * ours)
  # ViT-B/16 at 224 px: ~17.6 GMACs for the image tower (the published figure)
  b224 = DetectorConfig(input_size=224)
  assert 2 * 17.0e9 < det.flops_per_example(b224) < 2 * 19.5e9


def test_config_validation_and_files():
  with pytest.raises(InputError, match="not a multiple of patch_size"):
    DetectorConfig(input_size=100)
  with pytest.raises(InputError, match="power of two"):
    DetectorConfig(patch_size=16, mask_stride=6)
  with pytest.raises(InputError, match="unknown detector config keys"):
    DetectorConfig.from_config({"widht": 3})
  with pytest.raises(InputError, match="images"):
    Detector(TINY).apply(det.init_variables(TINY, 0), np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 1, 16)))
  root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
  for name, size in (("train_smoke.py", 128), ("train_vit_b16.py", 768)):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(root, name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    model_cfg = DetectorConfig.from_config(config.model)
    LossConfig.from_config(config.loss)
    assert model_cfg.input_size == size
  assert DetectorConfig.from_config(config.model).num_tokens == 2304
