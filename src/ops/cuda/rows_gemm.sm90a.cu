// rows_gemm.h: the decode step's few-row products on wgmma, built for sm_90a only.
#include <cooperative_groups.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/rows_gemm.h"
#include "ops/cuda/tensor_map.h"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"
#include "ops/cuda/wgmma_probe.h"

namespace mslm::ops::cuda {

namespace {

using namespace detail;
namespace cg = cooperative_groups;

constexpr int kStep = 64;             // k a step: one 128-byte swizzled row of bf16
constexpr int kTileBytes = 64 * 128;  // a 64-row × 64-deep swizzled tile (8 atoms of 1024 bytes)
constexpr int kRing = 10;             // W slots (fewer where the slice has fewer steps)
constexpr int kThreads = 128;         // one warpgroup
constexpr int kMaxSplit = 8;          // the portable cluster size
constexpr int kRedLd = 68;            // fp32 partial sums' row pitch
constexpr int kMaxATiles = 17;        // x's staged steps: 17 + 10 tiles + barriers ≤ 227 KB
constexpr int kSmallBytes = 512;      // the ring's barriers, x's barrier, the rows' partial Σx²
static_assert(64 * kRedLd * 4 <= 3 * kTileBytes, "the partial sums fit in a ring of 3 slots");
static_assert((kRing + 1) * 8 + 64 * 4 <= kSmallBytes, "the barriers and sums of squares fit");

// The ring's slots for a slice of a_tiles steps: no more than it has steps, at least the partial
// sums' room.
__host__ __device__ constexpr int ring_tiles(int a_tiles) {
    return a_tiles < 3 ? 3 : a_tiles < kRing ? a_tiles : kRing;
}
// x's slice, the ring, the small region, + the 1024-byte alignment.
size_t smem_bytes(int a_tiles) {
    return size_t(a_tiles + ring_tiles(a_tiles)) * kTileBytes + kSmallBytes + 1024;
}

// Grid (column tiles, splits); cluster (1, splits). tw: W's map (boxes of 64 rows, or 32 for
// SwiGLU's gate and up halves); tx: x's (M rows, boxes of 64: the rows past M read as zeros). Thread 0
// issues the copies: x's slice onto one barrier, W's steps onto their slots' barriers, the first
// min(ring, slice) of them before the programmatic-dependent wait when kEarlyW (W constant).
template <bool kNorm, RowsEpilogue kEpi, bool kEarlyW>
__global__ void __launch_bounds__(kThreads, 1)
    rows_gemm_kernel(const __grid_constant__ CUtensorMap tw, const __grid_constant__ CUtensorMap tx,
                     const RowsGemm p, int k_steps) {
    extern __shared__ unsigned char smem_raw[];
    unsigned char* const xs = tma::smem_1024(smem_raw);  // x's steps, the W ring, the small region
    const cg::cluster_group cluster = cg::this_cluster();
    const int S = int(cluster.num_blocks()), rank = int(cluster.block_rank());
    const int ks0 = int(int64_t(k_steps) * rank / S), n_ks = int(int64_t(k_steps) * (rank + 1) / S) - ks0;
    const int a_tiles = (k_steps + S - 1) / S, R = ring_tiles(a_tiles);
    unsigned char* const ring = xs + a_tiles * kTileBytes;
    uint64_t* const full = reinterpret_cast<uint64_t*>(ring + R * kTileBytes);  // [kRing]
    uint64_t* const x_full = full + kRing;
    float* const ss_part = reinterpret_cast<float*>(x_full + 1);  // [64]: this slice's Σx² of each row
    const int M = int(p.M), I = int(p.I), O = int(p.O);
    constexpr bool kSwiGLU = kEpi == RowsEpilogue::SwiGLU;
    const int o0 = int(blockIdx.x) * (kSwiGLU ? 32 : 64);  // the tile's first output column
    const bool leader = threadIdx.x == 0;

    // Step j of the slice into slot j % R (the slot's previous step's products are done).
    auto load_w = [&](int j) {
        const int slot = j % R, k0 = (ks0 + j) * kStep;
        unsigned char* dst = ring + slot * kTileBytes;
        tma::mbar_arrive_expect(&full[slot], kTileBytes);
        if constexpr (kSwiGLU) {  // gate rows o0.., then up rows O + o0..
            tma::load_2d(dst, &tw, &full[slot], k0, o0);
            tma::load_2d(dst + kTileBytes / 2, &tw, &full[slot], k0, O + o0);
        } else {
            tma::load_2d(dst, &tw, &full[slot], k0, o0);
        }
    };
    if (leader) {
        for (int s = 0; s < R; ++s) tma::mbar_init(&full[s], 1);
        tma::mbar_init(x_full, 1);
        tma::mbar_init_fence();
    }
    __syncthreads();
    const int pre = min(R, n_ks);
    if (kEarlyW && leader)
        for (int j = 0; j < pre; ++j) load_w(j);
    pdl_wait();  // x (and the residual out) may come from the previous kernel
    pdl_trigger();
    if (leader) {
        tma::mbar_arrive_expect(x_full, uint32_t(n_ks) * kTileBytes);
        for (int j = 0; j < n_ks; ++j) tma::load_2d(xs + j * kTileBytes, &tx, x_full, (ks0 + j) * kStep, 0);
        if (!kEarlyW)
            for (int j = 0; j < pre; ++j) load_w(j);
    }
    tma::mbar_wait(x_full, 0);

    if constexpr (kNorm) {
        // Thread t: chunk t % 8 (8 columns) of each step for rows t / 8 + 16q, q < 4 — a row's 8 lanes
        // cover a 128-byte row of a step, distinct bank quads. Σx² of the slice, the cluster's slices
        // added in rank order (the same sum in every block), then the slice normalised in place.
        const int c = (threadIdx.x & 7) * 8, rg = threadIdx.x >> 3;
        float ss[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = 0; j < n_ks; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const uint4 v = *reinterpret_cast<const uint4*>(xs + j * kTileBytes +
                                                                wgmma::sw128_offset(rg + 16 * q, c));
                const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[e]));
                    ss[q] = fmaf(f.x, f.x, ss[q]);
                    ss[q] = fmaf(f.y, f.y, ss[q]);
                }
            }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            ss[q] += __shfl_xor_sync(0xffffffffu, ss[q], 1);
            ss[q] += __shfl_xor_sync(0xffffffffu, ss[q], 2);
            ss[q] += __shfl_xor_sync(0xffffffffu, ss[q], 4);
            if (c == 0) ss_part[rg + 16 * q] = ss[q];
        }
        cluster.sync();                     // every slice's sums are visible to the cluster
        float part[kMaxSplit][4], rstd[4];  // every rank's sums loaded before any is added
