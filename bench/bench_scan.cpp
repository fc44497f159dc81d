// CPU time of the Mamba-1 selective scan (ops/selective_scan.h), fp32: the prefill forward of one
// sequence and the decode step for k sequences, per float kernel and thread count. Prints a
// markdown table for docs/PERFORMANCE.md.
//   bench_scan [--kernels scalar,avx2,avx512] [--threads 1,2] [--seqlen 512] [--d-inner 1536]
//              [--d-state 16] [--min-seconds 1]
// The kernel is chosen through MSLM_SCAN_KERNEL (see src/ops/cpu/selective_scan.cpp); one the CPU
// lacks is skipped. Inputs follow Mamba-1's initialisation: A = −(1..N) per channel, Δ log-uniform
// in [0.001, 0.1], the bias and D terms and the silu(z) gate on, and the strides of the model's
// projections (B and C slices of x_proj's (T, dt_rank + 2N) output, z of in_proj's (T, 2·Din)).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/timing.h"
#include "bench_args.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "ops/selective_scan.h"

using namespace mslm;

namespace {

std::vector<float> normal_vector(Rng& rng, int64_t n, double std = 1.0) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(rng.normal(0.0, std));
    return v;
}

bool cpu_has(const std::string& kernel) {
    if (kernel == "avx512")
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma");
    if (kernel == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    std::string kernels = "scalar,avx2,avx512", threads = "1,2";
    int64_t Tn = 512, Din = 1536, N = 16;
    double min_seconds = 1.0;
    for (int i = 1; i < argc; ++i) {
        auto next = [&] { return bench_args::value(argc, argv, i); };
        std::string a = argv[i];
        if (a == "--kernels")
            kernels = next();
        else if (a == "--threads")
            threads = next();
        else if (a == "--seqlen")
            Tn = std::stoll(next());
        else if (a == "--d-inner")
            Din = std::stoll(next());
        else if (a == "--d-state")
            N = std::stoll(next());
        else if (a == "--min-seconds")
            min_seconds = std::stod(next());
        else {
            fmt::print(
                "usage: bench_scan [--kernels scalar,avx2,avx512] [--threads 1,2] [--seqlen 512] "
                "[--d-inner 1536] [--d-state 16] [--min-seconds S]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
    constexpr int64_t kDtRank = 48, kDecodeBatch = 8;
    const int64_t ld_dbc = kDtRank + 2 * N, rows = std::max(Tn, kDecodeBatch);
    Rng rng(1);
    std::vector<float> u = normal_vector(rng, rows * Din), dbc = normal_vector(rng, rows * ld_dbc),
                       xz = normal_vector(rng, rows * 2 * Din), delta(rows * Din), bias(Din), A_log(Din * N),
                       D(Din, 1.0f);
    // softplus(raw + bias) = dt, log-uniform in [0.001, 0.1]; bias = softplus⁻¹ of another such dt.
    auto inv_softplus = [](double y) { return std::log(std::expm1(y)); };
    auto log_uniform_dt = [&] { return std::exp(rng.uniform(std::log(0.001), std::log(0.1))); };
    for (auto& b : bias) b = static_cast<float>(inv_softplus(log_uniform_dt()));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < Din; ++d)
            delta[r * Din + d] = static_cast<float>(inv_softplus(log_uniform_dt()) - bias[d]);
    for (int64_t d = 0; d < Din; ++d)
        for (int64_t n = 0; n < N; ++n) A_log[d * N + n] = static_cast<float>(std::log(n + 1.0));
    const ops::SelectiveScanInputs<float> in{.u = u.data(),
                                             .ld_u = Din,
                                             .delta = delta.data(),
                                             .ld_delta = Din,
                                             .delta_bias = bias.data(),
                                             .A_log = A_log.data(),
                                             .Bm = dbc.data() + kDtRank,
                                             .ld_B = ld_dbc,
                                             .Cm = dbc.data() + kDtRank + N,
                                             .ld_C = ld_dbc,
                                             .D = D.data(),
                                             .z = xz.data() + Din,
                                             .ld_z = 2 * Din};
    std::vector<float> y(rows * Din), h(kDecodeBatch * Din * N);
    std::vector<int64_t> slots(kDecodeBatch);
    for (int64_t i = 0; i < kDecodeBatch; ++i) slots[i] = i;

    fmt::print("# mamba-slm bench_scan, fp32, T={} d_inner={} d_state={}\n", Tn, Din, N);
    fmt::print(
        "| kernel | threads | prefill ms (B=1, T={}) | ns per token·channel | update µs (k=1) | update µs "
        "(k={}) |\n",
        Tn, kDecodeBatch);
    fmt::print("|---|---|---|---|---|---|\n");
    for (const auto& kernel : bench::split_list(kernels)) {
        if (!cpu_has(kernel)) {
            fmt::print(stderr, "{}: not supported by this CPU, skipped\n", kernel);
            continue;
        }
        setenv("MSLM_SCAN_KERNEL", kernel.c_str(), 1);
        for (const auto& th : bench::split_list(threads)) {
            set_num_threads(std::stoi(th));
            const double prefill = bench::time_per_call(
                [&] {
                    std::fill(h.begin(), h.begin() + Din * N, 0.0f);
                    ops::selective_scan_forward(y.data(), h.data(), in, h.data(),
                                                ops::ScanDims{1, Tn, Din, N});
                },
                min_seconds);
            auto update = [&](int64_t k) {
                return bench::time_per_call(
                    [&] { ops::selective_scan_update(y.data(), h.data(), slots.data(), in, k, Din, N); },
                    min_seconds);
            };
            const double step1 = update(1), step8 = update(kDecodeBatch);
            fmt::print("| {} | {} | {:.2f} | {:.2f} | {:.1f} | {:.1f} |\n", kernel, num_threads(),
                       prefill * 1e3, prefill * 1e9 / static_cast<double>(Tn * Din), step1 * 1e6,
                       step8 * 1e6);
            std::fflush(stdout);
        }
    }
    return 0;
}
