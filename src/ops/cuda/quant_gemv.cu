// The products of ops/cuda/quant_gemv.h: the quantized GEMV (decode, and any row count in tiles of
// up to 16 rows), the dequantization to bf16 (prefill's tensor-core GEMM reads that), and the upload.
//
// The GEMV is a weight stream. Each block stages its tile of x rows (bf16) in shared memory once;
// then every lane loads 16 bytes of one weight row at a time (32 4-bit codes or 16 int8 values,
// `ld.global.nc.L1::no_allocate`: read once, kept out of L1) for RW rows at once, so that RW loads
// are in flight per lane and each staged x value feeds RW weights. 4-bit codes turn into values
// through the 16-entry code book in shared memory (16 words in 16 banks: no lane ever conflicts,
// whatever the codes); the block's absmax (double quantization decoded here, once per 32 columns)
// scales the sum of 8 products. A group of KS warps shares RW rows, each warp a slice of the
// row (KS grows with the row length, so that short-and-wide and long-and-narrow products both spread
// over every SM), and their sums meet in shared memory.
//
// By default 4-bit weights in blocks of ≥ 32 columns take the int8 arithmetic instead (quant_gemv.h):
// x staged as int8 groups (stage_x_i8), each load decoded once to int8 and dotted with every x row by
// dp4a (quant_gemv_kernel's DP), or from kQuantMmaMinRows rows with fp32 absmax as int8 tensor-core
// tiles (quant_mma_kernel).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/quant_decode.cuh"
#include "ops/cuda/quant_gemv.h"
#include "ops/cuda/reduce.cuh"

namespace mslm::ops::cuda {

namespace {

using detail::bf;
using detail::pdl_trigger;
using detail::pdl_wait;
using detail::round_bf;
using detail::silu_rounded;
using detail::to_bf;
using detail::warp_sum;
using namespace quant_detail;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Shared memory for the staged x tile: rows of up to 80K columns at one row per tile.
constexpr size_t kMaxSmem = 160 * 1024;

// out(row r, output o) of the epilogue, v (and v2: SwiGLU's up row) the fp32 products.
__device__ __forceinline__ void epilogue(const QuantGemv& a, int64_t O, int64_t r, int64_t o, float v,
                                         float v2) {
    switch (a.epi) {
        case QuantEpilogue::Store:
            a.out[r * a.ld_out + o] = to_bf(a.bias ? v + bf(a.bias[o]) : v);
            break;
        case QuantEpilogue::Residual: {
            const float t = round_bf(a.bias ? v + bf(a.bias[o]) : v);
            uint16_t* p = a.out + r * a.ld_out + o;
            *p = to_bf(bf(*p) + t);
            break;
        }
        case QuantEpilogue::SwiGLU: {
            const float g = round_bf(a.bias ? v + bf(a.bias[o]) : v);
            const float u = round_bf(a.bias ? v2 + bf(a.bias[O + o]) : v2);
            a.out[r * a.ld_out + o] = to_bf(silu_rounded<__nv_bfloat16>(g) * u);
            break;
        }
        case QuantEpilogue::F32:
            a.out32[r * a.ld_out + o] = a.bias ? v + bf(a.bias[o]) : v;
            break;
    }
}

// x rows [m0, m0 + rows) of the tile as int8 groups of 32 columns (quant_detail::x_i8: each group's
// largest magnitude to 127; 32 bytes a group, its two 16-byte halves swapped in groups with bit 2
// set, decode8_i8's column order within), row r at xq + r · stride bytes, and the groups' scales at
// sxs[r · Kp / 32 + g]; zeros past K and for rows r ≥ mt. A thread a (row, group). vec: x and its
// rows 16-byte aligned.
__device__ __forceinline__ void stage_x_i8(const QuantGemv& a, int64_t m0, int mt, int rows, int64_t Kp,
                                           bool vec, char* xq, int64_t stride, float* sxs) {
    const int64_t K = a.W.in, G = Kp / 32;
    for (int64_t e = threadIdx.x; e < rows * G; e += blockDim.x) {
        const int m = int(e / G);
        const int64_t g = e - m * G;
        float v[32];
        const uint16_t* src = a.x + (m0 + m) * a.ld_x + g * 32;
#pragma unroll
        for (int h = 0; h < 4; ++h) {
            uint4 u = make_uint4(0, 0, 0, 0);
            if (m < mt) {
                if (vec) {
                    if (g * 32 + h * 8 < K) u = *reinterpret_cast<const uint4*>(src + h * 8);
                } else {
                    uint32_t p[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int64_t c = g * 32 + h * 8 + 2 * j;
                        p[j] = (c < K ? uint32_t(src[h * 8 + 2 * j]) : 0u) |
                               (c + 1 < K ? uint32_t(src[h * 8 + 2 * j + 1]) : 0u) << 16;
                    }
                    u = make_uint4(p[0], p[1], p[2], p[3]);
                }
            }
            const uint32_t wv[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                v[h * 8 + 2 * j] = bf_lo(wv[j]);
                v[h * 8 + 2 * j + 1] = bf_hi(wv[j]);
            }
        }
        float mx = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; ++i) mx = fmaxf(mx, fabsf(v[i]));
        const float inv = x_group_inv(mx);
        char* dst = xq + m * stride + g * 32;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            uint32_t b[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) b[i] = x_i8(v[8 * j + i], inv);
            *reinterpret_cast<uint2*>(dst + x_segment_at(g, j)) = pack_segment_i8(b);
        }
        sxs[m * G + g] = x_group_scale(mx);
    }
}

