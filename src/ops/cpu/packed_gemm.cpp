// Placeholder: the scalar reference until the AMX kernels land.
#include "ops/cpu/packed_kernels.h"

namespace mslm::ops::detail {

void packed_gemm_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M) {
    packed_linear_reference(y, x, W, b, M, true);
}
std::string packed_gemm_description() { return "scalar"; }

}  // namespace mslm::ops::detail
