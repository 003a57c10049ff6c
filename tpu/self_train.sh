#!/usr/bin/env bash
# Runs `zipjax self-train` on every worker of the slice (one process per worker, jax.distributed joins them):
# every worker trains each round; the prediction chunks are shared out; worker 0 writes labels and the report.
# Rerun the same command to resume (after a kill, a SIGTERM, or a preemption and a new slice).
#
#   bash tpu/self_train.sh [--name NAME] [--zone ZONE] [--project P] [--type v4-32] [--per-device-batch N] \
#       [--dry-run] -- SELF-TRAIN ARGS...
# SELF-TRAIN ARGS are `zipjax self-train`'s (--config, --pseudo-json, --images-root, --workdir, [--gt-json],
# --config.key=value...), with paths under the bucket mount of tpu/mount.sh. --type and --per-device-batch as in
# tpu/train.sh; --config.distributed=True is appended.
source "$(dirname "$0")/_common.sh"
source "$(dirname "$0")/_train.sh"
parse_common "$@"
run_on_workers self-train ${REST[@]+"${REST[@]}"}