// Block (blockIdx.x, tile blockIdx.y): x rows [MT·tile, MT·tile + MT) against sets of RW weight rows
// per group of KS = 2^ks_log2 warps. FOUR: 4-bit codes (DQ: double-quantized absmax), else int8.
// Registers capped for 3 resident blocks (24 warps) an SM at one row of x, where the product is a
// weight stream that needs loads in flight, and 2 blocks above.
// DP (4-bit codes, blocks of ≥ 32 columns): x staged as int8 instead, per row and 32-column group
// (quant_detail::x_i8: its largest magnitude to 127; 32 bytes a group, halves swapped in groups with
// bit 2 set, as decode_gemv's DP product), the groups' scales after them; each 16-byte load of codes
// decoded once to int8 and dotted with every x row by dp4a (exact 32-column integer sums, scaled by
// absmax · the group's scale).
template <int MT, int RW, bool FOUR, bool DQ, bool DP = false>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 3 : 2)
    quant_gemv_kernel(QuantGemv a, int64_t O, int64_t Kp, int ks_log2, int bs_log2) {
    static_assert(!DP || FOUR, "DP: 4-bit codes");
    constexpr int SEGS = FOUR ? 4 : 2;
    constexpr int COLS = SEGS * 8;                  // columns per 16-byte load of weights
    extern __shared__ __align__(16) uint16_t xs[];  // (MT, Kp), swizzled segments; DP: int8 groups
    __shared__ float code_s[16];
    __shared__ float ncode_s[DQ ? 256 : 1];
    __shared__ float red[kWarps][MT * RW];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t K = a.W.in;
    const int64_t m0 = int64_t(blockIdx.y) * MT;
    const int mt = int(min(int64_t(MT), a.M - m0));
    const int KS = 1 << ks_log2;
    const int groups_per_block = kWarps >> ks_log2;
    const int wg = warp >> ks_log2, ks = warp & (KS - 1);
    const bool swiglu = a.epi == QuantEpilogue::SwiGLU;
    const int outs = swiglu ? RW / 2 : RW;  // outputs per group
    const int64_t n_groups = (O + outs - 1) / outs;
    const int64_t n_sets = (n_groups + groups_per_block - 1) / groups_per_block;
    const int64_t step = int64_t(KS) * 32 * COLS;
    const int64_t c_first = int64_t(ks * 32 + lane) * COLS;  // this lane's first load in a row
    // Rows of the group's set `set`: RW rows, or RW / 2 gate rows and their up rows for SwiGLU.
    auto rows_of = [&](int64_t set, int64_t(&row)[RW], bool(&ok)[RW]) {
        const int64_t o0 = (set * groups_per_block + wg) * outs;
#pragma unroll
        for (int j = 0; j < RW; ++j) {
            const int jj = swiglu ? j % (RW / 2) : j;
            ok[j] = o0 + jj < O;
            row[j] = swiglu && j >= RW / 2 ? O + o0 + jj : o0 + jj;
        }
        return o0;
    };

    pdl_trigger();
    uint4 first[RW];
    {
        int64_t row[RW];
        bool ok[RW];
        rows_of(blockIdx.x, row, ok);
#pragma unroll
        for (int j = 0; j < RW; ++j)
            first[j] = ok[j] && c_first < Kp
                           ? load_stream(a.W.data + row[j] * a.W.row_bytes + (FOUR ? c_first / 2 : c_first))
                           : make_uint4(0, 0, 0, 0);
    }
    pdl_wait();  // x (and a residual output) come from the previous kernels

    // Stage the tile, zero beyond K and beyond the last row.
    const int64_t segs_row = Kp / 8;
    const bool vec = (reinterpret_cast<uintptr_t>(a.x) | uintptr_t(a.ld_x * 2)) % 16 == 0 && K % 8 == 0;
    const int64_t G = Kp / 32;  // DP: x groups a row
    char* xq = reinterpret_cast<char*>(xs);
    float* sxs = reinterpret_cast<float*>(xq + MT * Kp);
    if constexpr (DP) stage_x_i8(a, m0, mt, MT, Kp, vec, xq, Kp, sxs);
    for (int64_t e = threadIdx.x; !DP && e < MT * segs_row; e += kThreads) {
        const int m = int(e / segs_row);
        const int64_t s = e - m * segs_row;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (m < mt) {
            const uint16_t* src = a.x + (m0 + m) * a.ld_x + s * 8;
            if (vec) {
                if (s * 8 < K) v = *reinterpret_cast<const uint4*>(src);
            } else {
                uint32_t p[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const uint32_t lo = s * 8 + 2 * j < K ? src[2 * j] : 0u;
                    const uint32_t hi = s * 8 + 2 * j + 1 < K ? src[2 * j + 1] : 0u;
                    p[j] = lo | hi << 16;
                }
                v = make_uint4(p[0], p[1], p[2], p[3]);
            }
        }
        *reinterpret_cast<uint4*>(xs + m * Kp + swizzle<SEGS>(s) * 8) = v;
    }
    if (FOUR && threadIdx.x < 16) code_s[threadIdx.x] = a.W.code[threadIdx.x];
    if constexpr (DQ)
        for (int i = threadIdx.x; i < 256; i += kThreads) ncode_s[i] = a.W.nested_code[i];
    __syncthreads();

    const char* code_base = reinterpret_cast<const char*>(code_s);
    uint32_t book[4] = {};
    if constexpr (DP) int8_book(book, a.W.code);
    const uint32_t xq_at = static_cast<uint32_t>(__cvta_generic_to_shared(xq));
    const uint32_t swz16 =
        16u * uint32_t((lane >> 2) & 1);  // DP: the lane's groups' half swap (c0 / 32 ≡ lane mod 4)

    for (int64_t set = blockIdx.x; set < n_sets; set += gridDim.x) {
        int64_t row[RW];
        bool ok[RW];
        const int64_t o0 = rows_of(set, row, ok);
        float acc[MT][RW];
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int j = 0; j < RW; ++j) acc[m][j] = 0.0f;

        for (int64_t c0 = c_first; c0 < Kp; c0 += step) {
            uint4 w[RW];
            const bool preloaded = set == blockIdx.x && c0 == c_first;
#pragma unroll
            for (int j = 0; j < RW; ++j)
                w[j] = preloaded ? first[j]
                       : ok[j]   ? load_stream(a.W.data + row[j] * a.W.row_bytes + (FOUR ? c0 / 2 : c0))
                                 : make_uint4(0, 0, 0, 0);
            float s_lo[RW], s_hi[RW];
            if constexpr (FOUR) {
                const int64_t b = c0 >> bs_log2;
#pragma unroll
                for (int j = 0; j < RW; ++j) {
                    s_lo[j] = ok[j] ? block_absmax<DQ>(a.W, ncode_s, row[j], b) : 0.0f;
                    // Blocks of 16: the load's second half has a block of its own (the last block
                    // of a row stands in past the row's end, where x is zero).
                    s_hi[j] = bs_log2 >= 5 || !ok[j]
                                  ? s_lo[j]
                                  : block_absmax<DQ>(a.W, ncode_s, row[j], min(b + 1, a.W.row_blocks - 1));
                }
            }
            if constexpr (DP) {
                // Blocks of ≥ 32: one absmax a load. Every x row against every weight row's load.
                const int64_t g = c0 >> 5;
                uint32_t v[RW][8];
#pragma unroll
                for (int j = 0; j < RW; ++j) decode32_i8(v[j], w[j], book);
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    const uint32_t at = xq_at + uint32_t((m * G + g) * 32);
                    const uint4 xa = lds128(at + swz16), xb = lds128(at + (swz16 ^ 16u));
                    const float sx = sxs[m * G + g];
#pragma unroll
                    for (int j = 0; j < RW; ++j)
                        acc[m][j] = fmaf(__int2float_rn(dot32_i8(v[j], xa, xb)), s_lo[j] * sx, acc[m][j]);
                }
                continue;
            }
            const int64_t sbase = c0 / 8;
#pragma unroll
            for (int q = 0; q < SEGS; ++q) {
                const int64_t xoff = swizzle<SEGS>(sbase + q) * 8;
                auto add = [&](int m, int j, float p) {
                    if constexpr (FOUR)
                        acc[m][j] = fmaf(p, q < SEGS / 2 ? s_lo[j] : s_hi[j], acc[m][j]);
                    else
                        acc[m][j] += p;
                };
                if constexpr (MT <= 2) {  // few x rows: keep them, decode one weight row at a time
                    float xf[MT][8];
#pragma unroll
                    for (int m = 0; m < MT; ++m) load_x(xf[m], xs + m * Kp + xoff);
#pragma unroll
                    for (int j = 0; j < RW; ++j) {
                        float wv[8];
                        decode8<FOUR>(wv, w[j], q, code_base);
#pragma unroll
                        for (int m = 0; m < MT; ++m) add(m, j, dot8(wv, xf[m]));
                    }
                } else {  // many: decode every weight row once, then stream the x rows past them
                    float wv[RW][8];
#pragma unroll
                    for (int j = 0; j < RW; ++j) decode8<FOUR>(wv[j], w[j], q, code_base);
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        float xf[8];
                        load_x(xf, xs + m * Kp + xoff);
#pragma unroll
                        for (int j = 0; j < RW; ++j) add(m, j, dot8(wv[j], xf));
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int j = 0; j < RW; ++j) acc[m][j] = warp_sum(acc[m][j]);
        if (lane == 0)
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int j = 0; j < RW; ++j) red[warp][m * RW + j] = acc[m][j];
        __syncthreads();
        if (ks == 0 && lane < mt * outs) {
            const int m = lane / outs, jj = lane % outs;
            const int64_t o = o0 + jj;
            if (o < O) {
                float v = 0.0f, v2 = 0.0f;
                for (int k = 0; k < KS; ++k) {  // fixed order: results do not depend on timing
                    v += red[wg * KS + k][m * RW + jj];
                    if (swiglu) v2 += red[wg * KS + k][m * RW + jj + RW / 2];
                }
                if constexpr (!FOUR) {
                    v *= __ldg(a.W.scale + o);
                    if (swiglu) v2 *= __ldg(a.W.scale + O + o);
                }
                epilogue(a, O, m0 + m, o, v, v2);
            }
        }
        __syncthreads();  // red is reused by the next set
    }
}

