#include "bench/model_bench.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "bench/timing.h"
#include "core/blas_setup.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "generate/generate.h"
#include "generate/lm.h"
#include "generate/processors.h"
#include "model/cuda_inference.h"
#include "model/cuda_model.h"
#include "model/flops.h"
#include "model/hybrid_lm.h"
#include "model/inference.h"
#include "model/info.h"
#include "ops/packed_linear.h"
#include "train/optimizer.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace mslm::bench {

namespace {

constexpr float kLr = 1e-4f;  // the benchmark's AdamW steps: any finite rate costs the same

// Calls progress with `line` at most every two seconds (always for the first call of a phase).
class Progress {
public:
    explicit Progress(const std::function<void(const std::string&)>& fn) : fn_(fn) {}
    void phase(const std::string& line) {
        if (fn_) fn_(line);
        last_ = std::chrono::steady_clock::now();
    }
    void tick(const std::string& line) {
        if (fn_ && seconds_since(last_) >= 2.0) phase(line);
    }

private:
    const std::function<void(const std::string&)>& fn_;
    std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

// Mean seconds of fn (each call ends with its results on the host) over `steps` calls after `warmup`.
template <typename Fn>
double mean_seconds(Fn&& fn, int warmup, int steps, Progress& progress, const std::string& what) {
    for (int i = 0; i < warmup; ++i) fn();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) {
        fn();
        progress.tick(fmt::format("bench: {}: {}/{} ({:.2f} s each)", what, i + 1, steps,
                                  seconds_since(start) / (i + 1)));
    }
    return seconds_since(start) / steps;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, Rng& rng) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    return v;
}

bool wants(const BenchOptions& o, const char* table) {
    return std::find(o.tables.begin(), o.tables.end(), table) != o.tables.end();
}

double peak_rss_bytes() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_maxrss) * 1024.0;  // Linux reports KiB
}

#ifdef MSLM_HAVE_CUDA
double device_bytes_in_use() {
    size_t free = 0, total = 0;
    MSLM_CHECK(cudaMemGetInfo(&free, &total) == cudaSuccess, "bench: cudaMemGetInfo failed");
    return static_cast<double>(total - free);
}

std::optional<double> opt_bytes(size_t b) {
    return static_cast<double>(b);
}
#endif

}  // namespace

std::vector<std::string> parse_tables(const std::string& list) {
    static const std::vector<std::string> known = {"train", "prefill", "decode", "memory"};
    std::vector<std::string> out;
    for (const std::string& t : split_list(list)) {
        MSLM_CHECK(std::find(known.begin(), known.end(), t) != known.end(),
                   "--tables: unknown table \"{}\" (expected a comma list of train, prefill, decode, memory)",
                   t);
        if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
    }
    MSLM_CHECK(!out.empty(),
               "--tables: empty list (expected a comma list of train, prefill, decode, memory)");
    return out;
}

std::vector<int64_t> parse_positive_list(const std::string& list, const std::string& what) {
    std::vector<int64_t> out;
    for (const std::string& item : split_list(list)) {
        const bool digits =
            !item.empty() && item.size() <= 9 && item.find_first_not_of("0123456789") == std::string::npos;
        MSLM_CHECK(digits && std::stoll(item) > 0,
                   "{}: \"{}\" is not a positive integer (expected e.g. 1,8,64)", what, item);
        out.push_back(std::stoll(item));
    }
    MSLM_CHECK(!out.empty(), "{}: empty list (expected e.g. 1,8,64)", what);
    return out;
}

