// The packed CPU kernels' vector paths in tests: which ones this CPU runs, and forcing one for a
// scope, through a kernel file's test hook (force_packed_gemv_kernel, force_packed_dequant_kernel:
// "scalar", "avx2" or "avx512", throwing for one the CPU lacks; "" restores the configured choice).
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"

namespace mslm::test {

using ForceKernel = void (*)(const std::string&);

// The paths this CPU runs (the hook refuses the others, which are reported as skipped).
inline std::vector<std::string> supported_packed_paths(ForceKernel force) {
    std::vector<std::string> paths;
    for (const char* name : {"scalar", "avx2", "avx512"}) {
        try {
            force(name);
            paths.push_back(name);
        } catch (const Error&) {
            std::printf("[ skipped  ] kernel path %s: not supported by this CPU\n", name);
        }
    }
    force("");
    return paths;
}

// Forces a path for the scope, then returns to the automatic choice.
class ForcedPackedPath {
public:
    ForcedPackedPath(ForceKernel force, const std::string& name) : force_(force) { force_(name); }
    ~ForcedPackedPath() { force_(""); }
    ForcedPackedPath(const ForcedPackedPath&) = delete;
    ForcedPackedPath& operator=(const ForcedPackedPath&) = delete;

private:
    ForceKernel force_;
};

}  // namespace mslm::test
