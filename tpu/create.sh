#!/usr/bin/env bash
# Creates a TPU VM slice for `zipjax label`.
#
#   bash tpu/create.sh [--name NAME] [--zone ZONE] [--project P] [--type v4-32] [--version tpu-ubuntu2204-base]
#                      [--spot] [--dry-run]
# --type: accelerator type [ZIPJAX_TPU_TYPE, default v4-32 = 4 workers x 4 chips]; --version: TPU VM software
# version [ZIPJAX_TPU_VERSION]; --spot: a Spot VM (cheaper, may be preempted: rerun tpu/label.sh to resume).
source "$(dirname "$0")/_common.sh"
TYPE="${ZIPJAX_TPU_TYPE:-v4-32}"
VERSION="${ZIPJAX_TPU_VERSION:-tpu-ubuntu2204-base}"
SPOT=0
parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
while [ $# -gt 0 ]; do
  case "$1" in
    --type) TYPE="${2:?--type needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    *) die "unknown argument $1" ;;
  esac
done
tpu_args
extra=()
if [ "$SPOT" = 1 ]; then extra+=(--spot); fi
run gcloud compute tpus tpu-vm create "${TPU_ARGS[@]}" "--accelerator-type=$TYPE" "--version=$VERSION" \
  ${extra[@]+"${extra[@]}"}
