// Small helpers shared by the unit tests.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace mslm::test {

// A fresh, empty directory for the current test, unique per process: tests of several checkouts
// may share one /tmp.
inline std::string fresh_test_dir(const std::string& prefix) {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    std::string name = fmt::format("{}_{}_{}_{}", prefix, info->test_suite_name(), info->name(), getpid());
    for (char& c : name) {
        if (c == '/') c = '_';
    }
    const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / name;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir.string();
}

}  // namespace mslm::test
