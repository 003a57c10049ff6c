"""Public SAM API: load a checkpoint, embed images, decode many box prompts per image, pre/post-process.

    sam = zipjax.load_sam("sam_vit_h_4b8939.pth")          # or a converted directory
    pixels, input_size, original_size = zipjax.sam.preprocess_image(rgb_uint8)  # host, as segment_anything
    emb = sam.image_embeddings(pixels[None])                # [B, 64, 64, 256]
    boxes = zipjax.sam.apply_boxes(boxes_xyxy, original_size)  # original image -> 1024 frame
    logits, iou = sam.predict_boxes(emb, boxes[None])       # [B, M, K, 256, 256], [B, M, K]
    masks = zipjax.sam.postprocess_masks(logits[0], input_size, original_size)  # [M, K, H, W] bool

Box handling (documented clamping / errors): boxes are xyxy in the padded input frame (pixels of the
1024 x 1024 encoder input). Non-finite coordinates and inverted boxes (x1 < x0 or y1 < y0) raise InputError;
coordinates outside [0, img_size] are clamped to it (segment_anything would extrapolate its positional
encoding there instead; inside the frame the two agree exactly). M = 0 boxes returns empty outputs.

Attributes:
  SamModel: parameters + jitted encoder/decoder functions; `segment_boxes` runs the whole flow for one image.
  load_sam: `.pth` file or converted directory -> SamModel.
  preprocess_image: host-side resize (PIL bilinear, as segment_anything) + normalise + pad.
  apply_boxes: box coordinates from the original image to the padded input frame.
  postprocess_masks: jitted upsample -> crop -> resize to the original size -> threshold at 0.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from zipjax.convert.sam import expected_shapes, load_file
from zipjax.convert.store import is_converted, load_converted
from zipjax.errors import CheckpointError, InputError
from zipjax.models.random_init import random_variables as shared_random_variables
from zipjax.models.sam_net.model import Sam, SamConfig
from zipjax.models.tree import flatten
from zipjax.ops.resize import bilinear_matrix
# host-side preprocessing lives in zipjax/preprocess.py; re-exported here as part of the SAM API
from zipjax.preprocess import SAM_PIXEL_MEAN as PIXEL_MEAN  # noqa: F401
from zipjax.preprocess import SAM_PIXEL_STD as PIXEL_STD  # noqa: F401
from zipjax.preprocess import get_preprocess_shape, resize_longest_side  # noqa: F401
from zipjax.preprocess import sam_input as preprocess_image

MASK_THRESHOLD = 0.0


class SamModel:
  """A SAM model with parameters and its jitted functions (built once per model; XLA caches per shape).

  Attributes:
    config: SamConfig.
    variables: {'params': ...} (float32).
    module: the Flax `Sam` module.
  """

  def __init__(self, config: SamConfig, variables: dict):
    self.config = config
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    self.module = Sam(config)
    self._embed = jax.jit(self.embed_fn)
    self._boxes = {mm: jax.jit(functools.partial(self.boxes_fn, multimask=mm)) for mm in (False, True)}

  # ---- construction
  @classmethod
  def random(cls, config: SamConfig | str = "vit_b", seed: int = 0, leaf_filter=None, **overrides) -> "SamModel":
    """Randomly initialised model (e.g. `--random-init`, smoke configs). `config` may be a size name.
    `leaf_filter` (`zipjax.models.storage.LeafFilter`): hold kernels in a compute dtype as they are drawn."""
    if isinstance(config, str):
      config = SamConfig.from_size(config, **overrides)
    elif overrides:
      config = SamConfig.from_dict(config.to_dict(), **overrides)
    return cls(config, random_variables(config, seed, leaf_filter=leaf_filter))

  def with_options(self, **compute) -> "SamModel":
    """Same parameters, other compute options (dtype='bfloat16', fused_attention=True, remat=True)."""
    bad = set(compute) - set(SamConfig.COMPUTE_FIELDS)
    if bad:
      raise ValueError(f"only compute options can change here ({SamConfig.COMPUTE_FIELDS}), not {sorted(bad)}")
    return SamModel(SamConfig.from_dict(self.config.to_dict(), **compute), self.variables)

  # ---- pure functions (usable inside other jitted code)
  def embed_fn(self, variables, pixels: jax.Array) -> jax.Array:
    """[B, S, S, 3] -> [B, S/16, S/16, C]; pure, no checks."""
    return self.module.apply(variables, pixels, method=Sam.embed_images)

  def boxes_fn(self, variables, embeddings: jax.Array, boxes: jax.Array, multimask: bool = False):
    """[B, h, w, C], [B, M, 4] -> ([B, M, K, 4h, 4w], [B, M, K]); pure, boxes clamped to the frame."""
    boxes = jnp.clip(boxes.astype(jnp.float32), 0.0, float(self.config.img_size))

    def one_image(emb, bx):  # [h, w, C], [M, 4]
      return self.module.apply(variables, emb, boxes=bx, multimask_output=multimask, method=Sam.decode)

    return jax.vmap(one_image)(embeddings, boxes)

  # ---- checked host-facing API
  def image_embeddings(self, pixels) -> jax.Array:
    """Normalised, padded pixels float32 [B, S, S, 3] (S = 1024) -> embeddings [B, S/16, S/16, 256]."""
    s = self.config.img_size
    shape = tuple(np.shape(pixels))
    if len(shape) != 4 or shape[1:] != (s, s, 3):
      raise InputError(f"pixels must be [B, {s}, {s}, 3] (normalised and padded, see "
                       f"zipjax.sam.preprocess_image), got shape {shape}")
    if shape[0] == 0:
      raise InputError("pixels: empty batch (B = 0)")
    if not jnp.issubdtype(jnp.result_type(pixels), jnp.floating):
      raise InputError(f"pixels must be floating point (normalised), got {jnp.result_type(pixels)}; "
                       "uint8 images go through zipjax.sam.preprocess_image first")
    return self._embed(self.variables, jnp.asarray(pixels, jnp.float32))

  def predict_boxes(self, embeddings, boxes, multimask: bool = False) -> tuple[jax.Array, jax.Array]:
    """Box prompts, many per image, in one call.

    Args:
      embeddings: [B, h, w, C] from `image_embeddings`.
      boxes: float [B, M, 4] xyxy in the padded input frame (see module docstring for clamping).
      multimask: K = 3 masks per box instead of 1.

    Returns:
      low-res mask logits [B, M, K, 4h, 4w] (256 x 256 for SAM) and IoU predictions [B, M, K].
    """
    cfg = self.config
    e, c = cfg.embedding_size, cfg.prompt_embed_dim
    eshape, bshape = tuple(np.shape(embeddings)), tuple(np.shape(boxes))
    if len(eshape) != 4 or eshape[1:] != (e, e, c):
      raise InputError(f"embeddings must be [B, {e}, {e}, {c}], got shape {eshape}")
    if len(bshape) != 3 or bshape[2] != 4 or bshape[0] != eshape[0]:
      raise InputError(f"boxes must be [B, M, 4] with B = {eshape[0]} (xyxy), got shape {bshape}")
    if not isinstance(boxes, jax.core.Tracer):
      _check_boxes(np.asarray(boxes))
    k = cfg.num_multimask_outputs if multimask else 1
    if bshape[1] == 0:
      return (jnp.zeros((bshape[0], 0, k, 4 * e, 4 * e), jnp.float32),
              jnp.zeros((bshape[0], 0, k), jnp.float32))
    return self._boxes[bool(multimask)](self.variables, jnp.asarray(embeddings, jnp.float32),
                                        jnp.asarray(boxes, jnp.float32))

  def segment_boxes(self, image, boxes, multimask: bool = False):
    """One RGB uint8 image [H, W, 3] and xyxy boxes [M, 4] in its pixels -> masks at the original size.

    The whole segment_anything flow: `preprocess_image`, `image_embeddings`, `apply_boxes`,
    `predict_boxes`, `postprocess_masks`.

    Returns:
      masks bool [M, K, H, W], IoU predictions [M, K], low-res logits [M, K, 256, 256].
    """
    s = self.config.img_size
    pixels, input_size, original_size = preprocess_image(image, s)
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise InputError(f"boxes must be [M, 4] xyxy in image pixels, got shape {boxes.shape}")
    emb = self.image_embeddings(pixels[None])
    logits, iou = self.predict_boxes(emb, apply_boxes(boxes, original_size, s)[None], multimask=multimask)
    masks = postprocess_masks(logits[0], input_size, original_size, img_size=s)
    return masks, iou[0], logits[0]


def random_variables(config: SamConfig, seed: int = 0, leaf_filter=None) -> dict:
  """Random parameters for `Sam(config)`, generated on the host with numpy (fast for any size).

  Flax's `init` would compile the whole forward pass (tens of seconds on CPU even for tiny models). Values
  follow segment_anything's PyTorch defaults in spirit: LeCun-normal kernels, zero biases, LayerNorm scale 1,
  N(0, 1) embeddings and Fourier matrix, zero absolute/relative position tables.
  """
  return shared_random_variables(
      expected_shapes(config), seed,
      std={"embedding": 1.0, "positional_encoding_gaussian_matrix": 1.0},
      zeros=("pos_embed", "rel_pos_h", "rel_pos_w"), leaf_filter=leaf_filter)


def _check_boxes(boxes: np.ndarray) -> None:
  if not np.issubdtype(boxes.dtype, np.number):
    raise InputError(f"boxes must be numeric, got dtype {boxes.dtype}")
  bad = ~np.isfinite(boxes).all(axis=-1)
  if bad.any():
    b, m = np.argwhere(bad)[0]
    raise InputError(f"boxes: non-finite coordinates in image {b}, box {m}: {boxes[b, m].tolist()} "
                     f"({int(bad.sum())} such boxes)")
  inverted = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
  if inverted.any():
    b, m = np.argwhere(inverted)[0]
    raise InputError(f"boxes: inverted box (need x0 <= x1 and y0 <= y1, xyxy) in image {b}, box {m}: "
                     f"{boxes[b, m].tolist()}")


def load_sam(src, leaf_filter=None, **compute) -> SamModel:
  """Official SAM `.pth` (read as data) or a directory from `zipjax convert sam` (no torch) -> SamModel.

  Args:
    src: path to a `.pth` file or converted directory.
    leaf_filter: `zipjax.models.storage.LeafFilter` to hold kernels in a compute dtype (applied per leaf as
      they are read; SAM variables are never dropped).
    **compute: compute options of SamConfig (dtype='bfloat16', fused_attention=True, remat=True).
  """
  bad = set(compute) - set(SamConfig.COMPUTE_FIELDS)
  if bad:
    raise ValueError(f"load_sam takes only compute options {SamConfig.COMPUTE_FIELDS}, not {sorted(bad)} "
                     "(the architecture comes from the checkpoint)")
  src = os.fspath(src)
  if is_converted(src):
    cfg_dict, variables = load_converted(src, "sam", leaf_filter=leaf_filter)
    try:
      config = SamConfig.from_dict(cfg_dict, **compute)
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"{src}: bad SAM config in config.json: {e}") from e
    want = expected_shapes(config)
    have = {k: tuple(v.shape) for k, v in flatten(variables).items()}
    if want != have:
      diffs = [f"'{k}': expected {want.get(k)}, found {have.get(k)}" for k in sorted(set(want) | set(have))
               if want.get(k) != have.get(k)][:10]
      raise CheckpointError(f"{src}: converted parameters do not match config.json: " + "; ".join(diffs))
    return SamModel(config, variables)
  config, variables, _ = load_file(src, **compute)
  if leaf_filter is not None:
    variables = leaf_filter.apply(variables)
  return SamModel(config, variables)


# ---------------------------------------------------------------------------------------------- host side
def apply_boxes(boxes, original_size: tuple[int, int], img_size: int = 1024) -> np.ndarray:
  """xyxy boxes [..., 4] in the original image -> the resized/padded input frame (float32)."""
  old_h, old_w = original_size
  new_h, new_w = get_preprocess_shape(old_h, old_w, img_size)
  b = np.asarray(boxes, np.float64).copy()
  if b.shape[-1:] != (4,):
    raise InputError(f"boxes must be [..., 4] xyxy, got shape {b.shape}")
  b[..., 0::2] *= new_w / old_w
  b[..., 1::2] *= new_h / old_h
  return b.astype(np.float32)


def _interp_matrix(in_size: int, out_size: int, keep: int | None = None) -> jax.Array:
  m = bilinear_matrix(in_size, out_size)
  return jnp.asarray(m if keep is None else m[:keep])


@functools.partial(jax.jit, static_argnames=("input_size", "original_size", "img_size", "return_logits"))
def postprocess_masks(low_res: jax.Array, input_size: tuple[int, int], original_size: tuple[int, int],
                      img_size: int = 1024, return_logits: bool = False) -> jax.Array:
  """Low-res logits [..., K, h, w] -> masks [..., K, H, W] at the original size (bool; logits on request).

  As `Sam.postprocess_masks` + threshold: bilinear (align_corners=False) upsampling to img_size x img_size,
  crop to `input_size` (only the kept rows/columns are computed), bilinear resize to `original_size`,
  `> 0`.
  """
  lh, lw = low_res.shape[-2:]
  ih, iw = input_size
  oh, ow = original_size
  hp = jax.lax.Precision.HIGHEST
  x = low_res.astype(jnp.float32)
  x = jnp.einsum("yh,...hw->...yw", _interp_matrix(lh, img_size, ih), x, precision=hp)  # [..., ih, lw]
  x = jnp.einsum("xw,...yw->...yx", _interp_matrix(lw, img_size, iw), x, precision=hp)  # [..., ih, iw]
  if (ih, iw) != (oh, ow):
    x = jnp.einsum("yh,...hw->...yw", _interp_matrix(ih, oh), x, precision=hp)  # [..., oh, iw]
    x = jnp.einsum("xw,...yw->...yx", _interp_matrix(iw, ow), x, precision=hp)  # [..., oh, ow]
  return x if return_logits else x > MASK_THRESHOLD