// The 4-bit product on tensor cores for 2..16 rows of x (MMA; fp32 absmax, blocks of ≥ 32 columns):
// the dp4a tiles' arithmetic — the code book and x in int8, exact 32-column integer sums scaled by
// absmax · the x group's scale — with each sum an m16n8k32 int8 product: 16 weight rows (gate rows
// and their up rows for SwiGLU: 8 + 8) by NT · 8 x rows, 32 columns deep. Lane (grp, q) holds code
// word q of the chunk's 16-byte load for rows grp and grp + 8 (decode8_i8: a[0], a[1] from its first
// int8 word, a[2], a[3] from its second) and x row grp's words (A_q, B_q) of the group
// (pack_segment_i8's order matches, so k position 4q + i is the same column in A and B). A group of
// KS warps splits a tile's chunks (warp ks takes batches of kMmaChunks consecutive ones, ks, ks +
// KS, ...; their partial sums meet in shared memory). Each warp streams its batches — 16 rows × 64
// bytes of codes and their absmax — through a ring of kMmaStages slots with cp.async (its first
// batches before the wait for the previous kernel, the next ones across tiles and reductions) and
// reads the codes back as A fragments with ldmatrix.
constexpr int kMmaChunks = 4;               // chunks of 32 columns a batch
constexpr size_t kMmaMaxSmem = 220 * 1024;  // the ring, the x tile, its scales, the partial sums
constexpr int kMmaStages = 4;               // batches a warp has in flight
constexpr size_t kMmaSlot = 16 * 64 + 16 * kMmaChunks * sizeof(float);  // codes, then absmax [row][chunk]
// Where chunk c of tile row r sits in a slot: rows of 64 bytes, chunks XOR-swizzled by r / 2 so that
// ldmatrix's 8 rows of one chunk fall in 8 distinct 16-byte bank groups.
__device__ __forceinline__ uint32_t mma_slot_at(int r, int c) {
    return uint32_t(r * 64 + ((c ^ ((r >> 1) & 3)) * 16));
}
template <int NT>
__global__ void __launch_bounds__(kThreads, 2)
    quant_mma_kernel(QuantGemv a, int64_t O, int64_t Kp, int ks_log2, int bs_log2, int64_t xstride) {
    constexpr int MT = 8 * NT;
    extern __shared__ __align__(16) uint16_t smem[];
    char* ring = reinterpret_cast<char*>(smem);                // (warps, stages) slots
    char* xq = ring + size_t(kWarps) * kMmaStages * kMmaSlot;  // (MT, xstride) int8 groups
    float* sxs = reinterpret_cast<float*>(xq + MT * xstride);  // (MT, Kp / 32) scales
    float* red = sxs + MT * (Kp / 32);                         // (warps, 16, MT) partial sums
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane >> 2, q = lane & 3;
    const int64_t K = a.W.in, G = Kp / 32;
    const int64_t m0 = int64_t(blockIdx.y) * MT;
    const int mt = int(min(int64_t(MT), a.M - m0));
    const int KS = 1 << ks_log2, wg = warp >> ks_log2, ks = warp & (KS - 1);
    const int groups_per_block = kWarps >> ks_log2;
    const bool swiglu = a.epi == QuantEpilogue::SwiGLU;
    const int outs = swiglu ? 8 : 16;  // outputs a tile
    const int64_t n_sets = ((O + outs - 1) / outs + groups_per_block - 1) / groups_per_block;
    const int64_t span = int64_t(KS) * 32 * kMmaChunks, first_col = int64_t(ks) * 32 * kMmaChunks;
    const int64_t batches = first_col < Kp ? (Kp - first_col + span - 1) / span : 0;  // a tile, this warp
    const int64_t my_sets = int64_t(blockIdx.x) < n_sets ? (n_sets - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    const int64_t items = my_sets * batches;  // this warp's batches, in order
    char* my_ring = ring + size_t(warp) * kMmaStages * kMmaSlot;
    const uint32_t ring_at = static_cast<uint32_t>(__cvta_generic_to_shared(my_ring));
    // Item k: batch k % batches of the k / batches-th set; its copies into slot k % kMmaStages (zeros
    // past the row's end and for rows past O), one commit group an item, empty or not.
    auto issue = [&](int64_t k) {
        if (k < items) {
            const int64_t set = blockIdx.x + (k / batches) * gridDim.x, j = k % batches;
            const int64_t o0 = (set * groups_per_block + wg) * outs;
            char* slot = my_ring + size_t(k % kMmaStages) * kMmaSlot;
            float* am = reinterpret_cast<float*>(slot + 16 * 64);
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // 64 (row, chunk) pairs, 2 a lane
                const int i = lane + 32 * h, r = i >> 2, c = i & 3;
                const int64_t o = swiglu ? o0 + (r & 7) : o0 + r;
                const int64_t row = swiglu && r >= 8 ? O + o : o;
                const int64_t col = first_col + j * span + int64_t(c) * 32;
                if (o < O && col < Kp) {
                    detail::cp_async_16(slot + mma_slot_at(r, c), a.W.data + row * a.W.row_bytes + col / 2);
                    detail::cp_async_4(am + r * kMmaChunks + c,
                                       a.W.scale + row * a.W.row_blocks + (col >> bs_log2));
                } else {
                    *reinterpret_cast<uint4*>(slot + mma_slot_at(r, c)) = make_uint4(0, 0, 0, 0);
                    am[r * kMmaChunks + c] = 0.0f;
                }
            }
        }
        detail::cp_async_commit();
    };
    pdl_trigger();
    for (int k = 0; k + 1 < kMmaStages; ++k) issue(k);  // weights are constants: before the wait
    pdl_wait();  // x (and a residual output) come from the previous kernels
    const bool vec = (reinterpret_cast<uintptr_t>(a.x) | uintptr_t(a.ld_x * 2)) % 16 == 0 && K % 8 == 0;
    stage_x_i8(a, m0, mt, MT, Kp, vec, xq, xstride, sxs);
    uint32_t book[4];
    int8_book(book, a.W.code);
    __syncthreads();
    const uint32_t xq_at = static_cast<uint32_t>(__cvta_generic_to_shared(xq));
    // ldmatrix.x4 over chunks (u, u + 1) of a slot: lane l gives row (l & 7) + 8 · (l >> 3 & 1) of
    // chunk u + (l >> 4); register 0 / 1 / 2 / 3 = rows grp / grp + 8 of chunk u / u + 1, word q.
    const int lr = (lane & 7) + 8 * ((lane >> 3) & 1), lc = lane >> 4;
    int64_t k = 0;
    for (int64_t si = 0; si < my_sets; ++si) {
        const int64_t set = blockIdx.x + si * gridDim.x;
        const int64_t o0 = (set * groups_per_block + wg) * outs;
        float acc[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
        for (int64_t j = 0; j < batches; ++j, ++k) {
            detail::cp_async_wait<kMmaStages - 2>();
            __syncwarp();  // item k's copies visible to the warp; item k - 1's slot free
            issue(k + kMmaStages - 1);
            const uint32_t slot = ring_at + uint32_t(k % kMmaStages) * uint32_t(kMmaSlot);
            const float* am =
                reinterpret_cast<const float*>(my_ring + size_t(k % kMmaStages) * kMmaSlot + 16 * 64);
#pragma unroll
            for (int u = 0; u < kMmaChunks; u += 2) {
                uint32_t fr[4];
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                             : "=r"(fr[0]), "=r"(fr[1]), "=r"(fr[2]), "=r"(fr[3])
                             : "r"(slot + mma_slot_at(lr, u + lc)));
#pragma unroll
                for (int v = 0; v < 2; ++v) {
                    const int64_t c0 = first_col + j * span + int64_t(u + v) * 32;
                    if (c0 >= Kp) break;
                    uint32_t af[4];
                    decode8_i8(af[0], af[2], fr[2 * v], book);
                    decode8_i8(af[1], af[3], fr[2 * v + 1], book);
                    const float am0 = am[grp * kMmaChunks + u + v], am1 = am[(grp + 8) * kMmaChunks + u + v];
                    const int64_t g = c0 >> 5;
                    const uint32_t seg = x_segment_at(g, q);  // x's words (A_q, B_q) of the group
#pragma unroll
                    for (int n = 0; n < NT; ++n) {
                        const uint2 xw = lds64(xq_at + uint32_t((n * 8 + grp) * xstride + g * 32) + seg);
                        const uint32_t bf[2] = {xw.x, xw.y};
                        int d[4];
                        detail::mma_m16n8k32_s8(d, af, bf);
                        const float s0 = sxs[(n * 8 + 2 * q) * G + g], s1 = sxs[(n * 8 + 2 * q + 1) * G + g];
                        acc[n][0] = fmaf(__int2float_rn(d[0]), am0 * s0, acc[n][0]);
                        acc[n][1] = fmaf(__int2float_rn(d[1]), am0 * s1, acc[n][1]);
                        acc[n][2] = fmaf(__int2float_rn(d[2]), am1 * s0, acc[n][2]);
                        acc[n][3] = fmaf(__int2float_rn(d[3]), am1 * s1, acc[n][3]);
                    }
                }
            }
        }
        // red[warp][row j][x row m]: lane (grp, q) holds rows grp, grp + 8 and x rows 8n + 2q, + 1.
        float* rw = red + warp * 16 * MT;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            rw[grp * MT + n * 8 + 2 * q] = acc[n][0];
            rw[grp * MT + n * 8 + 2 * q + 1] = acc[n][1];
            rw[(grp + 8) * MT + n * 8 + 2 * q] = acc[n][2];
            rw[(grp + 8) * MT + n * 8 + 2 * q + 1] = acc[n][3];
        }
        __syncthreads();
        // The group's outputs: its KS warps' partials in a fixed order (the same bits every run).
        for (int e = ks * 32 + lane; e < outs * mt; e += KS * 32) {
            const int m = e / outs, jj = e % outs;
            const int64_t o = o0 + jj;
            if (o >= O) continue;
            float v = 0.0f, v2 = 0.0f;
            for (int k = 0; k < KS; ++k) {
                const float* rk = red + (wg * KS + k) * 16 * MT;
                v += rk[jj * MT + m];
                if (swiglu) v2 += rk[(jj + 8) * MT + m];
            }
            epilogue(a, O, m0 + m, o, v, v2);
        }
        __syncthreads();  // red is reused by the next set
    }
    detail::cp_async_wait<0>();
}

