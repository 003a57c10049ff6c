"""SAM speed and memory: Flax (jit, warm) vs PyTorch eager (segment_anything) on CPU; GPU throughput.

    python bench/sam.py                  # CPU: vit_b encoder at 1024 and the decoder with 64 boxes
    python bench/sam.py --runs 5 --boxes 64
    python bench/sam.py --gpu            # when a GPU is present: vit_h encoder in bf16, images/s, % of peak

Each framework runs in its own child process (same random weights, seed 0) so that peak memory (the
child's max RSS, which includes the framework and the weights) is measured separately; times are the
median of --runs warm runs. The ratio column is torch time / flax time from the same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# bf16 dense peak FLOP/s by device kind (vendor datasheets, no sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12}


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _median_time(fn, runs: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def _torch_model(size: str):
  import torch  # pylint: disable=import-outside-toplevel
  from tests.reference import sam_modules  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  _, build = sam_modules()
  return build.sam_model_registry[size]()


def _inputs(boxes: int):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  pixels = rng.standard_normal((1, 1024, 1024, 3)).astype(np.float32)
  xy = rng.uniform(0, 700, (boxes, 2))
  box = np.concatenate([xy, xy + rng.uniform(16, 300, (boxes, 2))], axis=1).astype(np.float32)
  return pixels, box


def child_torch(args) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_grad_enabled(False)
  sam = _torch_model(args.size)
  pixels, boxes = _inputs(args.boxes)
  x = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
  tb = torch.from_numpy(boxes)
  emb = sam.image_encoder(x)  # warm-up (allocator, oneDNN kernels)

  def decode():
    sparse, dense = sam.prompt_encoder(points=None, boxes=tb, masks=None)
    return sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)

  decode()
  enc, enc_all = _median_time(lambda: sam.image_encoder(x), args.runs)
  dec, dec_all = _median_time(decode, args.runs)
  return {"encoder_s": enc, "encoder_runs": enc_all, "decoder_s": dec, "decoder_runs": dec_all,
          "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads()}


def child_flax(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from zipjax.convert.sam import convert_state_dict  # pylint: disable=import-outside-toplevel
  from zipjax.sam import SamModel  # pylint: disable=import-outside-toplevel
  sam = _torch_model(args.size)
  sd = {k: v.numpy() for k, v in sam.state_dict().items()}
  del sam
  import gc  # pylint: disable=import-outside-toplevel
  gc.collect()
  config, variables = convert_state_dict(sd, "random")
  del sd
  model = SamModel(config, variables)
  pixels, boxes = _inputs(args.boxes)
  pixels_d = jax.device_put(pixels)
  boxes_d = jax.device_put(boxes[None])
  v = model.variables
  # compile once ahead of time (the same executables `image_embeddings` / `predict_boxes` jit to), so that
  # XLA's buffer analysis comes with the compile
  t = time.perf_counter()
  enc_exe = model._embed.lower(v, pixels_d).compile()  # pylint: disable=protected-access
  enc_compile = time.perf_counter() - t
  emb = jax.block_until_ready(enc_exe(v, pixels_d))
  t = time.perf_counter()
  dec_exe = model._boxes[False].lower(v, emb, boxes_d).compile()  # pylint: disable=protected-access
  dec_compile = time.perf_counter() - t
  jax.block_until_ready(dec_exe(v, emb, boxes_d))
  np.testing.assert_array_equal(np.asarray(dec_exe(v, emb, boxes_d)[1]),
                                np.asarray(model.predict_boxes(emb, boxes[None])[1]))
  enc, enc_all = _median_time(lambda: jax.block_until_ready(enc_exe(v, pixels_d)), args.runs)
  dec, dec_all = _median_time(lambda: jax.block_until_ready(dec_exe(v, emb, boxes_d)), args.runs)

  def temp_mb(exe):
    try:
      return exe.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # pylint: disable=broad-except
      return float("nan")

  return {"encoder_s": enc, "encoder_runs": enc_all, "decoder_s": dec, "decoder_runs": dec_all,
          "encoder_compile_s": enc_compile, "decoder_compile_s": dec_compile, "peak_rss_mb": _peak_rss_mb(),
          "encoder_temp_mb": temp_mb(enc_exe), "decoder_temp_mb": temp_mb(dec_exe)}


def encoder_flops(config) -> float:
  """Analytic FLOPs (2 per multiply-add) of one image through the image encoder (padding included)."""
  d, g, win = config.encoder_embed_dim, config.embedding_size, config.window_size
  heads = config.encoder_num_heads
  hd = d // heads
  t = g * g
  flops = 2.0 * t * (config.patch_size ** 2 * 3) * d  # patch embedding
  padded = -(-g // win) * win
  for i in range(config.encoder_depth):
    flops += 2.0 * t * d * (3 * d + d + 2 * int(config.mlp_ratio * d))  # qkv, proj, mlp
    if i in config.encoder_global_attn_indexes:
      n_win, side = 1, g
    else:
      n_win, side = (padded // win) ** 2, win
    tok = side * side
    flops += n_win * heads * (4.0 * tok * tok * hd)  # q.k and attn.v
    flops += n_win * heads * (2.0 * tok * hd * 2 * side)  # decomposed rel-pos einsums
  c = config.prompt_embed_dim
  flops += 2.0 * t * d * c + 2.0 * t * c * c * 9  # neck
  return flops


def gpu_bench(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from zipjax.models.sam_net.model import SamConfig  # pylint: disable=import-outside-toplevel
  from zipjax.sam import SamModel  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  if dev.platform != "gpu" and not args.allow_cpu:
    print(f"--gpu: no GPU (first device is {dev.platform}); skipped")
    return
  b = args.gpu_batch
  x = jnp.zeros((b, 1024, 1024, 3), jnp.float32) + 0.1
  base = SamModel.random(SamConfig.from_size(args.gpu_size, dtype="bfloat16"), seed=0)
  # cuDNN flash attention first (relative positions folded into q/k), then JAX's XLA attention, then the
  # explicit form: the first that compiles and runs is timed
  for fused in (["cudnn", True] if not args.no_fused else []) + [False]:
    model = base.with_options(fused_attention=fused)
    try:
      jax.block_until_ready(model.image_embeddings(x))
      break
    except Exception as e:  # pylint: disable=broad-except
      print(f"  fused_attention={fused!r} failed: {str(e).splitlines()[0][:200]}")
  cfg = model.config
  med, _ = _median_time(lambda: jax.block_until_ready(model.image_embeddings(x)), args.runs)
  flops = encoder_flops(cfg) * b
  try:
    xla = model._embed.lower(model.variables, x).compile().cost_analysis()  # pylint: disable=protected-access
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    xla_flops = float(xla.get("flops", float("nan")))
  except Exception:  # pylint: disable=broad-except
    xla_flops = float("nan")
  peak = next((v for k, v in PEAK_BF16.items() if k in dev.device_kind), None)
  achieved = flops / med
  stats = dev.memory_stats() or {}
  print(f"\n{dev.platform.upper()} {dev.device_kind}: {args.gpu_size} encoder bf16 "
        f"(fused attention {cfg.fused_attention}), batch {b}")
  print(f"  {b / med:.2f} images/s ({med * 1e3:.1f} ms per batch), analytic {flops / b / 1e12:.3f} TFLOP/image "
        f"(XLA cost analysis {xla_flops / b / 1e12:.3f}), {achieved / 1e12:.1f} TFLOP/s"
        + (f" = {100 * achieved / peak:.1f}% of bf16 peak {peak / 1e12:.0f}" if peak else " (peak unknown)"))
  if stats:
    print(f"  peak device memory {stats.get('peak_bytes_in_use', 0) / 2**30:.2f} GiB")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--boxes", type=int, default=64)
  p.add_argument("--gpu", action="store_true", help="run the GPU throughput part (needs a GPU)")
  p.add_argument("--gpu-size", default="vit_h")
  p.add_argument("--gpu-batch", type=int, default=8)
  p.add_argument("--no-fused", action="store_true")
  p.add_argument("--skip-cpu", action="store_true")
  p.add_argument("--allow-cpu", action="store_true", help="run the --gpu part on CPU (checks the code path)")
  p.add_argument("--child", choices=["torch", "flax"], help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    if args.child == "flax":
      import jax  # pylint: disable=import-outside-toplevel
      jax.config.update("jax_platforms", "cpu")
    out = child_torch(args) if args.child == "torch" else child_flax(args)
    print("RESULT " + json.dumps(out))
    return 0
  if not args.skip_cpu:
    res = {}
    for fw in ("torch", "flax"):
      cmd = [sys.executable, os.path.abspath(__file__), "--child", fw, "--size", args.size, "--runs",
             str(args.runs), "--boxes", str(args.boxes)]
      r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
      line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
      if r.returncode or not line:
        print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
        return 1
      res[fw] = json.loads(line[-1][len("RESULT "):])
    t, f = res["torch"], res["flax"]
    print(f"SAM {args.size} on CPU ({os.cpu_count()} cores, torch threads {t['threads']}), "
          f"median of {args.runs} warm runs, random weights (seed 0), float32")
    print(f"{'part':34s} {'torch eager':>12s} {'flax jit':>12s} {'torch/flax':>11s}")
    print(f"{'image encoder, 1 x 1024x1024':34s} {t['encoder_s']:11.3f}s {f['encoder_s']:11.3f}s "
          f"{t['encoder_s'] / f['encoder_s']:10.2f}x")
    print(f"{f'decoder, 1 image x {args.boxes} boxes':34s} {t['decoder_s']:11.3f}s {f['decoder_s']:11.3f}s "
          f"{t['decoder_s'] / f['decoder_s']:10.2f}x")
    print(f"{'peak RSS of the process':34s} {t['peak_rss_mb']:10.0f}MB {f['peak_rss_mb']:10.0f}MB "
          f"{t['peak_rss_mb'] / f['peak_rss_mb']:10.2f}x")
    print(f"flax compile (lower+compile): encoder {f['encoder_compile_s']:.1f}s, "
          f"decoder {f['decoder_compile_s']:.1f}s; "
          f"XLA temp buffers: encoder {f['encoder_temp_mb']:.0f}MB, decoder {f['decoder_temp_mb']:.0f}MB")
    print("(the flax process also built the torch model once to get the same random weights; its RSS "
          "includes that)")
    print("all runs (s): torch enc " + ", ".join(f"{x:.3f}" for x in t["encoder_runs"]) +
          " | flax enc " + ", ".join(f"{x:.3f}" for x in f["encoder_runs"]) +
          " | torch dec " + ", ".join(f"{x:.3f}" for x in t["decoder_runs"]) +
          " | flax dec " + ", ".join(f"{x:.3f}" for x in f["decoder_runs"]))
  if args.gpu:
    gpu_bench(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
