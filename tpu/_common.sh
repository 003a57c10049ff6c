# Sourced by the tpu/*.sh scripts: common flags, defaults and the `run` helper.
#
# Flags (each also read from the environment variable in brackets):
#   --name NAME        TPU VM name                      [ZIPJAX_TPU_NAME, default zipjax-label]
#   --zone ZONE        zone                             [ZIPJAX_TPU_ZONE, default us-central2-b]
#   --project PROJECT  project (gcloud's default if unset) [ZIPJAX_TPU_PROJECT]
#   --dry-run          print every command, run none
# `run CMD...` prints CMD (shell-quoted, copy-pasteable, prefixed with '+ ') and runs it unless --dry-run.
set -euo pipefail
TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$TPU_DIR/.." && pwd)"
NAME="${ZIPJAX_TPU_NAME:-zipjax-label}"
ZONE="${ZIPJAX_TPU_ZONE:-us-central2-b}"
PROJECT="${ZIPJAX_TPU_PROJECT:-}"
DRY_RUN=0
REST=()

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# parse_common "$@": consumes the common flags; everything else is left in REST for the script.
parse_common() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) NAME="${2:?--name needs a value}"; shift 2 ;;
      --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
      --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      *) REST+=("$1"); shift ;;
    esac
  done
}

quote() {  # shell-quotes one word only when it needs it
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@+%^-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

run() {
  local out="+" a
  for a in "$@"; do out+=" $(quote "$a")"; done
  echo "$out"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# the gcloud arguments every TPU VM command takes
tpu_args() {
  TPU_ARGS=("$NAME" "--zone=$ZONE")
  if [ -n "$PROJECT" ]; then TPU_ARGS+=("--project=$PROJECT"); fi
}
