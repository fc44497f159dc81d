// Helpers shared by the benchmark programs.
#pragma once
#include <chrono>
#include <sstream>
#include <string>
#include <vector>

namespace mslm::bench {

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
        elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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
