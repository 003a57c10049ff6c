#!/usr/bin/env bash
# Copies the merged outputs of a run directory in a bucket to a local folder.
#
#   bash tpu/copy.sh --out gs://BUCKET/run --to LOCAL_DIR [--all] [--dry-run]
# Copies annotations.json, errors.json and run.json; --all copies the whole run directory (shards included).
source "$(dirname "$0")/_common.sh"
OUT=""
TO=""
ALL=0
parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a value}"; shift 2 ;;
    --to) TO="${2:?--to needs a value}"; shift 2 ;;
    --all) ALL=1; shift ;;
    *) die "unknown argument $1" ;;
  esac
done
[ -n "$OUT" ] || die "--out gs://... is required"
[ -n "$TO" ] || die "--to LOCAL_DIR is required"
OUT="${OUT%/}"
run mkdir -p "$TO"
if [ "$ALL" = 1 ]; then
  run gcloud storage cp -r "$OUT" "$TO"
else
  run gcloud storage cp "$OUT/annotations.json" "$OUT/errors.json" "$OUT/run.json" "$TO"
fi