#pragma unroll
        for (int s = 0; s < kMaxSplit; ++s)
            if (s < S) {
                const float* src = cluster.map_shared_rank(ss_part, s);
#pragma unroll
                for (int q = 0; q < 4; ++q) part[s][q] = src[rg + 16 * q];
            }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            float t = 0.0f;
#pragma unroll
            for (int s = 0; s < kMaxSplit; ++s)
                if (s < S) t += part[s][q];
            rstd[q] = rsqrtf(t / float(I) + p.eps);
        }
        for (int j = 0; j < n_ks; ++j) {
            const int k = (ks0 + j) * kStep + c;
            if (k >= I) break;  // past I: zeros, left as they are
            const uint4 wv = __ldg(reinterpret_cast<const uint4*>(p.norm_w + k));
            const uint32_t ww[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                uint4* at =
                    reinterpret_cast<uint4*>(xs + j * kTileBytes + wgmma::sw128_offset(rg + 16 * q, c));
                const uint4 v = *at;
                const uint32_t xw[4] = {v.x, v.y, v.z, v.w};
                uint32_t o[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&xw[e]));
                    const float2 g = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&ww[e]));
                    const __nv_bfloat162 h = __floats2bfloat162_rn(f.x * rstd[q] * g.x, f.y * rstd[q] * g.y);
                    o[e] = *reinterpret_cast<const uint32_t*>(&h);
                }
                *at = make_uint4(o[0], o[1], o[2], o[3]);
            }
        }
        wgmma::fence_proxy_async();  // the normalised rows, read next by wgmma
        __syncthreads();
    }

    // Step j's products are issued once its slot has landed and left running; the slot of step
    // j − 1 is refilled (with step j − 1 + R) once those are done.
    float d[32];  // written first by step 0's first product (accumulate off); every slice has a step
    for (int j = 0; j < n_ks; ++j) {
        const int slot = j % R;
        tma::mbar_wait(&full[slot], uint32_t(j / R) & 1u);
        const unsigned char* a = xs + j * kTileBytes;
        const unsigned char* b = ring + slot * kTileBytes;
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            wgmma::m64n64k16_ss<false>(d, wgmma::sw128_desc(a + 32 * kk), wgmma::sw128_desc(b + 32 * kk),
                                       j > 0 || kk > 0);
        wgmma::commit();
        wgmma::wait<1>();  // step j − 1's products are done
        if (leader && j >= 1 && j - 1 + R < n_ks) load_w(j - 1 + R);
    }
    wgmma::wait<0>();
    __syncthreads();  // the ring is free for the partial sums

    // d[4j .. 4j + 3]: row 16·warp + g, columns 8j + 2t, 8j + 2t + 1, then row 16·warp + g + 8.
    float* red = reinterpret_cast<float*>(ring);
    {
        const int lane = threadIdx.x % 32, row = 16 * (threadIdx.x / 32) + lane / 4, t = lane % 4;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            *reinterpret_cast<float2*>(&red[row * kRedLd + 8 * j + 2 * t]) =
                make_float2(d[4 * j], d[4 * j + 1]);
            *reinterpret_cast<float2*>(&red[(row + 8) * kRedLd + 8 * j + 2 * t]) =
                make_float2(d[4 * j + 2], d[4 * j + 3]);
        }
    }
    cluster.sync();  // every block's partial sums are visible to the cluster

    // Rank r finishes rows [M·r/S, M·(r+1)/S), 4 columns (SwiGLU: 4 outputs from 8) a thread at a
    // time: the ranks' partial sums added in rank order, then the epilogue's roundings.
    auto sum4 = [&](int row, int col) {
        float4 q[kMaxSplit];
#pragma unroll
        for (int s = 0; s < kMaxSplit; ++s)
            if (s < S)
                q[s] = *reinterpret_cast<const float4*>(cluster.map_shared_rank(red, s) + row * kRedLd + col);
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int s = 0; s < kMaxSplit; ++s)
            if (s < S) v.x += q[s].x, v.y += q[s].y, v.z += q[s].z, v.w += q[s].w;
        return v;
    };
    // Four outputs at once where they are 8-byte aligned and all inside O.
    const bool vec = (p.ld_out & 3) == 0 && (reinterpret_cast<uintptr_t>(p.out) & 7) == 0;
    const int r0 = M * rank / S, r1 = M * (rank + 1) / S;
    constexpr int kChunks = kSwiGLU ? 8 : 16;
    for (int e = threadIdx.x; e < (r1 - r0) * kChunks; e += kThreads) {
        const int row = r0 + e / kChunks, col = e % kChunks * 4, o = o0 + col;
        if (o >= O) continue;
        const float4 v4 = sum4(row, col);
        float v[4] = {v4.x, v4.y, v4.z, v4.w};
        uint16_t* out = p.out + int64_t(row) * p.ld_out + o;
        const int n = min(4, O - o);
        if constexpr (kSwiGLU) {
            const float4 u4 = sum4(row, col + 32);
            const float u[4] = {u4.x, u4.y, u4.z, u4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float g = round_bf(p.bias && i < n ? v[i] + bf(p.bias[o + i]) : v[i]);
                const float up = round_bf(p.bias && i < n ? u[i] + bf(p.bias[O + o + i]) : u[i]);
                v[i] = silu_rounded<__nv_bfloat16>(g) * up;
            }
        } else if constexpr (kEpi == RowsEpilogue::Store) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
                if (p.bias && i < n) v[i] += bf(p.bias[o + i]);
            if (p.conv_state) {  // conv1d_causal_update's arithmetic on the stored values
                const int K = int(p.conv_K);
                const int64_t C = p.conv_C;
                for (int i = 0; i < n; ++i) {
                    const int64_t c = o + i - p.conv_col0;
                    if (c < 0 || c >= C) continue;
                    const uint16_t xv = to_bf(v[i]);
                    uint16_t* win = p.conv_state + p.conv_slots[row] * (K - 1) * C + c;
                    float acc = p.conv_b ? bf(p.conv_b[c]) : 0.0f;
                    for (int k = 0; k + 1 < K; ++k) acc = fmaf(bf(p.conv_w[c * K + k]), bf(win[k * C]), acc);
                    acc = fmaf(bf(p.conv_w[c * K + K - 1]), bf(xv), acc);
                    p.conv_out[int64_t(row) * C + c] = to_bf(silu_rounded<__nv_bfloat16>(acc));
                    for (int k = 0; k + 2 < K; ++k) win[k * C] = win[(k + 1) * C];
                    if (K > 1) win[(K - 2) * C] = xv;
                }
            }
        } else {  // Residual: the product rounded first with a bias (the axpy path), once without
            uint16_t old[4] = {0, 0, 0, 0};
            if (vec && n == 4) {
                const uint2 w = *reinterpret_cast<const uint2*>(out);
                old[0] = uint16_t(w.x & 0xffffu), old[1] = uint16_t(w.x >> 16);
                old[2] = uint16_t(w.y & 0xffffu), old[3] = uint16_t(w.y >> 16);
            } else {
                for (int i = 0; i < n; ++i) old[i] = out[i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
                v[i] = bf(old[i]) + (p.bias && i < n ? round_bf(v[i] + bf(p.bias[o + i])) : v[i]);
        }
        if (vec && n == 4) {
            *reinterpret_cast<uint2*>(out) = make_uint2(uint32_t(to_bf(v[0])) | uint32_t(to_bf(v[1])) << 16,
                                                        uint32_t(to_bf(v[2])) | uint32_t(to_bf(v[3])) << 16);
        } else {
            for (int i = 0; i < n; ++i) out[i] = to_bf(v[i]);
        }
    }
    cluster.sync();  // no block leaves while another still reads its shared memory
}

