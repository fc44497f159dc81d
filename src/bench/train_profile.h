// The kernel-family profile of a CUDA training step (issue 7, must 5): where the time of a full
// step (zero_grad, forward, backward, gradient clip, AdamW) goes, by kernel family — GEMM, SSD/scan,
// attention, norms, conv, elementwise, embedding + cross-entropy, optimizer, other (the host between
// launches: the token upload, the loss download) — and how close each family runs to the GPU's
// ceilings: achieved TFLOP/s and GB/s from the analytic counts of model/flops.h over its measured
// time, against the bf16 dense matmul rate and the copy bandwidth (790 TFLOP/s and 4.3 TB/s
// measured on the H200; options).
//
// The times come from CudaHybridLM's stage timer (CUDA events at every family boundary inside
// forward, backward and the optimizer step). The whole step is also timed with the timer off, so
// that the table shows what the events cost: the families' sum and the unprofiled step should
// agree within a few per cent. bench/bench_cuda_profile.cpp and `mamba-slm bench --profile` print it.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/flops.h"

namespace mslm::bench {

struct ProfileOptions {
    std::string device = "cuda";  // cuda or cuda:N
    int64_t batch = 8, seq = 2048;
    int steps = 5, warmup = 2;
    double peak_tflops = 790, peak_tbs = 4.3;
};

using FamilyTimes = std::array<double, kKernelFamilies>;  // ms by KernelFamily

struct ProfileReport {
    std::string model, device_desc;
    int64_t batch = 0, seq = 0;
    double peak_tflops = 0, peak_tbs = 0;
    double step_ms = 0;              // mean wall time of a step with the timer off
    double profiled_step_ms = 0;     // the same with the timer on
    bool baseline_profiled = false;  // MSLM_MODEL_STAGE_TIMES=1 kept the events on in the baseline too
    std::vector<FamilyTimes> steps;  // each profiled step
    std::vector<std::pair<std::string, double>> stages;  // mean ms per step by stage label
    StepCosts costs{};                                   // model/flops.h for (batch, seq), optimizer included
};

FamilyTimes mean_family_ms(const ProfileReport& r);

// The family that takes the most time, its share of the families' sum, and the fractions of the
// two ceilings it reaches (achieved FLOP/s over peak, bytes/s over peak bandwidth).
struct Bottleneck {
    KernelFamily family = KernelFamily::Other;
    double ms = 0, share = 0, flops_fraction = 0, bytes_fraction = 0;
};
Bottleneck next_bottleneck(const ProfileReport& r);

// Markdown: the per-step split, the family table with rates and ceilings, the check of the sum
// against the unprofiled step, the stages, and the final "next bottleneck" line.
std::string format_profile(const ProfileReport& r);

// Runs it (builds with CUDA and a GPU; otherwise throws saying why).
ProfileReport run_training_profile(const ModelConfig& cfg, const std::string& model_name,
                                   const ProfileOptions& options,
                                   const std::function<void(const std::string&)>& progress);

}  // namespace mslm::bench
