#!/usr/bin/env bash
# Compile-check every CUDA source of the kernel lab with nvcc, for sm_80 and sm_90.
#
# 1. Each kernels/**/*.cu on its own (-ptx): syntax and everything outside templates.
# 2. Every template instance that kernels.conv_cuda can launch (all versions, tile configs,
#    kernel sizes and float4 variants), through generated instantiation units: this is where
#    static_asserts, register arrays and shared-memory sizes are really checked.
# Options: --resources also prints ptxas' register / shared-memory / spill report for sm_90;
#          --nvrtc also compiles every instance through NVRTC, the compiler CuPy uses at run time
#          (needs CuPy and libnvrtc, e.g. pip install nvidia-cuda-nvrtc; no GPU needed).
#
# Outputs go to a temporary directory. Exits non-zero on the first failure; exits 0 with a
# message (and does nothing) when nvcc is not installed, unless REQUIRE_NVCC=1.
set -euo pipefail

cd "$(dirname "$0")/.."
NVCC="${NVCC:-nvcc}"
ARCHS=(sm_80 sm_90)
RESOURCES=0
NVRTC=0
for arg in "$@"; do
    case "$arg" in
        --resources) RESOURCES=1 ;;
        --nvrtc) NVRTC=1 ;;
        *) echo "usage: $0 [--resources] [--nvrtc]" >&2; exit 2 ;;
    esac
done

if ! command -v "$NVCC" >/dev/null 2>&1; then
    if [[ "${REQUIRE_NVCC:-0}" == "1" ]]; then
        echo "check_cuda: nvcc not found" >&2
        exit 1
    fi
    echo "check_cuda: nvcc not found; skipping the CUDA compile check"
    exit 0
fi
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
COMMON=(-std=c++17 -Werror all-warnings)

mapfile -t SOURCES < <(find kernels -name '*.cu' | sort)
n=0
for src in "${SOURCES[@]}"; do
    for arch in "${ARCHS[@]}"; do
        "$NVCC" -arch="$arch" -ptx "${COMMON[@]}" "$src" -o "$TMP/$(basename "$src" .cu).$arch.ptx"
        n=$((n + 1))
    done
done
echo "check_cuda: ${#SOURCES[@]} sources compiled for ${ARCHS[*]} ($n ptx files)"

"$PYTHON" -m kernels.conv_cuda --instantiate "$TMP/inst" >/dev/null
mapfile -t UNITS < <(find "$TMP/inst" -name 'inst_*.cu' | sort)
total=0
for unit in "${UNITS[@]}"; do
    count=$(grep -c '(void\*)&' "$unit" || true)
    total=$((total + count))
    for arch in "${ARCHS[@]}"; do
        "$NVCC" -arch="$arch" -ptx "${COMMON[@]}" "$unit" -o "$TMP/$(basename "$unit" .cu).$arch.ptx"
    done
done
echo "check_cuda: $total template instances in ${#UNITS[@]} units compiled for ${ARCHS[*]}"

if [[ "$RESOURCES" == "1" ]]; then
    for unit in "${UNITS[@]}"; do
        echo "== $(basename "$unit") (sm_90)"
        "$NVCC" -arch=sm_90 -cubin -std=c++17 -Xptxas -v "$unit" -o "$TMP/$(basename "$unit" .cu).cubin" 2>&1 \
            | "$PYTHON" -c '
import re, sys
name = None
for line in sys.stdin:
    m = re.search(r"Compiling entry function .(\S+). for", line)
    if m:
        name = m.group(1)
        continue
    m = re.search(r"Used (\d+) registers", line)
    if m and name:
        smem = re.search(r"(\d+) bytes smem", line)
        print(f"  regs {m.group(1):>4}  smem {smem.group(1) if smem else 0:>6}  {name}")
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and name and any(int(g) for g in m.groups()):
        print(f"  SPILL/STACK: {line.strip()}  {name}")
'
    done
fi
if [[ "$NVRTC" == "1" ]]; then
    "$PYTHON" -m kernels.conv_cuda --nvrtc-check | sed 's/^/check_cuda: /'
fi
echo "check_cuda: OK"