// The MMA kernel's x row stride in shared memory: Kp rounded up to 128 bytes, plus 32, so that the 4
// x rows a quarter-warp reads (32 bytes each) fall in 4 distinct 32-byte bank groups.
int64_t mma_xstride(int64_t Kp) {
    return (Kp + 127) / 128 * 128 + 32;
}
size_t mma_smem(int NT, int64_t Kp) {
    return size_t(kWarps) * kMmaStages * kMmaSlot + size_t(8 * NT) * size_t(mma_xstride(Kp)) +
           size_t(8 * NT) * size_t(Kp / 32) * sizeof(float) +
           size_t(kWarps) * 16 * size_t(8 * NT) * sizeof(float);
}

// The device's SM count and how many blocks of `kernel` (kThreads threads, smem bytes of dynamic
// shared memory) fit on one SM; the kernel is allowed max_smem once per device (configured: the
// instantiation's own static).
struct Occupancy {
    int sms = 0, resident = 0;
};
template <typename Kernel>
Occupancy occupancy(Kernel kernel, size_t smem, int& configured, size_t max_smem = kMaxSmem) {
    int device = 0;
    Occupancy o;
    detail::check_cuda<uint16_t>(cudaGetDevice(&device), "cudaGetDevice", "quant_gemv");
    if (configured != device) {
        detail::check_cuda<uint16_t>(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(max_smem)),
            "cudaFuncSetAttribute", "quant_gemv");
        configured = device;
    }
    detail::check_cuda<uint16_t>(cudaDeviceGetAttribute(&o.sms, cudaDevAttrMultiProcessorCount, device),
                                 "cudaDeviceGetAttribute", "quant_gemv");
    detail::check_cuda<uint16_t>(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.resident, kernel, kThreads, smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor", "quant_gemv");
    o.resident = std::max(o.resident, 1);
    return o;
}

