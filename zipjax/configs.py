"""Presets of zipjax as `ml_collections.ConfigDict`s.

Two presets (see ../shared/zip_method.md):

- `reference()`: reproduces the released Zip code (ChengShiest/Zip-Your-CLIP, `zip_utils.py`) exactly, quirks
  included, each behind a switch.
- `zip()`: the method as the paper describes it, with the quirks fixed and zipjax's semantic-aware k-means
  initialisation (documented in `zipjax/ops/kmeans.py`).

Each pipeline stage owns one group, and each group is a typed, frozen dataclass below (`GROUPS`): its fields'
defaults, rules (`zipjax.schema.setting`) and docs (`Attributes:`) are written once there. The reference preset
is the groups' defaults, the zip preset changes some; `zipjax.config_check` takes the rules from the groups, and
the pipeline reads a group back typed (`Discover.from_config(config)`; `Discover` is the static argument of the
jitted discovery). Every threshold used by a kernel is a field:

- `config.models` (`Models`): which checkpoints (manifest names, files, converted dirs or Hub names) and, for
  `--random-init`, which architectures;
- `config.input` (`Limits`): image decoding limits (`zipjax/io/images.py`; every family has it);
- `config.semantic` (`Semantic`): CLIP Surgery similarity maps and image-level class scores;
- `config.boundary` (`Boundary`): the boundary-prior input, trunk stage and shape buckets;
- `config.discover` (`Discover`, with `Seeds`): k-means, fragments, instances (`zipjax/pipeline/discover.py`);
- `config.sam` (`Sam`), `config.scoring` (`Scoring`): SAM box refinement, scores, per-class NMS, top-k
  (`zipjax/pipeline/step.py`);
- `config.output` (`Output`): overlays;
- `config.label` (`Label`): the labelling job's runtime settings (`zipjax/jobs/label.py`), never part of a
  run's identity;
- `config.preset`, `config.batch_size`, `config.micro_batch`, `config.mesh`, `config.sharding_rules`: the
  top-level fields (the mesh and parameter sharding of the engine, `zipjax/parallel/`, big_vision style).

Presets are locked (`ml_collections.ConfigDict.lock`): a field can be changed but not added, so a misspelt name
fails where it is set (`config.discover.max_instnces = 8`: AttributeError naming the nearest field); a config
file that adds a group of its own does it inside `with config.unlocked():`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import ml_collections

from zipjax.errors import InputError
from zipjax.schema import (ARCH, BOOL, PROBABILITY, SEED, TEXT, Choice, Custom, Float, Group, Int, group,
                           setting)


def _ratios(v) -> bool:
  return (isinstance(v, (list, tuple)) and len(v) > 0 and list(v) == sorted(set(v)) and
          all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r >= 1.0 for r in v))


DTYPE = Choice("auto", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Model(Group):
  """One image model of `config.models` (resolved by `zipjax.weights`).

  Attributes:
    checkpoint: a manifest name, a checkpoint file, a converted directory or a Hub name.
    arch: what `--random-init` builds: a name of `zipjax.models.clip_net.ARCHITECTURES` / a SAM size, or a dict of
      config fields.
    dtype: compute dtype in the engine: 'auto' (bfloat16 on GPU / TPU, the faster of the two on CPU:
      zipjax/models/storage.py AUTO_DTYPE, measured by bench/fullsize.py), 'float32' or 'bfloat16'. The engine
      holds the model's Dense / Conv kernels in this dtype (no float32 copy); the CLIP text tower, k-means and
      every kernel after the models run in float32.
  """
  NAME: ClassVar[str] = "models"
  checkpoint: str = setting(dataclasses.MISSING, TEXT)
  arch: Any = setting(dataclasses.MISSING, ARCH)
  dtype: str = setting("float32", DTYPE)


@dataclasses.dataclass(frozen=True)
class Models(Group):
  """`config.models`: which checkpoints, and the architectures `--random-init` builds.

  Attributes:
    semantic: the CLIP Surgery model (a ViT).
    boundary: the boundary-prior CLIP (a ModifiedResNet).
    sam: the refiner (SAM or SAM 2.1, `sam.family`).
    seed: random-init seed (the three models get seed, seed + 1, seed + 2).
  """
  NAME: ClassVar[str] = "models"
  semantic: Model = group(Model, lambda: Model("ViT-B/16", "ViT-B/16"))
  boundary: Model = group(Model, lambda: Model("RN50x64", "RN50x64"))
  sam: Model = group(Model, lambda: Model("sam_vit_h", "vit_h"))
  seed: int = setting(0, SEED)


@dataclasses.dataclass(frozen=True)
class Limits(Group):
  """Image decoding limits, `config.input` of every family (zipjax/io/images.py); images outside them are
  refused, one line each in errors.json.

  Attributes:
    min_side: shorter side below this: refused.
    max_side: longer side above this: refused (no silent downscaling; outputs are in the original pixel frame).
    max_aspect: long / short side above this: refused (the 2048 short-side resize of such an image explodes).
  """
  NAME: ClassVar[str] = "input"
  min_side: int = setting(32, Int(1))
  max_side: int = setting(8192, Int(1))
  max_aspect: float = setting(16.0, Float(1.0))

  def __post_init__(self):
    super().__post_init__()
    if self.max_side < self.min_side:
      raise InputError(f"input.max_side = {self.max_side} must be >= input.min_side = {self.min_side}")


@dataclasses.dataclass(frozen=True)
class Semantic(Group):
  """`config.semantic`: CLIP Surgery similarity maps (zip_method.md section 1) and image-level class scores
  (zipjax/pipeline/semantic.py).

  Attributes:
    input_size: square PIL bicubic resize (a multiple of the ViT's patch).
    prompt_ensemble: the 85 templates of zipjax/assets/prompt_templates.json; False: "{}" only.
    feature_norm: L2 axis of the image features: 'tokens' (the released quirk) or 'channels'.
    logit_scale: image-level scores: softmax(logit_scale * cos(CLS, class text)).
    text_batch_size: prompts per text-encoder call.
  """
  NAME: ClassVar[str] = "semantic"
  input_size: int = setting(512, Int(1))
  prompt_ensemble: bool = setting(True, BOOL)
  feature_norm: str = setting("tokens", Choice("tokens", "channels"))
  logit_scale: float = setting(100.0, Float(0.0, lo_open=True))
  text_batch_size: int = setting(256, Int(1))


@dataclasses.dataclass(frozen=True)
class Boundary(Group):
  """`config.boundary`: the boundary prior (zip_method.md section 2).

  Attributes:
    input_size: shorter side, PIL bicubic, aspect kept.
    stage: ModifiedResNet stage of the features (3: layer3).
    size_multiple: > 0: round the longer side to a multiple of this many pixels (the aspect changes by less than
      multiple / 2 px), so that images of similar aspect share one compiled trunk; 0: the exact released size.
    bucket_ratios: engine shape buckets (size_multiple > 0): long / short side ratios; an image goes to the bucket
      of the nearest ratio (log scale, landscape or portrait) and its boundary input is resized to that bucket's
      shape: short side `input_size`, long side `input_size * ratio` rounded to `size_multiple`
      (zipjax/pipeline/buckets.py). With size_multiple == 0 every distinct boundary input size is its own bucket.
  """
  NAME: ClassVar[str] = "boundary"
  input_size: int = setting(2048, Int(1))
  stage: int = setting(3, Int(0, 4))
  size_multiple: int = setting(0, Int(0))
  bucket_ratios: tuple = setting((1.0, 1.125, 1.25, 1.3333, 1.5, 1.6667, 1.7778, 2.0, 2.5, 3.0, 4.0, 6.0, 9.0, 16.0),
                                 Custom("a non-empty increasing list of long / short side ratios >= 1", _ratios))


@dataclasses.dataclass(frozen=True)
class Seeds(Group):
  """`config.discover.semantic`: the semantic-aware k-means initialisation (discover.init == 'semantic';
  zipjax/ops/kmeans.py `semantic_init`).

  Attributes:
    min_foreground_clusters: seeds drawn from activated cells, at least.
    cells_per_cluster: one more foreground seed per this many activated cells.
    background_clusters: seeds drawn from non-activated cells (all cells if none).
  """
  NAME: ClassVar[str] = "discover.semantic"
  min_foreground_clusters: int = setting(2, Int(0))
  cells_per_cluster: int = setting(256, Int(1))
  background_clusters: int = setting(6, Int(0))


@dataclasses.dataclass(frozen=True)
class Discover(Group):
  """`config.discover`: k-means, fragments, instances (zip_method.md sections 3-4, zipjax/pipeline/discover.py);
  hashable, so it is a static argument of the jitted discovery. The defaults are the released code's.

  Attributes:
    num_clusters: K of the k-means on the boundary features (static; the maximum K when init == 'semantic').
    max_iters: Lloyd iterations at most.
    rtol: stop when allclose(new, old, rtol, atol) (torch.allclose semantics).
    atol: see rtol.
    init: 'linspace' (rows round(linspace(0, h*w-1, K))) or 'semantic' (`semantic`; zipjax/ops/kmeans.py).
    center_features: k-means distances on mean-shifted features (less float32 cancellation).
    semantic: the semantic initialisation's seeds (`Seeds`).
    activation_factor: act = A > activation_factor * mean(A) (A at full resolution), resized with legacy nearest.
    top_k_clusters: candidate clusters: the top_k most common values of cluster_id * act (ties: first raster
      occurrence).
    count_background_in_top_k: the value 0 (non-activated) takes one of the top_k places (a released quirk).
    min_activated_fraction: fragments (components of a whole candidate cluster) are kept when activated cells /
      cells > this (a fraction < 1)...
    max_bbox_ratio: ... and bbox area (exclusive max) / cells < this (> 1: the box covers every cell).
    min_instance_cells: instances (components of the union of kept fragments) with fewer cells are dropped.
    connectivity: 4 (skimage connectivity=1) or 8.
    max_instances: instance boxes / areas are padded to this with a `valid` mask.
    max_fragments: fragment lists (debug outputs) are padded to this.
    max_cc_iters: cap on the connected-components kernel's label propagation rounds (0: until converged).
    swap_box_scale: box coordinates in image space swap the x / y scale factors (a released quirk).
  """
  NAME: ClassVar[str] = "discover"
  num_clusters: int = setting(20, Int(1))
  max_iters: int = setting(100, Int(1))
  rtol: float = setting(1e-5, Float(0.0))
  atol: float = setting(1e-8, Float(0.0))
  init: str = setting("linspace", Choice("linspace", "semantic"))
  center_features: bool = setting(False, BOOL)
  semantic: Seeds = group(Seeds)
  activation_factor: float = setting(0.7, Float(0.0))
  top_k_clusters: int = setting(20, Int(1))
  count_background_in_top_k: bool = setting(True, BOOL)
  min_activated_fraction: float = setting(0.3, Float(0.0, 1.0, hi_open=True))
  max_bbox_ratio: float = setting(3.0, Float(1.0, lo_open=True))
  min_instance_cells: int = setting(100, Int(0))
  connectivity: int = setting(4, Choice(4, 8))
  max_instances: int = setting(64, Int(1))
  max_fragments: int = setting(512, Int(1))
  max_cc_iters: int = setting(0, Int(0))
  swap_box_scale: bool = setting(True, BOOL)

  def __post_init__(self):
    super().__post_init__()
    if self.init == "semantic" and self.semantic.background_clusters >= self.num_clusters:
      raise InputError(f"discover.semantic.background_clusters = {self.semantic.background_clusters} must be "
                       f"smaller than discover.num_clusters = {self.num_clusters} (the semantic initialisation "
                       "needs at least one foreground seed)")


@dataclasses.dataclass(frozen=True)
class Sam(Group):
  """`config.sam`: SAM box refinement (zip_method.md section 5; off in the released code).

  Attributes:
    enabled: refine each instance's box with SAM; score = sqrt(CLIP probability * SAM IoU).
    family: 'sam' (Segment Anything v1: models.sam = sam_vit_b / _l / _h, arch vit_*) or 'sam2' (SAM 2.1 image
      mode: models.sam = sam2.1_hiera_tiny / _small / _base_plus / _large, arch tiny / small / base_plus / large;
      the image is resized to the 1024 square instead of padded). The same box prompts, scores and NMS either way.
    multimask: three masks per box, the best by predicted IoU; False: one mask per box.
    mask_threshold: logit threshold of the upsampled masks.
    max_boxes: box prompts per image per call (static; padded).
  """
  NAME: ClassVar[str] = "sam"
  enabled: bool = setting(False, BOOL)
  family: str = setting("sam", Choice("sam", "sam2"))
  multimask: bool = setting(False, BOOL)
  mask_threshold: float = setting(0.0, Float())
  max_boxes: int = setting(64, Int(1))


@dataclasses.dataclass(frozen=True)
class Scoring(Group):
  """`config.scoring`: classification first, scores, per-class NMS, top-k (zipjax/pipeline/step.py).

  Attributes:
    classification_first: only classes with probability >= presence_threshold get discovery.
    presence_threshold: the image-level softmax probability a class needs to be 'present'.
    nms: per-class mask NMS.
    nms_threshold: suppress a mask whose mask IoU with a kept one is above this.
    min_score: drop instances scoring below this.
    max_per_image: top-k instances per image (all classes together).
    max_present_classes: classes sent to discovery per image, padded to this static count in the engine (a valid
      mask). 0: a lossless automatic bound: every class without classification first, else
      min(n, floor(1 / presence_threshold)) (softmax probabilities sum to 1, so no more classes can be present).
      A smaller value keeps the most probable present classes.
  """
  NAME: ClassVar[str] = "scoring"
  classification_first: bool = setting(False, BOOL)
  presence_threshold: float = setting(0.1, PROBABILITY)
  nms: bool = setting(False, BOOL)
  nms_threshold: float = setting(0.5, PROBABILITY)
  min_score: float = setting(0.0, PROBABILITY)
  max_per_image: int = setting(100, Int(1))
  max_present_classes: int = setting(0, Int(0))


@dataclasses.dataclass(frozen=True)
class Output(Group):
  """`config.output`.

  Attributes:
    overlays: write DIR/overlays/*.png.
    overlay_max_side: overlays are drawn at most this large (longer side).
  """
  NAME: ClassVar[str] = "output"
  overlays: bool = setting(True, BOOL)
  overlay_max_side: int = setting(1024, Int(1))


@dataclasses.dataclass(frozen=True)
class Label(Group):
  """`config.label`: `zipjax label`'s runtime settings (zipjax/jobs/label.py, zipjax/data/loader.py). They never
  change an output, so they are not part of a run's identity and may differ on resume.

  Attributes:
    shard_size: images per shard file (each process writes one every shard_size images).
    workers: decoding + preprocessing threads per process (grain).
    prefetch: prepared images buffered ahead of the device per process.
    max_pending: images queued per process across buckets at most (0: buckets x local batch).
    tfds_image_feature: the image feature of tfds:NAME:SPLIT inputs.
  """
  NAME: ClassVar[str] = "label"
  shard_size: int = setting(256, Int(1))
  workers: int = setting(8, Int(1))
  prefetch: int = setting(16, Int(1))
  max_pending: int = setting(0, Int(0))
  tfds_image_feature: str = setting("image", TEXT)


# the typed groups of the segment family: config.<name> is described by the class
GROUPS = {"models": Models, "input": Limits, "semantic": Semantic, "boundary": Boundary, "discover": Discover,
          "sam": Sam, "scoring": Scoring, "output": Output, "label": Label}


def as_config(obj) -> ml_collections.ConfigDict:
  """A typed group (a dataclass instance) as a config group: its fields, nested groups as nested groups."""
  return ml_collections.ConfigDict(dataclasses.asdict(obj))


def input_group() -> ml_collections.ConfigDict:
  """`config.input` with the default `Limits` (every preset and configs/train_*.py)."""
  return as_config(Limits())


def reference() -> ml_collections.ConfigDict:
  """The `reference` preset: parity with the released code (no classification first, no SAM, no NMS).

  Run: zipjax segment IMAGE --classes a,b --preset reference --out DIR
  """
  return _reference().lock()


def _reference() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "reference"
  config.batch_size = 4           # images per step and data-parallel device group
  # images computed together inside a device batch (the rest loop): the step's temporaries are one
  # micro-batch's, and padding micro-batches cost nothing (a single image in a batch of 4 costs one image).
  # 0: the whole device batch vmapped at once (more parallel work per kernel, memory grows with the batch)
  config.micro_batch = 1
  for name, cls in GROUPS.items():  # the typed groups' defaults: the released code's
    config[name] = as_config(cls())
  # device mesh (zipjax/parallel): (axis name, size) pairs, -1 = the remaining devices; `data` splits the batch,
  # an optional `model` axis shards parameters by `sharding_rules`
  config.mesh = [("data", -1)]
  # (regex searched in parameter paths such as 'sam/params/image_encoder/blocks_0/mlp/lin1/kernel', spec):
  # the first matching rule gives the parameter's PartitionSpec as a tuple of mesh axis names / None per
  # dimension (e.g. (None, "model")), or "fsdp" / "fsdp:AXIS" / "replicate" (zipjax/parallel); unmatched
  # parameters are replicated
  config.sharding_rules = []
  return config


def zip() -> ml_collections.ConfigDict:  # pylint: disable=redefined-builtin
  """The `zip` preset: the paper's method with the released code's quirks fixed.

  Run: zipjax segment IMAGE --classes a,b --out DIR      (the default preset)
  """
  config = _reference()
  config.preset = "zip"
  config.semantic.feature_norm = "channels"
  config.scoring.classification_first = True
  config.scoring.nms = True
  config.sam.enabled = True       # SAM box refinement; score = sqrt(CLIP probability * SAM IoU)
  config.boundary.size_multiple = 128  # 8 feature cells; shape buckets by aspect ratio (bucket_ratios)
  for m in (config.models.semantic, config.models.boundary, config.models.sam):
    m.dtype = "auto"              # bf16 on GPU / TPU, the faster dtype on CPU (k-means and kernels stay float32)
  config.discover.update(init="semantic", center_features=True, num_clusters=24,
                         count_background_in_top_k=False,  # every activated cluster can be a candidate
                         top_k_clusters=24, swap_box_scale=False)
  return config.lock()


PRESETS = {"reference": reference, "zip": zip}


def get_preset(name: str) -> ml_collections.ConfigDict:
  """Preset by name ('reference' or 'zip')."""
  if name not in PRESETS:
    raise InputError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]()
