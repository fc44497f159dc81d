// Command-line helper shared by the bench programs.
#pragma once

#include <fmt/core.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace mslm::bench_args {

// The value of the option argv[i] (argv[i + 1], i advanced past it); without one, "OPTION needs a
// value" on stderr and exit status 1.
inline std::string value(int argc, char** argv, int& i) {
    if (i + 1 >= argc) {
        fmt::print(stderr, "{} needs a value\n", argv[i]);
        std::exit(1);
    }
    return std::string(argv[++i]);
}

// The comma-separated items of s ("a,b,,c" gives "a", "b", "", "c"; "" gives one empty item).
inline std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    size_t a = 0;
    while (a <= s.size()) {
        const size_t b = s.find(',', a);
        out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
        if (b == std::string::npos) break;
        a = b + 1;
    }
    return out;
}

}  // namespace mslm::bench_args
