// One error type for the whole library: a human message naming the thing that went wrong
// (`model.safetensors: tensor 'x' ends past the end of the file`). The CLI prints it and exits 1.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace mslm {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
    throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace mslm

// Checks a condition that depends on user input or the environment; throws mslm::Error.
#define MSLM_CHECK(cond, ...)               \
    do {                                    \
        if (!(cond)) ::mslm::fail(__VA_ARGS__); \
    } while (0)
