// Few-row products on tensor cores: out (M, O) = x (M, I) · W (O, I)ᵀ for M ≤ 64 bf16 rows, W
// streamed once through split-K thread-block clusters (skinny_gemm.cu). ops/cuda/linear.cu routes its
// bf16 forwards without bias here where this kernel was measured faster than cuBLASLt
// (skinny_gemm_preferred: few rows and few output columns — the batched decode step's residual
// products and qkv; docs/PERFORMANCE.md) unless MSLM_SKINNY_GEMM is 0; cuBLASLt otherwise.
//
// Numerics: bf16 products accumulated in fp32 by mma (a fixed order for a given shape and device:
// the same bits on every call), the split-K partial sums added in fp32 in rank order, then one
// rounding of the output: out = bf16(Σ), out = bf16(out + Σ) (Bf16Add), or the fp32 Σ itself (F32).
//
// Plain C++ header (no CUDA includes); the definitions exist only in builds with MSLM_HAVE_CUDA.
#pragma once
#include <cstdint>

namespace mslm::ops::cuda {

enum class SkinnyOut { Bf16, Bf16Add, F32 };

constexpr int64_t kSkinnyMaxRows = 64;

// MSLM_SKINNY_GEMM=0 in the environment makes skinny_gemm refuse every call (cuBLASLt for all), =all
// routes every call the kernel supports (read at every call, for ablations).
// Whether the kernel can take this call: 1 ≤ M ≤ kSkinnyMaxRows, I a multiple of 8, x and W 16-byte
// aligned (out: any alignment), and the current device has thread-block clusters (compute
// capability ≥ 9.0).
bool skinny_gemm_supported(const void* out, const uint16_t* x, const uint16_t* W, int64_t M, int64_t I,
                           int64_t O);
// The cluster size (split of I) for a shape on a device with `sms` multiprocessors: doubled from 1
// while the blocks do not yet fill two per multiprocessor, every split keeps ≥ 2 k steps of 64, and
// the cluster stays ≤ 8.
int skinny_gemm_splits(int64_t I, int64_t O, int sms);
// Where linear.cu takes the kernel: M ≤ 16 rows and O ≤ 1280 columns, or M ≤ 32 rows, O ≤ 768 and
// I ≥ 1536. On the H200 (graph-replayed calls, weights from HBM) it beat cuBLASLt there — 1.3–1.8×
// at I × O = 2048 × 768 and 1536 × 768 up to 16 rows, 1.2× at 32; 1.1–1.2× at 768 × 768 and
// 768 × 1280 up to 16 rows — and lost at 64 rows and from 3352 columns (0.46–1.0×), where cuBLASLt's
// tiles already fill the GPU (bench_cuda_skinny_gemm; docs/PERFORMANCE.md). MSLM_SKINNY_GEMM=all:
// every shape.
bool skinny_gemm_preferred(int64_t M, int64_t I, int64_t O);

// Runs the product on `stream` (a cudaStream_t) and returns true, or returns false without touching
// anything when the call is not supported. x (M, I), W (O, I), out (M, O), all row-major and dense;
// out is bf16 bits for Bf16 / Bf16Add, float for F32. Buffers must not overlap. The kernel launches
// with programmatic dependent launch (unless MSLM_OPS_PDL=0) and reads x and out only after waiting
// for its predecessor; w_constant — the caller's promise that no kernel still to finish writes W (a
// model's weights, not a buffer the previous kernel fills) — lets it copy its first W steps before
// that wait, beside the predecessor's tail.
bool skinny_gemm(SkinnyOut kind, void* out, const uint16_t* x, const uint16_t* W, int64_t M, int64_t I,
                 int64_t O, void* stream = nullptr, bool w_constant = false);

}  // namespace mslm::ops::cuda
