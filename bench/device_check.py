"""Device check of the labelling engine: one script, one table (meant for a lent GPU, < 6 minutes wall).

  python bench/device_check.py                          # GPU/TPU: the full `zip` preset, random weights
  python bench/device_check.py --allow-cpu --smoke      # CPU: tiny smoke models (what the test runs)
  python bench/device_check.py --sam-family sam2        # SAM 2.1 hiera base_plus as the refiner

Measures on ONE device (images/s per GPU):
  - the engine's step for the full `zip` preset (CLIP ViT-B/16 surgery at 512, RN50x64 layer3 at the 2048 px
    boundary input of a 640 x 480 image (bucket 2048 x 2688), SAM vit_h at 1024 with `sam.max_boxes` prompts,
    k-means + discovery in float32, models in the config's dtypes: bf16 for `zip`), its compile time, and the
    end-to-end `run_local` rate (uint8 transfer + step + host post with RLE) with the host's own costs;
  - each model alone (ViT surgery, RN50x64 trunk, SAM image encoder, SAM box decoder): images/s, FLOPs per
    image counted analytically (every dot_general / convolution of the model's jaxpr, from its shapes) and by
    XLA's cost analysis, achieved TFLOP/s and the fraction of the device's peak dense bf16 FLOP/s;
  - compile times, the peak device memory, and the step program's `memory_analysis` at per-device batch 1, 2
    and 4 (compiled without running) with the largest batch that fits 16 / 24 / 80 / 141 GB;
and projects the wall time of labelling COCO train2017 (118287 images) on 1 and 8 such devices from the
step's rate (data parallel: the step never communicates across devices).

Random weights make the class probabilities near-uniform (no class would reach the presence threshold), so
the check makes every image have `--present` classes (default 3, about a COCO image's count; 10 is the worst
case of the zip preset): presence threshold 0 and `scoring.max_present_classes = --present`. Besides the
number of present classes, the step's cost depends on the data only through loop trip counts (k-means,
connected components); every instance slot and SAM prompt is computed whether valid or not.

Also measured (a section of `EXTRA_SECTIONS`, `train_rows`): the detector's training step (`zipjax train`),
ViT-B/16 at 768 px (configs/train_vit_b16.py: bf16, remat; random weights, a fixed in-memory batch of
`--train-batch` images with 80 class queries, so the device is measured, not the input pipeline) on the same
single device: training examples/s, the step's FLOPs per example from its jaxpr (forward, backward, rematerialised
forward, matcher and loss matmuls) and by XLA's cost analysis of the lowered step (no second compile), and,
in the note, the model's own count (3 x forward) and that model-FLOP fraction of peak. It runs after the engine
rows and before the per-model rows, bounded to `--train-steps` timed steps and `--train-seconds` of timing
(compile excluded), so the whole check stays within the wall budget (the per-model rows are skipped once
`--budget` is spent). `--smoke` uses a tiny detector (configs/train_smoke.py shrunk further) so the CPU test
exercises the same code; `--no-train` leaves the section out.

Hook: `EXTRA_SECTIONS` is a list of callables `section(args) -> list[Row]` whose rows join the table after the
engine rows (the training section is the first of them).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]

COCO_TRAIN2017 = 118287
# peak dense bf16 FLOP/s by device kind (substring, first match); --peak-tflops overrides
PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("L4", 121e12), ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5", 197e12),
             ("TPU v4", 275e12))


@dataclasses.dataclass
class Row:
  """One line of the table.

  Attributes:
    name: what was measured.
    images_per_s: images per second on one device.
    flops_analytic: FLOPs per image from the jaxpr's matmuls / convolutions (None: not counted).
    flops_xla: FLOPs per image from XLA's cost analysis (None: unavailable).
    compile_s: compile time in seconds.
    note: anything else.
  """
  name: str
  images_per_s: float | None = None
  flops_analytic: float | None = None
  flops_xla: float | None = None
  compile_s: float | None = None
  note: str = ""


EXTRA_SECTIONS: list[Callable[[argparse.Namespace], list[Row]]] = []
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# --smoke: the training section's detector, smaller than configs/train_smoke.py (compiles in seconds on a CPU)
TINY_TRAIN = ("--config.model.input_size=64", "--config.model.width=32", "--config.model.layers=1",
              "--config.model.heads=1", "--config.model.embed_dim=32", "--config.model.mask_dim=16",
              "--config.model.pixel_width=16", "--config.model.stem_width=8", "--config.model.top_k=10",
              "--config.text.arch.transformer_width=32", "--config.xla_opt_level=0")


# ------------------------------------------------------------------------------------------------ FLOPs
def jaxpr_flops(fn, *args) -> tuple[float, bool]:
  """FLOPs of every dot_general and convolution in `fn`'s jaxpr (2 per multiply-add), from their shapes.

  Scans count `length` times, conds their largest branch, while loops one iteration (the flag says whether
  any was met: the count is then per iteration).
  """
  import jax  # pylint: disable=import-outside-toplevel
  closed = jax.make_jaxpr(fn)(*args)
  seen_while = [False]

  def count(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)
      elif name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec
        total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
      subs = []
      for v in eqn.params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
          inner = getattr(x, "jaxpr", x)
          if hasattr(inner, "eqns"):
            subs.append(count(inner))
      if not subs:
        continue
      if name == "cond":
        total += max(subs)
      elif name == "scan":
        total += eqn.params["length"] * sum(subs)
      else:
        seen_while[0] |= name == "while"
        total += sum(subs)
    return total

  return count(closed.jaxpr), seen_while[0]


def xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def time_calls(fn, min_calls: int, min_seconds: float) -> float:
  """Seconds per call (after one untimed call), at least `min_calls` calls and `min_seconds`."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.block_until_ready(fn())
  n, t0 = 0, time.perf_counter()
  while n < min_calls or time.perf_counter() - t0 < min_seconds:
    jax.block_until_ready(fn())
    n += 1
  return (time.perf_counter() - t0) / n


