// Tensor-core products for the CUDA kernels (include from .cu files only; sm_80+): bf16 operands,
// fp32 accumulation, through mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32.
//
// block_mma is the tensor-core twin of a shared-memory tiled product: a block of kMmaThreads
// threads owns one kMmaM × kMmaN fp32 output tile, and the operands come from loader lambdas that
// return fp32 values, rounded once to bf16 (round to nearest even) as they are staged in shared
// memory, kMmaK deep. A bf16 value passes through exactly; a loader that folds in a scale (a decay,
// a mask) has its fp32 result rounded once.
//
// After the block tile: the warp-level pieces of FlashAttention-style kernels, whose operands stay
// in registers between products (ldmatrix, cp.async, an fp32 C fragment packed into a bf16 A).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "ops/cuda/mma.cuh needs sm_80 or newer (bf16 mma.sync)"
#endif

namespace mslm::ops::cuda {
namespace detail {

// D += A·B for one 16 × 8 × 16 tile, held by the 32 lanes of a warp. With lane = 4·grp + quad
// (grp = lane / 4 in [0, 8), quad = lane % 4), the fragments are (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"; each .b32 register packs two bf16, the lower index in
// the low half):
//   A (16 × 16, row-major):  a[0] = A[grp][2q, 2q+1]      a[1] = A[grp+8][2q, 2q+1]
//                            a[2] = A[grp][2q+8, 2q+9]    a[3] = A[grp+8][2q+8, 2q+9]
//   B (16 × 8, "col": k fastest):  b[0] = B[2q, 2q+1][grp]   b[1] = B[2q+8, 2q+9][grp]
//   C, D (16 × 8, fp32):   d[0] = D[grp][2q]   d[1] = D[grp][2q+1]
//                          d[2] = D[grp+8][2q] d[3] = D[grp+8][2q+1]
// (q = quad.) The products are exact in fp32; the hardware adds them into D with fp32 precision.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The same tile on fp16 operands (the same fragment layout; each .b32 register packs two fp16). Not
// volatile: the compiler may interleave independent products (it has no side effect but d).
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// D = A·B for one 16 × 8 × 32 tile of int8 operands, exact int32 sums (no C). The fragments are those
// of the bf16 tile above with 4 int8 in each .b32 register where it holds 2 bf16 (byte 0 the lowest
// k): a[0] = A[grp][4q .. 4q+3], a[1] = A[grp+8][4q ..], a[2] = A[grp][4q+16 ..], a[3] =
// A[grp+8][4q+16 ..]; b[0] = B[4q .. 4q+3][grp], b[1] = B[4q+16 ..][grp]; d as above, in int32.
__device__ __forceinline__ void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0));
}

// ---- the block tile. 4 warps in a 2 × 2 grid, each a 32 × 32 quarter of the 64 × 64 output: 2
// m16 tiles by 4 n8 tiles of the instruction above.

constexpr int kMmaM = 64, kMmaN = 64, kMmaK = 32, kMmaThreads = 128;
// Shared rows are kMmaK + 8 bf16 (20 words) long: the fragment loads of a warp, words
// 20·grp + q + const, then fall in 32 distinct banks.
constexpr int kMmaLd = kMmaK + 8;

struct alignas(16) MmaSmem {
    __nv_bfloat16 a[kMmaM][kMmaLd];  // a[row][k]
    __nv_bfloat16 b[kMmaN][kMmaLd];  // b[col][k]: the "col" layout of the B fragment
};

// acc.c[i][j][r]: fragment register r of m16 tile i and n8 tile j of this warp's quarter; its
// place in the block tile is (mma_row(i, r), mma_col(j, r)).
struct MmaAcc {
    float c[2][4][4];
};

__device__ __forceinline__ int mma_row(int i, int r) {
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4;
    return warp / 2 * 32 + i * 16 + grp + 8 * (r / 2);
}
__device__ __forceinline__ int mma_col(int j, int r) {
    const int warp = threadIdx.x / 32, quad = threadIdx.x % 4;
    return warp % 2 * 32 + j * 8 + 2 * quad + r % 2;
}

// dst[r][k] = bf16(load(r, k0 + k)) for k0 + k < k_end, else 0, for r < R and k < kMmaK. kKFast:
// consecutive threads take consecutive k (global memory contiguous along k), else consecutive r.
// Each thread stages R·kMmaK / kMmaThreads values, kMmaStageBatch at a time: a batch is loaded into
// registers before any of it is stored, so that the loads' memory latencies overlap (the compiler
// cannot move a load above a shared-memory store itself, as a loader's generic pointer might point
// into shared memory); larger batches cost registers (64-bit addresses) for little more overlap.
constexpr int kMmaStageBatch = 8;

