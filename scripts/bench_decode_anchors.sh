#!/usr/bin/env bash
# CPU prefill and decode speed of mamba-slm beside its anchors measured in the same run: llama.cpp
# (built from the llama-cpp-python source distribution, GGUFs made by its own converter from the same
# random transformers models) and transformers' generate(). docs/PERFORMANCE.md, "Decoding and prefill
# on the CPU (issue 5)".
#
#   scripts/bench_decode_anchors.sh setup    # download llama-cpp-python's sdist, build llama.cpp's tools
#   scripts/bench_decode_anchors.sh models   # random HF models with our presets' shapes -> GGUF F32/F16/BF16/Q8_0
#   scripts/bench_decode_anchors.sh run      # RUNS rounds of every bench, raw outputs in $WORK/results
#   scripts/bench_decode_anchors.sh table    # medians over the rounds as one markdown table
#
# Environment: PY (python with torch + transformers), WORK (default /tmp/mslm-anchors), PRESETS,
# THREADS (default 1,2), RUNS (default 3), DTYPES (ours, default f32,bf16,int8), LLAMA_TYPES (default
# "f32 f16 bf16 q8_0"), JOBS (build parallelism, default 2), QUIET_WAIT_MIN (before
# each round, wait up to this many minutes, default 60, for the machine to be 90 % idle),
# LLAMA_CPP_PYTHON_VERSION (default 0.3.36). bench_decode must be built (build/cpu, cmake --preset cpu).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HOME/.cache/mamba-slm/venv/bin/python}
WORK=$(realpath -m "${WORK:-/tmp/mslm-anchors}")
PRESETS=${PRESETS:-tiny,30m,130m,mamba-130m,mamba2-130m}
THREADS=${THREADS:-1,2}
RUNS=${RUNS:-3}
DTYPES=${DTYPES:-f32,bf16,int8}     # our inference weights (bench_decode --dtype)
LLAMA_TYPES=${LLAMA_TYPES:-f32 f16 bf16 q8_0}
JOBS=${JOBS:-2}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
SRC=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
BIN=$WORK/llama-build/bin
BENCH_DECODE=${BENCH_DECODE:-$ROOT/build/cpu/bench_decode}

setup() {
    mkdir -p "$WORK"
    if [ ! -d "$SRC" ]; then
        "$PY" -m pip download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$WORK"
        tar -C "$WORK" -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz"
    fi
    # The VMs report AMX in cpuid, but tile instructions fault (SIGILL in ggml's AMX Q8_0 kernel), so
    # -march=native is kept and AMX alone is switched off.
    local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    nice cmake -S "$SRC" -B "$WORK/llama-build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF "-DCMAKE_C_FLAGS=$no_amx" "-DCMAKE_CXX_FLAGS=$no_amx"
    nice cmake --build "$WORK/llama-build" -j"$JOBS" --target llama-bench llama-batched-bench llama-quantize
}

