#!/usr/bin/env bash
# Regenerates the Hugging Face parity fixtures with transformers (live) and checks them against
# the committed ones and against the C++ implementation. Needs torch + transformers: they are
# installed once into a virtual environment outside the repo (MSLM_VENV, default
# ~/.cache/mamba-slm/venv). CI does not run this; it runs the C++ tests on the committed fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MSLM_VENV:-$HOME/.cache/mamba-slm/venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q torch transformers safetensors numpy
fi
"$venv/bin/python" tests/parity/make_hf_fixtures.py
"$venv/bin/python" tests/parity/make_processor_fixtures.py
"$venv/bin/python" tests/parity/make_generate_fixtures.py
"$venv/bin/python" tests/parity/make_chat_template_fixtures.py
"$venv/bin/python" tests/parity/verify_hf_mapping.py
if git diff --quiet -- tests/parity/fixtures; then
    echo "parity: regenerated fixtures are byte-identical to the committed ones"
else
    echo "parity: regenerated fixtures differ from the committed ones (transformers changed?):"
    git diff --stat -- tests/parity/fixtures
fi
scripts/setup.sh cpu
build/cpu/mslm_tests --gtest_filter='HfParity*:GenerateProcessors.MatchTransformersFixture:*GenerateParity*:ChatTemplate*'
