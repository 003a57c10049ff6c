# Sourced by the scripts in this folder: creates or updates ./.venv idempotently.
# The install is redone only when setup.cfg / pyproject.toml change (a stamp in .venv records their hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
extras="${ZIPJAX_EXTRAS:-convert,test}"
# test references installed without their dependencies (see below and tests/reference/__init__.py)
nodeps_test="open-clip-torch==3.3.0 sam2==1.1.0 iopath==0.1.10 portalocker==4.4.2"
stamp_want="$( (cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml"; echo "$nodeps_test") | sha256sum | cut -c1-16)-$extras"
if [ ! -x "$PY" ]; then
  echo "[zipjax] creating virtual environment in $VENV" >&2
  python3 -m venv "$VENV"
fi
if [ "$(cat "$VENV/.zipjax-stamp" 2>/dev/null)" != "$stamp_want" ]; then
  echo "[zipjax] installing zipjax[$extras] into $VENV (first run takes a few minutes)" >&2
  log="$VENV/install.log"
  {
    "$PY" -m pip install --upgrade pip "setuptools<81" wheel &&
    case ",$extras," in
      *,convert,*|*,test,*) "$PY" -m pip install "torch==2.13.0" ;;  # CPU build; never an unpinned torch
      *) true ;;
    esac &&
    "$PY" -m pip install -e "$ROOT[$extras]" &&
    # open_clip and sam2 pull torchvision (and with it another torch): their model code needs neither. sam2's
    # sdist builds against the installed torch (no build isolation) and skips its optional CUDA extension;
    # iopath (+ portalocker) is what its Hiera module imports
    case ",$extras," in
      *,test,*) SAM2_BUILD_CUDA=0 "$PY" -m pip install --no-deps --no-build-isolation $nodeps_test ;;
      *) true ;;
    esac
  } > "$log" 2>&1 || { tail -n 40 "$log" >&2; echo "[zipjax] install failed; full log: $log" >&2; exit 1; }
  echo "$stamp_want" > "$VENV/.zipjax-stamp"
fi
# tcmalloc makes big CPU runs 1.2-1.6x faster; use it when the system has it.
for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4; do
  if [ -f "$lib" ]; then export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"; break; fi
done
export PYTHONUNBUFFERED=1
