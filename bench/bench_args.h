// Command-line helper shared by the bench programs.
#pragma once

#include <fmt/core.h>

#include <cstdio>
#include <cstdlib>
#include <string>

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

}  // namespace mslm::bench_args
