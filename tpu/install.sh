#!/usr/bin/env bash
# Installs zipjax (and jax[tpu], gcsfs for gs:// paths) on every worker of the slice.
#
#   bash tpu/install.sh [--name NAME] [--zone ZONE] [--project P] [--source PIP_SPEC] [--dry-run]
# Without --source, this checkout's HEAD is packed (`git archive`), copied to every worker, unpacked in ~/zipjax
# (configs/ included) and installed from there; with --source, pip installs that spec on every worker (e.g.
# git+https://github.com/ORG/zipjax@v0.1.0; then pass configs as files every worker can read).
source "$(dirname "$0")/_common.sh"
SOURCE=""
parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE="${2:?--source needs a value}"; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
tpu_args
PKG="$SOURCE"
UNPACK=""
if [ -z "$SOURCE" ]; then
  ARCHIVE="/tmp/zipjax-src.tar.gz"
  run git -C "$ROOT" archive --format=tar.gz --prefix=zipjax/ -o "$ARCHIVE" HEAD
  run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME:$ARCHIVE" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} \
    --worker=all
  PKG="./zipjax"
  UNPACK="rm -rf ~/zipjax && tar -xzf $ARCHIVE -C ~ && cd ~ && "
fi
PIP="python3 -m pip install -U 'jax[tpu]' gcsfs '$PKG'"
run gcloud compute tpus tpu-vm ssh "${TPU_ARGS[@]}" --worker=all \
  "--command=${UNPACK}$PIP && python3 -m zipjax --help >/dev/null && echo zipjax ok"
