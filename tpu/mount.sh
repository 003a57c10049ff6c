#!/usr/bin/env bash
# Mounts a bucket on every worker of the slice with Cloud Storage FUSE (installed first when missing), so that
# `zipjax train` / `zipjax self-train` read data and write checkpoints, metrics and labels in the bucket through
# ordinary paths, the same on every worker. Idempotent: rerun it on a new slice after a preemption.
#
#   bash tpu/mount.sh --bucket gs://BUCKET [--mount-point /mnt/zipjax] [--name NAME] [--zone ZONE] [--project P]
#                     [--dry-run]
# The mount allows directory renames (orbax finalises a checkpoint by renaming its temporary directory) and
# implicit directories (folders created by `gcloud storage cp`).
source "$(dirname "$0")/_common.sh"
BUCKET=""
MOUNT="${ZIPJAX_TPU_MOUNT:-/mnt/zipjax}"
parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
while [ $# -gt 0 ]; do
  case "$1" in
    --bucket) BUCKET="${2:?--bucket needs a value}"; shift 2 ;;
    --mount-point) MOUNT="${2:?--mount-point needs a value}"; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ "$BUCKET" =~ ^gs://[a-z0-9][-a-z0-9_.]*/?$ ]] || die "--bucket gs://BUCKET is required (a bucket, no folder)"
BUCKET="${BUCKET#gs://}"
BUCKET="${BUCKET%/}"
[[ "$MOUNT" =~ ^/[A-Za-z0-9_./-]+$ ]] || die "--mount-point must be an absolute path, got $MOUNT"
tpu_args
KEYRING=/usr/share/keyrings/cloud.google.asc
REPO="deb [signed-by=$KEYRING] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main"
INSTALL="command -v gcsfuse >/dev/null || { echo \"$REPO\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
INSTALL+=" && curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee $KEYRING >/dev/null"
INSTALL+=" && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }"
MNT="sudo mkdir -p $MOUNT && sudo chown \$(id -u):\$(id -g) $MOUNT && { mountpoint -q $MOUNT || gcsfuse"
MNT+=" --implicit-dirs --rename-dir-limit=1000000 $BUCKET $MOUNT; }"
run gcloud compute tpus tpu-vm ssh "${TPU_ARGS[@]}" --worker=all \
  "--command=$INSTALL && $MNT && echo mounted gs://$BUCKET on $MOUNT"
