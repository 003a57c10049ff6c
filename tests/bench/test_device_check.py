"""bench/device_check.py: its FLOP counter against hand counts, and the whole script on the CPU with the smoke
models in a subprocess (`--allow-cpu --smoke`: the labelling engine, each model, and the detector training section
with a tiny detector), plus its refusal to run on a CPU without the flag."""
import importlib.util
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "device_check.py")


def _module():
  spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  sys.modules["device_check"] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


def test_jaxpr_flops_counts_matmuls_and_convolutions():
  import jax  # pylint: disable=import-outside-toplevel
  dc = _module()
  x, w = jnp.zeros((2, 5, 7)), jnp.zeros((7, 3))
  assert dc.jaxpr_flops(lambda a, b: a @ b, x, w) == (2 * 2 * 5 * 7 * 3, False)
  img, k = jnp.zeros((2, 9, 11, 4)), jnp.zeros((3, 3, 4, 6))
  conv = lambda a, b: jax.lax.conv_general_dilated(  # noqa: E731
      a, b, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out = jax.eval_shape(conv, img, k).shape  # [2, 5, 6, 6]
  assert dc.jaxpr_flops(conv, img, k)[0] == 2 * np.prod(out) * 4 * 9
  # nested jit, scan (x length), cond (largest branch), while (once, flagged)
  f = jax.jit(lambda a, b: jax.lax.scan(lambda c, _: (c, a @ b), 0.0, None, length=4)[1])
  assert dc.jaxpr_flops(f, x, w)[0] == 4 * 2 * 2 * 5 * 7 * 3
  g = lambda a, b: jax.lax.cond(a.sum() > 0, lambda: (a @ b).sum(), lambda: 0.0)  # noqa: E731
  assert dc.jaxpr_flops(g, x, w)[0] == 2 * 2 * 5 * 7 * 3
  h = lambda a, b: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, a @ b), (0, x @ w))[1]  # noqa
  assert dc.jaxpr_flops(h, x, w) == (2 * 2 * 2 * 5 * 7 * 3, True)
  assert dc.peak_flops("NVIDIA H100 PCIe", None) == 756e12 and dc.peak_flops("NVIDIA H200", None) == 989e12
  assert dc.peak_flops("cpu", None) is None and dc.peak_flops("cpu", 2.0) == 2e12


def _env():
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="", ZIPJAX_XLA_CACHE="0")


def test_refuses_the_cpu_without_allow_cpu():
  r = subprocess.run([sys.executable, SCRIPT], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "--allow-cpu" in r.stderr


@pytest.mark.slow  # ~50 s: the whole script in a subprocess (the FLOP counter and the refusal stay default)
def test_runs_on_cpu_with_smoke_models():
  r = subprocess.run([sys.executable, SCRIPT, "--allow-cpu", "--smoke", "--classes", "4", "--min-calls", "1",
                      "--min-seconds", "0", "--image-size", "120", "160", "--train-steps", "2", "--train-seconds", "0"],
                     env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout
  rows = {}
  for line in out.splitlines():
    m = re.match(r"^(engine step|run_local|detector train|CLIP|SAM)(.{0,60}?)\s+([\d.]+)\s+([\d.-]+)\s+([\d.-]+)",
                 line)
    if m:
      rows[m.group(1) + m.group(2).strip()] = [float(v) if v != "-" else None for v in m.groups()[2:]]
  names = list(rows)
  assert len(names) == 7, out
  assert names[0].startswith("engine step") and names[1].startswith("run_local")
  # the detector training section (tiny detector): examples/s, the step's jaxpr FLOPs against XLA's count of the
  # lowered step and against the model's own formula (3 x forward; the jaxpr also holds matcher and loss work)
  assert names[2].startswith("detector train") and "step small 64 px" in names[2], names
  rate, analytic, xla = rows[names[2]]
  assert rate > 0 and 0.8 < xla / analytic < 1.25, (analytic, xla)
  model = float(re.search(r"model FLOPs \(3 x forward\) ([\d.e+-]+) G/example", out).group(1))  # GFLOP
  assert 0.9 < analytic / model < 1.4, (analytic, model)
  assert re.search(r"training examples/s, batch 2, [12] steps", out)
  for name in names[3:]:  # each model alone: img/s, and the jaxpr FLOPs agree with XLA's cost analysis (which
    rate, analytic, xla = rows[name]  # also counts elementwise work: far more of it in the tiny box decoder)
    assert rate > 0 and analytic > 0 and xla > 0, name
    assert 0.8 < xla / analytic < (3.0 if "decoder" in name else 1.5), (name, analytic, xla)
  assert rows[names[0]][0] > 0 and rows[names[0]][1] > 0
  assert re.search(r"COCO train2017 \(118287 images\) on 1 device: [\d.]+ h", out)
  assert re.search(r"COCO train2017 \(118287 images\) on 8 devices: [\d.]+ h", out)
  assert "peak device memory" in out
