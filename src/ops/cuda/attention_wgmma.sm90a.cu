// attention_wgmma.h: the causal forward on wgmma, built for sm_90a only.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "core/error.h"
#include "ops/cuda/attention_wgmma.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/wgmma.cuh"
#include "ops/cuda/wgmma_probe.h"

namespace mslm::ops::cuda {

namespace {

constexpr int kDh = 64, kBQ = 128, kBK = 64, kThreadsWg = 256;
constexpr float kLn2f = 0.6931471805599453f;

// cp.async of one 16-byte chunk, zero-filled when `valid` is false (rows past the sequence).
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, bool valid) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem),
                 "r"(valid ? 16 : 0));
}

// Rows r0 .. r0 + R − 1 (of n valid) of 64 bf16 each, row stride ld elements, into a 128-byte
// swizzled tile; every thread of the block copies its chunks.
template <int R>
__device__ __forceinline__ void stage_tile(uint16_t* tile, const uint16_t* src, int64_t ld, int64_t r0,
                                           int64_t n) {
    for (int p = threadIdx.x; p < R * 8; p += kThreadsWg) {
        const int r = p / 8, c = p % 8;
        const bool valid = r0 + r < n;
        const uint16_t* g = src + (valid ? (r0 + r) * ld : 0) + c * 8;
        cp_async_16_zfill(reinterpret_cast<char*>(tile) + wgmma::sw128_offset(r, c * 8), g, valid);
    }
}