template <bool kKFast, int R, class Load, class Store>
__device__ __forceinline__ void mma_stage_with(int64_t k0, int64_t k_end, const Load& load, const Store& store) {
    constexpr int kPer = R * kMmaK / kMmaThreads;
    static_assert(R * kMmaK % kMmaThreads == 0 && kPer % kMmaStageBatch == 0,
                  "every thread stages the same number of whole batches");
#pragma unroll 1
    for (int i0 = 0; i0 < kPer; i0 += kMmaStageBatch) {
        float v[kMmaStageBatch];
#pragma unroll
        for (int i = 0; i < kMmaStageBatch; ++i) {
            const int e = int(threadIdx.x) + (i0 + i) * kMmaThreads;
            const int r = kKFast ? e / kMmaK : e % R, k = kKFast ? e % kMmaK : e / R;
            v[i] = k0 + k < k_end ? load(r, k0 + k) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < kMmaStageBatch; ++i) {
            const int e = int(threadIdx.x) + (i0 + i) * kMmaThreads;
            const int r = kKFast ? e / kMmaK : e % R, k = kKFast ? e % kMmaK : e / R;
            store(r, k, v[i]);
        }
    }
}

template <bool kKFast, int R, class Load>
__device__ __forceinline__ void mma_stage(__nv_bfloat16 (&dst)[R][kMmaLd], int64_t k0, int64_t k_end,
                                          const Load& load) {
    mma_stage_with<kKFast, R>(k0, k_end, load,
                              [&](int r, int k, float v) { dst[r][k] = __float2bfloat16_rn(v); });
}

__device__ __forceinline__ uint32_t smem_pair(const __nv_bfloat16* p) {
    return *reinterpret_cast<const uint32_t*>(p);  // two bf16, p[0] in the low half; p 4-byte aligned
}

// acc += Σ_{k ∈ [k_begin, k_end)} bf16(load_a(row, k)) · bf16(load_b(k, col)) over the block tile
// (row < kMmaM, col < kMmaN, tile-local; the loaders add the tile origin and return 0 outside the
// operand). kBKFast: how load_b is contiguous in global memory (A is read along k). Every thread
// of the block must call it with the same k range.
template <bool kBKFast, class LoadA, class LoadB>
__device__ __forceinline__ void block_mma(MmaAcc& acc, int64_t k_begin, int64_t k_end, const LoadA& load_a,
                                          const LoadB& load_b, MmaSmem& sm) {
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
    const int row0 = warp / 2 * 32, col0 = warp % 2 * 32;
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kMmaK) {
        mma_stage<true>(sm.a, k0, k_end, load_a);
        mma_stage<kBKFast>(sm.b, k0, k_end, [&](int c, int64_t k) { return load_b(k, c); });
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kMmaK; kk += 16) {
            const int ka = kk + 2 * quad;  // the fragments' k pairs: ka, ka + 1 and ka + 8, ka + 9
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = row0 + i * 16 + grp;
                a[i][0] = smem_pair(&sm.a[r][ka]);
                a[i][1] = smem_pair(&sm.a[r + 8][ka]);
                a[i][2] = smem_pair(&sm.a[r][ka + 8]);
                a[i][3] = smem_pair(&sm.a[r + 8][ka + 8]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = col0 + j * 8 + grp;
                b[j][0] = smem_pair(&sm.b[c][ka]);
                b[j][1] = smem_pair(&sm.b[c][ka + 8]);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc.c[i][j], a[i], b[j]);
        }
        __syncthreads();
    }
}

// ---- block_mma_ex: block_mma with a choice of staging order for A too, and one operand that may be
// split for near-fp32 accuracy. A split operand value v (formed in fp32) is staged as two bf16,
// hi = bf16(v) and lo = bf16(v − hi) (v − hi is exact in fp32), and each of its products is issued
// twice, lo first then hi: hi + lo is v to within 2^-16·|v| (bf16 keeps 8 significant bits, so
// each rounding errs by ≤ 2^-8 of what it rounds), against 2^-8·|v| for a single rounding. The
// split doubles the instructions of the product, not its memory traffic.

enum class MmaSplit { kNone, kA, kB };

