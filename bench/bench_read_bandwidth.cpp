// Read bandwidth of this machine: the yardstick for batch-1 decoding, which streams every weight once
// per token (bench_decode's "weights GB/s"). Sums a float buffer of each size with the thread pool,
// each thread over its own contiguous part; best pass of --reps after a warm-up pass. Buffers that fit
// in the last-level cache show its bandwidth, larger ones the DRAM's.
//   bench_read_bandwidth [--sizes-mb 64,128,256,512,1024] [--threads 1,0] [--reps 10]
// A thread count of 0 means all cores.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "bench/timing.h"
#include "core/thread_pool.h"

using namespace mslm;

namespace {

// 64 independent accumulators: the compiler keeps them in vector registers, so the loop is bound by
// loads, not by the latency of one running sum.
double sum(const float* x, int64_t n) {
    constexpr int64_t kLanes = 64;
    float acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int64_t j = 0; j < kLanes; ++j) acc[j] += x[i + j];
    double total = 0;
    for (; i < n; ++i) total += x[i];
    for (float a : acc) total += a;
    return total;
}

}  // namespace

int main(int argc, char** argv) {
    std::string sizes = "64,128,256,512,1024", threads = "1,0";
    int reps = 10;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 < argc && a == "--sizes-mb")
            sizes = argv[++i];
        else if (i + 1 < argc && a == "--threads")
            threads = argv[++i];
        else if (i + 1 < argc && a == "--reps")
            reps = std::max(1, std::atoi(argv[++i]));
        else {
            fmt::print("usage: bench_read_bandwidth [--sizes-mb 64,1024] [--threads 1,0] [--reps 10]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
    fmt::print("| buffer MB | threads | read GB/s |\n|---|---|---|\n");
    for (const auto& s : bench::split_list(sizes)) {
        const int64_t n = std::stoll(s) * (1 << 20) / static_cast<int64_t>(sizeof(float));
        std::vector<float> buf(n);
        for (const auto& th : bench::split_list(threads)) {
            const int t = std::stoi(th);
            set_num_threads(t > 0 ? t : static_cast<int>(std::thread::hardware_concurrency()));
            const int64_t parts = num_threads();
            std::vector<double> partial(parts);
            std::fill(buf.begin(), buf.end(), 1.0f);  // touched by the pool's threads before timing
            double best = 1e30;
            for (int r = 0; r <= reps; ++r) {
                auto start = std::chrono::steady_clock::now();
                parallel_for(parts, [&](int64_t b, int64_t e) {
                    for (int64_t p = b; p < e; ++p)
                        partial[p] = sum(buf.data() + n * p / parts, n * (p + 1) / parts - n * p / parts);
                });
                const double t_pass = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                if (r > 0) best = std::min(best, t_pass);
            }
            double total = 0;
            for (double x : partial) total += x;
            if (total != static_cast<double>(n)) fmt::print(stderr, "wrong sum {} of {} ones\n", total, n);
            fmt::print("| {} | {} | {:.1f} |\n", s, num_threads(), static_cast<double>(n) * sizeof(float) / best / 1e9);
            std::fflush(stdout);
        }
    }
    return 0;
}
