// Elementwise float math over arrays with the vectorised functions of scalar_math.h (vec::), chosen
// at run time: AVX-512 where the CPU has it, else AVX2 + FMA, else the scalar std:: functions. For
// the forward kernels of inference and training; double-precision references keep std::.
// Accuracy (scalar_math.h): exp within 1 ulp, sigmoid within 3 ulp of the correctly rounded value.
#pragma once
#include <cstdint>

namespace mslm::ops::vec_array {

// y = e^x for x ≤ 0 (positive x are outside the contract). y may be x.
void exp_nonpositive(float* y, const float* x, int64_t n);
// y = x · σ(x). y may be x.
void silu(float* y, const float* x, int64_t n);
// y = silu(gate) · up. y may alias either input.
void silu_mul(float* y, const float* gate, const float* up, int64_t n);

}  // namespace mslm::ops::vec_array