struct alignas(16) MmaSmemSplit {
    __nv_bfloat16 a[kMmaM][kMmaLd];   // a[row][k]
    __nv_bfloat16 b[kMmaN][kMmaLd];   // b[col][k]
    __nv_bfloat16 lo[kMmaM][kMmaLd];  // the low halves of the split operand, in its layout
};
static_assert(kMmaM == kMmaN, "the split buffer serves A and B alike");

// As mma_stage, staging hi = bf16(v) in hi and lo = bf16(v − hi) in lo.
template <bool kKFast, int R, class Load>
__device__ __forceinline__ void mma_stage_split(__nv_bfloat16 (&hi)[R][kMmaLd],
                                                __nv_bfloat16 (&lo)[R][kMmaLd], int64_t k0, int64_t k_end,
                                                const Load& load) {
    mma_stage_with<kKFast, R>(k0, k_end, load, [&](int r, int k, float v) {
        const __nv_bfloat16 h = __float2bfloat16_rn(v);
        hi[r][k] = h;
        lo[r][k] = __float2bfloat16_rn(v - __bfloat162float(h));
    });
}

// acc += Σ_{k ∈ [k_begin, k_end)} load_a(row, k) · load_b(k, col), as block_mma, with kAKFast /
// kBKFast saying along which index each loader is contiguous in global memory (true: k) and
// kSplit which operand, if any, is split into hi + lo.
template <bool kAKFast, bool kBKFast, MmaSplit kSplit, class LoadA, class LoadB>
__device__ __forceinline__ void block_mma_ex(MmaAcc& acc, int64_t k_begin, int64_t k_end, const LoadA& load_a,
                                             const LoadB& load_b, MmaSmemSplit& sm) {
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
    const int row0 = warp / 2 * 32, col0 = warp % 2 * 32;
    const auto load_bt = [&](int c, int64_t k) { return load_b(k, c); };
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kMmaK) {
        if constexpr (kSplit == MmaSplit::kA) {
            mma_stage_split<kAKFast>(sm.a, sm.lo, k0, k_end, load_a);
        } else {
            mma_stage<kAKFast>(sm.a, k0, k_end, load_a);
        }
        if constexpr (kSplit == MmaSplit::kB) {
            mma_stage_split<kBKFast>(sm.b, sm.lo, k0, k_end, load_bt);
        } else {
            mma_stage<kBKFast>(sm.b, k0, k_end, load_bt);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kMmaK; kk += 16) {
            const int ka = kk + 2 * quad;
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = row0 + i * 16 + grp;
                a[i][0] = smem_pair(&sm.a[r][ka]);
                a[i][1] = smem_pair(&sm.a[r + 8][ka]);
                a[i][2] = smem_pair(&sm.a[r][ka + 8]);
                a[i][3] = smem_pair(&sm.a[r + 8][ka + 8]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = col0 + j * 8 + grp;
                b[j][0] = smem_pair(&sm.b[c][ka]);
                b[j][1] = smem_pair(&sm.b[c][ka + 8]);
            }
            if constexpr (kSplit == MmaSplit::kA) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int r = row0 + i * 16 + grp;
                    const uint32_t lo[4] = {smem_pair(&sm.lo[r][ka]), smem_pair(&sm.lo[r + 8][ka]),
                                            smem_pair(&sm.lo[r][ka + 8]), smem_pair(&sm.lo[r + 8][ka + 8])};
#pragma unroll
                    for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc.c[i][j], lo, b[j]);
                }
            }
            if constexpr (kSplit == MmaSplit::kB) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int c = col0 + j * 8 + grp;
                    const uint32_t lo[2] = {smem_pair(&sm.lo[c][ka]), smem_pair(&sm.lo[c][ka + 8])};
#pragma unroll
                    for (int i = 0; i < 2; ++i) mma_m16n8k16_bf16(acc.c[i][j], a[i], lo);
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc.c[i][j], a[i], b[j]);
        }
        __syncthreads();
    }
}