// Grid (heads, query tiles heaviest first, batch). Warpgroup wg takes query rows i0 + 64·wg ..; its
// warp w (of 4) rows 16w + g and 16w + g + 8 of those, in wgmma's accumulator layout (wgmma.cuh),
// which per warp is mma.m16n8k16's: the softmax below is the mma.sync kernel's on one m16 tile.
__global__ void __launch_bounds__(kThreadsWg)
    attention_forward_wgmma_kernel(__nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                   const uint16_t* __restrict__ q, int64_t ld_q,
                                   const uint16_t* __restrict__ k, int64_t ld_k,
                                   const uint16_t* __restrict__ v, int64_t ld_v, int64_t T, int Hq, int group,
                                   float scale_log2) {
    __shared__ __align__(1024) uint16_t sQ[kBQ * kDh];
    __shared__ __align__(1024) uint16_t sK[2][kBK * kDh];
    __shared__ __align__(1024) uint16_t sV[2][kBK * kDh];
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32, g = lane / 4,
              tq = lane % 4;
    const int h = blockIdx.x, hk = h / group;
    const int64_t b = blockIdx.z, n_qt = (T + kBQ - 1) / kBQ, qt = n_qt - 1 - blockIdx.y, i0 = qt * kBQ;
    const uint16_t* qh = q + b * T * ld_q + int64_t(h) * kDh;
    const uint16_t* kh = k + b * T * ld_k + int64_t(hk) * kDh;
    const uint16_t* vh = v + b * T * ld_v + int64_t(hk) * kDh;
    const int64_t pos_last = min(i0 + kBQ, T) - 1;
    const int64_t n_tiles = pos_last / kBK + 1;

    stage_tile<kBQ>(sQ, qh, ld_q, i0, T);
    stage_tile<kBK>(sK[0], kh, ld_k, 0, T);
    stage_tile<kBK>(sV[0], vh, ld_v, 0, T);
    detail::cp_async_commit();

    // The warpgroup's rows and this thread's two of them.
    const int64_t wg_first = i0 + 64 * wg, row0 = wg_first + 16 * warp + g, row1 = row0 + 8;
    float o[32] = {}, s[32];
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // l: this thread's columns only

    for (int64_t it = 0; it < n_tiles; ++it) {
        const int64_t j0 = it * kBK;
        const int st = int(it & 1);
        if (it + 1 < n_tiles) {  // the other buffers were consumed before the barrier ending it − 1
            stage_tile<kBK>(sK[st ^ 1], kh, ld_k, j0 + kBK, T);
            stage_tile<kBK>(sV[st ^ 1], vh, ld_v, j0 + kBK, T);
            detail::cp_async_commit();
            detail::cp_async_wait<1>();
        } else {
            detail::cp_async_wait<0>();
        }
        wgmma::fence_proxy_async();  // this thread's copies, read next by the tensor cores
        __syncthreads();
        // Warpgroup-uniform: the tile holds a key some row of the warpgroup sees (causal).
        if (j0 <= wg_first + 63 && wg_first < T) {
            wgmma::fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
                wgmma::m64n64k16_ss<false>(
                    s, wgmma::sw128_desc(reinterpret_cast<const char*>(sQ) + 8192 * wg + 32 * ks),
                    wgmma::sw128_desc(reinterpret_cast<const char*>(sK[st]) + 32 * ks), ks > 0);
            wgmma::commit();
            wgmma::wait<0>();
            // Scores in log2 units, −inf past the diagonal: s[4t + e] is row (e < 2 ? row0 : row1),
            // key j0 + 8t + 2tq + (e & 1).
            const bool masked = j0 + kBK - 1 > wg_first + 16 * warp;
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int t = 0; t < 8; ++t)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[4 * t + e] * scale_log2;
                    if (masked) {
                        const int64_t row = e < 2 ? row0 : row1, key = j0 + 8 * t + 2 * tq + (e & 1);
                        if (key > row) x = -INFINITY;
                    }
                    s[4 * t + e] = x;
                    mx[e / 2] = fmaxf(mx[e / 2], x);
                }
            float alpha[2], m_use[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float x = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
                const float m_new = fmaxf(m[r], x);
                m_use[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row that has seen nothing keeps 0
                alpha[r] = detail::fast_exp2(m[r] - m_use[r]);
                m[r] = m_new;
                l[r] *= alpha[r];
            }
            // P (bf16) as the A operand of the four 16-key steps: key block 2ks then 2ks + 1.
            uint32_t pa[4][4];
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                float p[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    p[e] = detail::fast_exp2(s[4 * t + e] - m_use[e / 2]);
                    l[e / 2] += p[e];
                }
                pa[t / 2][2 * (t & 1)] = detail::pack_bf16x2(p[0], p[1]);
                pa[t / 2][2 * (t & 1) + 1] = detail::pack_bf16x2(p[2], p[3]);
            }
#pragma unroll
            for (int t = 0; t < 8; ++t)
#pragma unroll
                for (int e = 0; e < 4; ++e) o[4 * t + e] *= alpha[e / 2];
            wgmma::fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
                wgmma::m64n64k16_rs<true>(
                    o, pa[ks], wgmma::sw128_desc(reinterpret_cast<const char*>(sV[st]) + 2048 * ks), true);
            wgmma::commit();
            wgmma::wait<0>();
        }
        __syncthreads();  // sK[st], sV[st] consumed before the next iteration stages into them
    }

    // Every valid row sees at least itself (weight 2^0 = 1), so l ≥ 1 and m is finite.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const int64_t row = r == 0 ? row0 : row1;
        if (row >= T) continue;
        const float inv = 1.0f / lr;
        __nv_bfloat16* orow = out + ((b * T + row) * Hq + h) * kDh;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            const int c = 8 * t + 2 * tq;
            *reinterpret_cast<__nv_bfloat162*>(orow + c) =
                __floats2bfloat162_rn(o[4 * t + 2 * r] * inv, o[4 * t + 2 * r + 1] * inv);
        }
        if (tq == 0) lse[(b * Hq + h) * T + row] = m[r] * kLn2f + logf(lr);
    }
}

// bf16 pair at p (4-byte aligned) += (x, y): each rounded once from fp32 (old + value).
__device__ __forceinline__ void add_bf16x2(__nv_bfloat16* p, float x, float y) {
    auto* q = reinterpret_cast<__nv_bfloat162*>(p);
    const float2 old = __bfloat1622float2(*q);
    *q = __floats2bfloat162_rn(old.x + x, old.y + y);
}

// Dynamic shared memory rounded up to a 1024-byte boundary (the swizzled tiles' atoms).
__device__ __forceinline__ char* smem_1024(unsigned char* raw) {
    const auto base = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
    return reinterpret_cast<char*>(raw) + ((1024 - (base & 1023)) & 1023);
}
constexpr size_t kBwdSmem = 64 * 1024 + 1024 + 1024;  // four 16 KB regions, lse and D rows, alignment