template <int NT>
void launch_mma(const QuantGemv& a, int64_t O, int64_t Kp, cudaStream_t stream) {
    auto kernel = quant_mma_kernel<NT>;
    static int configured = -1;  // per instantiation
    const size_t smem = mma_smem(NT, Kp);
    const Occupancy occ = occupancy(kernel, smem, configured, kMmaMaxSmem);
    // Warps a tile: each at least one batch of kMmaChunks chunks, at most the block.
    const int64_t chunks = Kp / 32;
    int ks_log2 = 0;
    while (ks_log2 < 3 && (chunks >> (ks_log2 + 1)) >= kMmaChunks) ++ks_log2;
    const int outs = a.epi == QuantEpilogue::SwiGLU ? 8 : 16;
    const int64_t sets = ((O + outs - 1) / outs + (kWarps >> ks_log2) - 1) / (kWarps >> ks_log2);
    const int64_t tiles = (a.M + 8 * NT - 1) / (8 * NT);
    const int64_t blocks =
        std::max<int64_t>(1, std::min<int64_t>(sets, int64_t(occ.sms) * occ.resident / tiles));
    MSLM_CHECK(tiles <= 65535, "quant_gemv: {} rows of x in {} tiles of {} (at most 65535 tiles)", a.M, tiles,
               8 * NT);
    int bs_log2 = 0;
    while ((int64_t(1) << bs_log2) < a.W.blocksize) ++bs_log2;
    detail::check_cuda<uint16_t>(
        detail::launch_pdl(kernel, dim3(unsigned(blocks), unsigned(tiles)), dim3(kThreads), smem, stream, a,
                           O, Kp, ks_log2, bs_log2, mma_xstride(Kp)),
        "launch", "quant_gemv");
}

