// CPU throughput of HybridLM: forward and forward+backward tokens per second for presets,
// sequence lengths and thread counts. Prints a markdown table for docs/PERFORMANCE.md.
//   bench_model [--presets tiny,30m,130m] [--seq-lens 256,1024] [--threads 1,0] [--batch 1]
//               [--min-seconds 2]
// A thread count of 0 means all cores.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
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
#include "model/info.h"

using namespace mslm;

int main(int argc, char** argv) {
    select_blas_kernels(argc, argv);
    std::string presets = "tiny,30m,130m", seq_lens = "256,1024", threads = "1,0";
    int64_t batch = 1;
    double min_seconds = 2.0;
    for (int i = 1; i < argc; ++i) {
        auto next = [&] { return bench_args::value(argc, argv, i); };
        std::string a = argv[i];
        if (a == "--presets") presets = next();
        else if (a == "--seq-lens") seq_lens = next();
        else if (a == "--threads") threads = next();
        else if (a == "--batch") batch = std::stoll(next());
        else if (a == "--min-seconds") min_seconds = std::stod(next());
        else {
            fmt::print("usage: bench_model [--presets a,b] [--seq-lens 256,1024] [--threads 1,0] [--batch B] "
                       "[--min-seconds S]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
    fmt::print("# mamba-slm bench_model, fp32 CPU, OpenBLAS kernels: {}\n", blas_core_name());
    fmt::print("| preset | params | T | batch | threads | forward tok/s | fwd+bwd tok/s |\n");
    fmt::print("|---|---|---|---|---|---|---|\n");
    for (const auto& name : bench::split_list(presets)) {
        ModelConfig cfg = preset(name);
        for (const auto& ts : bench::split_list(seq_lens)) cfg.max_seq_len = std::max<int64_t>(cfg.max_seq_len, std::stoll(ts));
        HybridLM<float> model(cfg);
        model.init(0);
        for (const auto& ts : bench::split_list(seq_lens)) {
            int64_t T = std::stoll(ts);
            Rng rng(1);
            std::vector<int32_t> ids(batch * T), targets(batch * T);
            for (auto& x : ids) x = static_cast<int32_t>(rng.below(cfg.vocab_size));
            for (auto& x : targets) x = static_cast<int32_t>(rng.below(cfg.vocab_size));
            for (const auto& th : bench::split_list(threads)) {
                int n = std::stoi(th);
                set_num_threads(n > 0 ? n : static_cast<int>(std::thread::hardware_concurrency()));
                double fwd = bench::time_per_call([&] { model.forward(ids.data(), targets.data(), batch, T); }, min_seconds);
                double fb = bench::time_per_call(
                    [&] {
                        model.params().zero_grad();
                        model.forward(ids.data(), targets.data(), batch, T);
                        model.backward();
                    },
                    min_seconds);
                double tokens = static_cast<double>(batch * T);
                fmt::print("| {} | {} | {} | {} | {} | {:.0f} | {:.0f} |\n", name, format_count(model.num_params()), T,
                           batch, num_threads(), tokens / fwd, tokens / fb);
                std::fflush(stdout);
            }
        }
    }
    return 0;
}
