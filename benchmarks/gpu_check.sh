#!/usr/bin/env bash
# The GPU path in one command, from the repository root (benchmarks/gpu_check.py says what it runs):
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine: writes $OUT/gpu_check.json + gpu_check.log
#   bash benchmarks/gpu_check.sh --cpu    # the same parts, small, on the CPU (CI runs this)
#
# No `pip install -e .` (the GPU machine's torch 2.11 is not the pinned 2.14.1): the code runs from
# the tree, and packages that machine lacks (pydantic, webdataset, ...) come from the wheels in .gpu/wheels/
# (built by benchmarks/gpu_carry.sh, carried with the tree), installed into a private folder.
# PYTHON picks the interpreter (default: python3); OUT the output folder (default: benchmarks/out);
# WHEELS the wheel folder (default: .gpu/wheels, built by benchmarks/gpu_carry.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
WHEELS=${WHEELS:-.gpu/wheels}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=$(mktemp -d /tmp/selftrain-site.XXXXXX)
  trap 'rm -rf "$SITE"' EXIT
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl 2>&1 | tee "$LOG"
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  : >"$LOG"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
set -o pipefail
"$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee -a "$LOG"
