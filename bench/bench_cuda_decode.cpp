// GPU inference throughput of the stateful decoder (model/cuda_inference.h) through the CausalLM
// interface that generate() uses: prefill tokens/s for one prompt of T tokens, and decode tokens/s
// at batch 1 and at batch B (aggregate). Random weights: the speed does not depend on them. Prints a
// markdown table.
//   bench_cuda_decode [--presets 130m,30m,mamba2-130m,mamba-130m] [--prompt 2048] [--steps 256]
//                     [--batch 64] [--min-seconds 2] [--logits greedy] [--profile-step -1] [--trace 0]
//                     [--dtype bf16]
// --dtype: the decoder's weights, bf16 or a packed format (nf4, fp4, int8, w8a16: the GPU copies the
// packed codes); "bytes/token" and "limit tok/s" count bf16 weights whatever the format.
// --logits: greedy (the default) steps one call a step (CausalLM::step_greedy: the pick made on the
// GPU, 16 bytes a row back, a host round trip a step — generate() and `mamba-slm bench` now take up
// to 32 steps a call as one device-side loop, CausalLM::step_greedy_n); 1 brings every step's fp32
// logits back (sampling, beam search, logits processors); 0 neither (the step alone).
// --profile-step N wraps decode step N of each measured round (and the second prefill) in
// cudaProfilerStart/Stop, so `ncu --profile-from-start off` times exactly those kernels.
// "bytes/token" is what one batch-1 step must read at least: every bf16 weight once, plus each
// Mamba layer's state read and written (conv window bf16, SSM state fp32) and the attention layers'
// KV rows of the prompt; "limit tok/s" is the H200's ~4.3 TB/s copy bandwidth over it.
// MSLM_CUDA_GRAPHS=0 measures the eager step (one launch per kernel) instead of the graph replay.
// --trace N: after each preset's row, N batch-1 steps of a fresh decoder with every decode_gemv
// launch timed by its blocks (MSLM_DECODE_GEMV_TRACE, cuda_decoder_kernels.h): per product, µs from
// the step's first product start to its first block's start, its wait's end (first / last block),
// its last block's prologue end and end, and the gap from the previous product's end to this one's
// first wait end — means over the N steps; and block 0's own phases (µs after its wait; -1 where
// a phase does not apply): x staged, the norm's sum of squares, the PRE rows' copies waited for,
// the dot products, their warp sums, the epilogue, the end. The fused decode attention's launches
// take rows too ("attention H heads × D"), and so do the SSD updates ("SSD update H heads × P"), with
// phases of their own (printed under the table).
#include <fmt/format.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#ifdef MSLM_HAVE_CUDA
#include <cuda_profiler_api.h>
#endif

#include "bench/timing.h"
#include "bench_args.h"
#include "core/cuda_device.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/cuda_decoder_kernels.h"
#include "model/cuda_inference.h"
#include "model/hybrid_lm.h"
#include "model/info.h"
#include "ops/packed_linear.h"

using namespace mslm;

