"""Detector training speed (`zipjax train`'s step): steps/s, examples/s, peak host RSS.

  python bench/train.py                     # CPU: the tiny config (configs/train_smoke.py) at 1 and 8 simulated
                                            #   devices (data parallel + FSDP), one subprocess each
  python bench/train.py --device            # accelerator: ViT-B/16 at 768 px (configs/train_vit_b16.py, random
                                            #   weights), examples/s and the fraction of peak bf16 FLOP/s
  python bench/train.py --device --allow-cpu --small   # the accelerator code path on CPU with a small model

CPU rows run the real input pipeline (synthetic shapes, grain, augmentation) and the real step (set loss with
the Hungarian matcher); the first steps (compilation) are excluded and reported apart. The 8-device rows
simulate devices on the same cores (`--xla_force_host_platform_device_count`), so their ratio to 1 device
measures the overhead of partitioning, not a speed-up.

`device_section()` is the accelerator part as a function; bench/device_check.py runs it as one of its sections
(one device, a bounded number of steps and seconds, the step's FLOPs also counted from its jaxpr and by XLA):
it returns a dict of the measured numbers (and prints a table). The step there runs on a fixed in-memory batch
(B images with T targets each, Q class queries), so it measures the device, not the input pipeline; FLOPs are the
analytic count of `zipjax.models.detector.flops_per_example(train=True)` (forward x 3; the matcher and the loss
are not counted).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]

# dense bf16 peak FLOP/s by device kind (vendor data sheets), for the fraction-of-peak column
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "V100": 125e12,
             "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
             "TPU v6e": 918e12}


def peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, peak in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      return peak
  return None


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------- CPU
def cpu_worker(devices: int, steps: int, data_dir: str) -> dict:
  """Runs in a subprocess with `devices` simulated CPU devices; returns the measurements."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from zipjax.commands.segment import apply_overrides, load_config_file  # pylint: disable=import-outside-toplevel
  from zipjax.data import coco_train  # pylint: disable=import-outside-toplevel
  from zipjax.train import task  # pylint: disable=import-outside-toplevel
  from zipjax.train import trainer as tr  # pylint: disable=import-outside-toplevel
  config = apply_overrides(load_config_file(os.path.join(ROOT, "configs", "train_smoke.py")),
                           [f"--config.total_steps={steps + 10}"])
  t0 = time.perf_counter()
  ts = coco_train.load_train_set(os.path.join(data_dir, "annotations.json"), os.path.join(data_dir, "images"))
  trainer = tr.Trainer(config, task.detector_task(config))
  state = trainer.init_state()
  queries = task.class_queries(config, task.text_encoder(config), ts.names)
  bs = int(config.batch_size)
  q = np.ascontiguousarray(np.broadcast_to(queries[None], (bs,) + queries.shape))
  qv = np.ones(q.shape[:2], bool)
  it = coco_train.make_iterator(coco_train.make_dataset(ts, coco_train.augment_params(config), bs,
                                                        int(config.data.seed)), int(config.data.workers),
                                int(config.data.threads))

  def one(state):
    local = next(it)
    local["queries"], local["query_valid"] = q, qv
    return trainer.step(state, trainer.global_batch(local))

  warm = 3
  for _ in range(warm):
    state, m = one(state)
  jax.block_until_ready(m)
  setup = time.perf_counter() - t0
  t1 = time.perf_counter()
  for _ in range(steps):
    state, m = one(state)
  jax.block_until_ready(m)
  dt = time.perf_counter() - t1
  return {"devices": len(jax.devices()), "steps": steps, "batch": bs, "steps_per_s": steps / dt,
          "examples_per_s": steps * bs / dt, "setup_s": setup, "peak_rss_mb": _rss_mb(),
          "loss": float(m["loss"])}


