#!/usr/bin/env bash
# Test-only: builds llama.cpp (the copy vendored in the pinned llama-cpp-python source distribution)
# and our test tool over it, tests/llama_cpp/llama_logits.cpp, so that the GGUF tests can run the
# real peer on our exports. Reproducible: the sdist comes from the package index through pip and
# must match the pinned sha256; the build is cached and redone only when the tool's sources or the
# flags change. Prints the tool's path on its last line.
#
#   scripts/build_llama_cpp.sh            # -> ~/.cache/mamba-slm/llama.cpp-0.3.36/build/mslm_llama_logits
#
# Environment: MSLM_CACHE_DIR (default ~/.cache/mamba-slm), PYTHON (with pip, default python3),
# JOBS (default 2), LLAMA_CPP_SDIST (an already downloaded sdist to use instead of pip; it is
# checked against the same sha256).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE=${MSLM_CACHE_DIR:-$HOME/.cache/mamba-slm}/llama.cpp-$VERSION
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}
TARBALL=$CACHE/llama_cpp_python-$VERSION.tar.gz
SRC=$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp
TOOL=$CACHE/build/mslm_llama_logits
# The VMs report AMX in cpuid but tile instructions fault (SIGILL in ggml's AMX kernels), so the
# native build keeps everything else and leaves AMX out.
FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

mkdir -p "$CACHE"
stamp=$( (cat "$ROOT"/tests/llama_cpp/*; echo "$FLAGS $SHA256") | sha256sum | cut -d' ' -f1)
if [ -x "$TOOL" ] && [ "$(cat "$CACHE/build.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$TOOL"
    exit 0
fi

if [ ! -f "$TARBALL" ]; then
    if [ -n "${LLAMA_CPP_SDIST:-}" ]; then
        cp "$LLAMA_CPP_SDIST" "$TARBALL"
    else
        "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps \
            "llama-cpp-python==$VERSION" -d "$CACHE"
    fi
fi
echo "$SHA256  $TARBALL" | sha256sum --check --quiet ||
    { echo "build_llama_cpp: $TARBALL does not match the pinned sha256" >&2; rm -f "$TARBALL"; exit 1; }
if [ ! -d "$SRC" ]; then
    tar -C "$CACHE" -xzf "$TARBALL" "llama_cpp_python-$VERSION/vendor/llama.cpp"
fi

# The tool's CMake project is copied next to the build so that the cached build does not depend on
# which checkout (or worktree) ran this script.
rm -rf "$CACHE/tools"
cp -r "$ROOT/tests/llama_cpp" "$CACHE/tools"
start=$SECONDS
nice -n 19 cmake -S "$CACHE/tools" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CPP_SRC="$SRC" \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    "-DCMAKE_C_FLAGS=$FLAGS" "-DCMAKE_CXX_FLAGS=$FLAGS" >/dev/null
nice -n 19 cmake --build "$CACHE/build" -j"$JOBS" --target mslm_llama_logits >/dev/null
echo "$stamp" > "$CACHE/build.stamp"
echo "build_llama_cpp: built in $((SECONDS - start)) s" >&2
echo "$TOOL"
