#!/usr/bin/env bash
# The main job: `zipjax segment` finds the oranges in examples/oranges.png (the Zip method, `zip` preset).
# Real weights: CLIP ViT-B/16 + RN50x64 + SAM vit_h, resolved through the weights cache (~/.cache/zipjax or
# $ZIPJAX_CACHE; the Hugging Face cache too, see `zipjax weights list`). When they are not cached the demo
# downloads them (about 4.2 GB: 335 MB + 1.26 GB + 2.56 GB, with progress bars; sha256 checked against the
# manifest) and converts them once (about 10 GB of disk in all), then runs the real pipeline. Only when
# offline (ZIPJAX_OFFLINE=1, or the download fails) do tiny random-weight models (configs/smoke.py) run the
# same pipeline instead, with outputs marked as random. Outputs: ${ZIPJAX_DEMO_OUT:-demo_out}/ (results.json,
# annotations.json, overlays/, errors.json). Extra arguments go to `zipjax segment`. ZIPJAX_DEMO_CONFIG: a
# config file to use instead of the zip preset (tests use a tiny one).
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
OUT="${ZIPJAX_DEMO_OUT:-demo_out}"
cfg_args=()
select_args=(--preset zip)
if [ -n "${ZIPJAX_DEMO_CONFIG:-}" ]; then
  cfg_args=(--config "$ZIPJAX_DEMO_CONFIG")
  select_args=(--config "$ZIPJAX_DEMO_CONFIG")
fi
missing="$(ZIPJAX_DEMO_CONFIG="${ZIPJAX_DEMO_CONFIG:-}" "$PY" - <<'PYEOF'
import os
from zipjax import configs, weights
from zipjax.commands.common import load_config_file
from zipjax.commands.weights import config_models
path = os.environ.get("ZIPJAX_DEMO_CONFIG")
for name, family in config_models(load_config_file(path) if path else configs.zip()):
  if not weights.available(name, family):
    print(f"  {name}: {weights.describe(name, family)}")
PYEOF
)"
run_real() { exec "$PY" -m zipjax segment examples/oranges.png --classes orange "${cfg_args[@]}" --out "$OUT" "$@"; }
if [ -z "$missing" ]; then
  run_real "$@"
fi
if [ "${ZIPJAX_OFFLINE:-0}" = "0" ] || [ -z "${ZIPJAX_OFFLINE:-}" ]; then
  echo "[zipjax] downloading the real models (once; about 4.2 GB for the zip preset), verifying and converting:" >&2
  echo "$missing" >&2
  if "$PY" -m zipjax weights download "${select_args[@]}"; then
    run_real "$@"
  fi
  why="the download failed (no network?)"
else
  why="offline (ZIPJAX_OFFLINE is set)"
fi
echo "[zipjax] real weights not available: $why; running tiny RANDOM-weight models instead (configs/smoke.py)." >&2
echo "[zipjax] the masks below show the pipeline working, not CLIP's knowledge. For real results, with network:" >&2
echo "[zipjax]   zipjax weights download ${select_args[*]}   (then run this demo again; see zipjax weights list)" >&2
echo "$missing" >&2
exec "$PY" -m zipjax segment examples/oranges.png --classes orange --random-init --config configs/smoke.py \
  --out "$OUT" "$@"
