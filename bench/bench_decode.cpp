// CPU throughput of inference: prefill tokens/s for one prompt (the parallel form) and decode
// tokens/s at batch 1 and batch 8 (the recurrent step, every sequence after that prompt), for
// presets and thread counts. Random weights: the speed does not depend on them. Prints a
// markdown table for docs/PERFORMANCE.md.
//   bench_decode [--presets tiny,30m,130m,mamba-130m,mamba2-130m] [--threads 0] [--prompt 512]
//                [--steps 64] [--min-seconds 2] [--dtype f32,bf16,int8,w8a16,nf4,fp4] [--prefill-only]
// A thread count of 0 means all cores. The prompt is capped at half the preset's max_seq_len.
// "weights GB/s" is the parameter bytes over the batch-1 step time: batch-1 decoding streams every
// weight once per token, so this against the machine's memory bandwidth says how close it runs.
// --dtype packs the matrix weights for inference (ops/packed_linear.h); "weights MB" is what one
// batch-1 step streams.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "bench/timing.h"
#include "bench_args.h"
#include "core/blas_setup.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "model/config.h"
#include "model/hybrid_lm.h"
#include "model/inference.h"
#include "model/info.h"
#include "ops/packed_linear.h"

using namespace mslm;

namespace {

constexpr int64_t kMaxBatch = 8;

using bench::seconds_since;

// Seconds per decode step of `batch` sequences that each start from the prompt in slot 0,
// `steps` steps per round, rounds repeated until min_seconds of decoding.
double decode_step_seconds(HybridLM<float>& model, InferenceState<float>& st, int64_t batch, int64_t steps,
                           double min_seconds, Rng& rng) {
    std::vector<int64_t> slots(batch);
    std::vector<int32_t> tokens(batch);
    std::vector<float> logits(batch * model.config().vocab_size);
    double decoding = 0;
    int64_t done = 0;
    for (int round = 0; decoding < min_seconds || round < 2; ++round) {
        for (int64_t i = 0; i < batch; ++i) {
            slots[i] = 1 + i;
            st.copy(0, slots[i]);
        }
        auto start = std::chrono::steady_clock::now();
        for (int64_t s = 0; s < steps; ++s) {
            for (auto& t : tokens) t = static_cast<int32_t>(rng.below(model.config().vocab_size));
            model.decode(st, slots.data(), tokens.data(), batch, logits.data(), nullptr);
        }
        if (round > 0) {  // round 0 warms the caches and sizes the buffers
            decoding += seconds_since(start);
            done += steps;
        }
    }
    return decoding / static_cast<double>(done);
}

}  // namespace

int main(int argc, char** argv) {
    select_blas_kernels(argc, argv);
    std::string presets = "tiny,30m,130m,mamba-130m,mamba2-130m", threads = "0", dtypes = "f32";
    bool skip_decode = false;
    int64_t prompt_arg = 512, steps_arg = 64;
    double min_seconds = 2.0;
    for (int i = 1; i < argc; ++i) {
        auto next = [&] { return bench_args::value(argc, argv, i); };
        std::string a = argv[i];
        if (a == "--presets")
            presets = next();
        else if (a == "--threads")
            threads = next();
        else if (a == "--prompt")
            prompt_arg = std::stoll(next());
        else if (a == "--steps")
            steps_arg = std::stoll(next());
        else if (a == "--min-seconds")
            min_seconds = std::stod(next());
        else if (a == "--dtype")
            dtypes = next();
        else if (a == "--prefill-only")  // for profiling prefill
            skip_decode = true;
        else {
            fmt::print(
                "usage: bench_decode [--presets a,b] [--threads 1,0] [--prompt 512] [--steps 64] "
                "[--min-seconds S] [--dtype f32,bf16,int8,w8a16,nf4,fp4] [--prefill-only]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
    fmt::print(
        "# mamba-slm bench_decode, CPU; OpenBLAS kernels (f32): {}; packed kernels (bf16 / int8): {}\n",
        blas_core_name(), ops::packed_kernels_description());
    fmt::print(
        "| preset | params | dtype | threads | prompt | prefill tok/s | decode b=1 tok/s | decode b={} tok/s "
        "| "
        "weights MB | weights GB/s (b=1) | state MB/seq |\n",
        kMaxBatch);
    fmt::print("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& name : bench::split_list(presets)) {
        const ModelConfig cfg = preset(name);
        HybridLM<float> model(cfg);
        model.init(0);
        const int64_t prompt = std::min(prompt_arg, cfg.max_seq_len / 2);
        const int64_t steps = std::min(steps_arg, cfg.max_seq_len - prompt);
        // Slot 0 holds the prompt; slots 1..8 are the decoding batch.
        InferenceState<float> st(cfg, 1 + kMaxBatch, prompt + steps);
        Rng rng(1);
        std::vector<int32_t> ids(prompt);
        for (auto& x : ids) x = static_cast<int32_t>(rng.below(cfg.vocab_size));
        std::vector<float> logits(cfg.vocab_size);
        for (const auto& dt : bench::split_list(dtypes)) {
            model.pack_weights(ops::parse_weight_format(dt));
            const double weight_bytes = model.weight_bytes_per_token();
            for (const auto& th : bench::split_list(threads)) {
                const int n = std::stoi(th);
                set_num_threads(n > 0 ? n : static_cast<int>(std::thread::hardware_concurrency()));
                const double prefill = bench::time_per_call(
                    [&] {
                        st.clear(0);
                        model.prefill(st, 0, ids.data(), prompt, logits.data(), nullptr);
                    },
                    min_seconds);
                const double step1 =
                    skip_decode ? NAN : decode_step_seconds(model, st, 1, steps, min_seconds, rng);
                const double step8 =
                    skip_decode ? NAN : decode_step_seconds(model, st, kMaxBatch, steps, min_seconds, rng);
                fmt::print(
                    "| {} | {} | {} | {} | {} | {:.0f} | {:.1f} | {:.1f} | {:.0f} | {:.1f} | {:.1f} |\n",
                    name, format_count(model.num_params()), dt, num_threads(), prompt, prompt / prefill,
                    1.0 / step1, kMaxBatch / step8, weight_bytes / 1e6, weight_bytes / step1 / 1e9,
                    static_cast<double>(st.bytes()) / st.slots() / 1e6);
                std::fflush(stdout);
            }
        }
    }
    return 0;
}
