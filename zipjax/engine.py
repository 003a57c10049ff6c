"""The labelling engine: the whole Zip pipeline as ONE jitted, batched, statically shaped step on a device mesh.

    from zipjax.engine import Engine, prepare, PrepSpec
    eng = Engine(config)                       # models from config.models (random_init=True: random weights)
    eng.set_classes(["cat", "dog"])            # prompt-ensemble text features (on-disk text cache)
    item = prepare(image_uint8_hw3, eng.spec)  # host, numpy/PIL only (data-loader workers)
    outs = eng.run_local(item.bucket, [item])  # one dict per item
    outs = eng.segment(images)                 # one process: prepare + group by bucket + run_local

Data flow: host `prepare` (PIL resizes into the image's bucket, uint8, `pipeline.buckets`) -> device step (CLIP
Surgery, class scores, similarity, present classes, activation, boundary trunk, k-means + fragments +
instances, boxes, SAM embedding + one decoder call for all boxes of an image (`sam.family` 'sam' or 'sam2'),
scores, per-class mask NMS,
top-k; `pipeline.step`) -> host post (one full-size mask at a time, RLE or bool; `pipeline.post`).

Programs. The step is compiled once per (bucket, global batch shape, vocabulary size): with the `zip` preset
a dataset compiles at most `num_buckets` programs (27 with the default `boundary.bucket_ratios`) for a given
batch size, however many images and sizes it has; `compiled_programs()` counts them (tested). The `reference`
preset (`boundary.size_multiple = 0`) keeps the released code's exact boundary input size, so it compiles one
program per distinct size (its cost; `num_buckets` is None).

Mesh and batches. `config.mesh` (default `[("data", -1)]`: all devices) and `config.sharding_rules` (default:
replicate everything) build the mesh and the parameter shardings (`zipjax.parallel`). `config.batch_size` is
the batch PER DATA-PARALLEL DEVICE GROUP (per device without a `model` axis): every group always runs a full
batch, padded with masked dummy images, so `local_batch = batch_size * (data groups in this process)` and the
global batch is `batch_size * mesh.shape['data']`. In a multi-process run every process calls `run_local`
with the same bucket the same number of times (with `items=[]` when it has nothing for that bucket).

Determinism. Every operation of the step is per image (vmap; no reduction across the batch), the per-device
batch shape is fixed and k-means / component loops freeze an image's state once it converged, so an image's
outputs do not depend on its batch mates or on the number of devices (tested: 8 devices vs 1, alone vs in a
batch, bit-identical instances).

Errors. `prepare` raises `InputError` for a non-image; `segment` reports it as {"error": ...} for that image.
`run_local` post-processes each image separately: an image whose step outputs are not finite, or whose host
post fails, gets {"error": ...} and the others of its batch are unaffected.

Output per item: {"instances": [{"category": int, "score": float, "box": [x0, y0, x1, y1] floats in original
pixels (exclusive max), "mask": COCO compressed RLE {"size": [H, W], "counts": str} with masks='rle' (the
default of `run_local`; then also "area": int) or bool [H, W] with masks='bool'}] by decreasing score,
"probs": float32 [n], "present": int [k] classes sent to discovery, "labels": int32 [k, h, w] instance label
maps on the feature grid, "grid": (h, w), "dropped": instances not decoded by SAM (over `sam.max_boxes`)}.
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zipjax import parallel
from zipjax.errors import InputError
from zipjax.models import storage
from zipjax.pipeline import load
from zipjax.pipeline import post as post_lib
from zipjax.pipeline import step as step_lib
from zipjax.pipeline.buckets import PrepSpec, Prepared, dummy_arrays, pixel_tables, prepare

TIMINGS = ("prepare", "compile", "device", "post")
_PROGRAMS: dict = {}  # compiled step programs shared by engines of the same models / mesh / shapes


def _dtype(model_cfg) -> str:
  """models.* dtype ('auto' resolved for this platform, `zipjax.models.storage.resolve_dtype`)."""
  return storage.resolve_dtype(model_cfg.get("dtype", "float32") if hasattr(model_cfg, "get") else "float32")


def _hashable_rules(rules) -> tuple:
  out = []
  for rule in rules:
    regex, spec = rule
    out.append((str(regex), None if spec is None else tuple(tuple(a) if isinstance(a, (list, tuple)) else a
                                                              for a in spec)))
  return tuple(out)


class Engine:
  """Models on a mesh + the compiled step programs + the vocabulary.

  Attributes:
    config: the preset.
    mesh: the `jax.sharding.Mesh`.
    spec: `PrepSpec` for `prepare`.
    per_device_batch: images per data-parallel device group and step (`config.batch_size`).
    local_batch: images per `run_local` call in this process.
    global_batch: images per step over all processes.
    num_buckets: fixed number of shape buckets (None for exact sizes).
    names: the vocabulary.
    timings: stage -> accumulated seconds ('prepare', 'compile', 'device', 'post').
  """

  def __init__(self, config, models=None, random_init: bool = False, mesh=None, text_cache="auto"):
    self.config = config
    if models is None:
      models = load.build_models(config, random_init)
    self.semantic_clip, self.boundary_clip, self.sam = models
    self.grid = load.check_models(config, *models)
    self.text_cache = load.text_cache(config, self.semantic_clip) if text_cache == "auto" else text_cache
    self.mesh = mesh if mesh is not None else parallel.create_mesh(config.get("mesh", [("data", -1)]))
    self.per_device_batch = int(config.batch_size)
    if self.per_device_batch < 1:
      raise InputError(f"batch_size must be >= 1, got {self.per_device_batch}")
    self.local_batch = self.per_device_batch * parallel.local_data_size(self.mesh)
    self.global_batch = self.per_device_batch * parallel.data_size(self.mesh)
    m = config.models
    self.semantic_cfg = self.semantic_clip.config.replace(dtype=_dtype(m.semantic))
    self.boundary_cfg = self.boundary_clip.config.replace(dtype=_dtype(m.boundary))
    self.sam_cfg = None
    self.sam_family = str(config.sam.get("family", "sam"))
    if config.sam.enabled:
      held = getattr(self.sam.config, "family", "sam")
      if held != self.sam_family:
        raise InputError(f"config.sam.family is {self.sam_family!r} but the SAM model given is a {held!r} one")
      self.sam_cfg = type(self.sam.config).from_dict(self.sam.config.to_dict(), dtype=_dtype(m.sam))
    stage = int(config.boundary.stage)
    self.spec = PrepSpec.from_config(config, self.grid, self.sam_cfg.img_size if self.sam_cfg else 0)
    self.num_buckets = self.spec.num_buckets
    params = {"semantic": step_lib.visual_variables(self.semantic_clip.variables, True),
              "boundary": step_lib.visual_variables(self.boundary_clip.variables, False, stage)}
    if self.sam_cfg is not None:
      params["sam"] = self.sam.variables
    self.rules = _hashable_rules(config.get("sharding_rules", []))
    self.param_shardings = parallel.param_shardings(params, self.mesh, self.rules)
    self.params = parallel.place(params, self.param_shardings)
    self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.names: list[str] = []
    self.text = None
    self.step_spec = None
    self.timings = {k: 0.0 for k in TIMINGS}
    self._programs: set = set()
    self._dummies: dict = {}

  # ------------------------------------------------------------------------------------------------ text
  def text_features(self, names: Sequence[str]) -> np.ndarray:
    """Prompt-ensemble features [n, D] of `names` (float32 text tower), through the text cache when set."""
    return load.text_features(self.config, self.semantic_clip, names, self.text_cache)

  def set_classes(self, names: Sequence[str], features: np.ndarray | None = None) -> None:
    """Sets the vocabulary. `features`: precomputed float32 [n + 1, D] (the classes, then "")."""
    names = list(names)
    if not names:
      raise InputError("set_classes: no class names")
    feats = self.text_features(names + [""]) if features is None else np.asarray(features, np.float32)
    if feats.shape[0] != len(names) + 1:
      raise InputError(f"set_classes: {len(names)} names but {feats.shape[0]} feature rows (want n + 1)")
    tables = pixel_tables()
    text = {"text": feats[:-1], "redundant": feats[-1], "clip_table": tables["clip"], "sam_table": tables[self.sam_family]}
    self.text = parallel.place(text, {k: self._replicated for k in text})
    self.names = names
    self.step_spec = step_lib.StepSpec.from_config(self.config, self.grid, len(names))

  # ------------------------------------------------------------------------------------------------ programs
  def _dummy(self, bucket: int) -> dict:
    if bucket not in self._dummies:
      self._dummies[bucket] = dummy_arrays(self.spec, bucket)
    return self._dummies[bucket]

  def _program(self, bucket: int):
    """The compiled step for `bucket` (compiled on first use; shared across engines with equal keys)."""
    dummy = self._dummy(bucket)
    shapes = {k: (tuple(v.shape), str(v.dtype)) for k, v in dummy.items()}
    specs_leaves, specs_def = jax.tree_util.tree_flatten(
        parallel.param_specs(self.params, self.mesh, self.rules),
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    held = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(self.params))  # kernels' dtypes
    key = (self.step_spec, self.semantic_cfg, self.boundary_cfg, self.sam_cfg, self.mesh, tuple(specs_leaves),
           str(specs_def), tuple(sorted(shapes.items())), self.global_batch,
           tuple(self.text["text"].shape), held)
    self._programs.add(key)
    if key not in _PROGRAMS:
      t0 = time.perf_counter()
      fn = step_lib.make_step(self.step_spec, self.semantic_cfg, self.boundary_cfg, self.sam_cfg)
      per_device = {k: jax.ShapeDtypeStruct((self.per_device_batch,) + v.shape, v.dtype) for k, v in dummy.items()}
      out_struct = jax.eval_shape(fn, self.params, self.text, per_device)

      def device_step(params, text, batch):  # one data-parallel group's batch; all-padding batches skip the work
        skip = lambda p, t, b: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out_struct)  # noqa
        return jax.lax.cond(jnp.any(batch["valid"]), fn, skip, params, text, batch)

      P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
      mapped = jax.shard_map(device_step, mesh=self.mesh, in_specs=(P(), P(), P(parallel.DATA_AXIS)),
                             out_specs=P(parallel.DATA_AXIS), axis_names={parallel.DATA_AXIS}, check_vma=False)
      batch_sharding = parallel.batch_sharding(self.mesh)
      jitted = jax.jit(mapped, in_shardings=(self.param_shardings, self._replicated, batch_sharding),
                       out_shardings=batch_sharding)
      abstract = {k: jax.ShapeDtypeStruct((self.global_batch,) + v.shape, v.dtype, sharding=batch_sharding)
                  for k, v in dummy.items()}
      _PROGRAMS[key] = jitted.lower(self.params, self.text, abstract).compile()
      self.timings["compile"] += time.perf_counter() - t0
    return _PROGRAMS[key]

  def compiled_programs(self) -> int:
    """Distinct step programs this engine has compiled or reused so far."""
    return len(self._programs)

  # ------------------------------------------------------------------------------------------------ running
  def run_local(self, bucket: int, items: Sequence[Prepared], masks: str = "rle") -> list[dict]:
    """Runs one step on this process's `items` (all of `bucket`, at most `local_batch`).

    Pads to `local_batch` with masked dummy images; in a multi-process run every process must make the same
    sequence of calls (same buckets, `items=[]` allowed). Returns one result dict per item (module
    docstring), or {"error": reason} for an item that failed.
    """
    if self.text is None:
      raise InputError("set_classes() first")
    items = list(items)
    if len(items) > self.local_batch:
      raise InputError(f"run_local: {len(items)} items for a local batch of {self.local_batch}")
    dummy = self._dummy(bucket)
    for it in items:
      if it.bucket != bucket:
        raise InputError(f"run_local: an item of bucket {it.bucket} in a call for bucket {bucket}")
      for k, v in dummy.items():
        a = it.arrays.get(k)
        if a is None or np.shape(a) != v.shape or np.asarray(a).dtype != v.dtype:
          raise InputError(f"run_local: item array {k!r} has {None if a is None else np.shape(a)}, "
                           f"the bucket needs {v.shape} {v.dtype}")
    program = self._program(bucket)
    pad = self.local_batch - len(items)
    local = {k: np.stack([it.arrays[k] for it in items] + [v] * pad) for k, v in dummy.items()}
    t0 = time.perf_counter()
    out = program(self.params, self.text, parallel.global_batch(local, self.mesh))
    out = {k: parallel.local_numpy(v) for k, v in out.items()}
    t1 = time.perf_counter()
    self.timings["device"] += t1 - t0
    results = []
    sam_frame = self.sam_cfg.img_size if self.sam_cfg is not None else 0
    for i, it in enumerate(items):
      one = {k: v[i] for k, v in out.items()}
      try:
        if not bool(one["finite"]):
          raise FloatingPointError("non-finite values in the device step (class probabilities, boundary "
                                   "features or scores)")
        results.append(post_lib.postprocess(
            one, it.size, sam_frame=sam_frame, sam_size=it.arrays.get("sam_size"),
            mask_threshold=float(self.config.sam.mask_threshold), masks=masks, sam_direct=self.sam_family == "sam2"))
      except Exception as e:  # pylint: disable=broad-except
        results.append({"error": f"{type(e).__name__}: {e}"})
    self.timings["post"] += time.perf_counter() - t1
    return results

  def segment(self, images: Sequence[np.ndarray], masks: str = "bool") -> list[dict]:
    """One process: `prepare` every image, group by bucket, `run_local` in local batches; input order.

    An image that `prepare` refuses gets {"error": reason}.
    """
    results: list = [None] * len(images)
    groups: dict[int, list] = {}
    t0 = time.perf_counter()
    for i, im in enumerate(images):
      try:
        item = prepare(im, self.spec)
      except InputError as e:
        results[i] = {"error": str(e)}
        continue
      groups.setdefault(item.bucket, []).append((i, item))
    self.timings["prepare"] += time.perf_counter() - t0
    for bucket, group in groups.items():
      for s in range(0, len(group), self.local_batch):
        chunk = group[s:s + self.local_batch]
        for (i, _), out in zip(chunk, self.run_local(bucket, [it for _, it in chunk], masks=masks)):
          results[i] = out
    return results


__all__ = ["Engine", "PrepSpec", "Prepared", "prepare", "TIMINGS"]