models() {
    mkdir -p "$WORK/hf" "$WORK/gguf"
    "$PY" "$ROOT/bench/reference/hf_generate_speed.py" --presets "$PRESETS" --save "$WORK/hf"
    for m in ${PRESETS//,/ }; do
        for t in f32 f16 bf16; do
            (cd "$SRC" && nice "$PY" convert_hf_to_gguf.py "$WORK/hf/$m" --outtype $t \
                --outfile "$WORK/gguf/$m-$t.gguf")
        done
        # Absolute paths: llama-quantize takes an argument that starts with digits ("30m-q8_0.gguf") for a type.
        nice "$BIN/llama-quantize" "$WORK/gguf/$m-f16.gguf" "$WORK/gguf/$m-q8_0.gguf" Q8_0
    done
}

# Percent of the CPUs idle over the next 10 s (from /proc/stat).
idle_percent() {
    local a b
    read -ra a < <(head -1 /proc/stat)
    sleep 10
    read -ra b < <(head -1 /proc/stat)
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    echo $((100 * (b[4] - a[4]) / (total > 0 ? total : 1)))
}

# Waits (up to QUIET_WAIT_MIN minutes, default 60) until the machine is at least 90 % idle.
wait_for_quiet() {
    local deadline=$((SECONDS + 60 * ${QUIET_WAIT_MIN:-60})) idle
    while idle=$(idle_percent) && [ "$idle" -lt 90 ] && [ $SECONDS -lt $deadline ]; do
        echo "waiting for a quiet machine: ${idle} % idle" >&2
        sleep 20
    done
}

# One round: for each preset, ours, llama.cpp and transformers back to back (the anchors of a row are
# measured within minutes of it), after waiting for a quiet machine.
run() {
    local out m p t g th sampler
    for r in $(seq 1 "$RUNS"); do
        out=$WORK/results/run$r
        mkdir -p "$out"
        {
            date -u +%FT%TZ
            git -C "$ROOT" rev-parse --short HEAD
            lscpu | grep -E "Model name|^CPU\(s\)"
        } > "$out/machine.txt"
        # Load average every 30 s during the round: other people's jobs on a 2-core machine move these numbers.
        (while sleep 30; do uptime; done) > "$out/load.txt" &
        sampler=$!
        trap 'kill ${sampler:-} 2>/dev/null || true' EXIT
        for m in ${PRESETS//,/ }; do
            wait_for_quiet
            echo "$m start: $(uptime)" >> "$out/machine.txt"
            "$BENCH_DECODE" --presets "$m" --threads "$THREADS" --prompt 512 --steps 64 --dtype "$DTYPES" \
                | tee -a "$out/ours.md"
            # bench_decode's prompt: 512, capped at half of max_seq_len (tiny: 256).
            p=512
            [ "$m" = tiny ] && p=128
            for t in $LLAMA_TYPES; do
                g=$WORK/gguf/$m-$t.gguf
                # Prefill: the prompt from an empty state. Decode: 64 tokens after the prompt (-d), as
                # bench_decode does. 3 repetitions each, after llama-bench's warm-up.
                "$BIN/llama-bench" -m "$g" -t "$THREADS" -p $p -n 0 -r 3 -o jsonl > "$out/llama-pp-$m-$t.jsonl"
                "$BIN/llama-bench" -m "$g" -t "$THREADS" -p 0 -n 64 -d $p -r 3 -o jsonl \
                    > "$out/llama-tg-$m-$t.jsonl"
                # Batch 8: one shared prompt (-pps) copied to 8 sequences, then 64 steps of 8 tokens. -kvu
                # (one unified KV cache): without it batched-bench removes a dummy token from sequence 0
                # after the copy, which recurrent state cannot undo, and the first decode fails.
                for th in ${THREADS//,/ }; do
                    "$BIN/llama-batched-bench" -m "$g" -t "$th" -tb "$th" -c $((p + 8 * 64)) -b 2048 -ub 512 \
                        -pps -kvu -npp $p -ntg 64 -npl 8 --output-format jsonl 2>"$out/llama-b8.log" \
                        | grep '^{' > "$out/llama-b8-$m-$t-t$th.jsonl" \
                        || { echo "llama-batched-bench failed on $g, see $out/llama-b8.log" >&2; exit 1; }
                done
            done
            "$PY" "$ROOT/bench/reference/hf_generate_speed.py" --presets "$m" --threads "$THREADS" \
                2>>"$out/hf.log" | tee -a "$out/hf.md"
            echo "$m end: $(uptime)" >> "$out/machine.txt"
        done
        kill "$sampler"
    done
}

table() {
    "$PY" "$ROOT/bench/reference/decode_anchor_table.py" "$WORK/results"
}

case "${1:-}" in
    setup) setup ;;
    models) models ;;
    run) run ;;
    table) table ;;
    all) setup && models && run && table ;;
    *) sed -n '2,15p' "$0"; exit 1 ;;
esac
