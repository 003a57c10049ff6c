#!/usr/bin/env bash
# Runs the test suite on CPU with 8 simulated devices per process. Extra arguments go to pytest
# (e.g. `scripts/test.sh -m slow` for the heavier full-size parity cases). Without `-n` in the arguments the
# tests run in min(cores, 4) pytest-xdist processes, one test file per process at a time (`--dist loadfile`:
# a module's expensive fixtures are built once); ZIPJAX_TEST_WORKERS=N sets the count (1: no xdist).
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
workers="${ZIPJAX_TEST_WORKERS:-}"
if [ -z "$workers" ]; then
  cores="$(nproc 2>/dev/null || echo 1)"
  workers=$(( cores < 4 ? cores : 4 ))
fi
dist=()
case " $* " in
  *" -n "*|*" -n="*|*" --numprocesses"*|*" -p no:xdist "*) ;;
  *) if [ "$workers" -gt 1 ]; then dist=(-n "$workers" --dist loadfile); fi ;;
esac
exec "$PY" -m pytest "${dist[@]}" "$@"
