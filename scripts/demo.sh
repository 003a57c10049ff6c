#!/usr/bin/env bash
# The main job: `zipjax segment` finds the oranges in examples/oranges.png (the Zip method, `zip` preset).
# Real weights (CLIP ViT-B/16 + RN50x64, resolved through the weights cache, ~/.cache/zipjax or $ZIPJAX_CACHE)
# are used when present; otherwise tiny random-weight models (configs/smoke.py) run the same pipeline and the
# outputs are marked as random. Outputs: ${ZIPJAX_DEMO_OUT:-demo_out}/ (results.json, annotations.json,
# overlays/, errors.json). Extra arguments go to `zipjax segment`.
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
OUT="${ZIPJAX_DEMO_OUT:-demo_out}"
missing="$("$PY" - <<'PYEOF'
from zipjax import configs, weights
c = configs.zip()
need = [(c.models.semantic.checkpoint, "clip"), (c.models.boundary.checkpoint, "clip")]
if c.sam.enabled:
  need.append((c.models.sam.checkpoint, "sam"))
for name, family in need:
  if not weights.available(name, family):
    e = weights.lookup(name, family)
    print(f"  {name}: download {e['url']} to {weights.describe(name, family)}")
PYEOF
)"
if [ -z "$missing" ]; then
  exec "$PY" -m zipjax segment examples/oranges.png --classes orange --out "$OUT" "$@"
fi
echo "[zipjax] real weights not found in the cache; running tiny RANDOM-weight models instead (configs/smoke.py)." >&2
echo "[zipjax] the masks below show the pipeline working, not CLIP's knowledge. For real results:" >&2
echo "$missing" >&2
echo "[zipjax] (or run 'zipjax segment examples/oranges.png --classes orange --out DIR' with internet access:" >&2
echo "[zipjax]  it downloads, verifies and converts them once)" >&2
exec "$PY" -m zipjax segment examples/oranges.png --classes orange --random-init --config configs/smoke.py \
  --out "$OUT" "$@"
