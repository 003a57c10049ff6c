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

SAM 2 (`sam2.1_hiera_*`, image mode) has the same API (`Sam2Model`); its input is the whole image resized
to the S x S square (no padding, as `SAM2ImagePredictor`), box prompts are scaled by S / W and S / H, and its
embeddings are a dict (the stride-16 embedding and the two high-resolution levels).

    sam2 = zipjax.load_sam("sam2.1_hiera_base_plus")       # manifest name, file, folder or converted dir
    masks, iou, low = sam2.segment_boxes(rgb_uint8, boxes_xyxy)

Attributes:
  SamModel: parameters + jitted encoder/decoder functions; `segment_boxes` runs the whole flow for one image.
  Sam2Model: the same for SAM 2.
  load_sam: manifest name, `.pth` / `.pt` / safetensors file, model folder or converted directory -> SamModel
    or Sam2Model (the family is read from the checkpoint).
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

from zipjax import weights
from zipjax.convert.sam import expected_shapes
from zipjax.convert.sam2 import expected_shapes as sam2_expected_shapes
from zipjax.convert.sam2 import load_any
from zipjax.convert.store import converted_family, is_converted, load_converted
from zipjax.errors import CheckpointError, InputError
from zipjax.models.random_init import random_variables as shared_random_variables
from zipjax.models.sam2.sam2 import Sam2, Sam2Config
from zipjax.models.sam_net.model import Sam, SamConfig
from zipjax.models.tree import flatten
from zipjax.ops.resize import bilinear_matrix
# host-side preprocessing lives in zipjax/preprocess.py; re-exported here as part of the SAM API
from zipjax.preprocess import SAM_PIXEL_MEAN as PIXEL_MEAN  # noqa: F401
from zipjax.preprocess import SAM_PIXEL_STD as PIXEL_STD  # noqa: F401
from zipjax.preprocess import get_preprocess_shape, resize_longest_side  # noqa: F401
from zipjax.preprocess import sam2_input
from zipjax.preprocess import sam_input as preprocess_image

MASK_THRESHOLD = 0.0


class SamModel:
  """A SAM model with parameters and its jitted functions (built once per model; XLA caches per shape).

  Attributes:
    config: SamConfig.
    variables: {'params': ...} (float32).
    module: the Flax `Sam` module.
  """
  MODULE = Sam
  CONFIG = SamConfig
  FAMILY = "sam"

  def __init__(self, config, variables: dict):
    self.config = config
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    self.module = self.MODULE(config)
    self._embed = jax.jit(self.embed_fn)
    self._boxes = {mm: jax.jit(functools.partial(self.boxes_fn, multimask=mm)) for mm in (False, True)}

  # ---- construction
  @classmethod
  def random(cls, config=None, seed: int = 0, leaf_filter=None, **overrides) -> "SamModel":
    """Randomly initialised model (e.g. `--random-init`, smoke configs). `config` may be a size name
    (default 'vit_b' / 'base_plus'). `leaf_filter` (`zipjax.models.storage.LeafFilter`): hold kernels in a
    compute dtype as they are drawn."""
    if config is None:
      config = "vit_b" if cls.FAMILY == "sam" else "base_plus"
    if isinstance(config, str):
      config = cls.CONFIG.from_size(config, **overrides)
    elif overrides:
      config = cls.CONFIG.from_dict(config.to_dict(), **overrides)
    return cls(config, random_variables(config, seed, leaf_filter=leaf_filter))

  def with_options(self, **compute) -> "SamModel":
    """Same parameters, other compute options (dtype='bfloat16', fused_attention=True, remat=True)."""
    bad = set(compute) - set(self.CONFIG.COMPUTE_FIELDS)
    if bad:
      raise ValueError(f"only compute options can change here ({self.CONFIG.COMPUTE_FIELDS}), not {sorted(bad)}")
    return type(self)(self.CONFIG.from_dict(self.config.to_dict(), **compute), self.variables)

  # ---- pure functions (usable inside other jitted code)
  def embed_fn(self, variables, pixels: jax.Array):
    """[B, S, S, 3] -> [B, S/16, S/16, C] (SAM 2: a dict of arrays); pure, no checks."""
    return self.module.apply(variables, pixels, method=self.MODULE.embed_images)

  def boxes_fn(self, variables, embeddings, boxes: jax.Array, multimask: bool = False):
    """[B, h, w, C] (SAM 2: its dict), [B, M, 4] -> ([B, M, K, 4h, 4w], [B, M, K]); pure, boxes clamped to
    the frame."""
    boxes = jnp.clip(boxes.astype(jnp.float32), 0.0, float(self.config.img_size))

    def one_image(emb, bx):  # [h, w, C], [M, 4]
      return self.module.apply(variables, emb, boxes=bx, multimask_output=multimask, method=self.MODULE.decode)

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
    e = cfg.embedding_size
    b = self._embedding_batch(embeddings)
    bshape = tuple(np.shape(boxes))
    if len(bshape) != 3 or bshape[2] != 4 or bshape[0] != b:
      raise InputError(f"boxes must be [B, M, 4] with B = {b} (xyxy), got shape {bshape}")
    if not isinstance(boxes, jax.core.Tracer):
      _check_boxes(np.asarray(boxes))
    k = cfg.num_multimask_outputs if multimask else 1
    if bshape[1] == 0:
      return (jnp.zeros((bshape[0], 0, k, 4 * e, 4 * e), jnp.float32),
              jnp.zeros((bshape[0], 0, k), jnp.float32))
    embeddings = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), embeddings)
    return self._boxes[bool(multimask)](self.variables, embeddings, jnp.asarray(boxes, jnp.float32))

  def _embedding_batch(self, embeddings) -> int:
    """B of `image_embeddings` output (InputError for anything else)."""
    e, c = self.config.embedding_size, self.config.prompt_embed_dim
    eshape = tuple(np.shape(embeddings))
    if len(eshape) != 4 or eshape[1:] != (e, e, c):
      raise InputError(f"embeddings must be [B, {e}, {e}, {c}], got shape {eshape}")
    return eshape[0]

  # ---- host-side pre / post-processing of this family
  def prepare_image(self, image):
    """RGB uint8 [H, W, 3] -> (pixels float32 [S, S, 3], input_size (h, w), original_size (H, W))."""
    return preprocess_image(image, self.config.img_size)

  def frame_boxes(self, boxes, original_size: tuple[int, int]) -> np.ndarray:
    """xyxy boxes [..., 4] in the original image -> the encoder input frame."""
    return apply_boxes(boxes, original_size, self.config.img_size)

  def masks_from_logits(self, low_res, input_size, original_size, return_logits: bool = False):
    """Low-res logits [..., K, h, w] -> masks [..., K, H, W] at the original size."""
    return postprocess_masks(low_res, tuple(input_size), tuple(original_size), self.config.img_size,
                             return_logits=return_logits)

  def segment_boxes(self, image, boxes, multimask: bool = False):
    """One RGB uint8 image [H, W, 3] and xyxy boxes [M, 4] in its pixels -> masks at the original size.

    The whole segment_anything flow: `preprocess_image`, `image_embeddings`, `apply_boxes`,
    `predict_boxes`, `postprocess_masks`.

    Returns:
      masks bool [M, K, H, W], IoU predictions [M, K], low-res logits [M, K, 256, 256].
    """
    pixels, input_size, original_size = self.prepare_image(image)
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise InputError(f"boxes must be [M, 4] xyxy in image pixels, got shape {boxes.shape}")
    emb = self.image_embeddings(pixels[None])
    logits, iou = self.predict_boxes(emb, self.frame_boxes(boxes, original_size)[None], multimask=multimask)
    masks = self.masks_from_logits(logits[0], input_size, original_size)
    return masks, iou[0], logits[0]