template <bool kNorm, RowsEpilogue kEpi, bool kEarlyW>
cudaError_t launch(const RowsGemm& g, int splits, int k_steps, cudaStream_t stream) {
    auto kernel = rows_gemm_kernel<kNorm, kEpi, kEarlyW>;
    const int a_tiles = (k_steps + splits - 1) / splits;
    const auto smem = smem_bytes(a_tiles);
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
    constexpr bool kSwiGLU = kEpi == RowsEpilogue::SwiGLU;
    const int64_t cols = kSwiGLU ? 32 : 64;
    const CUtensorMap tw = bf16_rows_map(g.W, kSwiGLU ? 2 * g.O : g.O, g.I, g.I, int(cols)),
                      tx = bf16_rows_map(g.x, g.M, g.I, g.ld_x, 64);
    return launch_ops_cluster_y(kernel, dim3(unsigned((g.O + cols - 1) / cols), unsigned(splits)),
                                dim3(kThreads), smem, unsigned(splits), stream, tw, tx, g, k_steps);
}

template <bool kNorm, RowsEpilogue kEpi>
cudaError_t launch_w(const RowsGemm& g, int splits, int k_steps, cudaStream_t stream) {
    return g.w_constant ? launch<kNorm, kEpi, true>(g, splits, k_steps, stream)
                        : launch<kNorm, kEpi, false>(g, splits, k_steps, stream);
}