// The four 16-key steps' A fragments of a 64 × 64 accumulator tile (bf16): key block 2ks, 2ks + 1.
__device__ __forceinline__ void to_a_fragments(uint32_t (&a)[4][4], const float (&x)[32]) {
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        a[t / 2][2 * (t & 1)] = detail::pack_bf16x2(x[4 * t], x[4 * t + 1]);
        a[t / 2][2 * (t & 1) + 1] = detail::pack_bf16x2(x[4 * t + 2], x[4 * t + 3]);
    }
}

// dQ: grid (heads, query tiles heaviest first, batch), 2 warpgroups of 64 query rows; per 64-key
// tile S = Q·Kᵀ and dP = dO·Vᵀ (shared memory operands), p = 2^(s·scale·log2 e − lse·log2 e), dS =
// p·(dP − D), dQ += dS·K (dS from registers, K MN-major); dq += scale·dQ at the end.
__global__ void __launch_bounds__(kThreadsWg)
    attention_backward_dq_wgmma_kernel(__nv_bfloat16* __restrict__ dq, const uint16_t* __restrict__ dout,
                                       const float* __restrict__ lse, const float* __restrict__ delta,
                                       const uint16_t* __restrict__ q, int64_t ld_q,
                                       const uint16_t* __restrict__ k, int64_t ld_k,
                                       const uint16_t* __restrict__ v, int64_t ld_v, int64_t T, int Hq,
                                       int group, float scale, float scale_log2) {
    extern __shared__ unsigned char bwd_raw[];
    char* base = smem_1024(bwd_raw);
    auto* sQ = reinterpret_cast<uint16_t*>(base);           // 128 rows
    auto* sdO = reinterpret_cast<uint16_t*>(base + 16384);  // 128 rows
    auto sK = [&](int st) { return reinterpret_cast<uint16_t*>(base + 32768 + 8192 * st); };
    auto sV = [&](int st) { return reinterpret_cast<uint16_t*>(base + 49152 + 8192 * st); };
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32, g = lane / 4,
              tq = lane % 4;
    const int h = blockIdx.x, hk = h / group;
    const int64_t b = blockIdx.z, n_qt = (T + kBQ - 1) / kBQ, i0 = (n_qt - 1 - blockIdx.y) * kBQ;
    const int64_t ld_o = int64_t(Hq) * kDh;
    const uint16_t* kh = k + b * T * ld_k + int64_t(hk) * kDh;
    const uint16_t* vh = v + b * T * ld_v + int64_t(hk) * kDh;
    const int64_t n_tiles = (min(i0 + kBQ, T) - 1) / kBK + 1;

    stage_tile<kBQ>(sQ, q + b * T * ld_q + int64_t(h) * kDh, ld_q, i0, T);
    stage_tile<kBQ>(sdO, dout + b * T * ld_o + int64_t(h) * kDh, ld_o, i0, T);
    stage_tile<kBK>(sK(0), kh, ld_k, 0, T);
    stage_tile<kBK>(sV(0), vh, ld_v, 0, T);
    detail::cp_async_commit();

    const int64_t wg_first = i0 + 64 * wg, row[2] = {wg_first + 16 * warp + g, wg_first + 16 * warp + g + 8};
    float lse2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        lse2[r] = row[r] < T ? lse[(b * Hq + h) * T + row[r]] * 1.4426950408889634f : 0.0f;
        dl[r] = row[r] < T ? delta[(b * Hq + h) * T + row[r]] : 0.0f;
    }
    float acc[32] = {}, s[32], dp[32];
    for (int64_t it = 0; it < n_tiles; ++it) {
        const int64_t j0 = it * kBK;
        const int st = int(it & 1);
        if (it + 1 < n_tiles) {
            stage_tile<kBK>(sK(st ^ 1), kh, ld_k, j0 + kBK, T);
            stage_tile<kBK>(sV(st ^ 1), vh, ld_v, j0 + kBK, T);
            detail::cp_async_commit();
            detail::cp_async_wait<1>();
        } else {
            detail::cp_async_wait<0>();
        }
        wgmma::fence_proxy_async();
        __syncthreads();
        if (j0 <= wg_first + 63 && wg_first < T) {
            wgmma::fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                wgmma::m64n64k16_ss<false>(
                    s, wgmma::sw128_desc(reinterpret_cast<const char*>(sQ) + 8192 * wg + 32 * ks),
                    wgmma::sw128_desc(reinterpret_cast<const char*>(sK(st)) + 32 * ks), ks > 0);
                wgmma::m64n64k16_ss<false>(
                    dp, wgmma::sw128_desc(reinterpret_cast<const char*>(sdO) + 8192 * wg + 32 * ks),
                    wgmma::sw128_desc(reinterpret_cast<const char*>(sV(st)) + 32 * ks), ks > 0);
            }
            wgmma::commit();
            wgmma::wait<0>();
#pragma unroll
            for (int t = 0; t < 8; ++t)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int64_t i = row[e / 2], j = j0 + 8 * t + 2 * tq + (e & 1);
                    const float p = j <= i && i < T
                                        ? detail::fast_exp2(fmaf(s[4 * t + e], scale_log2, -lse2[e / 2]))
                                        : 0.0f;
                    s[4 * t + e] = p * (dp[4 * t + e] - dl[e / 2]);
                }
            uint32_t da[4][4];
            to_a_fragments(da, s);
            wgmma::fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
                wgmma::m64n64k16_rs<true>(
                    acc, da[ks], wgmma::sw128_desc(reinterpret_cast<const char*>(sK(st)) + 2048 * ks), true);
            wgmma::commit();
            wgmma::wait<0>();
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (row[r] >= T) continue;
        __nv_bfloat16* out = dq + (b * T + row[r]) * ld_q + int64_t(h) * kDh;