#ifdef MSLM_HAVE_CUDA
namespace {

// --trace: the products of batch-1 steps on a fresh decoder, timed by their blocks.
void trace_products(const HybridLM<float>& model, const std::vector<int32_t>& ids, int64_t max_len,
                    int64_t n) {
    namespace cd = cuda_decoder_detail;
    setenv("MSLM_DECODE_GEMV_TRACE", "1", 1);
    CudaCausalLM gpu(model);
    gpu.start(1, max_len);
    std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
    gpu.prefill(0, std::vector<int32_t>(ids.begin(), ids.begin() + 16), logits.data(), nullptr);
    const std::vector<int64_t> slots{0};
    std::vector<int32_t> tok{1};
    std::vector<GreedyPick> pick(1);
    cd::decode_gemv_trace_reset(true);
    gpu.step_greedy(slots, tok, pick.data());
    const int c1 = cd::decode_gemv_trace_used();
    gpu.step_greedy(slots, tok, pick.data());
    const int c2 = cd::decode_gemv_trace_used();
    // The slots of the launches the replayed step makes: the second step's, if it captured anew.
    const int first = c2 > c1 ? c1 : 0, count = c2 > c1 ? c2 - c1 : c1;
    std::vector<std::array<double, 6>> sum(static_cast<size_t>(count), std::array<double, 6>{});
    std::vector<std::array<double, 7>> b0(static_cast<size_t>(count), std::array<double, 7>{});
    for (int64_t t = 0; t < n; ++t) {
        cd::decode_gemv_trace_reset(false);
        gpu.step_greedy(slots, tok, pick.data());
        const std::vector<cd::GemvTrace> r = cd::decode_gemv_trace_read(first, count);
        const double t0 = static_cast<double>(r[0].start_min);
        for (int i = 0; i < count; ++i) {
            auto us = [&](unsigned long long v) { return (static_cast<double>(v) - t0) / 1e3; };
            sum[i][0] += us(r[i].start_min);
            sum[i][1] += us(r[i].waited_min);
            sum[i][2] += us(r[i].waited_max);
            sum[i][3] += us(r[i].prologue_max);
            sum[i][4] += us(r[i].end_max);
            sum[i][5] += i > 0 ? us(r[i].waited_min) - us(r[i - 1].end_max) : 0.0;
            for (int m = 0; m < 7; ++m)  // block 0, µs after its own wait; -1: a mark it did not reach
                b0[i][m] += r[i].b0[m]
                                ? (static_cast<double>(r[i].b0[m]) - static_cast<double>(r[i].b0[7])) / 1e3
                                : -1.0;
        }
    }
    unsetenv("MSLM_DECODE_GEMV_TRACE");
    if (cd::decode_gemv_trace_used() != c2) fmt::print("(trace: the decoder captured again while tracing)\n");
    fmt::print(
        "\n| # | I x O | prefetch | start µs | waited (first) | waited (last) | prologue (last) | end (last) "
        "| previous end → waited | block 0 after its wait: staged / sums / rows waited / dots / warp sums / "
        "epilogue / end |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < count; ++i) {
        const cd::GemvTraceLaunch l = cd::decode_gemv_trace_launch(first + i);
        const double k = static_cast<double>(n);
        std::string phases;
        for (int m = 0; m < 7; ++m) phases += fmt::format("{}{:.2f}", m ? " / " : "", b0[i][m] / k);
        const std::string shape =
            l.kind == cd::TraceKind::Attention   ? fmt::format("attention {} heads × {}", l.O, l.I)
            : l.kind == cd::TraceKind::SsdUpdate ? fmt::format("SSD update {} heads × {}", l.O, l.I)
                                                 : fmt::format("{} x {}", l.I, l.O);
        fmt::print("| {} | {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {} |\n", i, shape,
                   l.kind != cd::TraceKind::Product ? "—"
                   : l.pre                          ? "yes"
                                                    : "no",
                   sum[i][0] / k, sum[i][1] / k, sum[i][2] / k, sum[i][3] / k, sum[i][4] / k, sum[i][5] / k,
                   phases);
    }
    fmt::print(
        "\n(The fused attention's rows: prologue = q, k and v staged; block 0's phases: q, k, v staged / "
        "scores / softmax / values waited / Σ w·v / merged / end, its warp 0's but the last two. The SSD "
        "update's rows: prologue = its first item's inputs read; block 0's phases, its warp 0's: dt, decay "
        "and x ready / states advanced and stored / warp sums and y stored / — / — / — / end.)\n\n");
}

}  // namespace
#endif

