#!/usr/bin/env bash
# Deletes the TPU VM slice (the bucket and its outputs stay).
#
#   bash tpu/delete.sh [--name NAME] [--zone ZONE] [--project P] [--dry-run]
source "$(dirname "$0")/_common.sh"
parse_common "$@"
[ ${#REST[@]} -eq 0 ] || die "unknown argument ${REST[0]}"
tpu_args
run gcloud compute tpus tpu-vm delete "${TPU_ARGS[@]}" --quiet
