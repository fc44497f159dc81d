#!/usr/bin/env bash
# Builds mamba-slm and runs every test (CTest: unit, parity and end-to-end). CUDA tests skip
# visibly on a machine without a GPU. Usage: scripts/test.sh [preset]
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-}"
scripts/setup.sh $preset

# Light Python packages that some tests use to cross-check our file formats against the
# reference implementations (tests skip, saying so, when they are missing). Never torch.
python_packages=(safetensors numpy tokenizers gguf onnx onnxruntime)
if command -v python3 >/dev/null 2>&1; then
    if ! python3 -c 'import safetensors, numpy, tokenizers, gguf, onnx, onnxruntime' >/dev/null 2>&1; then
        python3 -m pip --version >/dev/null 2>&1 || { apt-get install -y -qq python3-pip >/dev/null 2>&1 || true; }
        python3 -m pip install -q --disable-pip-version-check "${python_packages[@]}" 2>/dev/null ||
            python3 -m pip install -q --disable-pip-version-check --break-system-packages "${python_packages[@]}" ||
            echo "test: could not install ${python_packages[*]}; the Python cross-checks will skip"
    fi
fi
# llama.cpp from the pinned llama-cpp-python sdist, test-only and cached under ~/.cache/mamba-slm
# (about 7 minutes on 2 cores the first time): the GGUF tests run it on our exports.
scripts/build_llama_cpp.sh >/dev/null || echo "test: the llama.cpp build failed; the GgufLlamaCpp tests will skip"
if [ -z "$preset" ]; then
    if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then preset=cuda; else preset=cpu; fi
fi
ctest --preset "$preset" -j "${MSLM_TEST_JOBS:-$(nproc)}"
