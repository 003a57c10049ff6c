"""Presets of zipjax as `ml_collections.ConfigDict`s.

Two presets (see ../shared/zip_method.md):

- `reference()`: reproduces the released Zip code (ChengShiest/Zip-Your-CLIP, `zip_utils.py`) exactly, quirks
  included, each behind a switch.
- `zip()`: the method as the paper describes it, with the quirks fixed and zipjax's semantic-aware k-means
  initialisation (documented in `zipjax/ops/kmeans.py`).

Each pipeline stage owns one sub-config, so stages can be added without touching the others. Every threshold
used by a kernel is a field here:

- `config.models`: which checkpoints (manifest names, files or converted dirs) and, for `--random-init`,
  which architectures (a name of `zipjax.models.clip_net.ARCHITECTURES` / a SAM size, or a dict of config fields);
- `config.input`: image decoding limits (`Limits` below, a typed group: `zipjax/schema.py`; `zipjax/io/images.py`);
- `config.semantic`: CLIP Surgery similarity maps and image-level class scores (`zipjax/pipeline/semantic.py`);
- `config.boundary`: the boundary-prior input and trunk stage;
- `config.discover`: k-means, fragments, instances (`zipjax/pipeline/discover.py`);
- `config.sam`, `config.scoring`: SAM box refinement, scores, per-class NMS, top-k (`zipjax/pipeline/step.py`);
- `config.output`: overlays;
- `config.label`: the labelling job's runtime settings (`zipjax/jobs/label.py`): shard size, decoding workers,
  prefetch. They never change an output, so they are not part of a run's identity and may differ on resume.
- `config.mesh`, `config.sharding_rules`: the device mesh and parameter sharding of the labelling engine
  (`zipjax/parallel/`, `zipjax/engine.py`), big_vision style.

Presets are locked (`ml_collections.ConfigDict.lock`): a field can be changed but not added, so a misspelt name
fails where it is set (`config.discover.max_instnces = 8`: AttributeError naming the nearest field); a config
file that adds a group of its own does it inside `with config.unlocked():`.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from zipjax.errors import InputError
from zipjax.schema import Float, Int, check, from_mapping, setting


def _discover_reference() -> ml_collections.ConfigDict:
  """Discovery (k-means, fragments, instances) exactly as the released code does it."""
  c = ml_collections.ConfigDict()
  # k-means on the boundary features (raw, Euclidean)
  c.num_clusters = 20             # K (static; the maximum K when init == 'semantic')
  c.max_iters = 100               # Lloyd iterations at most
  c.rtol = 1e-5                   # stop when allclose(new, old, rtol, atol) (torch.allclose semantics)
  c.atol = 1e-8
  c.init = "linspace"             # 'linspace': rows round(linspace(0, h*w-1, K)); 'semantic': see kmeans.py
  c.center_features = False       # True: distances on mean-shifted features (less float32 cancellation)
  # semantic-aware initialisation (init == 'semantic' only)
  c.semantic = ml_collections.ConfigDict()
  c.semantic.min_foreground_clusters = 2    # seeds drawn from activated cells, at least
  c.semantic.cells_per_cluster = 256        # one more foreground seed per this many activated cells
  c.semantic.background_clusters = 6        # seeds drawn from non-activated cells (all cells if none)
  # activation: act = A > activation_factor * mean(A) (A at full resolution), resized with legacy nearest
  c.activation_factor = 0.7
  # candidate clusters: the top_k most common values of cluster_id * act (ties: first raster occurrence)
  c.top_k_clusters = 20
  c.count_background_in_top_k = True  # quirk: value 0 (non-activated) takes one of the top_k places
  # fragments = components of a whole candidate cluster; keep if both hold
  c.min_activated_fraction = 0.3  # activated cells / fragment cells > this
  c.max_bbox_ratio = 3.0          # bbox area (exclusive max) / fragment cells < this
  # instances = components of the union of kept fragments
  c.min_instance_cells = 100      # drop instances with fewer cells
  c.connectivity = 4              # 4-connectivity (skimage connectivity=1); 8 also supported
  # padded outputs
  c.max_instances = 64            # instance boxes / areas are padded to this with a `valid` mask
  c.max_fragments = 512           # fragment lists (debug outputs) are padded to this
  # label propagation loop of the connected components kernel (0 = until converged, the default)
  c.max_cc_iters = 0
  # pad the number of classes sent to discovery to a power of two (padded rows are dropped), so a varying
  # number of present classes compiles a handful of programs instead of one per count
  c.pad_classes = False
  # box coordinates in image space: the released code swaps the x / y scale factors
  c.swap_box_scale = True
  return c


def _models() -> ml_collections.ConfigDict:
  """Checkpoints (resolved by `zipjax.weights`) and the architectures `--random-init` builds."""
  c = ml_collections.ConfigDict()
  c.semantic = ml_collections.ConfigDict({"checkpoint": "ViT-B/16", "arch": "ViT-B/16"})
  c.boundary = ml_collections.ConfigDict({"checkpoint": "RN50x64", "arch": "RN50x64"})
  c.sam = ml_collections.ConfigDict({"checkpoint": "sam_vit_h", "arch": "vit_h"})
  # compute dtype of each image model in the engine ('auto', 'float32' or 'bfloat16'); 'auto' is bfloat16 on
  # GPU / TPU and the faster of the two on CPU (zipjax/models/storage.py AUTO_DTYPE, measured by
  # bench/fullsize.py). The engine holds the models' Dense / Conv kernels in this dtype (no float32 copy);
  # the CLIP text tower always runs in float32, k-means and every kernel after the models run in float32
  for m in (c.semantic, c.boundary, c.sam):
    m.dtype = "float32"
  c.seed = 0                      # random-init seed (the three models get seed, seed + 1, seed + 2)
  return c


@dataclasses.dataclass(frozen=True)
class Limits:
  """Image decoding limits, `config.input` of every family (zipjax/io/images.py); images outside them are
  refused, one line each in errors.json. Each field's rule is declared with it (`zipjax.schema.setting`).

  Attributes:
    min_side: shorter side below this: refused.
    max_side: longer side above this: refused (no silent downscaling; outputs are in the original pixel frame).
    max_aspect: long / short side above this: refused (the 2048 short-side resize of such an image explodes).
  """
  min_side: int = setting(32, Int(1))
  max_side: int = setting(8192, Int(1))
  max_aspect: float = setting(16.0, Float(1.0))

  def __post_init__(self):
    check(self, "input.")

  @classmethod
  def from_config(cls, config) -> "Limits":
    """From a config with an `input` group."""
    return from_mapping(cls, config.input, "input config")


def input_group() -> ml_collections.ConfigDict:
  """`config.input` with the default `Limits` (every preset and configs/train_*.py)."""
  return ml_collections.ConfigDict(dataclasses.asdict(Limits()))


def _semantic_reference() -> ml_collections.ConfigDict:
  """CLIP Surgery similarity maps (zip_method.md section 1) and image-level class scores."""
  c = ml_collections.ConfigDict()
  c.input_size = 512              # square PIL bicubic resize
  c.prompt_ensemble = True        # the 85 templates of zipjax/assets/prompt_templates.json; False: "{}" only
  c.feature_norm = "tokens"       # L2 axis of the image features: 'tokens' (released quirk) or 'channels'
  c.logit_scale = 100.0           # image-level scores: softmax(logit_scale * cos(CLS, class text))
  c.text_batch_size = 256         # prompts per text-encoder call
  return c


def _boundary_reference() -> ml_collections.ConfigDict:
  """Boundary prior (zip_method.md section 2)."""
  c = ml_collections.ConfigDict()
  c.input_size = 2048             # shorter side, PIL bicubic, aspect kept
  c.stage = 3                     # ModifiedResNet layer3
  # > 0: round the longer side to a multiple of this many pixels (aspect changes by < multiple/2 px), so
  # images of similar aspect share one compiled trunk; 0 = the exact released size
  c.size_multiple = 0
  # engine shape buckets (size_multiple > 0): long / short side ratios; an image goes to the bucket of the
  # nearest ratio (log scale, landscape or portrait) and its boundary input is resized to that bucket's shape,
  # short side `input_size`, long side `input_size * ratio` rounded to `size_multiple` (see zipjax/pipeline/
  # buckets.py). size_multiple == 0: every distinct boundary input size is its own bucket (exact, per-size)
  c.bucket_ratios = (1.0, 1.125, 1.25, 1.3333, 1.5, 1.6667, 1.7778, 2.0, 2.5, 3.0, 4.0, 6.0, 9.0, 16.0)
  return c


def _sam_reference() -> ml_collections.ConfigDict:
  """SAM box refinement (zip_method.md section 5); off in the released code."""
  c = ml_collections.ConfigDict()
  c.enabled = False
  # 'sam' (Segment Anything v1: models.sam = sam_vit_b / _l / _h, arch vit_*) or 'sam2' (SAM 2.1 image mode:
  # models.sam = sam2.1_hiera_tiny / _small / _base_plus / _large, arch tiny / small / base_plus / large; the
  # image is resized to the 1024 square instead of padded). The same box prompts, scores and NMS either way
  c.family = "sam"
  c.multimask = False             # one mask per box
  c.mask_threshold = 0.0          # logit threshold of the upsampled masks
  c.max_boxes = 64                # box prompts per image per call (static; padded)
  return c


def _scoring_reference() -> ml_collections.ConfigDict:
  """Classification first, scores, per-class NMS, top-k."""
  c = ml_collections.ConfigDict()
  c.classification_first = False  # True: only classes with prob >= presence_threshold get discovery
  c.presence_threshold = 0.1      # image-level softmax probability a class needs to be 'present'
  c.nms = False                   # per-class mask NMS
  c.nms_threshold = 0.5           # suppress a mask whose mask IoU with a kept one is above this
  c.min_score = 0.0               # drop instances scoring below this
  c.max_per_image = 100           # top-k instances per image (all classes together)
  # classes sent to discovery per image, padded to this static count in the engine (valid mask). 0 = lossless
  # automatic bound: all classes without classification first, else min(n, floor(1 / presence_threshold))
  # (softmax probabilities sum to 1, so no more classes can be present). A smaller value keeps the most
  # probable present classes.
  c.max_present_classes = 0
  return c


def _output() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.overlays = True               # DIR/overlays/*.png
  c.overlay_max_side = 1024       # overlays are drawn at most this large (longer side)
  return c


def _label() -> ml_collections.ConfigDict:
  """`zipjax label` runtime settings (zipjax/jobs/label.py, zipjax/data/loader.py)."""
  c = ml_collections.ConfigDict()
  c.shard_size = 256              # images per shard file (each process writes one every shard_size images)
  c.workers = 8                   # decoding + preprocessing threads per process (grain)
  c.prefetch = 16                 # prepared images buffered ahead of the device per process
  c.max_pending = 0               # images queued per process across buckets at most (0: buckets x local batch)
  c.tfds_image_feature = "image"  # the image feature of tfds:NAME:SPLIT inputs
  return c


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
  config.models = _models()
  config.input = input_group()
  config.semantic = _semantic_reference()
  config.boundary = _boundary_reference()
  config.discover = _discover_reference()
  config.sam = _sam_reference()
  config.scoring = _scoring_reference()
  config.output = _output()
  config.label = _label()
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
  d = _discover_reference()
  d.init = "semantic"
  d.center_features = True
  d.pad_classes = True
  d.num_clusters = 24
  d.count_background_in_top_k = False  # every activated cluster can be a candidate
  d.top_k_clusters = 24
  d.swap_box_scale = False
  config.discover = d
  return config.lock()


PRESETS = {"reference": reference, "zip": zip}


def get_preset(name: str) -> ml_collections.ConfigDict:
  """Preset by name ('reference' or 'zip')."""
  if name not in PRESETS:
    raise InputError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]()
