#!/usr/bin/env bash
# Builds CUDA binaries here (no GPU needed) for a GPU machine that lacks this one's libraries, and
# packs them: build/device (Release, sm_90, MSLM_NATIVE=OFF so the host code runs on any x86-64),
# the binaries stripped into .devbuild/bin.tar.xz and the non-system shared libraries they load into
# .devbuild/lib.tar.xz. On the GPU machine: unpack both and run with LD_LIBRARY_PATH=lib (plus the
# CUDA toolkit's lib64 for cuBLASLt). Tests read fixtures through the source path they were built
# with: link tests/parity/fixtures there if the checkout moved.
# Usage: scripts/device_bundle.sh [target ...]   (default: mslm_tests mamba-slm bench_cuda_decode)
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(mslm_tests mamba-slm bench_cuda_decode)
command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"
if [ ! -f build/device/build.ninja ]; then
    cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release -DMSLM_CUDA=ON -DMSLM_NATIVE=OFF \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DMSLM_WERROR=ON >/dev/null
fi
CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD/..}" ninja -C build/device -j "${MSLM_BUILD_JOBS:-$(nproc)}" "${targets[@]}"
rm -rf .devbuild/bin .devbuild/lib
mkdir -p .devbuild/bin .devbuild/lib
for t in "${targets[@]}"; do strip -o ".devbuild/bin/$t" "build/device/$t"; done
# Every shared library the binaries load but the C and C++ runtimes and the CUDA toolkit's (the GPU
# machine has its own, as new or newer).
for t in "${targets[@]}"; do ldd "build/device/$t"; done |
    awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|/usr/local/cuda' |
    while read -r lib; do cp -L "$lib" .devbuild/lib/; done
tar -C .devbuild -cJf .devbuild/bin.tar.xz bin
tar -C .devbuild -cJf .devbuild/lib.tar.xz lib
echo "device_bundle: .devbuild/bin.tar.xz ($(du -h .devbuild/bin.tar.xz | cut -f1)), .devbuild/lib.tar.xz ($(ls .devbuild/lib | wc -l) libraries)"
rm -rf .devbuild/bin .devbuild/lib  # only the archives travel (the device call's 64 MiB limit)
