"""Discovery benchmark: jitted zipjax (warm) vs the released code's algorithm (torch k-means, Python loops).

Run from the repository root:

  python bench/discover.py                  # reference size 128 x 170 x 2048, K = 20, batch of 8
  python bench/discover.py --repeats 1 --h 64 --w 85   # quicker

Baseline = `tests/reference/zip_discover.py`: torch k-means as the released `zip_utils.py` runs it (linspace init,
`torch.cdist`, a per-cluster Python loop for the means, `torch.allclose` stop), then `Counter.most_common`,
`skimage.measure.label` per candidate cluster with a per-fragment loop, and a final `label` + area filter.
Both sides get identical inputs (synthetic planted scenes, tests/reference/zip_discover.synthetic_scene):

  * `exact`: integer-valued features, the parity setting of the tests: both sides run the same number of Lloyd
    iterations and must return identical label maps (checked);
  * `noisy`: the same scene plus Gaussian noise, closer to real features: Lloyd runs many more iterations, and
    float rounding (different summation orders) can change the iteration count and the labels, so the table
    also reports the whole run's time divided by the Lloyd iterations it ran (a per-iteration ratio).

Times are the median of `--repeats` runs, measured in this process; the ratio column is baseline / zipjax.
Batched: `discover_batch` on B images x 1 class in one jitted call (vmap), reported per image.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import zipjax  # noqa: E402
from tests.reference import zip_discover as ref  # noqa: E402
from zipjax import configs  # noqa: E402


def timed(fn, repeats):
  times, out = [], None
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), out


def baseline(feat, act, k):
  """The released algorithm on the host -> (labels, iterations)."""
  h, w, c = feat.shape
  labels, iters = ref.kmeans_torch(feat.reshape(h * w, c), k)  # [h*w]
  return ref.select_and_build(labels.reshape(h, w) + 1, act), iters


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--h", type=int, default=128)
  ap.add_argument("--w", type=int, default=170)
  ap.add_argument("--c", type=int, default=2048)
  ap.add_argument("--objects", type=int, default=12)
  ap.add_argument("--noise-sigma", type=float, default=3.0)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  import torch  # pylint: disable=g-import-not-at-top
  config = configs.reference()
  k = config.discover.num_clusters
  rng = np.random.default_rng(args.seed)
  feat, act = ref.synthetic_scene(rng, h=args.h, w=args.w, c=args.c, n_objects=args.objects, noise=0.02,
                                  activation="loose")
  noisy = (feat + rng.normal(0.0, args.noise_sigma, feat.shape)).astype(np.float32)
  print(f"# discovery bench: {args.h} x {args.w} x {args.c}, K = {k}, repeats = {args.repeats}, "
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {os.cpu_count()} cpus, {platform.processor() or platform.machine()}")

  rows = []
  for name, f in (("exact", feat), ("noisy", noisy)):
    fj, aj = jnp.asarray(f), jnp.asarray(act)
    run = lambda: jax.block_until_ready(zipjax.discover_instances(fj, aj, config))  # noqa: E731
    t = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t
    t_jax, out = timed(run, args.repeats)
    t_ref, (ref_labels, ref_iters) = timed(lambda: baseline(f, act, k), args.repeats)
    jax_iters = int(out["kmeans_iters"])
    same = np.array_equal(np.asarray(out["labels"]), ref_labels)
    rows.append((name, t_ref, ref_iters, t_jax, jax_iters, compile_s, same))
    if name == "exact" and not same:
      raise SystemExit("exact input: zipjax and the baseline disagree (they must be identical)")

  print()
  print("| input | baseline s/img | iters | zipjax s/img (warm) | iters | ratio | ms/iter baseline | "
        "ms/iter zipjax | per-iter ratio | same labels | zipjax compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for name, t_ref, ri, t_jax, ji, comp, same in rows:
    print(f"| {name} | {t_ref:.3f} | {ri} | {t_jax:.3f} | {ji} | {t_ref / t_jax:.1f}x | "
          f"{1e3 * t_ref / ri:.1f} | {1e3 * t_jax / ji:.1f} | {(t_ref / ri) / (t_jax / ji):.1f}x | {same} | "
          f"{comp:.1f} |")

  # batched throughput: B images x 1 class in one call (the exact scene with per-image noise-free variants)
  b = args.batch
  feats, acts = [], []
  for _ in range(b):
    f, a = ref.synthetic_scene(rng, h=args.h, w=args.w, c=args.c, n_objects=args.objects, noise=0.02,
                               activation="loose")
    feats.append(f)
    acts.append(a[None])
  fb, ab = jnp.asarray(np.stack(feats)), jnp.asarray(np.stack(acts))  # [B, h, w, C], [B, 1, h, w]
  run_b = lambda: jax.block_until_ready(zipjax.discover_batch(fb, ab, config))  # noqa: E731
  run_b()
  t_b, out_b = timed(run_b, args.repeats)
  t_refs = []
  for i in range(b):
    t = time.perf_counter()
    lab, _ = baseline(feats[i], acts[i][0], k)
    t_refs.append(time.perf_counter() - t)
    if not np.array_equal(np.asarray(out_b[i, 0]), lab):
      raise SystemExit(f"batched image {i}: zipjax and the baseline disagree")
  t_ref_b = sum(t_refs)
  print()
  print("| batched (exact inputs) | images | baseline total s | zipjax total s (warm) | zipjax img/s | ratio |")
  print("|---|---|---|---|---|---|")
  print(f"| discover_batch vs loop | {b} | {t_ref_b:.2f} | {t_b:.2f} | {b / t_b:.2f} | {t_ref_b / t_b:.1f}x |")


if __name__ == "__main__":
  main()
