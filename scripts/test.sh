#!/usr/bin/env bash
# Runs the test suite on CPU with 8 simulated devices. Extra arguments go to pytest
# (e.g. `scripts/test.sh -m slow` for the heavier full-size parity cases).
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec "$PY" -m pytest "$@"