template <bool kNorm>
cudaError_t launch_epi(const RowsGemm& g, int splits, int k_steps, cudaStream_t stream) {
    switch (g.epi) {
        case RowsEpilogue::Store:
            return launch_w<kNorm, RowsEpilogue::Store>(g, splits, k_steps, stream);
        case RowsEpilogue::Residual:
            return launch_w<kNorm, RowsEpilogue::Residual>(g, splits, k_steps, stream);
        case RowsEpilogue::SwiGLU:
            return launch_w<kNorm, RowsEpilogue::SwiGLU>(g, splits, k_steps, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace

int rows_gemm_splits(int64_t I, int64_t O, bool swiglu, int sms) {
    const int64_t tiles = (O + (swiglu ? 31 : 63)) / (swiglu ? 32 : 64), k_steps = (I + kStep - 1) / kStep;
    // Clusters of up to 4 unless x's slice needs more: on the H200 4 beat 8 on every decode shape
    // measured (graph-replayed, 64 rows: 1536 × 768 4.10 against 4.46 µs, 2048 × 768 4.57 against
    // 4.70, 768 × 1152 4.19 against 4.75; docs/PERFORMANCE.md). MSLM_ROWS_GEMM_MAX_SPLIT (1, 2, 4 or
    // 8; read at every call, for measurements) sets the cap.
    int cap = 4;
    if (const char* v = std::getenv("MSLM_ROWS_GEMM_MAX_SPLIT")) cap = std::clamp(std::atoi(v), 1, kMaxSplit);
    int splits = 1;
    while (splits < kMaxSplit && 2 * splits <= k_steps &&
           (splits < cap || (k_steps + splits - 1) / splits > kMaxATiles) &&
           (tiles * splits < int64_t(sms) || (k_steps + splits - 1) / splits > kMaxATiles))
        splits *= 2;
    return splits;
}

bool rows_gemm_takes(const RowsGemm& g) {
    auto aligned16 = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
    if (!env_switch_on("MSLM_ROWS_GEMM")) return false;
    const int64_t k_steps = (g.I + kStep - 1) / kStep;
    const bool shape = g.M >= 1 && g.M <= kRowsGemmMaxRows && g.I >= 8 && g.I % 8 == 0 && g.O >= 1 &&
                       g.I <= INT_MAX / 2 && g.O <= INT_MAX / 4 && g.ld_x >= g.I && g.ld_x % 8 == 0 &&
                       g.ld_out >= g.O && k_steps <= kMaxSplit * kMaxATiles;
    const bool conv = !g.conv_state || (g.epi == RowsEpilogue::Store && g.conv_slots && g.conv_w &&
                                        g.conv_out && g.conv_col0 >= 0 && g.conv_C >= 1 &&
                                        g.conv_col0 + g.conv_C <= g.O && g.conv_K >= 1 && g.conv_K <= 16);
    return shape && conv && g.x && g.W && g.out && aligned16(g.x) && aligned16(g.W) &&
           (!g.norm_w || aligned16(g.norm_w)) && wgmma_available();
}

void rows_gemm(const RowsGemm& g, void* stream) {
    MSLM_CHECK(rows_gemm_takes(g), "rows_gemm: the call (M, I, O) = ({}, {}, {}) is not supported", g.M, g.I,
               g.O);
    const int k_steps = int((g.I + kStep - 1) / kStep);
    const int splits =
        rows_gemm_splits(g.I, g.O, g.epi == RowsEpilogue::SwiGLU, multiprocessors<uint16_t>("rows_gemm"));
    MSLM_CHECK((k_steps + splits - 1) / splits <= kMaxATiles, "rows_gemm: I = {} does not fit", g.I);
    auto s = static_cast<cudaStream_t>(stream);
    const cudaError_t err =
        g.norm_w ? launch_epi<true>(g, splits, k_steps, s) : launch_epi<false>(g, splits, k_steps, s);
    check_cuda<uint16_t>(err, "launch", "rows_gemm");
    check_launch<uint16_t>("rows_gemm");
}

}  // namespace mslm::ops::cuda
