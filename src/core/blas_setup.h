// OpenBLAS kernel selection. OpenBLAS picks its kernels from CPUID when the library loads; the
// Debian 12 build (0.3.21) does not recognise some virtualised Intel CPUs (model name "Intel Xeon
// Processor") and falls back to its SSE3 "Prescott" kernels, 2-3x slower than the AVX-512 ones
// on the same machine (docs/PERFORMANCE.md). Programs call `select_blas_kernels` first thing in
// main: when the fallback happened on a CPU that has AVX2 / AVX-512 and the user has not chosen
// with OPENBLAS_CORETYPE, it re-executes the program with OPENBLAS_CORETYPE set (OpenBLAS reads
// the variable only at load time). Tests do not call it: they run on whatever OpenBLAS chose.
#pragma once
#include <string>

namespace mslm {

std::string blas_core_name();  // e.g. "SkylakeX", "Haswell", "Prescott"
void select_blas_kernels(int argc, char** argv);

}  // namespace mslm
