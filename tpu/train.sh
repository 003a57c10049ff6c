#!/usr/bin/env bash
# Runs `zipjax train` on every worker of the slice (one process per worker, jax.distributed joins them).
# Rerun the same command to resume (after a kill, a SIGTERM, or a preemption and a new slice).
#
#   bash tpu/train.sh [--name NAME] [--zone ZONE] [--project P] [--type v4-32] [--per-device-batch N] [--dry-run] \
#       -- TRAIN ARGS...
# TRAIN ARGS are `zipjax train`'s (--config, --train-json, --images-root, --workdir, --config.key=value...), with
# paths every worker sees: the bucket mounted by tpu/mount.sh (e.g. /mnt/zipjax/...). --type: the slice's
# accelerator type [ZIPJAX_TPU_TYPE, default v4-32], used to print the device count and, with
# --per-device-batch, to set --config.batch_size to N x devices. --config.distributed=True is appended.
source "$(dirname "$0")/_common.sh"
source "$(dirname "$0")/_train.sh"
parse_common "$@"
run_on_workers train ${REST[@]+"${REST[@]}"}
