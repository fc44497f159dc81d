// Prefill products y = x · Wᵀ of the 130m model's linear layers, M tokens at once: fp32
// (mslm::gemm, OpenBLAS) against the packed bf16 / int8 kernels of ops/packed_linear on AMX tiles and
// on their fallbacks (int8: AVX-512 VNNI where the CPU has it, and portable loops), at each thread
// count. Prints a markdown table of ms per product and GFLOP/s
// (2·M·in·out flops, whatever the format; int8 counts its integer multiply-adds).
//   bench_packed_gemm [--shapes 3352x768,768x1536,2048x768,768x2048,50280x768] [--tokens 512]
//                     [--threads 1,2] [--min-seconds 0.3] [--rounds 3]
//                     [--kernels fp32,bf16-amx,int8-amx,bf16-fallback,int8-fallback,int8-fallback-portable]
// A thread count of 0 means all cores. Shapes are out×in. The time includes converting x to bf16 or
// quantizing it (part of every product), not packing W (done once at load). Each kernel is timed in
// --rounds rounds of at least --min-seconds, the kernels taking turns, and the fastest round is
// kept: on a machine shared with other jobs that is the closest to the kernel's own speed.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bench/timing.h"
#include "bench_args.h"
#include "core/blas_setup.h"
#include "core/gemm.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "ops/cpu/packed_kernels.h"
#include "ops/packed_linear.h"

// Defined in src/ops/cpu/packed_gemm.cpp (the test hook): force "amx", "fallback" or
// "fallback-portable".
namespace mslm::ops::detail {
void packed_gemm_force_path(const char* name);
bool packed_gemm_amx_available();
}  // namespace mslm::ops::detail

using namespace mslm;

int main(int argc, char** argv) {
    select_blas_kernels(argc, argv);
    std::string shapes = "3352x768,768x1536,2048x768,768x2048,50280x768", threads = "1,2",
                kernels = "fp32,bf16-amx,int8-amx,bf16-fallback,int8-fallback,int8-fallback-portable";
    int64_t M = 512;
    double min_seconds = 0.3;
    int rounds = 3;
    for (int i = 1; i < argc; ++i) {
        auto next = [&] { return bench_args::value(argc, argv, i); };
        const std::string a = argv[i];
        if (a == "--shapes")
            shapes = next();
        else if (a == "--tokens")
            M = std::stoll(next());
        else if (a == "--threads")
            threads = next();
        else if (a == "--kernels")
            kernels = next();
        else if (a == "--min-seconds")
            min_seconds = std::stod(next());
        else if (a == "--rounds")
            rounds = std::max(1, std::stoi(next()));
        else {
            fmt::print(
                "usage: bench_packed_gemm [--shapes 3352x768,768x1536] [--tokens 512] [--threads 1,2] "
                "[--kernels fp32,bf16-amx,int8-amx,bf16-fallback,int8-fallback,int8-fallback-portable] "
                "[--min-seconds 0.3] [--rounds 3]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
    std::vector<std::string> names;
    for (const auto& k : bench::split_list(kernels)) {
        if (k.ends_with("-amx") && !ops::detail::packed_gemm_amx_available()) {
            fmt::print(stderr, "no AMX on this machine: skipping {}\n", k);
            continue;
        }
        if (!std::set<std::string>{"fp32", "bf16-amx", "int8-amx", "bf16-fallback", "int8-fallback",
                                   "int8-fallback-portable"}
                 .contains(k)) {
            fmt::print(stderr, "unknown kernel {}\n", k);
            return 1;
        }
        names.push_back(k);
    }
    fmt::print("# mamba-slm bench_packed_gemm, M = {} tokens, OpenBLAS kernels: {}, packed: {}\n", M,
               blas_core_name(), ops::detail::packed_gemm_description());
    fmt::print("| out × in | threads |");
    for (const auto& k : names) fmt::print(" {} ms | {} GFLOP/s |", k, k);
    fmt::print("\n|---|---|");
    for (size_t i = 0; i < names.size(); ++i) fmt::print("---|---|");
    fmt::print("\n");
    for (const auto& shape : bench::split_list(shapes)) {
        const auto x_at = shape.find('x');
        const int64_t out = std::stoll(shape.substr(0, x_at)), in = std::stoll(shape.substr(x_at + 1));
        Rng rng(1);
        std::vector<float> W(out * in), x(M * in), y(M * out);
        for (auto& v : W) v = static_cast<float>(rng.normal(0, 0.05));
        for (auto& v : x) v = static_cast<float>(rng.normal());
        std::map<std::string, ops::PackedWeight> packed;
        packed["bf16"] = ops::pack_weight(W.data(), out, in, ops::WeightFormat::BF16);
        packed["int8"] = ops::pack_weight(W.data(), out, in, ops::WeightFormat::Int8);
        const double flops =
            2.0 * static_cast<double>(M) * static_cast<double>(in) * static_cast<double>(out);
        for (const auto& th : bench::split_list(threads)) {
            const int n = std::stoi(th);
            set_num_threads(n > 0 ? n : static_cast<int>(std::thread::hardware_concurrency()));
            std::map<std::string, double> best;
            for (int r = 0; r < rounds; ++r) {
                for (const auto& k : names) {
                    double seconds;
                    if (k == "fp32") {
                        seconds = bench::time_per_call(
                            [&] {
                                gemm<float>(false, true, static_cast<int>(M), static_cast<int>(out),
                                            static_cast<int>(in), 1.0f, x.data(), static_cast<int>(in),
                                            W.data(), static_cast<int>(in), 0.0f, y.data(),
                                            static_cast<int>(out));
                            },
                            min_seconds);
                    } else {
                        const auto dash = k.find('-');
                        const ops::PackedWeight& P = packed[k.substr(0, dash)];
                        ops::detail::packed_gemm_force_path(k.substr(dash + 1).c_str());
                        seconds = bench::time_per_call(
                            [&] { ops::detail::packed_gemm_forward(y.data(), x.data(), P, nullptr, M); },
                            min_seconds);
                        ops::detail::packed_gemm_force_path(nullptr);
                    }
                    best[k] = r == 0 ? seconds : std::min(best[k], seconds);
                }
            }
            fmt::print("| {} × {} | {} |", out, in, num_threads());
            for (const auto& k : names)
                fmt::print(" {:.2f} | {:.0f} |", best[k] * 1e3, flops / best[k] / 1e9);
            fmt::print("\n");
        }
    }
    return 0;
}
