# Sourced by tpu/train.sh and tpu/self_train.sh (after _common.sh): runs a zipjax training command on every worker.
#
# `run_on_workers SUBCOMMAND "$@"` parses [--type TYPE] [--per-device-batch N] -- ARGS..., checks ARGS and runs
# `python3 -m zipjax SUBCOMMAND ARGS --config.distributed=True [--config.batch_size=...]` on every worker
# (`--worker=all`). On TPU VMs `jax.distributed.initialize()` finds the coordinator and the process index by
# itself, so no address is passed. Paths must be the same on every worker: a bucket mounted by tpu/mount.sh
# (the trainer writes checkpoints, metrics and labels through the filesystem), or files copied to each worker.

# devices_of TYPE: JAX devices of a slice (one per chip for v4 / v5p megacore chips and for v5e / v6e, one per
# TensorCore for v2 / v3); hosts_of TYPE: its workers.
devices_of() {
  local kind="${1%-*}" n="${1##*-}"
  [[ "$n" =~ ^[0-9]+$ ]] || die "unknown accelerator type $1 (e.g. v4-32, v5e-16, v5litepod-16, v5p-8, v6e-8)"
  case "$kind" in
    v2|v3) echo "$n" ;;
    v4|v5p) echo $((n / 2)) ;;
    v5e|v5litepod|v6e) echo "$n" ;;
    *) die "unknown accelerator type $1 (e.g. v4-32, v5e-16, v5litepod-16, v5p-8, v6e-8)" ;;
  esac
}

hosts_of() {
  local kind="${1%-*}" n="${1##*-}"
  case "$kind" in
    v2|v3) echo $(( n > 8 ? n / 8 : 1 )) ;;      # 4 chips (8 cores) per host
    v4|v5p) echo $(( n > 8 ? n / 8 : 1 )) ;;     # 4 chips (8 cores) per host
    v5e|v5litepod|v6e) echo $(( n > 8 ? n / 4 : 1 )) ;;   # 1-8 chips: one host; larger slices: 4 chips per host
  esac
}

run_on_workers() {
  local sub="$1" type="${ZIPJAX_TPU_TYPE:-v4-32}" per_device="" a
  shift
  local args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --type) type="${2:?--type needs a value}"; shift 2 ;;
      --per-device-batch) per_device="${2:?--per-device-batch needs a value}"; shift 2 ;;
      --) shift; args=("$@"); break ;;
      *) die "unknown argument $1 (zipjax $sub arguments go after --)" ;;
    esac
  done
  [ ${#args[@]} -gt 0 ] || die "no zipjax $sub arguments (after --)"
  local has_workdir=0
  for a in "${args[@]}"; do
    case "$a" in
      --workdir|--workdir=*) has_workdir=1 ;;
      gs://*|--*=gs://*) die "$a: the trainer reads and writes through the filesystem; mount the bucket with" \
        "tpu/mount.sh and pass paths under the mount point" ;;
    esac
  done
  [ "$has_workdir" = 1 ] || die "zipjax $sub needs --workdir (under the bucket mount, shared by every worker)"
  local devices hosts
  devices="$(devices_of "$type")"
  hosts="$(hosts_of "$type")"
  local extra=(--config.distributed=True)
  if [ -n "$per_device" ]; then
    [[ "$per_device" =~ ^[1-9][0-9]*$ ]] || die "--per-device-batch must be a positive integer, got $per_device"
    extra+=("--config.batch_size=$((per_device * devices))")
    echo "# $type: $hosts worker(s), $devices JAX devices; global batch $((per_device * devices)) =" \
      "$per_device per device"
  else
    echo "# $type: $hosts worker(s), $devices JAX devices; the config's batch_size must be a multiple of $devices"
  fi
  local cmd=""
  for a in "${args[@]}" "${extra[@]}"; do cmd+=" $(quote "$a")"; done
  tpu_args
  run gcloud compute tpus tpu-vm ssh "${TPU_ARGS[@]}" --worker=all \
    "--command=cd ~/zipjax 2>/dev/null || cd ~; python3 -m zipjax $sub$cmd"
}