class Sam2Model(SamModel):
  """A SAM 2 model (image mode) with parameters and its jitted functions; the API of `SamModel`.

  Embeddings are dicts {'image_embed' [B, e, e, C], 'feat_s0' [B, 4e, 4e, C/8], 'feat_s1' [B, 2e, 2e, C/4]}
  (`Sam2.embed_images`). The input is the image resized to S x S (`zipjax.preprocess.sam2_input`), boxes are
  scaled by S / W and S / H, and masks are the low-res logits resized straight to the original size (as
  `SAM2Transforms.postprocess_masks`).
  """
  MODULE = Sam2
  CONFIG = Sam2Config
  FAMILY = "sam2"

  def _embedding_batch(self, embeddings) -> int:
    cfg = self.config
    e, c = cfg.embedding_size, cfg.d_model
    want = {"image_embed": (e, e, c)}
    if cfg.use_high_res_features:
      want.update(feat_s0=(4 * e, 4 * e, c // 8), feat_s1=(2 * e, 2 * e, c // 4))
    if not isinstance(embeddings, dict) or set(embeddings) != set(want):
      raise InputError(f"SAM 2 embeddings must be the dict image_embeddings returns (keys {sorted(want)})")
    batch = {np.shape(embeddings[k])[0] if np.ndim(embeddings[k]) == 4 else -1 for k in want}
    bad = [k for k, shape in want.items() if tuple(np.shape(embeddings[k]))[1:] != shape]
    if bad or len(batch) != 1:
      raise InputError("SAM 2 embeddings: " + ", ".join(f"{k} must be [B, {', '.join(map(str, want[k]))}], got "
                                                         f"{tuple(np.shape(embeddings[k]))}" for k in want))
    return batch.pop()

  def prepare_image(self, image):
    return sam2_input(image, self.config.img_size)

  def frame_boxes(self, boxes, original_size: tuple[int, int]) -> np.ndarray:
    b = np.asarray(boxes, np.float64).copy()
    if b.shape[-1:] != (4,):
      raise InputError(f"boxes must be [..., 4] xyxy, got shape {b.shape}")
    s = self.config.img_size
    h, w = original_size
    b[..., 0::2] *= s / w
    b[..., 1::2] *= s / h
    return b.astype(np.float32)

  def masks_from_logits(self, low_res, input_size, original_size, return_logits: bool = False):
    return postprocess_masks_direct(low_res, tuple(original_size), return_logits=return_logits)


def random_variables(config, seed: int = 0, leaf_filter=None) -> dict:
  """Random parameters for `Sam(config)` or `Sam2(config)`, generated on the host with numpy (fast for any
  size).

  Flax's `init` would compile the whole forward pass (tens of seconds on CPU even for tiny models). Values
  follow the PyTorch defaults in spirit: LeCun-normal kernels, zero biases, LayerNorm scale 1, N(0, 1)
  embeddings and Fourier matrix, zero absolute/relative position tables.
  """
  return shared_random_variables(
      _expected_shapes(config), seed,
      std={"embedding": 1.0, "positional_encoding_gaussian_matrix": 1.0},
      zeros=("pos_embed", "pos_embed_window", "rel_pos_h", "rel_pos_w"), leaf_filter=leaf_filter)


def model_class(family: str):
  """'sam' -> SamModel, 'sam2' -> Sam2Model."""
  classes = {"sam": SamModel, "sam2": Sam2Model}
  if family not in classes:
    raise InputError(f"unknown SAM family {family!r}; known: {', '.join(classes)}")
  return classes[family]


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
  """A SAM or SAM 2 checkpoint -> SamModel or Sam2Model (the family comes from the checkpoint).

  Args:
    src: a name of checkpoints/manifest.json ('sam_vit_h', 'sam2.1_hiera_base_plus': resolved, downloaded
      and converted once by `zipjax.weights`), an `hf:ORG/REPO` name, a `.pth` / `.pt` / safetensors file
      (read as data), a model folder, or a directory / file from `zipjax convert sam|sam2` (no torch).
    leaf_filter: `zipjax.models.storage.LeafFilter` to hold kernels in a compute dtype (applied per leaf as
      they are read; SAM variables are never dropped).
    **compute: compute options (dtype='bfloat16', fused_attention=True, remat=True).
  """
  bad = set(compute) - set(SamConfig.COMPUTE_FIELDS)
  if bad:
    raise ValueError(f"load_sam takes only compute options {SamConfig.COMPUTE_FIELDS}, not {sorted(bad)} "
                     "(the architecture comes from the checkpoint)")
  src = os.fspath(src)
  if weights.is_hub_name(src):
    src = weights.resolve(src, "sam2" if "sam2" in src.lower() else "sam")
  elif not os.path.exists(os.path.expanduser(src)):
    entry = weights.lookup(src)  # a manifest name (CheckpointError naming the known ones otherwise)
    if entry["family"] not in ("sam", "sam2"):
      raise CheckpointError(f"{src!r} is a {entry['family']!r} checkpoint, not a SAM one")
    src = weights.resolve(src, entry["family"])
  if is_converted(src):
    family = converted_family(src)
    cls = model_class(family) if family in ("sam", "sam2") else SamModel
    cfg_dict, variables = load_converted(src, cls.FAMILY, leaf_filter=leaf_filter)
    try:
      config = cls.CONFIG.from_dict(cfg_dict, **compute)
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"{src}: bad {cls.FAMILY} config in config.json: {e}") from e
    want = _expected_shapes(config)
    have = {k: tuple(v.shape) for k, v in flatten(variables).items()}
    if want != have:
      diffs = [f"'{k}': expected {want.get(k)}, found {have.get(k)}" for k in sorted(set(want) | set(have))
               if want.get(k) != have.get(k)][:10]
      raise CheckpointError(f"{src}: converted parameters do not match config.json: " + "; ".join(diffs))
    return cls(config, variables)
  config, variables, _ = load_any(src, **compute)
  if leaf_filter is not None:
    variables = leaf_filter.apply(variables)
  return model_class(config.family)(config, variables)


def _expected_shapes(config) -> dict:
  return sam2_expected_shapes(config) if isinstance(config, Sam2Config) else expected_shapes(config)


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


@functools.partial(jax.jit, static_argnames=("original_size", "return_logits"))
def postprocess_masks_direct(low_res: jax.Array, original_size: tuple[int, int],
                             return_logits: bool = False) -> jax.Array:
  """SAM 2's mask postprocessing: low-res logits [..., K, h, w] bilinearly resized (align_corners=False)
  straight to `original_size` -> masks [..., K, H, W] (bool; logits on request), as
  `SAM2Transforms.postprocess_masks` (without its optional hole / sprinkle filling, off by default)."""
  lh, lw = low_res.shape[-2:]
  oh, ow = original_size
  hp = jax.lax.Precision.HIGHEST
  x = low_res.astype(jnp.float32)
  x = jnp.einsum("yh,...hw->...yw", _interp_matrix(lh, oh), x, precision=hp)  # [..., oh, lw]
  x = jnp.einsum("xw,...yw->...yx", _interp_matrix(lw, ow), x, precision=hp)  # [..., oh, ow]
  return x if return_logits else x > MASK_THRESHOLD
