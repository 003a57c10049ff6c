#!/usr/bin/env bash
# The main job: embed the example image and a few class names with CLIP.
# Uses a real checkpoint when ZIPJAX_CLIP points at one (OpenAI .pt or a converted dir);
# otherwise runs on random weights and says so.
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
if [ -n "${ZIPJAX_CLIP:-}" ]; then
  exec "$PY" -m zipjax embed --clip "$ZIPJAX_CLIP" --image examples/oranges.png --texts "orange,apple,table" "$@"
fi
exec "$PY" -m zipjax embed --random-init ViT-B/16 --image examples/oranges.png --texts "orange,apple,table" "$@"
