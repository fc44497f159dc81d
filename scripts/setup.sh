#!/usr/bin/env bash
# Installs the Debian packages mamba-slm needs (idempotent, no prompts) and builds it.
# Usage: scripts/setup.sh [preset]   (preset: cpu | cuda | debug | asan; default: cuda when nvcc
# is found, else cpu)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build ccache pkg-config git
          nlohmann-json3-dev libfmt-dev libcli11-dev libopenblas-dev libpcre2-dev libutf8proc-dev
          libzstd-dev zlib1g-dev libssl-dev
          libonnx-dev libprotobuf-dev  # ONNX export
          libgtest-dev libgmock-dev libbenchmark-dev python3 python3-venv python3-pip
          fortunes)  # the quickstart's English corpus (/usr/share/games/fortunes)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

preset="${1:-}"
if [ -z "$preset" ]; then
    if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then preset=cuda; else preset=cpu; fi
fi
if [ "$preset" = cuda ] && ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi
jobs="${MSLM_BUILD_JOBS:-$(nproc)}"
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$jobs"
echo "setup: built preset '$preset' in build/$preset (binary: build/$preset/mamba-slm)"