template <int MT, int RW, bool FOUR, bool DQ, bool DP>
void launch_gemv(const QuantGemv& a, int64_t O, int64_t Kp, cudaStream_t stream) {
    auto kernel = quant_gemv_kernel<MT, RW, FOUR, DQ, DP>;
    static int configured = -1;  // per instantiation
    const size_t smem = DP ? size_t(MT) * size_t(Kp) + size_t(MT) * size_t(Kp / 32) * sizeof(float)
                           : size_t(MT) * size_t(Kp) * sizeof(uint16_t);
    const Occupancy occ = occupancy(kernel, smem, configured);
    constexpr int cols = FOUR ? 32 : 16;
    // Warps per group of rows: enough 16-byte loads per row for a warp each, at most the block.
    const int64_t loads = Kp / cols;
    int ks_log2 = 0;
    while (ks_log2 < 3 && (loads >> (ks_log2 + 1)) >= 32) ++ks_log2;
    const int outs = a.epi == QuantEpilogue::SwiGLU ? RW / 2 : RW;
    const int64_t sets = ((O + outs - 1) / outs + (kWarps >> ks_log2) - 1) / (kWarps >> ks_log2);
    const int64_t blocks = std::min<int64_t>(sets, int64_t(occ.sms) * occ.resident);
    const int64_t tiles = (a.M + MT - 1) / MT;
    MSLM_CHECK(tiles <= 65535, "quant_gemv: {} rows of x in {} tiles of {} (at most 65535 tiles)", a.M, tiles,
               MT);
    int bs_log2 = 0;
    while (FOUR && (int64_t(1) << bs_log2) < a.W.blocksize) ++bs_log2;
    detail::check_cuda<uint16_t>(detail::launch_pdl(kernel, dim3(unsigned(blocks), unsigned(tiles)),
                                                    dim3(kThreads), smem, stream, a, O, Kp, ks_log2, bs_log2),
                                 "launch", "quant_gemv");
}