# ------------------------------------------------------------------------------------------------ sections
def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
  """A noisy scene of discs and a rectangle (uint8 RGB)."""
  rng = np.random.default_rng(seed)
  img = np.zeros((h, w, 3), np.float32) + rng.integers(0, 256, 3)
  yy, xx = np.mgrid[:h, :w]
  for _ in range(6):
    cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(h // 12, h // 4)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
  img += rng.normal(0, 10, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def engine_rows(args, config, eng, state: dict) -> list[Row]:
  """The whole step, and run_local end to end."""
  from zipjax import parallel  # pylint: disable=import-outside-toplevel
  from zipjax.engine import prepare  # pylint: disable=import-outside-toplevel
  from zipjax.pipeline import step as step_lib  # pylint: disable=import-outside-toplevel
  h, w = args.image_size
  imgs = [_image(h, w, i) for i in range(eng.local_batch)]
  t0 = time.perf_counter()
  items = [prepare(im, eng.spec) for im in imgs]
  prep_s = (time.perf_counter() - t0) / len(items)
  bucket = items[0].bucket
  t0 = time.perf_counter()
  program = eng._program(bucket)  # pylint: disable=protected-access
  compile_s = time.perf_counter() - t0
  local = {k: np.stack([it.arrays[k] for it in items]) for k in items[0].arrays}
  batch = parallel.global_batch(local, eng.mesh)
  step_s = time_calls(lambda: program(eng.params, eng.text, batch), args.min_calls, args.min_seconds)
  rate = eng.local_batch / step_s
  state["step_rate"] = rate
  step_fn = step_lib.make_step(eng.step_spec, eng.semantic_cfg, eng.boundary_cfg, eng.sam_cfg)
  flops, looped = jaxpr_flops(step_fn, eng.params, eng.text, batch)
  rows = [Row(f"engine step ({eng.step_spec.max_present} class slots, {eng.step_spec.num_candidates()} SAM "
              f"prompts, batch {eng.local_batch})", rate, flops / eng.local_batch,
              (xla_flops(program) or 0) / eng.local_batch or None, compile_s,
              "loops counted once" if looped else "")]
  for k in eng.timings:
    eng.timings[k] = 0.0
  t0 = time.perf_counter()
  n = 0
  while n < args.min_calls or time.perf_counter() - t0 < args.min_seconds:
    outs = eng.run_local(bucket, items, masks="rle")
    n += 1
  e2e = (time.perf_counter() - t0) / n
  post_s = eng.timings["post"] / (n * len(items))
  errors = sum("error" in o for o in outs)
  rows.append(Row("run_local end to end (transfer + step + RLE post)", eng.local_batch / e2e,
                  note=f"host per image: prepare {prep_s * 1e3:.0f} ms, post {post_s * 1e3:.0f} ms (one thread); "
                       f"{errors} errors"))
  state["host_s"] = prep_s + post_s
  state["memory"] = {eng.per_device_batch: _memory(program)}
  state["bucket"] = bucket
  return rows


def _memory(program) -> list[int]:
  ma = program.memory_analysis()
  return [ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes]


def memory_lines(args, config, eng, state: dict, deadline: float) -> list[str]:
  """The step program's memory_analysis at per-device batch 1, 2 and 4 (compiled without running; the
  measured batch is reused) and the largest batch that fits 16 / 24 / 80 / 141 GB (bench/fullsize.py's fit)."""
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
  mem = dict(state.get("memory", {}))
  for b in (1, 2, 4):
    if b in mem or time.perf_counter() > deadline:
      continue
    cfg = config.copy_and_resolve_references()
    cfg.batch_size = b
    e = Engine(cfg, models=(eng.semantic_clip, eng.boundary_clip, eng.sam), mesh=eng.mesh, text_cache=None)
    e.set_classes(eng.names, features=np.concatenate([np.asarray(eng.text["text"]),
                                                       np.asarray(eng.text["redundant"])[None]]))
    mem[b] = _memory(e._program(state["bucket"]))  # pylint: disable=protected-access
  lines = [f"step memory_analysis, batch {b}: arguments {a / 1e9:.2f} GB, outputs {o / 1e9:.3f} GB, temporaries "
           f"{t / 1e9:.2f} GB, total {(a + o + t) / 1e9:.2f} GB" for b, (a, o, t) in sorted(mem.items())]
  if all(b in mem for b in (1, 2, 4)):
    fit = _bench_module("fullsize").max_batch
    lines.append("largest per-device batch by memory_analysis: " + ", ".join(
        f"{gb} GB: {fit({str(b): v for b, v in mem.items()}, gb)}" for gb in (16, 24, 80, 141)))
  return lines


def model_rows(args, eng, deadline: float) -> list[Row]:
  """Each model alone on the step's inputs, same dtypes and parameters."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from zipjax.models.clip_resnet import ModifiedResNet  # pylint: disable=import-outside-toplevel
  from zipjax.models.clip_vit import VisionTransformer  # pylint: disable=import-outside-toplevel
  from zipjax.pipeline import step as step_lib  # pylint: disable=import-outside-toplevel
  b = eng.per_device_batch
  s = eng.spec.semantic_size
  hb, wb = eng.spec.bucket_shape(eng.spec.bucket_of(*args.image_size))
  vit = step_lib.vision_module(eng.semantic_cfg)
  rn = step_lib.vision_module(eng.boundary_cfg)
  cases = [
      (f"CLIP {args.semantic_name} surgery {s}px ({eng.semantic_cfg.dtype})",
       lambda p, x: vit.apply(p, x, eng.semantic_cfg.surgery_depth, method=VisionTransformer.surgery),
       eng.params["semantic"], jnp.zeros((b, s, s, 3), jnp.float32)),
      (f"CLIP {args.boundary_name} layer{eng.spec.stage} {hb}x{wb} ({eng.boundary_cfg.dtype})",
       lambda p, x: rn.apply(p, x, eng.spec.stage, method=ModifiedResNet.trunk),
       eng.params["boundary"], jnp.zeros((b, hb, wb, 3), jnp.float32))]
  if eng.sam_cfg is not None:
    sam_cls = eng.sam.MODULE  # Sam or Sam2 (sam.family)
    sam = sam_cls(eng.sam_cfg)
    t = eng.sam_cfg.img_size
    m = eng.step_spec.num_candidates()
    boxes = jnp.tile(jnp.asarray([[10.0, 20.0, 300.0, 400.0]]), (b, m, 1)) * (t / 1024)
    emb0 = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
        lambda p, x: sam.apply(p, x, method=sam_cls.embed_images), eng.params["sam"],
        jax.ShapeDtypeStruct((b, t, t, 3), jnp.float32)))  # [b, e, e, C] (SAM 2: its dict)
    label = "SAM 2.1" if eng.sam.FAMILY == "sam2" else "SAM"
    cases += [
        (f"{label} {args.sam_name} image encoder {t}px ({eng.sam_cfg.dtype})",
         lambda p, x: sam.apply(p, x, method=sam_cls.embed_images), eng.params["sam"],
         jnp.zeros((b, t, t, 3), jnp.float32)),
        (f"{label} {args.sam_name} box decoder, {m} prompts ({eng.sam_cfg.dtype})",
         lambda p, x: jax.vmap(lambda em, bx: sam.apply(
             p, em, boxes=bx, multimask_output=eng.step_spec.sam.multimask, method=sam_cls.decode))(x, boxes),
         eng.params["sam"], emb0)]
  rows = []
  for name, fn, params, x in cases:
    if time.perf_counter() > deadline:
      rows.append(Row(name, note="skipped (time budget)"))
      continue
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(params, x).compile()
    compile_s = time.perf_counter() - t0
    call = lambda c=compiled, p=params, v=x: c(p, v)  # noqa: E731
    sec = time_calls(call, args.min_calls, args.min_seconds)
    flops, _ = jaxpr_flops(fn, params, x)
    xf = xla_flops(compiled)
    rows.append(Row(name, b / sec, flops / b, xf / b if xf else None, compile_s))
  return rows


def _bench_module(name: str):
  """bench/NAME.py as a module (bench/ is not a package)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(f"zipjax_bench_{name}", os.path.join(ROOT, "bench", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _bench_train():
  """bench/train.py as a module."""
  return _bench_module("train")


def train_rows(args) -> list[Row]:
  """The detector's training step on one device (see the module docstring), as one row."""
  if args.no_train:
    return []
  bench_train = _bench_train()

  def count(trainer, state, batch):
    bs = int(trainer.config.batch_size)
    flops, looped = jaxpr_flops(trainer._train_step, state, batch)  # pylint: disable=protected-access
    try:
      cost = trainer._step.lower(state, batch).cost_analysis()  # pylint: disable=protected-access
    except Exception:  # pylint: disable=broad-except
      cost = None
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    xf = float(cost["flops"]) if cost and "flops" in cost else None
    return {"jaxpr_flops_per_example": flops / bs, "jaxpr_looped": looped,
            "xla_flops_per_example": xf / bs if xf else None}

  res = bench_train.device_section(
      allow_cpu=True, small=args.smoke, steps=args.train_steps, batch_per_device=args.train_batch or (
          2 if args.smoke else 8), num_queries=min(args.classes, 80), max_targets=8 if args.smoke else 50,
      print_fn=lambda *a: None, overrides=TINY_TRAIN if args.smoke else (), num_devices=1,
      max_seconds=args.train_seconds, inspect=count)
  peak = peak_flops(res["device"], args.peak_tflops)
  model = res["flops_per_example"]
  mfu = f", {100 * model * res['examples_per_s'] / peak:.1f}% of peak" if peak else ""
  name = "detector train step " + res["model"].replace(" (", ", ").replace(")", "")
  return [Row(name, res["examples_per_s"], res["jaxpr_flops_per_example"], res["xla_flops_per_example"],
              res["compile_s"], note=f"training examples/s, batch {res['batch']}, {res['steps']} steps; model "
                                     f"FLOPs (3 x forward) {model / 1e9:.4g} G/example{mfu}"
                                     + ("; loops counted once" if res["jaxpr_looped"] else ""))]


EXTRA_SECTIONS.append(train_rows)


# ------------------------------------------------------------------------------------------------ main
def peak_flops(kind: str, override: float | None) -> float | None:
  if override:
    return override * 1e12
  for key, value in PEAK_BF16:
    if key.lower() in kind.lower():
      return value
  return None


def build(args):
  from zipjax import configs, parallel  # pylint: disable=import-outside-toplevel
  from zipjax.commands.segment import load_config_file  # pylint: disable=import-outside-toplevel
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if args.config:
    config = load_config_file(args.config)
  elif args.smoke:
    config = load_config_file(os.path.join(root, "configs", "smoke_sam2.py" if args.sam_family == "sam2" else
                                           "smoke.py"))
  else:
    config = configs.zip()
    if args.sam_family == "sam2":  # SAM 2.1 hiera base_plus as the refiner
      config.sam.family = "sam2"
      config.models.sam.arch, config.models.sam.checkpoint = "base_plus", "sam2.1_hiera_base_plus"
  config.semantic.prompt_ensemble = False  # random text tower: the 85-template ensemble only costs time
  config.scoring.presence_threshold = 0.0  # random weights: every image gets its `present` most probable classes
  config.scoring.max_present_classes = args.present
  if args.batch_size:
    config.batch_size = args.batch_size
  t0 = time.perf_counter()
  eng = Engine(config, random_init=True, mesh=parallel.create_mesh([("data", -1)], jax.devices()[:1]),
               text_cache=None)
  names = [f"class {i}" for i in range(args.classes)]
  eng.set_classes(names)
  m = config.models
  arch = lambda a: a if isinstance(a, str) else "custom"  # noqa: E731
  args.semantic_name, args.boundary_name, args.sam_name = arch(m.semantic.arch), arch(m.boundary.arch), \
      arch(m.sam.arch)
  return config, eng, time.perf_counter() - t0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU (to test this script)")
  ap.add_argument("--smoke", action="store_true", help="tiny models of configs/smoke.py")
  ap.add_argument("--config", help="a config file with get_config() instead of the zip preset")
  ap.add_argument("--sam-family", choices=("sam", "sam2"), default="sam",
                  help="the refiner: SAM vit_h (default) or SAM 2.1 hiera base_plus (with --smoke: "
                       "configs/smoke_sam2.py)")
  ap.add_argument("--batch-size", type=int, help="images per device and step (default: config.batch_size)")
  ap.add_argument("--classes", type=int, default=80, help="vocabulary size (COCO: 80)")
  ap.add_argument("--present", type=int, default=3, help="classes present (discovered) per image")
  ap.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
  ap.add_argument("--min-calls", type=int, default=3)
  ap.add_argument("--min-seconds", type=float, default=5.0)
  ap.add_argument("--budget", type=float, default=330.0, help="wall seconds after which model sections are skipped")
  ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the device (default: table)")
  ap.add_argument("--train-steps", type=int, default=10, help="timed steps of the training section at most")
  ap.add_argument("--train-seconds", type=float, default=30.0,
                  help="seconds of timed steps of the training section at most (at least one step)")
  ap.add_argument("--train-batch", type=int, help="training images per step (default 8; 2 with --smoke)")
  ap.add_argument("--no-train", action="store_true", help="leave out the detector training section")
  args = ap.parse_args(argv)
  t_start = time.perf_counter()
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  if dev.platform == "cpu" and not args.allow_cpu:
    print("device_check: no GPU/TPU found (use --allow-cpu --smoke to test the script on the CPU)", file=sys.stderr)
    return 2
  config, eng, build_s = build(args)
  state: dict = {}
  rows = engine_rows(args, config, eng, state)
  for section in EXTRA_SECTIONS:
    rows += section(args)
  rows += model_rows(args, eng, t_start + args.budget)
  mem_lines = memory_lines(args, config, eng, state, t_start + args.budget)
  peak = peak_flops(dev.device_kind, args.peak_tflops)
  mem = (dev.memory_stats() or {}).get("peak_bytes_in_use") if hasattr(dev, "memory_stats") else None

  def fmt(v, width, prec=2):
    return f"{v:{width}.{prec}f}" if v is not None else f"{'-':>{width}}"

  print(f"device check: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, preset "
        f"{config.preset}{' (smoke models)' if args.smoke else ''}, dtypes semantic {eng.semantic_cfg.dtype} / "
        f"boundary {eng.boundary_cfg.dtype} / sam {eng.sam_cfg.dtype if eng.sam_cfg else '-'}, "
        f"{args.classes} classes ({args.present} present), image {args.image_size[1]}x{args.image_size[0]}, "
        f"batch {eng.per_device_batch}"
        f"/device; peak bf16 {fmt(peak and peak / 1e12, 0, 0).strip()} TFLOP/s")
  print(f"{'measurement':<62} {'img/s':>8} {'GFLOP/img':>10} {'GFLOP/img':>10} {'TFLOP/s':>8} {'% peak':>7} "
        f"{'compile s':>9}  note")
  print(f"{'':<62} {'':>8} {'(jaxpr)':>10} {'(XLA)':>10}")
  for r in rows:
    flops = r.flops_analytic or r.flops_xla
    achieved = flops * r.images_per_s if flops and r.images_per_s else None
    frac = 100 * achieved / peak if achieved and peak else None
    print(f"{r.name[:62]:<62} {fmt(r.images_per_s, 8)} {fmt(r.flops_analytic and r.flops_analytic / 1e9, 10, 3)} "
          f"{fmt(r.flops_xla and r.flops_xla / 1e9, 10, 3)} {fmt(achieved and achieved / 1e12, 8, 3)} "
          f"{fmt(frac, 7, 1)} {fmt(r.compile_s, 9, 1)}  {r.note}")
  rate = state.get("step_rate")
  for line in mem_lines:
    print(line)
  print(f"peak device memory: {fmt(mem and mem / 2**30, 0).strip()} GiB; model build + text {build_s:.1f} s; "
        f"wall {time.perf_counter() - t_start:.0f} s")
  if rate:
    host = state.get("host_s", 0.0)
    for g in (1, 8):
      print(f"COCO train2017 ({COCO_TRAIN2017} images) on {g} device{'s' if g > 1 else ''}: "
            f"{COCO_TRAIN2017 / (rate * g) / 3600:.2f} h at {rate:.2f} img/s per device "
            f"(host prepare + post needs ~{host * rate * g:.1f} CPU cores to keep up)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