BenchReport run_bench(const ModelConfig& cfg_in, const std::string& model_name, const BenchOptions& o,
                      const std::function<void(const std::string&)>& progress_fn) {
    const int gpu = parse_inference_device(o.device);
    const bool cuda = gpu >= 0;
    MSLM_CHECK(!cuda || cuda_available(), "bench: --device {}: {}", o.device, cuda_device_summary());
    Progress progress(progress_fn);
    BenchReport r;
    r.model = model_name;
    r.device = cuda ? fmt::format("cuda:{}", gpu) : "cpu";
    r.device_desc = cuda ? cuda_device_summary()
                         : fmt::format("CPU, {} threads, OpenBLAS {}, bf16/int8 kernels {}", num_threads(),
                                       blas_core_name(), ops::packed_kernels_description());
    r.peak_tflops = o.peak_tflops;

    const int64_t B = o.batch ? o.batch : (cuda ? 8 : 1);
    const int64_t T = o.seq ? o.seq : std::min<int64_t>(cuda ? 2048 : 256, cfg_in.max_seq_len);
    const int steps = o.steps ? o.steps : (cuda ? 10 : 3), warmup = o.warmup >= 0 ? o.warmup : (cuda ? 2 : 1);
    const int64_t decode_tokens = o.decode_tokens ? o.decode_tokens : (cuda ? 128 : 16);
    MSLM_CHECK(B > 0 && T > 0 && steps > 0 && warmup >= 0 && decode_tokens > 0,
               "bench: batch, seq, steps and decode tokens must be positive, warm-up not negative");
    r.prompt = std::min<int64_t>(16, T);
    ModelConfig cfg = cfg_in;
    cfg.max_seq_len = std::max({cfg.max_seq_len, T, r.prompt + warmup + 1 + decode_tokens});
#ifdef MSLM_HAVE_CUDA
    if (cuda) CudaHybridLM::select_device(gpu);
#endif
    HybridLM<float> model(cfg);
    model.init(0);
    r.params = model.num_params();
    Rng rng(1);
    const int64_t V = cfg.vocab_size;

    // Measured during the phases, for the memory table.
    std::optional<double> act_measured, train_total_measured, device_in_use, state_measured, decoder_weights;

    if (wants(o, "train")) {
        progress.phase(fmt::format("bench: train {} x {} on {}: {} warm-up + {} timed steps", B, T, r.device,
                                   warmup, steps));
        const std::vector<int32_t> ids = random_tokens(B * T, V, rng), targets = random_tokens(B * T, V, rng);
        double sec = 0;
        if (!cuda) {
            Parameters<float>& params = model.params();
            AdamW<float> opt(params);
            sec = mean_seconds(
                [&] {
                    params.zero_grad();
                    model.forward(ids.data(), targets.data(), B, T);
                    model.backward();
                    clip_grad_norm(params, 1.0);
                    opt.step(params, kLr);
                },
                warmup, steps, progress, "train");
            act_measured = static_cast<double>(model.activation_bytes());
        } else {
#ifdef MSLM_HAVE_CUDA
            const double before = device_bytes_in_use();
            CudaHybridLM g(cfg);
            g.upload(model);
            g.upload_optimizer_state(AdamW<float>(model.params()));
            sec = mean_seconds(
                [&] {
                    g.zero_grad();
                    g.forward(ids.data(), targets.data(), B, T, /*backward_follows=*/true);
                    g.backward();
                    g.clip_grad_norm(1.0);
                    g.optimizer_step(kLr);
                },
                warmup, steps, progress, "train");
            act_measured = static_cast<double>(g.activation_bytes());
            train_total_measured = static_cast<double>(g.memory_bytes());
            device_in_use = device_bytes_in_use() - before;
#endif
        }
        TrainResult t;
        t.batch = B;
        t.seq = T;
        t.step_ms = 1e3 * sec;
        t.tokens_per_s = static_cast<double>(B * T) / sec;
        t.flops_per_token = training_flops_per_token(cuda ? with_cuda_training_chunk(cfg) : cfg, T);
        t.tflops = t.flops_per_token * t.tokens_per_s / 1e12;
        if (cuda) t.mfu = t.tflops / o.peak_tflops;
        r.train = t;
    }

    const bool prefill = wants(o, "prefill"), decode = wants(o, "decode");
    r.dtype = ops::weight_format_name(ops::parse_weight_format(o.dtype));
    // The SSM states the decoder keeps (--state-dtype): bf16 where asked for and taken (Mamba-2 layers;
    // the GPU's kernel needs d_state % 4 == 0, the CPU's cpu_bf16_ssm_state).
    if (cfg.count(LayerKind::Mamba) > 0 && cfg.mamba.version == 2) {
        const bool bf16 =
            bf16_decode_state_requested() && (cuda ? cfg.mamba.d_state % 4 == 0 : cpu_bf16_ssm_state(cfg));
        r.state_dtype = bf16 ? "bf16" : "f32";
    }
    if (prefill || decode) model.pack_weights(ops::parse_weight_format(o.dtype));
    std::unique_ptr<CausalLM> lm;
    if (prefill || decode || (wants(o, "memory") && cuda)) lm = make_causal_lm(model, r.device);
    std::vector<float> logits;
    if (prefill || wants(o, "memory")) {
        // The prefill run also gives the decoder's state for one sequence of T tokens.
        if (prefill)
            progress.phase(
                fmt::format("bench: prefill of {} tokens: {} warm-up + {} timed", T, warmup, steps));
        const std::vector<int32_t> ids = random_tokens(T, V, rng);
        logits.resize(static_cast<size_t>(V));
        auto run = [&] {
            lm->start(1, T);
            lm->prefill(0, ids, logits.data(), nullptr);
        };
        if (prefill) {
            const double sec = mean_seconds(run, warmup, steps, progress, "prefill");
            r.prefill = PrefillResult{T, 1e3 * sec, static_cast<double>(T) / sec};
        }
#ifdef MSLM_HAVE_CUDA
        if (cuda) {
            if (!prefill) lm->start(1, T);
            const CudaDecoderMemory held = static_cast<CudaCausalLM&>(*lm).memory();
            state_measured = static_cast<double>(held.state);
            decoder_weights = static_cast<double>(held.weights);
        }
#endif
        if (!cuda) state_measured = static_cast<double>(InferenceState<float>(cfg, 1, T).bytes());
    }
    if (decode) {
        for (int64_t k : o.decode_batches) {
            progress.phase(
                fmt::format("bench: decode at batch {}: {}-token prompts, {} warm-up + {} timed steps", k,
                            r.prompt, warmup, decode_tokens));
            lm->start(k, r.prompt + warmup + 1 + decode_tokens);
            logits.resize(static_cast<size_t>(k * V));
            const std::vector<int32_t> prompt = random_tokens(r.prompt, V, rng);
            for (int64_t s = 0; s < k; ++s) lm->prefill(s, prompt, logits.data(), nullptr);
            std::vector<int64_t> slots(static_cast<size_t>(k));
            for (int64_t s = 0; s < k; ++s) slots[s] = s;
            // Every slot read the same prompt: the same first token, then each its own picks.
            const int32_t first = argmax_token(std::span<const float>(logits.data(), static_cast<size_t>(V)));
            std::vector<int32_t> tokens(static_cast<size_t>(k), first);
            // As generate() decodes greedily: up to kGreedyChunk steps a call (step_greedy_n).
            std::vector<GreedyPick> picks(static_cast<size_t>(k * kGreedyChunk));
            auto steps_of = [&](int64_t n) {  // a decoder may take fewer steps a call (the CPU's one)
                for (int64_t done = 0; done < n;) {
                    const int64_t ran = lm->step_greedy_n(slots, tokens, n - done, {}, picks.data());
                    for (int64_t s = 0; s < k; ++s)
                        tokens[static_cast<size_t>(s)] = picks[static_cast<size_t>((ran - 1) * k + s)].token;
                    done += ran;
                }
            };
            // Warm-up: single steps (the step's first run and its graph), then one call of one step
            // (the multi-step call's own graph, where the decoder has one).
            for (int i = 0; i < warmup; ++i) steps_of(1);
            steps_of(1);
            const auto start = std::chrono::steady_clock::now();
            for (int64_t done = 0; done < decode_tokens;) {
                const int64_t n = std::min<int64_t>(kGreedyChunk, decode_tokens - done);
                steps_of(n);
                done += n;
                progress.tick(fmt::format("bench: decode b={}: {}/{}", k, done, decode_tokens));
            }
            const double sec = seconds_since(start) / static_cast<double>(decode_tokens);
            r.decode.push_back(DecodeResult{k, 1e3 * sec, static_cast<double>(k) / sec});
        }
    }

    if (wants(o, "memory")) {
        auto row = [&](std::string name, std::optional<double> planned, std::optional<double> measured) {
            r.memory.push_back(MemoryRow{std::move(name), planned, measured});
        };
        const std::string bt = fmt::format("{} x {}", B, T);
        if (!cuda) {
            const MemoryEstimate e = estimate_memory(cfg, B, T), one = estimate_memory(cfg, 1, T);
            const double flat = 4.0 * static_cast<double>(model.params().total());
            row("parameters (fp32)", static_cast<double>(e.weights_f32), flat);
            row("gradients (fp32)", static_cast<double>(e.weights_f32), flat);
            row("optimizer (AdamW m, v)", static_cast<double>(e.train_params_grads_adam - 2 * e.weights_f32),
                std::nullopt);
            row("activations (" + bt + ")", static_cast<double>(e.train_activations), act_measured);
            row(fmt::format("inference state (1 x {})", T), static_cast<double>(one.state_per_sequence),
                state_measured);
            row("process peak RSS", std::nullopt, peak_rss_bytes());
        } else {
#ifdef MSLM_HAVE_CUDA
            const CudaTrainingMemory plan = CudaHybridLM::training_memory(cfg, B, T);
            const CudaDecoderMemory dec = CudaCausalLM::plan(cfg, 1, T);
            row("parameters (fp32 + bf16)", opt_bytes(plan.params), std::nullopt);
            row("gradients (fp32 + bf16 staging)", opt_bytes(plan.grads), std::nullopt);
            row("optimizer (AdamW m, v, decay mask)", opt_bytes(plan.optimizer), std::nullopt);
            row("activations (" + bt + ")", opt_bytes(plan.activations), act_measured);
            row("training total", opt_bytes(plan.total()), train_total_measured);
            row("device memory in use after the train steps", std::nullopt, device_in_use);
            // CudaCausalLM::plan counts bf16 weights; a quantized decoder holds its packed format
            // (measured), so the plan is left out for it rather than printed beside the wrong format.
            const ops::WeightFormat wf = ops::parse_weight_format(o.dtype);
            const bool quantized = decoder_weights && (wf == ops::WeightFormat::Int8 ||
                                                       wf == ops::WeightFormat::W8A16 || ops::is_4bit_format(wf));
            row(quantized ? fmt::format("decoder weights ({})", r.dtype) : std::string("decoder weights (bf16)"),
                quantized ? std::nullopt : opt_bytes(dec.weights), decoder_weights);
            row(fmt::format("inference state (1 x {})", T), opt_bytes(dec.state), state_measured);
#endif
        }
    }
    return r;
}

