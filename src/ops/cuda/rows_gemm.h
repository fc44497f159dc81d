// The batched decode step's products on Hopper's warpgroup products (rows_gemm.sm90a.cu): out (M, O)
// = epilogue(prologue(x) (M, I) · W (O, I)ᵀ) for M ≤ 64 rows — one wgmma m64n64k16 row tile —, with
// the RMSNorm of the residual stream as an optional prologue and the store, the residual add or
// SwiGLU as the epilogue, so that a step's norm and SwiGLU kernels disappear into its products.
//
// A block owns 64 weight rows (64 output columns; for SwiGLU 32 gate and the 32 matching up rows, 32
// outputs) and a slice of I; the slices of one column tile form a thread-block cluster (split K, up
// to 8 blocks; 4 by default, so that O = 768 reaches 48 SMs). The block's x slice lands once by TMA in
// wgmma's 128-byte swizzled layout (and is normalised there with the prologue: each block's Σx² of
// its slice, exchanged through distributed shared memory and added in rank order); W streams by
// TMA through a ring of up to 10 slots, the first filled before the programmatic-dependent wait when
// W is constant; a step's products run while the next steps land. The cluster's fp32 partial sums
// are added in rank order through distributed shared memory — deterministic, no workspace.
//
// Numerics: the norm as the decoders' fused prologue, t = bf16(x · rstd · w) with rstd =
// rsqrt(Σx²/I + eps) in fp32; products in fp32 accumulators (a fixed order for a shape and device);
// then Store: bf16(Σ + b); Residual: out = bf16(out + Σ) without a bias (cuBLASLt's beta = 1) and
// bf16(out + bf16(Σ + b)) with one (the product-then-axpy path); SwiGLU: g = bf16(Σ_g + b_g), u =
// bf16(Σ_u + b_u), out = bf16(silu(g) · u) — the decoders' epilogues.
//
// Plain C++ header; the definitions exist only in builds with MSLM_HAVE_SM90A.
#pragma once
#include <cstdint>

namespace mslm::ops::cuda {

enum class RowsEpilogue { Store, Residual, SwiGLU };

constexpr int64_t kRowsGemmMaxRows = 64;

struct RowsGemm {
    const uint16_t* x = nullptr;  // (M, I) bf16, row stride ld_x
    int64_t ld_x = 0;
    const uint16_t* W = nullptr;       // (O, I), or (2·O, I) [gate | up] for SwiGLU
    const uint16_t* bias = nullptr;    // (O), or (2·O) for SwiGLU; or null
    const uint16_t* norm_w = nullptr;  // (I): each x row RMS-normalised with this weight first; or null
    float eps = 0.0f;
    RowsEpilogue epi = RowsEpilogue::Store;
    uint16_t* out = nullptr;  // (M, O), row stride ld_out; must not overlap x or W
    int64_t ld_out = 0;
    int64_t M = 0, I = 0, O = 0;
    // The caller's promise that no kernel still to finish writes W (a model's weights): its first
    // steps are copied before the kernel waits for its predecessor. No effect on values.
    bool w_constant = false;
    // Optional, with the Store epilogue (Mamba-2's in_proj [z | xBC | dt]): outputs conv_col0 ..
    // conv_col0 + conv_C − 1 of each row are also a causal conv's inputs, and the epilogue runs
    // ops::cuda::conv1d_causal_update's arithmetic (SiLU) on each stored bf16 value — the same bits:
    // window (conv_K − 1 earlier inputs of row r's slot conv_slots[r], distinct), weights (conv_C,
    // conv_K), bias (or null), conv_out (M, conv_C), the value shifted into the window.
    uint16_t* conv_state = nullptr;  // (slots, conv_K − 1, conv_C), or null: no conv
    const int64_t* conv_slots = nullptr;
    const uint16_t *conv_w = nullptr, *conv_b = nullptr;
    uint16_t* conv_out = nullptr;
    int64_t conv_col0 = 0, conv_C = 0, conv_K = 0;
};

// Whether rows_gemm takes the call: MSLM_ROWS_GEMM is not 0 (read at every call), a compute
// capability 9.0 device with the sm_90a code, 1 ≤ M ≤ 64, I a positive multiple of 8 up to 8704 (8
// slices of 17 steps), ld_x a multiple of 8 and ≥ I, ld_out ≥ O, x, W and norm_w 16-byte aligned; a
// conv only with the Store epilogue, its columns inside O and 1 ≤ conv_K ≤ 16.
bool rows_gemm_takes(const RowsGemm& g);
// The split of I (the cluster size) on a device with `sms` multiprocessors: doubled from 1 while the
// blocks do not fill the GPU once, every split keeps a 64-deep step and the cluster stays ≤ 4
// (MSLM_ROWS_GEMM_MAX_SPLIT: another cap up to 8); more, up to 8, while a slice's x does not fit
// beside the ring.
int rows_gemm_splits(int64_t I, int64_t O, bool swiglu, int sms);
// Runs the product on `stream` (a cudaStream_t), with programmatic dependent launch unless
// MSLM_OPS_PDL=0. Throws when !rows_gemm_takes(g).
void rows_gemm(const RowsGemm& g, void* stream);

}  // namespace mslm::ops::cuda