// Row and column sums of a block tile held as fragments, in a fixed order (deterministic): v(i, j, r)
// is the value of fragment register (i, j, r) (mma_row / mma_col). A thread adds its own values,
// then the lanes sharing the row (or column) through shuffles, then the two warps sharing it through
// red (2·kMmaM floats); emit(row, sum) runs once per tile row (column), on threads 0..63. Every
// thread of the block must call; it returns synchronised.
template <class Value, class Emit>
__device__ __forceinline__ void mma_row_sums(const Value& v, float* red, const Emit& emit) {
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) s += v(i, j, 2 * half) + v(i, j, 2 * half + 1);
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            if (quad == 0) red[warp % 2 * kMmaM + warp / 2 * 32 + i * 16 + 8 * half + grp] = s;
        }
    __syncthreads();
    if (threadIdx.x < kMmaM) emit(int(threadIdx.x), red[threadIdx.x] + red[kMmaM + threadIdx.x]);
    __syncthreads();
}

template <class Value, class Emit>
__device__ __forceinline__ void mma_col_sums(const Value& v, float* red, const Emit& emit) {
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int odd = 0; odd < 2; ++odd) {
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 2; ++i) s += v(i, j, odd) + v(i, j, 2 + odd);
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            s += __shfl_xor_sync(0xffffffffu, s, 8);
            s += __shfl_xor_sync(0xffffffffu, s, 16);
            if (grp == 0) red[warp / 2 * kMmaN + warp % 2 * 32 + j * 8 + 2 * quad + odd] = s;
        }
    __syncthreads();
    if (threadIdx.x < kMmaN) emit(int(threadIdx.x), red[threadIdx.x] + red[kMmaN + threadIdx.x]);
    __syncthreads();
}

// ---- warp-level fragments straight from shared memory (FlashAttention-style kernels)

// Two fp32 values rounded once to bf16 (nearest even) and packed as a fragment register: lo in the
// low half, the lower k index of the pair (the C fragment's d[0], d[1] → an A fragment pair).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (low 16 bits), .y = hi
    return *reinterpret_cast<const uint32_t*>(&v);
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: four 8 × 8 bf16 matrices, lanes 8m .. 8m + 7
// giving the addresses of rows 0 .. 7 of matrix m (16-byte aligned, 16 contiguous bytes each).
// Without .trans, register r[m] of lane 4·grp + q holds matrix m's row grp, columns 2q, 2q + 1
// (low half first); with .trans it holds rows 2q, 2q + 1 of column grp. So, with `s` a row-major
// bf16 tile of row pitch LD elements and lane = threadIdx.x % 32:
// - A fragment of the 16 × 16 block at (r0, c0) (non-trans): lane reads row
//   r0 + lane % 8 + 8·(lane / 8 % 2), column c0 + 8·(lane / 16); r = a[0..3] of mma_m16n8k16_bf16.
// - B fragments of two n8 tiles from a tile stored [n][k] (k contiguous: Kᵀ of Q·Kᵀ) (non-trans):
//   lane reads row n0 + lane % 8 + 8·(lane / 16), column k0 + 8·(lane / 8 % 2);
//   r[0], r[1] = b of n tile n0 .. n0 + 7, r[2], r[3] = b of n tile n0 + 8 .. n0 + 15.
// - B fragments of two n8 tiles from a tile stored [k][n] (n contiguous: V of P·V) (.trans): lane
//   reads row k0 + lane % 8 + 8·(lane / 8 % 2), column n0 + 8·(lane / 16); r[0], r[1] = b of n tile
//   n0 .. n0 + 7, r[2], r[3] = b of n tile n0 + 8 .. n0 + 15.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// cp.async of 16 bytes global → shared (both 16-byte aligned), bypassing L1 (.cg); commit closes a
// group of the calling thread's copies, wait<n> returns once at most n of its groups are pending.
// The copies are visible to other threads only after the wait and a barrier.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(gmem));
}
// cp_async_16 that fills the 16 bytes with zeros instead when !valid (gmem is then not read; pass any
// mapped address).
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, bool valid) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem),
                 "r"(valid ? 16 : 0));
}
// An L2 eviction policy (createpolicy, sm_80+) for data read once a use: the decode step's weights,
// 5× (130m) to 40× (1b) the L2. Marked evict_first, they leave in L2 what the step's kernels read
// again: the activations, recurrent states, KV cache, constants and the kernels' own code, which a
// step's weight stream otherwise evicts before their next reads.
__device__ __forceinline__ uint64_t l2_evict_first() {
    uint64_t policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}