#pragma unroll
        for (int t = 0; t < 8; ++t)
            add_bf16x2(out + 8 * t + 2 * tq, scale * acc[4 * t + 2 * r], scale * acc[4 * t + 2 * r + 1]);
    }
}

// dK, dV: grid (kv heads, key tiles, batch), 2 warpgroups of 64 keys; for every query head of the
// group and 64-query tile from the block's first key on: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ, pᵀ, dSᵀ = pᵀ·(dPᵀ −
// D), dV += Pᵀ·dO and dK += dSᵀ·Q (registers × MN-major tiles); dk += scale·dK, dv += dV at the end.
__global__ void __launch_bounds__(kThreadsWg)
    attention_backward_dkdv_wgmma_kernel(__nv_bfloat16* __restrict__ dk, __nv_bfloat16* __restrict__ dv,
                                         const uint16_t* __restrict__ dout, const float* __restrict__ lse,
                                         const float* __restrict__ delta, const uint16_t* __restrict__ q,
                                         int64_t ld_q, const uint16_t* __restrict__ k, int64_t ld_k,
                                         const uint16_t* __restrict__ v, int64_t ld_v, int64_t T, int Hq,
                                         int group, float scale, float scale_log2) {
    extern __shared__ unsigned char bwd_raw[];
    char* base = smem_1024(bwd_raw);
    auto* sK = reinterpret_cast<uint16_t*>(base);          // 128 keys
    auto* sV = reinterpret_cast<uint16_t*>(base + 16384);  // 128 keys
    auto sQ = [&](int st) { return reinterpret_cast<uint16_t*>(base + 32768 + 8192 * st); };
    auto sdO = [&](int st) { return reinterpret_cast<uint16_t*>(base + 49152 + 8192 * st); };
    auto* s_lse2 = reinterpret_cast<float*>(base + 65536);  // [2][64]
    float* s_delta = s_lse2 + 128;                          // [2][64]
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32, g = lane / 4,
              tq = lane % 4;
    const int hk = blockIdx.x;
    const int64_t b = blockIdx.z, j0 = int64_t(blockIdx.y) * kBQ;  // 128 keys a block
    const int64_t ld_o = int64_t(Hq) * kDh;
    const int64_t i_first = j0 / kBK * kBK, n_qt = (T - i_first + kBK - 1) / kBK, n_iter = group * n_qt;
    auto stage = [&](int64_t it, int st) {
        const int h = hk * group + int(it / n_qt);
        const int64_t i0 = i_first + it % n_qt * kBK;
        stage_tile<kBK>(sQ(st), q + b * T * ld_q + int64_t(h) * kDh, ld_q, i0, T);
        stage_tile<kBK>(sdO(st), dout + b * T * ld_o + int64_t(h) * kDh, ld_o, i0, T);
        for (int r = tid; r < kBK; r += kThreadsWg) {
            const int64_t i = i0 + r;
            s_lse2[st * 64 + r] = i < T ? lse[(b * Hq + h) * T + i] * 1.4426950408889634f : 0.0f;
            s_delta[st * 64 + r] = i < T ? delta[(b * Hq + h) * T + i] : 0.0f;
        }
    };
    stage_tile<kBQ>(sK, k + b * T * ld_k + int64_t(hk) * kDh, ld_k, j0, T);
    stage_tile<kBQ>(sV, v + b * T * ld_v + int64_t(hk) * kDh, ld_v, j0, T);
    stage(0, 0);
    detail::cp_async_commit();

    const int64_t wg_first = j0 + 64 * wg, key[2] = {wg_first + 16 * warp + g, wg_first + 16 * warp + g + 8};
    float dk_acc[32] = {}, dv_acc[32] = {}, s[32], dp[32];
    for (int64_t it = 0; it < n_iter; ++it) {
        const int st = int(it & 1);
        const int64_t i0 = i_first + it % n_qt * kBK;
        if (it + 1 < n_iter) {
            stage(it + 1, st ^ 1);
            detail::cp_async_commit();
            detail::cp_async_wait<1>();
        } else {
            detail::cp_async_wait<0>();
        }
        wgmma::fence_proxy_async();
        __syncthreads();
        if (i0 + kBK - 1 >= wg_first && wg_first < T) {  // some query of the tile sees a key of the warpgroup
            wgmma::fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                wgmma::m64n64k16_ss<false>(
                    s, wgmma::sw128_desc(reinterpret_cast<const char*>(sK) + 8192 * wg + 32 * ks),
                    wgmma::sw128_desc(reinterpret_cast<const char*>(sQ(st)) + 32 * ks), ks > 0);
                wgmma::m64n64k16_ss<false>(
                    dp, wgmma::sw128_desc(reinterpret_cast<const char*>(sV) + 8192 * wg + 32 * ks),
                    wgmma::sw128_desc(reinterpret_cast<const char*>(sdO(st)) + 32 * ks), ks > 0);
            }
            wgmma::commit();
            wgmma::wait<0>();
#pragma unroll
            for (int t = 0; t < 8; ++t)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = 8 * t + 2 * tq + (e & 1);
                    const int64_t i = i0 + c, j = key[e / 2];
                    const float p =
                        j <= i && i < T
                            ? detail::fast_exp2(fmaf(s[4 * t + e], scale_log2, -s_lse2[st * 64 + c]))
                            : 0.0f;
                    s[4 * t + e] = p;
                    dp[4 * t + e] = p * (dp[4 * t + e] - s_delta[st * 64 + c]);
                }
            uint32_t pa[4][4], da[4][4];
            to_a_fragments(pa, s);
            to_a_fragments(da, dp);
            wgmma::fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                wgmma::m64n64k16_rs<true>(
                    dv_acc, pa[ks], wgmma::sw128_desc(reinterpret_cast<const char*>(sdO(st)) + 2048 * ks),
                    true);
                wgmma::m64n64k16_rs<true>(
                    dk_acc, da[ks], wgmma::sw128_desc(reinterpret_cast<const char*>(sQ(st)) + 2048 * ks),
                    true);
            }
            wgmma::commit();
            wgmma::wait<0>();
        }
        __syncthreads();  // sQ(st), sdO(st) and the rows' lse, D consumed before the next staging
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (key[r] >= T) continue;
        __nv_bfloat16* ok = dk ? dk + (b * T + key[r]) * ld_k + int64_t(hk) * kDh : nullptr;
        __nv_bfloat16* ov = dv ? dv + (b * T + key[r]) * ld_v + int64_t(hk) * kDh : nullptr;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            if (ok)
                add_bf16x2(ok + 8 * t + 2 * tq, scale * dk_acc[4 * t + 2 * r],
                           scale * dk_acc[4 * t + 2 * r + 1]);
            if (ov) add_bf16x2(ov + 8 * t + 2 * tq, dv_acc[4 * t + 2 * r], dv_acc[4 * t + 2 * r + 1]);
        }
    }
}