int main(int argc, char** argv) {
    std::string presets = "130m,30m,mamba2-130m,mamba-130m";
    int64_t prompt_arg = 2048, steps = 256, batch = 64;
    double min_seconds = 2.0;
    std::string logits_mode = "greedy";
    int64_t profile_step = -1, trace_steps = 0;
    std::string dtype = "bf16";
    for (int i = 1; i < argc; ++i) {
        auto next = [&] { return bench_args::value(argc, argv, i); };
        const std::string a = argv[i];
        if (a == "--presets")
            presets = next();
        else if (a == "--prompt")
            prompt_arg = std::stoll(next());
        else if (a == "--steps")
            steps = std::stoll(next());
        else if (a == "--batch")
            batch = std::stoll(next());
        else if (a == "--min-seconds")
            min_seconds = std::stod(next());
        else if (a == "--logits")
            logits_mode = next();
        else if (a == "--profile-step")
            profile_step = std::stoll(next());
        else if (a == "--trace")
            trace_steps = std::stoll(next());
        else if (a == "--dtype")
            dtype = next();
        else {
            fmt::print(
                "usage: bench_cuda_decode [--presets a,b] [--prompt 2048] [--steps 256] [--batch 64] "
                "[--min-seconds S] [--logits greedy|1|0] [--profile-step N] [--trace N] [--dtype "
                "bf16|nf4|fp4|int8]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
    if (logits_mode != "greedy" && logits_mode != "1" && logits_mode != "0") {
        fmt::print(stderr, "--logits: expected greedy, 1 or 0, got \"{}\"\n", logits_mode);
        return 1;
    }
    if (dtype != "bf16") {
        try {
            (void)ops::parse_weight_format(dtype);
        } catch (const std::exception& e) {
            fmt::print(stderr, "--dtype: {}\n", e.what());
            return 1;
        }
    }
#ifndef MSLM_HAVE_CUDA
    (void)prompt_arg, (void)steps, (void)batch, (void)min_seconds, (void)logits_mode, (void)profile_step,
        (void)trace_steps, (void)dtype;
    fmt::print("bench_cuda_decode: built without CUDA\n");
    return 0;
#else
    if (!cuda_available()) {
        fmt::print("bench_cuda_decode: no CUDA GPU ({})\n", cuda_device_summary());
        return 0;
    }
    const bool greedy = logits_mode == "greedy", download = logits_mode == "1";
    const char* graphs = std::getenv("MSLM_CUDA_GRAPHS");
    fmt::print("# mamba-slm bench_cuda_decode, {}; weights {}; CUDA graphs {}; each step {}\n",
               cuda_device_summary(), dtype, graphs && std::string(graphs) == "0" ? "off" : "on",
               greedy     ? "picks its greedy tokens on the GPU"
               : download ? "downloads its logits"
                          : "downloads nothing");
    fmt::print(
        "| preset | params | prompt | prefill tok/s | decode b=1 tok/s | b=1 ms/token | decode b={} tok/s | "
        "bytes/token (b=1) | limit tok/s @4.3TB/s | of limit |\n",
        batch);
    fmt::print("|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& name : bench::split_list(presets)) {
        const ModelConfig cfg = preset(name);
        HybridLM<float> model(cfg);
        model.init(0);
        if (dtype != "bf16") model.pack_weights(ops::parse_weight_format(dtype));
        const int64_t prompt = std::min(prompt_arg, cfg.max_seq_len - steps);
        CudaCausalLM gpu(model);
        Rng rng(1);
        std::vector<int32_t> ids(prompt);
        for (auto& x : ids) x = static_cast<int32_t>(rng.below(cfg.vocab_size));
        const int64_t V = cfg.vocab_size;
        std::vector<float> logits(static_cast<size_t>(batch * V));

        gpu.start(1, prompt + steps);
        int prefills = 0;
        const double prefill = bench::time_per_call(
            [&] {
                gpu.start(1, prompt + steps);
                const bool profiled = profile_step >= 0 && ++prefills == 2;
                if (profiled) cudaProfilerStart();
                gpu.prefill(0, ids, logits.data(), nullptr);
                if (profiled) cudaProfilerStop();
            },
            min_seconds);

        // Decode: `steps` steps per round after the prompt, rounds until min_seconds.
        auto decode = [&](int64_t k) {
            std::vector<int64_t> slots(k);
            std::vector<int32_t> toks(k);
            std::vector<GreedyPick> picks(k);
            for (int64_t s = 0; s < k; ++s) slots[s] = s;
            double elapsed = 0;
            int64_t done = 0;
            for (int round = 0; elapsed < min_seconds || round < 2; ++round) {
                gpu.start(k, prompt + steps);
                for (int64_t s = 0; s < k; ++s)
                    gpu.prefill(s, std::vector<int32_t>(ids.begin(), ids.begin() + 16), logits.data(), nullptr);
                const auto t0 = std::chrono::steady_clock::now();
                for (int64_t t = 0; t < steps - 16; ++t) {
                    for (auto& x : toks) x = static_cast<int32_t>(rng.below(V));
                    const bool profiled = round == 1 && t == profile_step;
                    if (profiled) cudaProfilerStart();
                    if (greedy)
                        gpu.step_greedy(slots, toks, picks.data());
                    else
                        gpu.step(slots, toks, download ? logits.data() : nullptr, nullptr);
                    if (profiled) cudaProfilerStop();
                }
                const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                if (round > 0) {  // round 0 warms up (algorithm choice, graph capture)
                    elapsed += dt;
                    done += steps - 16;
                }
            }
            return elapsed / static_cast<double>(done);
        };
        const double step1 = decode(1), stepB = decode(batch);

        // The least a batch-1 step reads: the weights once, the recurrent states read + written, the
        // KV rows attended (about the prompt's length, for the attention layers).
        const CudaDecoderMemory one = CudaCausalLM::plan(cfg, 1, prompt + steps);
        const int64_t attn = cfg.count(LayerKind::Attention);
        const double kv_rows = 2.0 * 2 * cfg.attn_kv_heads() * cfg.attn_head_dim() * static_cast<double>(attn);
        const double mamba_state = static_cast<double>(one.state) - kv_rows * (prompt + steps);
        const double bytes = static_cast<double>(one.weights) + 2 * mamba_state + kv_rows * (prompt + 16);
        const double limit = 4.3e12 / bytes;
        fmt::print("| {} | {} | {} | {:.0f} | {:.0f} | {:.3f} | {:.0f} | {:.1f} MB | {:.0f} | {:.0f}% |\n", name,
                   format_count(model.num_params()), prompt, prompt / prefill, 1.0 / step1, 1e3 * step1,
                   batch / stepB, bytes / 1e6, limit, 100.0 / step1 / limit);
        std::fflush(stdout);
        if (trace_steps > 0) trace_products(model, ids, prompt + steps, trace_steps);
    }
    return 0;
#endif
}