def cpu_section(steps: int) -> list:
  from zipjax.data import synthetic  # pylint: disable=import-outside-toplevel
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    synthetic.generate(tmp, 64, seed=0)
    for n in (1, 8):
      env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
      r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(n), "--steps", str(steps),
                          "--data", tmp], env=env, capture_output=True, text=True, cwd=ROOT, check=False)
      if r.returncode:
        raise SystemExit(f"worker with {n} devices failed:\n{r.stderr[-3000:]}")
      rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
  base = rows[0]["steps_per_s"]
  print(f"zipjax train, tiny config (configs/train_smoke.py: 128 px, ViT 2 x 64, batch {rows[0]['batch']}), "
        f"CPU ({os.cpu_count()} cores), {steps} timed steps, input pipeline included")
  print("| devices | steps/s | examples/s | ratio vs 1 device | setup + compile (s) | peak host RSS (MB) |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['devices']} | {r['steps_per_s']:.2f} | {r['examples_per_s']:.1f} | "
          f"{r['steps_per_s'] / base:.2f} | {r['setup_s']:.1f} | {r['peak_rss_mb']:.0f} |")
  return rows


# ------------------------------------------------------------------------------------------- accelerator
def device_section(allow_cpu: bool = False, small: bool = False, steps: int = 20, batch_per_device: int = 8,
                   num_queries: int = 80, max_targets: int = 50, print_fn=print, overrides=(),
                   num_devices: int | None = None, max_seconds: float | None = None, inspect=None) -> dict:
  """ViT-B/16 detector at 768 px on the local accelerators: a timed training step.

  Args:
    allow_cpu: run on CPU too (to check the code path); otherwise a CPU-only host returns {'skipped': ...}.
    small: a small model at 128 px instead of ViT-B/16 at 768 px (code-path checks).
    steps: timed steps at most (after 2 warm-up steps).
    batch_per_device: images per device per step.
    num_queries: Q class queries per image (80: COCO).
    max_targets: T targets per image (padded; ~7 per image are valid here).
    print_fn: where the table goes.
    overrides: more `--config.KEY=VALUE` items (e.g. an even smaller model for tests).
    num_devices: train on the first this many devices (default: all).
    max_seconds: stop timing after this many seconds (at least one timed step), to bound the section's wall.
    inspect: optional `(trainer, state, global_batch) -> dict`, called once before the warm-up (e.g. to count
      the step's FLOPs); its dict joins the result.

  Returns:
    {'device', 'devices', 'model', 'batch', 'steps', 'steps_per_s', 'examples_per_s', 'flops_per_example',
     'achieved_tflops', 'peak_tflops', 'fraction_of_peak', 'compile_s', 'peak_device_memory_gb'} + inspect's.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from zipjax.commands.segment import apply_overrides, load_config_file  # pylint: disable=import-outside-toplevel
  from zipjax.models.detector import flops_per_example  # pylint: disable=import-outside-toplevel
  from zipjax.train import task  # pylint: disable=import-outside-toplevel
  from zipjax.train import trainer as tr  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  if dev.platform == "cpu" and not allow_cpu:
    return {"skipped": "no accelerator"}
  config = load_config_file(os.path.join(ROOT, "configs", "train_smoke.py" if small else "train_vit_b16.py"))
  n = int(num_devices or len(jax.devices()))
  bs = batch_per_device * n
  apply_overrides(config, [f"--config.batch_size={bs}", f"--config.total_steps={steps + 10}",
                           "--config.optim.warmup_steps=0", f"--config.mesh=[('data', {n})]",
                           f"--config.data.max_instances={max_targets}", "--config.init_checkpoint=",
                           *overrides])
  cfg = task.detector_config(config)
  trainer = tr.Trainer(config, task.detector_task(config))
  t0 = time.perf_counter()
  state = trainer.init_state()
  rng = np.random.default_rng(0)
  s, sm, t, q = cfg.input_size, cfg.mask_size, max_targets, num_queries
  valid = np.zeros((bs, t), bool)
  valid[:, :7] = True
  cxcy = rng.uniform(0.2, 0.8, (bs, t, 2))
  wh = rng.uniform(0.05, 0.3, (bs, t, 2))
  masks = np.zeros((bs, t, sm, sm), bool)
  for b in range(bs):
    for j in range(7):
      x0, y0 = ((cxcy[b, j] - wh[b, j] / 2) * sm).astype(int)
      x1, y1 = ((cxcy[b, j] + wh[b, j] / 2) * sm).astype(int) + 1
      masks[b, j, max(y0, 0):y1, max(x0, 0):x1] = True
  queries = rng.normal(size=(bs, q, cfg.embed_dim)).astype(np.float32)
  batch = {"image": rng.integers(0, 256, (bs, s, s, 3), dtype=np.uint8),
           "boxes": np.concatenate([cxcy, wh], -1).astype(np.float32), "labels": rng.integers(0, q, (bs, t)).astype(
               np.int32), "masks": masks, "valid": valid,
           "queries": queries / np.linalg.norm(queries, axis=-1, keepdims=True), "query_valid": np.ones((bs, q), bool)}
  gb = trainer.global_batch(batch)
  extra = {}
  if inspect is not None:
    t_inspect = time.perf_counter()
    extra = dict(inspect(trainer, state, gb))
    t0 += time.perf_counter() - t_inspect  # not part of the compile time
  for _ in range(2):
    state, m = trainer.step(state, gb)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  t1 = time.perf_counter()
  done = 0
  while done < steps and (done == 0 or max_seconds is None or time.perf_counter() - t1 < max_seconds):
    state, m = trainer.step(state, gb)
    done += 1
    if max_seconds is not None:
      jax.block_until_ready(m)  # the time check needs the step finished
  jax.block_until_ready(m)
  dt = time.perf_counter() - t1
  steps = done
  ex_s = steps * bs / dt
  fpe = flops_per_example(cfg, q, train=True)
  peak = peak_flops(dev)
  achieved = fpe * ex_s
  mem = None
  try:
    stats = dev.memory_stats() or {}
    mem = stats["peak_bytes_in_use"] / 2 ** 30 if "peak_bytes_in_use" in stats else None
  except Exception:  # pylint: disable=broad-except
    pass
  res = {"device": getattr(dev, "device_kind", dev.platform), "devices": n,
         "model": f"{'small' if small else 'ViT-B/16'} {cfg.input_size} px ({cfg.dtype}, remat={cfg.remat})",
         "batch": bs, "steps": steps, "steps_per_s": steps / dt, "examples_per_s": ex_s, "flops_per_example": fpe,
         "achieved_tflops": achieved / 1e12, "peak_tflops": None if peak is None else peak * n / 1e12,
         "fraction_of_peak": None if peak is None else achieved / (peak * n), "compile_s": compile_s,
         "peak_device_memory_gb": mem, "loss": float(m["loss"]), **extra}
  print_fn(f"zipjax train step, {res['model']}, {n} x {res['device']}, batch {bs}, Q={q}, T={t}")
  print_fn("| examples/s | steps/s | TFLOP/s (analytic) | fraction of peak bf16 | compile (s) | peak memory (GB) |")
  print_fn("|---|---|---|---|---|---|")
  frac = "n/a" if res["fraction_of_peak"] is None else f"{res['fraction_of_peak']:.1%}"
  memtxt = "n/a" if mem is None else f"{mem:.1f}"
  print_fn(f"| {ex_s:.1f} | {res['steps_per_s']:.2f} | {res['achieved_tflops']:.1f} | {frac} | {compile_s:.0f} | "
           f"{memtxt} |")
  return res


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--device", action="store_true", help="the accelerator section (ViT-B/16 at 768 px)")
  p.add_argument("--allow-cpu", action="store_true", help="run the accelerator section on CPU")
  p.add_argument("--small", action="store_true", help="accelerator section with the small model")
  p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
  p.add_argument("--data", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.worker:
    print(json.dumps(cpu_worker(a.worker, a.steps, a.data)))
    return
  if a.device:
    res = device_section(allow_cpu=a.allow_cpu, small=a.small, steps=min(a.steps, 20))
    print(json.dumps(res))
    return
  cpu_section(a.steps)


if __name__ == "__main__":
  main()