template <bool FOUR, bool DQ, bool DP = false>
void dispatch_tile(const QuantGemv& a, int64_t O, int64_t Kp, int tile, cudaStream_t s) {
    switch (tile) {
        case 1:
            launch_gemv<1, 4, FOUR, DQ, DP>(a, O, Kp, s);
            break;
        case 2:
            launch_gemv<2, 4, FOUR, DQ, DP>(a, O, Kp, s);
            break;
        case 4:
            launch_gemv<4, 4, FOUR, DQ, DP>(a, O, Kp, s);
            break;
        case 8:
            launch_gemv<8, 2, FOUR, DQ, DP>(a, O, Kp, s);
            break;
        default:
            launch_gemv<16, 2, FOUR, DQ, DP>(a, O, Kp, s);
            break;
    }
}

// Whether rows of x on 4-bit codes with fp32 absmax take the tensor-core kernel (quant_mma_kernel;
// the dp4a arithmetic): by default from kQuantMmaMinRows rows (measured on the H200: slower than the
// dp4a tiles at 2 and 4 rows, faster from 8 — and 5..8 rows cost either kernel what 8 do; see
// docs/PERFORMANCE.md); MSLM_QUANT_GEMV_MMA=1 takes it from 2 rows, 0 never (read at each call).
constexpr int64_t kQuantMmaMinRows = 5;
bool quant_mma(const QuantGemv& a, int64_t Kp) {
    const char* env = std::getenv("MSLM_QUANT_GEMV_MMA");
    const std::string mode = env ? env : "";
    if (mode == "0") return false;
    const int64_t min_rows = mode == "1" ? 2 : kQuantMmaMinRows;
    return a.M >= min_rows && mma_smem(a.M <= 8 ? 1 : 2, Kp) <= kMmaMaxSmem;
}

// Whether 4-bit products run on dp4a (quant_gemv_kernel's DP: blocks of ≥ 32 columns):
// MSLM_QUANT_GEMV_DP4A=1 or 0 (read at each call), else kQuantDp4aDefault.
constexpr bool kQuantDp4aDefault = true;
bool quant_dp4a(const QuantWeight& W) {
    const char* env = std::getenv("MSLM_QUANT_GEMV_DP4A");
    const bool on = env && std::string(env) == "1"   ? true
                    : env && std::string(env) == "0" ? false
                                                     : kQuantDp4aDefault;
    return on && W.format != QuantFormat::Int8 && W.blocksize >= 32;
}

void check_weight(const QuantWeight& W, const char* op) {
    MSLM_CHECK(W.out > 0 && W.in > 0 && W.data && detail::aligned16(W.data) && W.row_bytes % 16 == 0 &&
                   W.row_bytes * (W.format == QuantFormat::Int8 ? 1 : 2) >= quant_padded_in(W.format, W.in),
               "{}: malformed {} weight ({} x {}, {} bytes a row)", op, quant_format_name(W.format), W.out,
               W.in, W.row_bytes);
    if (W.format == QuantFormat::Int8) {
        MSLM_CHECK(W.scale, "{}: int8 weight without row scales", op);
        return;
    }
    MSLM_CHECK(W.blocksize >= 16 && W.blocksize <= 4096 && (W.blocksize & (W.blocksize - 1)) == 0 &&
                   W.row_blocks == (W.in + W.blocksize - 1) / W.blocksize,
               "{}: 4-bit weight with blocksize {} and {} blocks a row for {} columns", op, W.blocksize,
               W.row_blocks, W.in);
    MSLM_CHECK(W.scale || (W.absmax_q && W.nested_absmax && W.nested_code),
               "{}: 4-bit weight without absmax (fp32, or the three double-quantization tensors)", op);
}

__global__ void dequantize_kernel(uint16_t* __restrict__ out, QuantWeight W) {
    const int64_t n = W.out * W.in;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
         e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = e / W.in, c = e - r * W.in;
        const uint8_t* row = W.data + r * W.row_bytes;
        float v;
        if (W.format == QuantFormat::Int8) {
            v = float(int8_t(row[c])) * W.scale[r];
        } else {
            const uint8_t byte = row[c / 2];
            const int q = c % 2 == 0 ? byte >> 4 : byte & 15;
            const int64_t b = c / W.blocksize;
            const float amax = W.scale ? block_absmax<false>(W, nullptr, r, b)
                                       : __fadd_rn(__fmul_rn(W.nested_code[W.absmax_q[r * W.row_blocks + b]],
                                                             W.nested_absmax[(r * W.row_blocks + b) >> 8]),
                                                   W.offset);
            v = __fmul_rn(W.code[q], amax);
        }
        out[e] = to_bf(v);
    }
}

}  // namespace

