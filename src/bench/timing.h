// Timing helpers of the benchmarks (bench/*.cpp) and `mamba-slm bench` (bench/model_bench.h):
// wall-clock seconds per call and comma lists.
#pragma once
#include <chrono>
#include <sstream>
#include <string>
#include <vector>

namespace mslm::bench {

inline double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs fn repeatedly (after one warm-up call) until min_seconds have passed; returns seconds/call.
template <typename Fn>
double time_per_call(Fn&& fn, double min_seconds) {
    fn();
    int calls = 0;
    auto start = std::chrono::steady_clock::now();
    double elapsed = 0;
    do {
        fn();
        ++calls;
        elapsed = seconds_since(start);
    } while (elapsed < min_seconds);
    return elapsed / calls;
}

// "a,b,c" -> {"a", "b", "c"}
inline std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) out.push_back(item);
    return out;
}

}  // namespace mslm::bench
