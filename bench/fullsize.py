"""The `zip` preset at its real sizes on CPU, against the PyTorch eager reference models in the same run.

  python bench/fullsize.py                       # one 640 x 480 image; `--batch4` adds a batch of 4
  python bench/fullsize.py --keep /tmp/fs        # keep the random checkpoints (reruns skip making them)

Models: CLIP ViT-B/16 (CLIP Surgery at 512), CLIP RN50x64 (layer3 at the 2048 px boundary input: bucket
2048 x 2688 for 4:3) and SAM vit_h (1024), about 1.4 B parameters, with random weights. One run, three child
processes (each its own peak RSS):

  1. `torch`: builds the reference models with the openai-clip / segment-anything model code and random weights
     (as the parity tests build them: tests/reference), saves them as the official checkpoint formats (a CLIP
     state dict .pt, SAM's .pth), then times on the generated image, float32 eager with torch's threads: CLIP
     Surgery tokens, RN50x64 to layer3, the SAM image encoder, the SAM box decoder for `sam.max_boxes` boxes
     and the released discovery (tests/reference/zip_discover.py on the layer3 features);
  2. `zipjax convert clip|sam` turns those files into converted directories (the loading path of a user's
     checkpoint, not `--random-init`);
  3. `zipjax`: the engine with `config.models.*.checkpoint` = those directories, `models.*.dtype` from
     `--dtype` (default the preset's 'auto'): the step program's `memory_analysis` at batch 1, 2 and 4 (bytes of
     arguments, outputs and temporaries), the first image of a fresh engine (compile + run: the cold start),
     the same image again (warm), optionally a batch of 4 images of one bucket, and each model alone in the
     engine's dtype.

The table gives seconds per stage and per image for both, the ratio reference / zipjax for time and for peak
RSS, the device-memory rows, and the largest per-device batch that fits 16, 24, 80 and 141 GB according to
`memory_analysis` (fixed part + per-image part fitted from batch 1, 2 and 4). Absolute seconds depend on the
machine's load; each ratio is measured within one run.

`--sam-family sam2` runs the same with SAM 2.1 hiera base_plus as the refiner (`sam.family = 'sam2'`; the
reference is the `sam2` package's SAM2Base, saved as the official `{"model": state_dict}` .pt and converted
with `zipjax convert sam2`). Every run ends with the XLA FLOPs per image of the SAM stage (`cost_analysis` of
the jitted image encoder + one box-decoder call for `sam.max_boxes` boxes at 1024) for SAM vit_h and SAM 2.1
base_plus; `--sam-flops` prints only that table (compile only, abstract parameters: no weights, seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]

DEVICE_GB = (16, 24, 80, 141)
IMAGE_HW = (480, 640)


def _rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _image(seed: int = 0) -> np.ndarray:
  """A 640 x 480 generated scene: smooth background and a few discs (the models' weights are random anyway)."""
  rng = np.random.default_rng(seed)
  h, w = IMAGE_HW
  yy, xx = np.mgrid[:h, :w]
  img = np.stack([120 + 60 * np.sin(xx / 70.0 + c) for c in range(3)], -1)
  for _ in range(6):
    cy, cx, r = rng.integers(60, h - 60), rng.integers(60, w - 60), rng.integers(25, 60)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
  return np.clip(img, 0, 255).astype(np.uint8)


SAM_FAMILIES = {"sam": ("vit_h", "sam_vit_h"), "sam2": ("base_plus", "sam2.1_hiera_base_plus")}


def _config(dtype: str, ckpt: dict | None, family: str = "sam"):
  from zipjax import configs  # pylint: disable=import-outside-toplevel
  config = configs.zip()
  config.sam.family = family
  config.models.sam.arch, config.models.sam.checkpoint = SAM_FAMILIES[family]
  if dtype != "preset":
    for m in (config.models.semantic, config.models.boundary, config.models.sam):
      m.dtype = dtype
  if ckpt:
    config.models.semantic.checkpoint = ckpt["semantic"]
    config.models.boundary.checkpoint = ckpt["boundary"]
    config.models.sam.checkpoint = ckpt["sam"]
  # random weights give near-uniform class probabilities: one class, always present (as device_check does)
  config.scoring.presence_threshold = 0.0
  return config


# ------------------------------------------------------------------------------------------------ torch child
def child_torch(args) -> dict:
  import torch  # pylint: disable=import-outside-toplevel

  from tests.models.sam_net.helpers import build_torch_sam  # pylint: disable=import-outside-toplevel
  from tests.reference import clip_ref, zip_discover  # pylint: disable=import-outside-toplevel
  from zipjax.engine import prepare  # pylint: disable=import-outside-toplevel
  from zipjax.models.clip_net import ARCHITECTURES  # pylint: disable=import-outside-toplevel
  from zipjax.models.sam_net.model import SamConfig  # pylint: disable=import-outside-toplevel
  torch.set_grad_enabled(False)
  sam2 = args.sam_family == "sam2"
  config = _config("float32", None, args.sam_family)
  out = {"threads": torch.get_num_threads()}
  files = {"semantic": os.path.join(args.work, "vit_b16.pt"), "boundary": os.path.join(args.work, "rn50x64.pt"),
           "sam": os.path.join(args.work, "sam2.1_hiera_base_plus.pt" if sam2 else "sam_vit_h.pth")}

  def arch(name):
    d = ARCHITECTURES[name].to_dict()
    return {k: d[k] for k in ("embed_dim", "image_resolution", "vision_layers", "vision_width",
                              "vision_patch_size", "context_length", "vocab_size", "transformer_width",
                              "transformer_heads", "transformer_layers")}

  t0 = time.perf_counter()
  vit = clip_ref.make_clip(0, **arch("ViT-B/16"))
  rn = clip_ref.make_clip(1, **arch("RN50x64"))
  if sam2:
    from tests.reference import sam2_ref  # pylint: disable=import-outside-toplevel
    from zipjax.models.sam2.sam2 import Sam2Config  # pylint: disable=import-outside-toplevel
    sam = sam2_ref.build_sam2(Sam2Config.from_size("base_plus"), seed=2)
  else:
    sam = build_torch_sam(SamConfig.from_size("vit_h"), seed=2)
  for key, model in (("semantic", vit), ("boundary", rn), ("sam", sam)):
    if not os.path.exists(files[key]):
      sd = {"model": model.state_dict()} if key == "sam" and sam2 else model.state_dict()  # SAM 2's .pt layout
      torch.save(sd, files[key] + ".tmp")
      os.replace(files[key] + ".tmp", files[key])
  out["build_s"] = time.perf_counter() - t0
  rn.transformer = rn.token_embedding = None  # only the image trunk runs below
  rn.visual.layer4 = rn.visual.attnpool = None
  # the same inputs as the engine's: its host preparation of the same image (bucket shapes)
  from zipjax.pipeline.buckets import PrepSpec  # pylint: disable=import-outside-toplevel
  spec = PrepSpec.from_config(config, (32, 32), 1024)
  item = prepare(_image(), spec)
  mean = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32)
  std = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32)
  sem = torch.from_numpy(((item.arrays["semantic"] / 255.0 - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
  bnd = torch.from_numpy(((item.arrays["boundary"] / 255.0 - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
  spix = torch.from_numpy(item.arrays["sam"].astype(np.float32)).permute(2, 0, 1)[None]
  if sam2:  # SAM2Transforms' normalisation of the (already square) input
    m2 = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    s2 = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    spix = (spix / 255.0 - m2) / s2
  else:
    spix = sam.preprocess(spix[0])[None] if hasattr(sam, "preprocess") else spix
  v = rn.visual

  def trunk(x):
    x = v.relu1(v.bn1(v.conv1(x)))
    x = v.relu2(v.bn2(v.conv2(x)))
    x = v.avgpool(v.relu3(v.bn3(v.conv3(x))))
    return v.layer3(v.layer2(v.layer1(x)))

  m = int(config.sam.max_boxes)
  boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0]]).repeat(m, 1)

  def decode(emb):
    if sam2:
      return sam2_ref.predict(sam, emb, boxes=boxes.numpy(), multimask=bool(config.sam.multimask))
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    return sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=bool(config.sam.multimask))

  stages, cpu = {}, {}

  def timed(name, fn, *a):
    t0, c0 = time.perf_counter(), time.process_time()
    r = fn(*a)
    stages[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
    return r

  timed("clip_surgery", clip_ref.surgery_encode, vit.visual, sem, 6)
  feats = timed("boundary", trunk, bnd)
  if sam2:  # SAM2ImagePredictor.set_image's computation (image encoder, conv_s0 / conv_s1, no_mem_embed)
    emb = timed("sam_encoder", lambda x: sam2_ref.image_features(sam, x.permute(0, 2, 3, 1).numpy(), fpn=False),
                spix)
  else:
    emb = timed("sam_encoder", sam.image_encoder, spix)
  timed("sam_decoder", decode, emb)
  f = feats[0].permute(1, 2, 0).numpy()  # [h, w, C]
  h, w = f.shape[:2]
  act = np.zeros((h, w), bool)
  act[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True  # one present class, a central activation
  timed("discover", zip_discover.discover_reference, f, act)
  out.update(stages=stages, cpu=cpu, total_s=sum(stages.values()), total_cpu_s=sum(cpu.values()),
             peak_rss_gb=_rss_gb(), files=files, boundary_input=list(bnd.shape[2:]))
  return out


# ------------------------------------------------------------------------------------------------ zipjax child
def child_zipjax(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from zipjax.engine import Engine, prepare  # pylint: disable=import-outside-toplevel
  from zipjax.models.clip_resnet import ModifiedResNet  # pylint: disable=import-outside-toplevel
  from zipjax.models.clip_vit import VisionTransformer  # pylint: disable=import-outside-toplevel
  from zipjax.pipeline import step as step_lib  # pylint: disable=import-outside-toplevel
  ckpt = json.loads(args.ckpt) if args.ckpt else None
  config = _config(args.dtype, ckpt, args.sam_family)
  config.batch_size = 1
  out = {}
  t0 = time.perf_counter()
  eng = Engine(config, random_init=ckpt is None, text_cache=None)
  out["load_s"] = time.perf_counter() - t0
  out["rss_after_load_gb"] = _rss_gb()
  out["dtypes"] = [eng.semantic_cfg.dtype, eng.boundary_cfg.dtype, eng.sam_cfg.dtype]
  eng.set_classes(["orange"])
  item = prepare(_image(), eng.spec)
  out["bucket"] = list(eng.spec.bucket_shape(item.bucket))
  t0 = time.perf_counter()
  first = eng.run_local(item.bucket, [item])
  out["first_image_s"] = time.perf_counter() - t0
  out["compile_s"] = eng.timings["compile"]
  assert "error" not in first[0], first[0]
  t0, c0 = time.perf_counter(), time.process_time()
  eng.run_local(item.bucket, [item])
  out["warm_image_s"], out["warm_image_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
  out["instances"] = len(first[0]["instances"])
  out["memory"] = {}
  ma = eng._program(item.bucket).memory_analysis()  # pylint: disable=protected-access
  out["memory"]["1"] = [ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes]
  models = (eng.semantic_clip, eng.boundary_clip, eng.sam)
  for b in (2, 4):
    cfg = _config(args.dtype, ckpt, args.sam_family)
    cfg.batch_size = b
    e = Engine(cfg, models=models, text_cache=None)
    e.set_classes(["orange"], features=np.concatenate([np.asarray(eng.text["text"]),
                                                        np.asarray(eng.text["redundant"])[None]]))
    ma = e._program(item.bucket).memory_analysis()  # pylint: disable=protected-access
    out["memory"][str(b)] = [ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes]
    if b == 4 and args.batch4:
      items = [prepare(_image(s), e.spec) for s in range(4)]
      t0 = time.perf_counter()
      res = e.run_local(item.bucket, items)
      out["batch4_s"] = time.perf_counter() - t0
      assert not any("error" in r for r in res), res
    del e
  # each model alone, the engine's parameters and dtypes
  s = eng.spec.semantic_size
  hb, wb = out["bucket"]
  vit = step_lib.vision_module(eng.semantic_cfg)
  rn = step_lib.vision_module(eng.boundary_cfg)
  sam_cls = eng.sam.MODULE
  sam = sam_cls(eng.sam_cfg)
  t = eng.sam_cfg.img_size
  m = eng.step_spec.num_candidates()
  boxes = jnp.tile(jnp.asarray([[10.0, 20.0, 300.0, 400.0]]), (m, 1))
  emb0 = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
      lambda p, x: sam.apply(p, x, method=sam_cls.embed_images), eng.params["sam"],
      jax.ShapeDtypeStruct((1, t, t, 3), jnp.float32)))
  cases = {
      "clip_surgery": (lambda p, x: vit.apply(p, x, eng.semantic_cfg.surgery_depth, method=VisionTransformer.surgery),
                       eng.params["semantic"], jnp.zeros((1, s, s, 3), jnp.float32)),
      "boundary": (lambda p, x: rn.apply(p, x, eng.spec.stage, method=ModifiedResNet.trunk), eng.params["boundary"],
                   jnp.zeros((1, hb, wb, 3), jnp.float32)),
      "sam_encoder": (lambda p, x: sam.apply(p, x, method=sam_cls.embed_images), eng.params["sam"],
                      jnp.zeros((1, t, t, 3), jnp.float32)),
      "sam_decoder": (lambda p, x: sam.apply(p, jax.tree_util.tree_map(lambda a: a[0], x), boxes=boxes,
                                             multimask_output=eng.step_spec.sam.multimask, method=sam_cls.decode),
                      eng.params["sam"], emb0),
  }
  stages, cpu = {}, {}
  for name, (fn, params, x) in cases.items():
    compiled = jax.jit(fn).lower(params, x).compile()
    jax.block_until_ready(compiled(params, x))
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(params, x))
    stages[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
  # the rest of the step (discovery, selection) + host post
  stages["discover"] = max(out["warm_image_s"] - sum(stages.values()), 0.0)
  cpu["discover"] = max(out["warm_image_cpu_s"] - sum(cpu.values()), 0.0)
  out.update(stages=stages, cpu=cpu, peak_rss_gb=_rss_gb())
  return out


# ------------------------------------------------------------------------------------------------ parent
def sam_stage_cost(family: str, arch: str, boxes: int = 64, multimask: bool = False,
                   dtype: str = "float32") -> dict:
  """XLA `cost_analysis` of the SAM stage of one image at the model's input size (1024): the image encoder and
  one decoder call for `boxes` box prompts, jitted with abstract parameters (compiled, nothing run) ->
  {'encoder_flops', 'decoder_flops', 'total_flops', 'params'}."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from zipjax.sam import model_class  # pylint: disable=import-outside-toplevel
  cls = model_class(family)
  cfg = cls.CONFIG.from_size(arch, dtype=dtype)
  module = cls.MODULE(cfg)
  s = cfg.img_size
  x = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  bx = jax.ShapeDtypeStruct((boxes, 4), jnp.float32)

  def encode(p, pixels):
    return module.apply(p, pixels, method=cls.MODULE.embed_images)

  emb = jax.eval_shape(encode, params, x)

  def decode(p, e, b):
    one = jax.tree_util.tree_map(lambda a: a[0], e)
    return module.apply(p, one, boxes=b, multimask_output=multimask, method=cls.MODULE.decode)

  def flops(fn, *a) -> float:
    ca = jax.jit(fn).lower(*a).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca["flops"])

  enc, dec = flops(encode, params, x), flops(decode, params, emb, bx)
  n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))
  return {"encoder_flops": enc, "decoder_flops": dec, "total_flops": enc + dec, "params": n}


def print_sam_flops(boxes: int, multimask: bool) -> dict:
  """The SAM-stage FLOPs table: SAM vit_h vs SAM 2.1 hiera base_plus (and the ratio)."""
  rows = {fam: sam_stage_cost(fam, SAM_FAMILIES[fam][0], boxes, multimask) for fam in ("sam", "sam2")}
  print(f"\nSAM stage per image, XLA cost_analysis at 1024 (image encoder + one decoder call for {boxes} boxes, "
        f"multimask {multimask}), float32:")
  print(f"{'model':34s} {'params M':>9s} {'encoder TFLOP':>14s} {'decoder TFLOP':>14s} {'total TFLOP':>12s}")
  for fam, label in (("sam", "SAM vit_h"), ("sam2", "SAM 2.1 hiera base_plus")):
    r = rows[fam]
    print(f"{label:34s} {r['params'] / 1e6:9.1f} {r['encoder_flops'] / 1e12:14.3f} {r['decoder_flops'] / 1e12:14.3f} "
          f"{r['total_flops'] / 1e12:12.3f}")
  ratio = rows["sam2"]["total_flops"] / rows["sam"]["total_flops"]
  print(f"SAM 2.1 base_plus / SAM vit_h: {ratio:.3f} of the FLOPs (goal: at most 0.25)")
  return rows


def _run_child(kind: str, args, extra=()) -> dict:
  with tempfile.NamedTemporaryFile("r", suffix=".json") as res:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--result", res.name, "--work", args.work,
           "--dtype", args.dtype, "--sam-family", args.sam_family, *extra] + (["--batch4"] if args.batch4 else [])
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
    if r.returncode:
      raise SystemExit(f"{kind} child failed with exit {r.returncode}")
    out = json.load(open(res.name))
    out["wall_s"] = time.perf_counter() - t0
    return out


def max_batch(mem: dict, gb: float) -> int:
  """Largest per-device batch whose program fits `gb`: bytes(B) = a + b * B fitted on batch 1, 2, 4."""
  xs = np.asarray([1, 2, 4], np.float64)
  ys = np.asarray([sum(mem[str(int(x))]) for x in xs], np.float64)
  slope, icpt = np.polyfit(xs, ys, 1)
  slope = max(slope, 1.0)
  return max(int((gb * 1e9 - icpt) // slope), 0)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--keep", help="folder for the random checkpoints (kept; reused when present)")
  p.add_argument("--dtype", default="preset", help="models.*.dtype for zipjax ('preset' = the zip preset's)")
  p.add_argument("--batch4", action="store_true", help="also run a batch of 4 images of one bucket")
  p.add_argument("--no-reference", action="store_true", help="skip the PyTorch child (random-init engine)")
  p.add_argument("--sam-family", choices=sorted(SAM_FAMILIES), default="sam",
                 help="the refiner: sam (vit_h, default) or sam2 (SAM 2.1 hiera base_plus)")
  p.add_argument("--sam-flops", action="store_true", help="only the SAM-stage FLOPs table (vit_h vs SAM 2.1 "
                 "base_plus; compile only)")
  p.add_argument("--child", choices=["torch", "zipjax"], help=argparse.SUPPRESS)
  p.add_argument("--result", help=argparse.SUPPRESS)
  p.add_argument("--work", help=argparse.SUPPRESS)
  p.add_argument("--ckpt", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    res = child_torch(args) if args.child == "torch" else child_zipjax(args)
    with open(args.result, "w") as f:
      json.dump(res, f)
    return 0
  if args.sam_flops:
    from zipjax import configs  # pylint: disable=import-outside-toplevel
    print_sam_flops(int(configs.zip().sam.max_boxes), bool(configs.zip().sam.multimask))
    return 0
  tmp = None
  if args.keep:
    os.makedirs(args.keep, exist_ok=True)
    args.work = args.keep
  else:
    tmp = tempfile.TemporaryDirectory(prefix="zipjax-fullsize-")
    args.work = tmp.name
  ref, ckpt, conv_s = None, None, None
  if not args.no_reference:
    ref = _run_child("torch", args)
    ckpt = {}
    t0 = time.perf_counter()
    for key, family in (("semantic", "clip"), ("boundary", "clip"), ("sam", args.sam_family)):
      dst = ref["files"][key] + ".zipjax"
      if not os.path.isdir(dst):
        subprocess.run([sys.executable, "-m", "zipjax", "convert", family, ref["files"][key], dst], cwd=ROOT,
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
      ckpt[key] = dst
    conv_s = time.perf_counter() - t0
  zj = _run_child("zipjax", args, ["--ckpt", json.dumps(ckpt)] if ckpt else [])
  print(f"\nzip preset at real sizes on CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}); "
        f"one {IMAGE_HW[1]}x{IMAGE_HW[0]} image, boundary bucket {zj['bucket'][0]}x{zj['bucket'][1]}; "
        f"zipjax dtypes {'/'.join(zj['dtypes'])}"
        + (f", torch float32 eager ({ref['threads']} threads)" if ref else ""))
  print("wall s = elapsed seconds (depend on the machine's load); cpu s = the process's CPU seconds (both use "
        "every core; less sensitive to other work on the machine)")
  print(f"{'stage (per image)':40s} {'torch s':>9s} {'zipjax s':>9s} {'ratio':>7s} {'torch cpu':>10s} "
        f"{'zipjax cpu':>11s} {'ratio':>7s}")
  sam_name = "SAM 2.1 base_plus" if args.sam_family == "sam2" else "SAM vit_h"
  names = {"clip_surgery": "CLIP ViT-B/16 surgery 512", "boundary": "RN50x64 layer3",
           "sam_encoder": f"{sam_name} image encoder 1024", "sam_decoder": f"{sam_name} box decoder (max_boxes)",
           "discover": "discovery (zipjax: rest of the step + post)"}
  for k, label in names.items():
    r = ref["stages"][k] if ref else float("nan")
    rc = ref["cpu"][k] if ref else float("nan")
    z, zc = zj["stages"][k], zj["cpu"][k]
    print(f"{label:40s} {r:9.2f} {z:9.2f} {r / z if z else float('nan'):7.2f} {rc:10.1f} {zc:11.1f} "
          f"{rc / zc if zc else float('nan'):7.2f}")
  rt = ref["total_s"] if ref else float("nan")
  rct = ref["total_cpu_s"] if ref else float("nan")
  print(f"{'per image (torch: sum; zipjax: warm run)':40s} {rt:9.2f} {zj['warm_image_s']:9.2f} "
        f"{rt / zj['warm_image_s']:7.2f} {rct:10.1f} {zj['warm_image_cpu_s']:11.1f} "
        f"{rct / zj['warm_image_cpu_s']:7.2f}")
  print(f"{'peak host RSS (GB, per process)':40s} {ref['peak_rss_gb'] if ref else float('nan'):9.2f} "
        f"{zj['peak_rss_gb']:9.2f} {(ref['peak_rss_gb'] if ref else float('nan')) / zj['peak_rss_gb']:7.2f}")
  print(f"\nzipjax: load {zj['load_s']:.1f} s (RSS {zj['rss_after_load_gb']:.2f} GB), first image of a fresh engine "
        f"{zj['first_image_s']:.1f} s (compile {zj['compile_s']:.1f} s), warm {zj['warm_image_s']:.1f} s"
        + (f", batch of 4 {zj['batch4_s']:.1f} s ({zj['batch4_s'] / 4:.1f} s per image)" if "batch4_s" in zj else "")
        + (f"; converting the checkpoints {conv_s:.1f} s" if conv_s is not None else ""))
  print(f"\n{'step program memory_analysis (GB)':34s} {'arguments':>10s} {'outputs':>9s} {'temporaries':>12s} "
        f"{'total':>7s}")
  for b in ("1", "2", "4"):
    a, o, t = (x / 1e9 for x in zj["memory"][b])
    print(f"{'batch ' + b:34s} {a:10.2f} {o:9.3f} {t:12.2f} {a + o + t:7.2f}")
  print("largest per-device batch by memory_analysis: " + ", ".join(
      f"{gb} GB: {max_batch(zj['memory'], gb)}" for gb in DEVICE_GB))
  from zipjax import configs  # pylint: disable=import-outside-toplevel
  print_sam_flops(int(configs.zip().sam.max_boxes), bool(configs.zip().sam.multimask))
  if tmp is not None:
    tmp.cleanup()
  return 0


if __name__ == "__main__":
  sys.exit(main())