int64_t quant_gemv_outputs(const QuantGemv& a) {
    return a.epi == QuantEpilogue::SwiGLU ? a.W.out / 2 : a.W.out;
}

void quant_gemv(const QuantGemv& a, void* stream) {
    check_weight(a.W, "quant_gemv");
    MSLM_CHECK(a.M >= 0 && (a.M == 0 || (a.x && a.ld_x >= a.W.in)),
               "quant_gemv: x ({} rows, row stride {}) for {} columns", a.M, a.ld_x, a.W.in);
    MSLM_CHECK(a.epi != QuantEpilogue::SwiGLU || a.W.out % 2 == 0,
               "quant_gemv: SwiGLU needs [gate | up] rows, got {} rows", a.W.out);
    const int64_t O = quant_gemv_outputs(a);
    MSLM_CHECK(a.ld_out >= O && (a.epi == QuantEpilogue::F32 ? a.out32 != nullptr : a.out != nullptr),
               "quant_gemv: output (row stride {}) for {} outputs", a.ld_out, O);
    if (a.M == 0) return;
    const int64_t Kp = quant_padded_in(a.W.format, a.W.in);
    int tile = 1;
    while (tile < std::min<int64_t>(a.M, kQuantGemvMaxRows)) tile *= 2;
    while (tile > 1 && size_t(tile) * size_t(Kp) * 2 > kMaxSmem) tile /= 2;
    MSLM_CHECK(size_t(Kp) * 2 <= kMaxSmem,
               "quant_gemv: a row of {} columns does not fit in shared memory (at most {})", a.W.in,
               kMaxSmem / 2);
    auto s = static_cast<cudaStream_t>(stream);
    if (a.W.format == QuantFormat::Int8)
        dispatch_tile<false, false>(a, O, Kp, tile, s);
    else if (quant_dp4a(a.W) && a.W.scale && quant_mma(a, Kp)) {
        if (a.M <= 8)
            launch_mma<1>(a, O, Kp, s);
        else
            launch_mma<2>(a, O, Kp, s);
    } else if (quant_dp4a(a.W) && a.W.scale)
        dispatch_tile<true, false, true>(a, O, Kp, tile, s);
    else if (quant_dp4a(a.W))
        dispatch_tile<true, true, true>(a, O, Kp, tile, s);
    else if (a.W.scale)
        dispatch_tile<true, false>(a, O, Kp, tile, s);
    else
        dispatch_tile<true, true>(a, O, Kp, tile, s);
}

void quant_dequantize_bf16(uint16_t* out, const QuantWeight& W, void* stream) {
    check_weight(W, "quant_dequantize_bf16");
    MSLM_CHECK(out, "quant_dequantize_bf16: null output");
    const unsigned blocks = detail::grid_size<uint16_t>(W.out * W.in, "quant_dequantize_bf16");
    dequantize_kernel<<<blocks, detail::kThreads, 0, static_cast<cudaStream_t>(stream)>>>(out, W);
    detail::check_launch<uint16_t>("quant_dequantize_bf16");
}

QuantWeight quant_weight_upload(const QuantHostWeight& w, void* block, void* stream) {
    MSLM_CHECK(block && reinterpret_cast<uintptr_t>(block) % 256 == 0,
               "quant_weight_upload: the block must be 256-byte aligned");
    auto s = static_cast<cudaStream_t>(stream);
    char* p = static_cast<char*>(block);
    auto put = [&](const void* src, size_t bytes) {
        char* dst = p;
        if (bytes)
            detail::check_cuda<uint16_t>(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s),
                                         "cudaMemcpyAsync", "quant_weight_upload");
        p += (bytes + 255) / 256 * 256;
        return dst;
    };
    QuantWeight v;
    v.format = w.format;
    v.out = w.out;
    v.in = w.in;
    v.row_bytes = w.row_bytes;
    v.blocksize = w.blocksize;
    v.row_blocks = w.row_blocks;
    v.offset = w.offset;
    std::copy(w.code.begin(), w.code.end(), v.code);
    v.data = reinterpret_cast<const uint8_t*>(put(w.data.data(), w.data.size()));
    const char* scale = put(w.scale.data(), sizeof(float) * w.scale.size());
    v.scale = w.scale.empty() ? nullptr : reinterpret_cast<const float*>(scale);
    if (w.double_quant) {
        v.absmax_q = reinterpret_cast<const uint8_t*>(put(w.absmax_q.data(), w.absmax_q.size()));
        v.nested_absmax = reinterpret_cast<const float*>(
            put(w.nested_absmax.data(), sizeof(float) * w.nested_absmax.size()));
        MSLM_CHECK(w.nested_code.size() == 256,
                   "quant_weight_upload: double quantization without its 256-entry map");
        v.nested_code = reinterpret_cast<const float*>(put(w.nested_code.data(), sizeof(float) * 256));
    }
    return v;
}

}  // namespace mslm::ops::cuda