// cp_async_16 with a policy, and a 16-byte read-only load with one (the bf16 weight rows). Kernels
// make the policy once: made at each use, it costs ~5 instructions a load where it is not hoisted.
// ldg_stream allocates in L1, as the __ldg it replaced did; quant_detail::load_stream(p, policy)
// (quant_decode.cuh) is the same load with L1::no_allocate, as the 4-bit codes were read before —
// kept apart so that neither path's L1 behaviour changed with the policy.
__device__ __forceinline__ void cp_async_16_stream(void* smem, const void* gmem, uint64_t policy) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem),
                 "l"(policy));
}
__device__ __forceinline__ uint4 ldg_stream(const void* gmem, uint64_t policy) {
    uint4 v;
    asm("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(gmem), "l"(policy));
    return v;
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// cp.async of 8 or 4 bytes (.ca; both addresses aligned to the size): fp64 / fp32 vectors staged
// beside bf16 tiles in the same commit groups.
__device__ __forceinline__ void cp_async_8(void* smem, const void* gmem) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(addr), "l"(gmem));
}
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(addr), "l"(gmem));
}

// ---- shared-memory tiles read by ldmatrix (the warp-level pieces above), for kernels whose
// operands are exact bf16 inputs (staged by cp.async) or fp32 values split into hi + lo.
//
// Fragment addresses for one 16 × 16 A block at (m0, k0) or two n8 B tiles n0, n0 + 8 at k0, from a
// tile of row pitch ld elements (ld·2 bytes a multiple of 16; checked in numpy against the PTX
// fragment layout of mma_m16n8k16_bf16):
//   lda_mk: A stored [m][k]          ldmatrix      row m0 + lane % 8 + 8·(lane / 8 % 2), col k0 + 8·(lane / 16)
//   lda_km: A stored [k][m]          ldmatrix.trans row k0 + lane % 8 + 8·(lane / 16), col m0 + 8·(lane / 8 % 2)
//   ldb_nk: B stored [n][k]          ldmatrix      row n0 + lane % 8 + 8·(lane / 16), col k0 + 8·(lane / 8 % 2)
//   ldb_kn: B stored [k][n]          ldmatrix.trans row k0 + lane % 8 + 8·(lane / 8 % 2), col n0 + 8·(lane / 16)
// The B loaders give r[0], r[1] = b of n tile n0 and r[2], r[3] = b of n tile n0 + 8.
__device__ __forceinline__ void lda_mk(uint32_t (&a)[4], const __nv_bfloat16* s, int ld, int m0, int k0) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4(a, s + (m0 + lane % 8 + 8 * (lane / 8 % 2)) * ld + k0 + 8 * (lane / 16));
}
__device__ __forceinline__ void lda_km(uint32_t (&a)[4], const __nv_bfloat16* s, int ld, int m0, int k0) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4_trans(a, s + (k0 + lane % 8 + 8 * (lane / 16)) * ld + m0 + 8 * (lane / 8 % 2));
}
__device__ __forceinline__ void ldb_nk(uint32_t (&b)[4], const __nv_bfloat16* s, int ld, int n0, int k0) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4(b, s + (n0 + lane % 8 + 8 * (lane / 16)) * ld + k0 + 8 * (lane / 8 % 2));
}
__device__ __forceinline__ void ldb_kn(uint32_t (&b)[4], const __nv_bfloat16* s, int ld, int n0, int k0) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4_trans(b, s + (k0 + lane % 8 + 8 * (lane / 8 % 2)) * ld + n0 + 8 * (lane / 16));
}

// dst[r][c] = src[r·ld + c] for r < rows, c < cols, else 0, for r < kRows, c < kCols (dst row pitch
// kLd elements, 16-byte aligned rows). vec: src and ld·2 bytes are 16-byte aligned and cols is a
// multiple of 8 or ≥ kCols, so every 8-element piece is wholly in or out: 16-byte cp.async copies
// (the caller commits, waits and synchronises), zeros stored directly. Otherwise element by
// element through registers (odd shapes, strides): the same values either way. kThreads threads
// (threadIdx.x < kThreads) share the work.
template <int kRows, int kCols, int kLd, int kThreads>
__device__ __forceinline__ void stage_bf16_tile(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t ld, int rows,
                                                int cols, bool vec) {
    static_assert(kCols % 8 == 0 && kLd % 8 == 0, "16-byte pieces");
    constexpr int kPieces = kRows * kCols / 8;
    if (vec) {
#pragma unroll 4
        for (int e = threadIdx.x; e < kPieces; e += kThreads) {
            const int r = e / (kCols / 8), c = e % (kCols / 8) * 8;
            __nv_bfloat16* d = dst + r * kLd + c;
            if (r < rows && c < cols) {
                cp_async_16(d, src + r * ld + c);
            } else {
                *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
            }
        }
    } else {
        const __nv_bfloat16 zero = __float2bfloat16_rn(0.0f);
        for (int e = threadIdx.x; e < kRows * kCols; e += kThreads) {
            const int r = e / kCols, c = e % kCols;
            dst[r * kLd + c] = r < rows && c < cols ? src[r * ld + c] : zero;
        }
    }
}

