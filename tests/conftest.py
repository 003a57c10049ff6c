"""Test-wide settings: 8 simulated CPU devices and float32 matmuls at highest precision."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (after the environment is set)

jax.config.update("jax_default_matmul_precision", "highest")

# `zipjax segment` persists XLA executables in its cache; in-process tests keep jax's global config untouched
# (tests/commands/test_segment.py checks the cache in a subprocess).
os.environ.setdefault("ZIPJAX_XLA_CACHE", "0")