bool aligned16(const void* p, int64_t ld) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld * 2) % 16 == 0;
}

}  // namespace

bool attention_forward_wgmma_takes(int64_t head_dim, bool alibi, float scale, int64_t q_offset,
                                   int64_t window, const void* q, int64_t ld_q, const void* k, int64_t ld_k,
                                   const void* v, int64_t ld_v) {
    return head_dim == kDh && !alibi && scale > 0.0f && q_offset == 0 && window == 0 && aligned16(q, ld_q) &&
           aligned16(k, ld_k) && aligned16(v, ld_v) && wgmma_available();
}

void attention_forward_wgmma(uint16_t* out, float* lse, const uint16_t* q, int64_t ld_q, const uint16_t* k,
                             int64_t ld_k, const uint16_t* v, int64_t ld_v, int64_t B, int64_t T, int64_t Hq,
                             int64_t Hkv, float scale, void* stream) {
    MSLM_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention_forward_wgmma: {} query heads over {} KV heads", Hq, Hkv);
    const int64_t n_qt = (T + kBQ - 1) / kBQ;
    MSLM_CHECK(Hq <= 65535 && n_qt <= 65535 && B <= 65535,
               "attention_forward_wgmma: grid ({}, {}, {}) too large", Hq, n_qt, B);
    const dim3 grid(static_cast<unsigned>(Hq), static_cast<unsigned>(n_qt), static_cast<unsigned>(B));
    attention_forward_wgmma_kernel<<<grid, kThreadsWg, 0, static_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<__nv_bfloat16*>(out), lse, q, ld_q, k, ld_k, v, ld_v, T, int(Hq), int(Hq / Hkv),
        scale * 1.4426950408889634f);
    const cudaError_t err = cudaGetLastError();
    MSLM_CHECK(err == cudaSuccess, "attention_forward_wgmma: launch: {}", cudaGetErrorString(err));
}