// dst[r][c] = src[r·ld + c] for r < rows, c < cols, else 0, as stage_bf16_tile for an fp32 tile
// kept in fp32 (split later by its reader): vec: src and ld·4 bytes 16-byte aligned and cols a
// multiple of 4 or ≥ kCols, 16-byte cp.async copies (the caller commits, waits and synchronises),
// zeros stored directly; otherwise element by element.
template <int kRows, int kCols, int kLd, int kThreads>
__device__ __forceinline__ void stage_f32_tile(float* dst, const float* src, int64_t ld, int rows, int cols,
                                               bool vec) {
    static_assert(kCols % 4 == 0 && kLd % 4 == 0, "16-byte pieces");
    constexpr int kPieces = kRows * kCols / 4;
    if (vec) {
#pragma unroll 4
        for (int e = threadIdx.x; e < kPieces; e += kThreads) {
            const int r = e / (kCols / 4), c = e % (kCols / 4) * 4;
            float* d = dst + r * kLd + c;
            if (r < rows && c < cols) {
                cp_async_16(d, src + r * ld + c);
            } else {
                *reinterpret_cast<float4*>(d) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
    } else {
        for (int e = threadIdx.x; e < kRows * kCols; e += kThreads) {
            const int r = e / kCols, c = e % kCols;
            dst[r * kLd + c] = r < rows && c < cols ? src[r * ld + c] : 0.0f;
        }
    }
}

// hi[r][c] = bf16(v), lo[r][c] = bf16(v − hi) for v = src[r·ld + c] (r < rows, c < cols, else 0),
// as block_mma_ex's split, for an fp32 source. vec: src and ld·4 bytes 16-byte aligned and cols a
// multiple of 4 or ≥ kCols (float4 loads). Each thread loads 4 pieces before storing them. lo null:
// hi only (the value rounded once to bf16).
__device__ __forceinline__ uint32_t split_pair_hi(float v0, float v1, uint32_t& lo) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
    const float2 hf = __bfloat1622float2(h);
    lo = pack_bf16x2(v0 - hf.x, v1 - hf.y);
    return *reinterpret_cast<const uint32_t*>(&h);
}
template <int kRows, int kCols, int kLd, int kThreads>
__device__ __forceinline__ void stage_split_tile(__nv_bfloat16* hi, __nv_bfloat16* lo, const float* src, int64_t ld,
                                                 int rows, int cols, bool vec) {
    static_assert(kCols % 4 == 0 && kLd % 4 == 0, "4-element pieces");
    constexpr int kPer = kRows * kCols / 4 / kThreads, kBatch = kPer < 4 ? kPer : 4;
    static_assert(kRows * kCols / 4 % kThreads == 0 && kPer % kBatch == 0,
                  "every thread the same number of whole batches");
#pragma unroll 1
    for (int i0 = 0; i0 < kPer; i0 += kBatch) {
        float4 v[kBatch];
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
            const int e = int(threadIdx.x) + (i0 + i) * kThreads, r = e / (kCols / 4), c = e % (kCols / 4) * 4;
            const float* p = src + r * ld + c;
            if (r >= rows || c >= cols) {
                v[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            } else if (vec) {
                v[i] = *reinterpret_cast<const float4*>(p);
            } else {
                v[i] = make_float4(p[0], c + 1 < cols ? p[1] : 0.0f, c + 2 < cols ? p[2] : 0.0f,
                                   c + 3 < cols ? p[3] : 0.0f);
            }
        }
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
            const int e = int(threadIdx.x) + (i0 + i) * kThreads, r = e / (kCols / 4), c = e % (kCols / 4) * 4;
            uint2 h, l;
            h.x = split_pair_hi(v[i].x, v[i].y, l.x);
            h.y = split_pair_hi(v[i].z, v[i].w, l.y);
            *reinterpret_cast<uint2*>(hi + r * kLd + c) = h;
            if (lo) *reinterpret_cast<uint2*>(lo + r * kLd + c) = l;
        }
    }
}

}  // namespace detail
}  // namespace mslm::ops::cuda
