#include "bench/train_profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "bench/timing.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/cuda_inference.h"
#include "model/cuda_model.h"
#include "model/hybrid_lm.h"
#include "train/optimizer.h"

namespace mslm::bench {

FamilyTimes mean_family_ms(const ProfileReport& r) {
    FamilyTimes m{};
    for (const FamilyTimes& s : r.steps)
        for (int f = 0; f < kKernelFamilies; ++f) m[f] += s[f];
    if (!r.steps.empty())
        for (double& x : m) x /= static_cast<double>(r.steps.size());
    return m;
}

namespace {

double sum(const FamilyTimes& t) {
    double s = 0;
    for (double x : t) s += x;
    return s;
}

// Achieved rates of family f in ms: FLOP/s and bytes/s as fractions of the ceilings.
std::pair<double, double> fractions(const ProfileReport& r, int f, double ms) {
    if (ms <= 0) return {0.0, 0.0};
    const double sec = ms / 1e3;
    return {r.costs[f].flops / sec / (r.peak_tflops * 1e12), r.costs[f].bytes / sec / (r.peak_tbs * 1e12)};
}

std::string pct(double x) {
    return fmt::format("{:.1f}%", 100.0 * x);
}

}  // namespace

Bottleneck next_bottleneck(const ProfileReport& r) {
    const FamilyTimes m = mean_family_ms(r);
    const int f = static_cast<int>(std::max_element(m.begin(), m.end()) - m.begin());
    Bottleneck b;
    b.family = static_cast<KernelFamily>(f);
    b.ms = m[f];
    const double all = sum(m);
    b.share = all > 0 ? m[f] / all : 0;
    std::tie(b.flops_fraction, b.bytes_fraction) = fractions(r, f, m[f]);
    return b;
}

std::string format_profile(const ProfileReport& r) {
    const FamilyTimes mean = mean_family_ms(r);
    const double all = sum(mean);
    std::string s = fmt::format(
        "# mamba-slm training profile: {}, {} x {} on {}; ceilings {:.0f} TFLOP/s bf16 dense, {:.1f} TB/s\n",
        r.model, r.batch, r.seq, r.device_desc, r.peak_tflops, r.peak_tbs);
    s += "\n## ms per step by kernel family\n\n| step |";
    for (int f = 0; f < kKernelFamilies; ++f)
        s += fmt::format(" {} |", kernel_family_name(static_cast<KernelFamily>(f)));
    s += " sum |\n|---|";
    for (int f = 0; f <= kKernelFamilies; ++f) s += "---|";
    s += "\n";
    for (size_t i = 0; i < r.steps.size(); ++i) {
        s += fmt::format("| {} |", i + 1);
        for (double ms : r.steps[i]) s += fmt::format(" {:.3f} |", ms);
        s += fmt::format(" {:.3f} |\n", sum(r.steps[i]));
    }

    s += fmt::format("\n## families, mean of {} steps (FLOPs and least bytes from model/flops.h)\n\n",
                     r.steps.size());
    s += fmt::format("| family | ms | share | GFLOP | TFLOP/s | of {:.0f} | GB | GB/s | of {:.1f} TB/s |\n",
                     r.peak_tflops, r.peak_tbs);
    s += "|---|---|---|---|---|---|---|---|---|\n";
    double flops = 0, bytes = 0;
    for (int f = 0; f < kKernelFamilies; ++f) {
        const FamilyCost& c = r.costs[f];
        flops += c.flops;
        bytes += c.bytes;
        const double sec = mean[f] / 1e3;
        const auto [ff, bf] = fractions(r, f, mean[f]);
        const bool timed = mean[f] > 0;
        s += fmt::format(
            "| {} | {:.3f} | {} | {} | {} | {} | {} | {} | {} |\n",
            kernel_family_name(static_cast<KernelFamily>(f)), mean[f], all > 0 ? pct(mean[f] / all) : "—",
            c.flops > 0 ? fmt::format("{:.1f}", c.flops / 1e9) : "—",
            c.flops > 0 && timed ? fmt::format("{:.1f}", c.flops / sec / 1e12) : "—",
            c.flops > 0 && timed ? pct(ff) : "—", c.bytes > 0 ? fmt::format("{:.3f}", c.bytes / 1e9) : "—",
            c.bytes > 0 && timed ? fmt::format("{:.0f}", c.bytes / sec / 1e9) : "—",
            c.bytes > 0 && timed ? pct(bf) : "—");
    }
    s += fmt::format("| all | {:.3f} | 100% | {:.1f} | {} | {} | {:.3f} | {} | {} |\n", all, flops / 1e9,
                     all > 0 ? fmt::format("{:.1f}", flops / (all / 1e3) / 1e12) : "—",
                     all > 0 ? pct(flops / (all / 1e3) / (r.peak_tflops * 1e12)) : "—", bytes / 1e9,
                     all > 0 ? fmt::format("{:.0f}", bytes / (all / 1e3) / 1e9) : "—",
                     all > 0 ? pct(bytes / (all / 1e3) / (r.peak_tbs * 1e12)) : "—");

    const double off = r.step_ms > 0 ? all / r.step_ms - 1.0 : 0;
    s += fmt::format(
        "\nwhole step without the profiler {:.3f} ms{}; the families sum to {:.3f} ms ({:+.1f}%); with the "
        "profiler {:.3f} ms per step\n",
        r.step_ms, r.baseline_profiled ? " (MSLM_MODEL_STAGE_TIMES=1 kept the events on)" : "", all,
        100.0 * off, r.profiled_step_ms);
    if (std::abs(off) > 0.05)
        s += "warning: the families' sum is more than 5% away from the unprofiled step: the events cost time "
             "or "
             "miss some (host gaps between calls are not booked)\n";
    if (!r.stages.empty()) {
        s += "\nstages, ms per step:";
        for (const auto& [name, ms] : r.stages) s += fmt::format(" {} {:.3f} |", name, ms);
        s += "\n";
    }
    const Bottleneck b = next_bottleneck(r);
    const FamilyCost& c = r.costs[static_cast<size_t>(b.family)];
    std::string ceiling;
    if (c.flops > 0) ceiling += fmt::format("{} of {:.0f} TFLOP/s", pct(b.flops_fraction), r.peak_tflops);
    if (c.bytes > 0)
        ceiling += fmt::format("{}{} of {:.1f} TB/s", ceiling.empty() ? "" : " and ", pct(b.bytes_fraction),
                               r.peak_tbs);
    if (ceiling.empty()) ceiling = "no FLOPs or bytes counted for it";
    s += fmt::format("\nnext bottleneck: {} — {} of the step ({:.3f} ms), at {}\n",
                     kernel_family_name(b.family), pct(b.share), b.ms, ceiling);
    return s;
}

ProfileReport run_training_profile(const ModelConfig& cfg_in, const std::string& model_name,
                                   const ProfileOptions& o,
                                   const std::function<void(const std::string&)>& progress) {
    const int gpu = parse_inference_device(o.device);
    MSLM_CHECK(gpu >= 0,
               "bench --profile: the profile is of CUDA training: --device cuda or cuda:N (got \"{}\")",
               o.device);
    MSLM_CHECK(cuda_available(), "bench --profile: --device {}: {}", o.device, cuda_device_summary());
    MSLM_CHECK(o.batch > 0 && o.seq > 0 && o.steps > 0 && o.warmup >= 0,
               "bench --profile: batch, seq and steps must be positive, warm-up not negative");
#ifndef MSLM_HAVE_CUDA
    (void)cfg_in, (void)model_name, (void)progress;
    fail("bench --profile: this build of mamba-slm has no CUDA support");
#else
    ModelConfig cfg = cfg_in;
    cfg.max_seq_len = std::max(cfg.max_seq_len, o.seq);
    CudaHybridLM::select_device(gpu);
    ProfileReport r;
    r.model = model_name;
    r.device_desc = cuda_device_summary();
    r.batch = o.batch;
    r.seq = o.seq;
    r.peak_tflops = o.peak_tflops;
    r.peak_tbs = o.peak_tbs;
    r.costs = training_step_costs(with_cuda_training_chunk(cfg), o.batch, o.seq, true);

    HybridLM<float> model(cfg);
    model.init(0);
    CudaHybridLM g(cfg);
    g.upload(model);
    g.upload_optimizer_state(AdamW<float>(model.params()));
    Rng rng(1);
    std::vector<int32_t> ids(static_cast<size_t>(o.batch * o.seq)), targets(ids.size());
    for (auto& x : ids) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab_size)));
    for (auto& x : targets) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab_size)));
    auto step = [&] {
        g.zero_grad();
        g.forward(ids.data(), targets.data(), o.batch, o.seq, /*backward_follows=*/true);
        g.backward();
        g.clip_grad_norm(1.0);
        g.optimizer_step(1e-4f);  // synchronises
    };

    if (progress)
        progress(fmt::format(
            "bench --profile: {} x {}: {} warm-up steps, {} timed without the profiler, {} with it", o.batch,
            o.seq, o.warmup, o.steps, o.steps));
    g.set_stage_timing(false);
    r.baseline_profiled = g.stage_timing();
    for (int i = 0; i < o.warmup; ++i) step();
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < o.steps; ++i) step();
    r.step_ms = 1e3 * seconds_since(start) / o.steps;

    g.set_stage_timing(true);
    g.take_stage_times();
    step();  // the events' own warm-up (creation)
    g.take_stage_times();
    double wall = 0;
    for (int i = 0; i < o.steps; ++i) {
        start = std::chrono::steady_clock::now();
        step();
        wall += seconds_since(start);
        const CudaStageTimes t = g.take_stage_times();
        r.steps.push_back(t.family_ms);
        for (const auto& [name, ms] : t.stages) {
            auto it = std::find_if(r.stages.begin(), r.stages.end(),
                                   [&](const auto& p) { return p.first == name; });
            if (it == r.stages.end())
                r.stages.emplace_back(name, ms / o.steps);
            else
                it->second += ms / o.steps;
        }
    }
    r.profiled_step_ms = 1e3 * wall / o.steps;
    g.set_stage_timing(false);
    return r;
#endif
}

}  // namespace mslm::bench
