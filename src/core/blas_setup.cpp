#include "core/blas_setup.h"

#include <cblas.h>
#include <unistd.h>

#include <cstdlib>
#include <string_view>

namespace mslm {

std::string blas_core_name() {
    const char* name = openblas_get_corename();
    return name ? name : "unknown";
}

void select_blas_kernels(int argc, char** argv) {
    (void)argc;
    if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("MSLM_BLAS_REEXEC")) return;
    std::string_view core = openblas_get_corename() ? openblas_get_corename() : "";
    if (core != "Prescott" && core != "Core2" && core != "Nehalem") return;
    const char* want = nullptr;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
    if (!want) return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("MSLM_BLAS_REEXEC", "1", 1);  // never loop
    execv("/proc/self/exe", argv);
    // execv only returns on failure: carry on with the slow kernels.
}

}  // namespace mslm
