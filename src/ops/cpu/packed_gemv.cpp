// Placeholder: the scalar reference until the vector kernels land.
#include "ops/cpu/packed_kernels.h"

namespace mslm::ops::detail {

void packed_gemv_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M) {
    packed_linear_reference(y, x, W, b, M, false);
}
std::string packed_gemv_description() { return "scalar"; }

}  // namespace mslm::ops::detail
