// Host side of Hopper's tensor memory accelerator (include only from *.sm90a.cu files, beside
// tma.cuh): cuTensorMapEncodeTiled from the driver the runtime loaded (no link against libcuda), and
// the 2-D map of a bf16 row-major matrix that the few-row products (rows_gemm.sm90a.cu) read.
#pragma once
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"

namespace mslm::ops::cuda {

inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static const auto fn = [] {
        void* p = nullptr;
        cudaDriverEntryPointQueryResult found{};
        const cudaError_t err =
            cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found);
        MSLM_CHECK(err == cudaSuccess && p && found == cudaDriverEntryPointSuccess,
                   "the CUDA driver has no cuTensorMapEncodeTiled ({})", cudaGetErrorString(err));
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
    }();
    return fn;
}

// rows × cols bf16 (cols innermost, row stride ld elements, a multiple of 8; base 16-byte aligned) in
// boxes of box_rows rows × 64 columns, stored in the 128-byte swizzle; what lies past the matrix
// reads as zeros.
inline CUtensorMap bf16_rows_map(const uint16_t* base, int64_t rows, int64_t cols, int64_t ld, int box_rows) {
    CUtensorMap map;
    const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
    const cuuint64_t strides[1] = {cuuint64_t(ld * 2)};
    const cuuint32_t box[2] = {64, cuuint32_t(box_rows)}, step[2] = {1, 1};
    const CUresult r =
        tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<uint16_t*>(base), dims,
                             strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    MSLM_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed ({}) for a {} × {} bf16 map", int(r), rows,
               cols);
    return map;
}

}  // namespace mslm::ops::cuda
