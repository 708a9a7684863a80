#!/usr/bin/env bash
# The prepared GPU check: bash bench/gpu_check.sh OUTDIR [--budget S] [--only a,b] [--dry-run]
# (see bench/gpu_check.py). Run from anywhere; it runs from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m bench.gpu_check "$@"
