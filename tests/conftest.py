"""Test-wide settings: 8 simulated CPU devices and float32 matmuls at highest precision."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (after the environment is set)

jax.config.update("jax_default_matmul_precision", "highest")
