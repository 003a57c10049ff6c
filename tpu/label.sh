#!/usr/bin/env bash
# Runs `zipjax label` on every worker of the slice (one process per worker; jax.distributed joins them), data and
# outputs in a bucket. Rerun the same command to resume (finished images are skipped).
#
#   bash tpu/label.sh [--name NAME] [--zone ZONE] [--project P] [--port 8476] [--dry-run] -- LABEL ARGS...
# LABEL ARGS are `zipjax label`'s (inputs, --classes/--classes-file, --out gs://..., --config ...); paths must
# be readable on every worker (gs:// URLs, or files installed there). Worker 0's internal IP is the
# coordinator; each worker reads its index from the TPU VM metadata (agent-worker-number). The command runs in
# ~/zipjax (the checkout tpu/install.sh unpacks), so relative config paths such as configs/label_coco.py work.
source "$(dirname "$0")/_common.sh"
PORT=8476
parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
LABEL=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --) shift; LABEL=("$@"); break ;;
    *) die "unknown argument $1 (zipjax label arguments go after --)" ;;
  esac
done
[ ${#LABEL[@]} -gt 0 ] || die "no zipjax label arguments (after --)"
has_out=0
for a in "${LABEL[@]}"; do case "$a" in --out|--out=*) has_out=1 ;; esac; done
[ "$has_out" = 1 ] || die "zipjax label needs --out (a gs:// directory every worker can write)"
tpu_args
describe=(gcloud compute tpus tpu-vm describe "${TPU_ARGS[@]}" "--format=value(networkEndpoints[].ipAddress)")
if [ "$DRY_RUN" = 1 ]; then
  run "${describe[@]}"
  COORD="WORKER0_IP:$PORT"
  NPROC="NUM_WORKERS"
  echo "# (dry run: WORKER0_IP and NUM_WORKERS stand for what this command returns)"
else
  echo "+ $(for a in "${describe[@]}"; do printf '%s ' "$(quote "$a")"; done)"
  IPS="$("${describe[@]}")"
  IFS=';' read -r -a ips <<< "${IPS//,/;}"
  [ ${#ips[@]} -gt 0 ] && [ -n "${ips[0]}" ] || die "cannot read the worker IPs of $NAME"
  COORD="${ips[0]}:$PORT"
  NPROC="${#ips[@]}"
fi
ARGS=""
for a in "${LABEL[@]}"; do ARGS+=" $(quote "$a")"; done
METADATA="http://metadata.google.internal/computeMetadata/v1/instance/attributes"
WORKER_ID="\$(curl -s -H Metadata-Flavor:Google $METADATA/agent-worker-number)"  # evaluated on each worker
ENV="ZIPJAX_COORDINATOR=$COORD ZIPJAX_NUM_PROCESSES=$NPROC ZIPJAX_PROCESS_ID=$WORKER_ID"
REMOTE="cd ~/zipjax 2>/dev/null || cd ~; $ENV python3 -m zipjax label$ARGS"
run gcloud compute tpus tpu-vm ssh "${TPU_ARGS[@]}" --worker=all "--command=$REMOTE"