void attention_backward_wgmma(uint16_t* dq, uint16_t* dk, uint16_t* dv, const uint16_t* dout,
                              const float* lse, const float* delta, const uint16_t* q, int64_t ld_q,
                              const uint16_t* k, int64_t ld_k, const uint16_t* v, int64_t ld_v, int64_t B,
                              int64_t T, int64_t Hq, int64_t Hkv, float scale, void* stream) {
    MSLM_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention_backward_wgmma: {} query heads over {} KV heads", Hq,
               Hkv);
    const int64_t n_t = (T + kBQ - 1) / kBQ;
    MSLM_CHECK(Hq <= 65535 && n_t <= 65535 && B <= 65535,
               "attention_backward_wgmma: grid ({}, {}, {}) too large", Hq, n_t, B);
    auto st = static_cast<cudaStream_t>(stream);
    static bool configured = false;  // the attribute is per function; set once a process
    if (!configured) {
        for (const void* fn : {reinterpret_cast<const void*>(attention_backward_dq_wgmma_kernel),
                               reinterpret_cast<const void*>(attention_backward_dkdv_wgmma_kernel)}) {
            const cudaError_t err =
                cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kBwdSmem));
            MSLM_CHECK(err == cudaSuccess, "attention_backward_wgmma: cudaFuncSetAttribute: {}",
                       cudaGetErrorString(err));
        }
        configured = true;
    }
    const float scale_log2 = scale * 1.4426950408889634f;
    auto bf = [](uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); };
    if (dk || dv)
        attention_backward_dkdv_wgmma_kernel<<<dim3(static_cast<unsigned>(Hkv), static_cast<unsigned>(n_t),
                                                    static_cast<unsigned>(B)),
                                               kThreadsWg, kBwdSmem, st>>>(
            bf(dk), bf(dv), dout, lse, delta, q, ld_q, k, ld_k, v, ld_v, T, int(Hq), int(Hq / Hkv), scale,
            scale_log2);
    if (dq)
        attention_backward_dq_wgmma_kernel<<<dim3(static_cast<unsigned>(Hq), static_cast<unsigned>(n_t),
                                                  static_cast<unsigned>(B)),
                                             kThreadsWg, kBwdSmem, st>>>(bf(dq), dout, lse, delta, q, ld_q, k,
                                                                         ld_k, v, ld_v, T, int(Hq),
                                                                         int(Hq / Hkv), scale, scale_log2);
    const cudaError_t err = cudaGetLastError();
    MSLM_CHECK(err == cudaSuccess, "attention_backward_wgmma: launch: {}", cudaGetErrorString(err));
}

}  // namespace mslm::ops::cuda