namespace {

std::string bytes_or_dash(const std::optional<double>& b) {
    return b ? format_bytes(static_cast<int64_t>(*b)) : "—";
}

nlohmann::json number_or_null(const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json();
}

}  // namespace

std::string format_bench_markdown(const BenchReport& r) {
    std::string s = fmt::format("# mamba-slm bench: {} ({} parameters) on {} — {}\n", r.model,
                                format_count(r.params), r.device, r.device_desc);
    if (!r.dtype.empty() && (r.prefill || !r.decode.empty()))
        s += fmt::format("\nprefill and decode weights: {}{}\n", r.dtype,
                         r.state_dtype.empty() ? "" : "; Mamba-2 SSM states: " + r.state_dtype);
    if (r.train) {
        const TrainResult& t = *r.train;
        s += "\n## train (zero_grad + forward + backward + clip + AdamW; random tokens)\n\n";
        s += fmt::format(
            "| B x T | tokens/s | ms/step | model GFLOP/token | model TFLOP/s | MFU vs {:.0f} TFLOP/s |\n",
            r.peak_tflops);
        s += "|---|---|---|---|---|---|\n";
        s += fmt::format("| {}x{} | {:.0f} | {:.2f} | {:.4g} | {:.4g} | {} |\n", t.batch, t.seq,
                         t.tokens_per_s, t.step_ms, t.flops_per_token / 1e9, t.tflops,
                         t.mfu ? fmt::format("{:.1f}%", 100.0 * *t.mfu) : "—");
        s += fmt::format("\n{} (docs/PERFORMANCE.md); MFU only on a GPU.\n", training_flops_formula());
    }
    if (r.prefill) {
        s += "\n## prefill (one prompt, the decoder's parallel form)\n\n| tokens | tokens/s | ms "
             "|\n|---|---|---|\n";
        s += fmt::format("| {} | {:.0f} | {:.2f} |\n", r.prefill->tokens, r.prefill->tokens_per_s,
                         r.prefill->ms);
    }
    if (!r.decode.empty()) {
        s += fmt::format(
            "\n## decode (after a {}-token prompt per sequence; tokens/s summed over the batch)\n\n",
            r.prompt);
        s += "| batch | tokens/s | ms/step |\n|---|---|---|\n";
        for (const DecodeResult& d : r.decode)
            s += fmt::format("| {} | {:.0f} | {:.3f} |\n", d.batch, d.tokens_per_s, d.ms_per_step);
    }
    if (!r.memory.empty()) {
        s += "\n## memory\n\n| category | planned | measured |\n|---|---|---|\n";
        for (const MemoryRow& m : r.memory)
            s += fmt::format("| {} | {} | {} |\n", m.category, bytes_or_dash(m.planned),
                             bytes_or_dash(m.measured));
    }
    return s;
}

nlohmann::json bench_report_json(const BenchReport& r) {
    using nlohmann::json;
    json j = {{"model", r.model},   {"device", r.device}, {"device_desc", r.device_desc},
              {"params", r.params}, {"dtype", r.dtype}};
    if (!r.state_dtype.empty()) j["state_dtype"] = r.state_dtype;
    if (r.train) {
        const TrainResult& t = *r.train;
        j["train"] = {{"batch", t.batch},
                      {"seq", t.seq},
                      {"step_ms", t.step_ms},
                      {"tokens_per_s", t.tokens_per_s},
                      {"flops_per_token", t.flops_per_token},
                      {"tflops", t.tflops},
                      {"mfu", number_or_null(t.mfu)},
                      {"peak_tflops", r.peak_tflops},
                      {"flops_formula", training_flops_formula()}};
    }
    if (r.prefill)
        j["prefill"] = {
            {"tokens", r.prefill->tokens}, {"ms", r.prefill->ms}, {"tokens_per_s", r.prefill->tokens_per_s}};
    if (!r.decode.empty()) {
        json rows = json::array();
        for (const DecodeResult& d : r.decode)
            rows.push_back(
                {{"batch", d.batch}, {"ms_per_step", d.ms_per_step}, {"tokens_per_s", d.tokens_per_s}});
        j["decode"] = {{"prompt", r.prompt}, {"rows", rows}};
    }
    if (!r.memory.empty()) {
        json rows = json::array();
        for (const MemoryRow& m : r.memory)
            rows.push_back({{"category", m.category},
                            {"planned_bytes", number_or_null(m.planned)},
                            {"measured_bytes", number_or_null(m.measured)}});
        j["memory"] = rows;
    }
    return j;
}

}  // namespace mslm::bench
