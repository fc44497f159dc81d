// The kernels CudaCausalLM (model/cuda_inference.h) needs of its own: RoPE fused with appending one
// token's key and value rows to each slot's KV ring buffer, gathering per-slot state blocks by index (beam search's
// reorder), and the decode step's fused matrix-vector products (decode_gemv, cuda_decoder_kernels.h).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include "core/error.h"
#include "model/cuda_bf16_bits.cuh"
#include "model/cuda_decoder_kernels.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernel_trace.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/quant_decode.cuh"
#include "ops/cuda/reduce.cuh"

namespace mslm::cuda_decoder_detail {

namespace {

using ops::cuda::detail::silu;
using ops::cuda::detail::silu_rounded;

using ops::cuda::detail::stash_warp;  // reduce.cuh
using ops::cuda::detail::warp_sum;    // reduce.cuh

__device__ GemvTrace g_gemv_trace[kGemvTraceSlots];

using ops::cuda::detail::global_ns;  // kernel_trace.cuh
__device__ __forceinline__ void record_trace(int slot, const unsigned long long* stamps,
                                             unsigned long long* marks) {
    ops::cuda::detail::record_trace(g_gemv_trace[slot], stamps, marks);
}

// MSLM_DECODE_GEMV_TRACE (decode_gemv_trace_reset): the next slot, or -1.
int g_trace_used = 0;
GemvTraceLaunch g_trace_launch[kGemvTraceSlots];
int trace_slot(int64_t I, int64_t O, bool pre, TraceKind kind = TraceKind::Product) {
    const char* env = std::getenv("MSLM_DECODE_GEMV_TRACE");
    if (!(env && std::string(env) == "1") || g_trace_used >= kGemvTraceSlots) return -1;
    g_trace_launch[g_trace_used] = {I, O, pre, kind};
    return g_trace_used++;
}
int trace_slot(const DecodeGemv& a, bool pre) {
    return trace_slot(a.I, a.O, pre);
}

// Programmatic dependent launch (pdl_wait / pdl_trigger, ops/cuda/common.cuh): each of the step's own
// kernels lets its successor launch at once and waits for its predecessor's results before it reads
// anything a kernel writes — decode_gemv first issues its constant weight loads.

// One block per row i: rotates the row's query heads in place (rows of q, stride ld) and writes its
// key heads, rotated, and value heads to row pos[i] % L of slot slots[i] of the caches — RoPE (the
// formula of ops::cuda::rope_apply_at: angles in double, the rotation in fp32, HF's rotate_half
// pairs (c, c + rot/2) in the first rotary_dim channels) fused with the KV append. rotary_dim 0:
// no rotation.
__global__ void rope_kv_append_kernel(uint16_t* __restrict__ q, const uint16_t* __restrict__ k_src,
                                      const uint16_t* __restrict__ v_src, int64_t ld, uint16_t* __restrict__ k_cache,
                                      uint16_t* __restrict__ v_cache, const int64_t* __restrict__ slots,
                                      const int64_t* __restrict__ pos, int64_t L, int Hq, int Hkv, int Dh,
                                      int rotary_dim, double theta) {
    __shared__ float cs[64], sn[64];  // rotary_dim ≤ 128
    pdl_trigger();
    pdl_wait();
    const int64_t i = blockIdx.x;
    const int half = rotary_dim / 2;
    if (threadIdx.x < half) {
        const double angle = double(pos[i]) * pow(theta, -2.0 * threadIdx.x / rotary_dim);
        double s, c;
        sincos(angle, &s, &c);
        cs[threadIdx.x] = float(c);
        sn[threadIdx.x] = float(s);
    }
    __syncthreads();
    // Queries: the rotated pairs, in place.
    uint16_t* qr = q + i * ld;
    for (int w = threadIdx.x; w < Hq * half; w += blockDim.x) {
        const int h = w / half, c = w - h * half;
        uint16_t* x = qr + h * Dh + c;
        const float x0 = bf(x[0]), x1 = bf(x[half]);
        x[0] = to_bf(x0 * cs[c] - x1 * sn[c]);
        x[half] = to_bf(x1 * cs[c] + x0 * sn[c]);
    }
    // Keys (rotated) and values into the cache row.
    const int64_t dst = (slots[i] * L + pos[i] % L) * int64_t(Hkv) * Dh;
    const uint16_t* kr = k_src + i * ld;
    const uint16_t* vr = v_src + i * ld;
    for (int w = threadIdx.x; w < Hkv * Dh; w += blockDim.x) {
        const int h = w / Dh, c = w - h * Dh;
        float out;
        if (c < half) {
            const float x0 = bf(kr[h * Dh + c]), x1 = bf(kr[h * Dh + c + half]);
            out = x0 * cs[c] - x1 * sn[c];
        } else if (c < 2 * half) {
            const float x0 = bf(kr[h * Dh + c - half]), x1 = bf(kr[h * Dh + c]);
            out = x1 * cs[c - half] + x0 * sn[c - half];
        } else {
            k_cache[dst + w] = kr[w];
            v_cache[dst + w] = vr[w];
            continue;
        }
        k_cache[dst + w] = to_bf(out);
        v_cache[dst + w] = vr[w];
    }
}

// ---- split-key decode attention (flash-decoding)

// A block's softmax state merged over its W warps' (m, l, Σ w·v) in shared memory: the largest m,
// the sum of the l scaled to it, and at column d the Σ w·v scaled alike (warps that saw no key add 0).
template <int W>
struct WarpMerge {
    const float* m;
    float mx = -INFINITY, total = 0.0f;
    __device__ __forceinline__ WarpMerge(const float* m_, const float* l) : m(m_) {
#pragma unroll
        for (int w = 0; w < W; ++w) mx = fmaxf(mx, m[w]);
        if (mx != -INFINITY)
            for (int w = 0; w < W; ++w) total += m[w] == -INFINITY ? 0.0f : expf(m[w] - mx) * l[w];
    }
    template <int D>
    __device__ __forceinline__ float acc(const float (*s_acc)[D], int d) const {
        float o = 0.0f;
        if (mx != -INFINITY)
#pragma unroll
            for (int w = 0; w < W; ++w) o += m[w] == -INFINITY ? 0.0f : expf(m[w] - mx) * s_acc[w][d];
        return o;
    }
};

// out_row[d] = Σ_s e^(m_s − M)·acc_s[d] / Σ_s e^(m_s − M)·l_s over the S partials at pp (Dh + 2
// floats each: m, l, acc); split 0 holds the first key, so M is finite. kL2: the partials were
// written by other blocks of the running kernel, read bypassing L1.
template <bool kL2>
__device__ __forceinline__ void combine_partials(uint16_t* out_row, const float* pp, int S, int Dh) {
    auto ld = [](const float* p) { return kL2 ? __ldcg(p) : *p; };
    float mx = -INFINITY;
    for (int s = 0; s < S; ++s) mx = fmaxf(mx, ld(pp + s * (Dh + 2)));
    float total = 0.0f;
    for (int s = 0; s < S; ++s) {
        const float ms = ld(pp + s * (Dh + 2));
        if (ms != -INFINITY) total += expf(ms - mx) * ld(pp + s * (Dh + 2) + 1);
    }
    const float inv = 1.0f / total;
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < S; ++s) {
            const float ms = ld(pp + s * (Dh + 2));
            if (ms != -INFINITY) o += expf(ms - mx) * ld(pp + s * (Dh + 2) + 2 + d);
        }
        out_row[d] = to_bf(o * inv);
    }
}

constexpr int kSplitWarps = 4;
constexpr int kKeysPerIter = 4;  // key rows a warp has in flight

// Block (h, i, split): the visible keys jj ∈ [split·C, (split + 1)·C) of query i (positions first + jj),
// an online softmax per warp over keys jj = split·C + warp·4 + 16·t + u, the warps merged, the
// block's (max, sum, Σ w·v) written to part[(i·Hq + h)·S + split].
template <int DL>
__global__ void __launch_bounds__(kSplitWarps * 32)
    attention_split_kernel(float* __restrict__ part, const uint16_t* __restrict__ q, int64_t ld_q,
                           const uint16_t* __restrict__ k_cache, const uint16_t* __restrict__ v_cache,
                           const int64_t* __restrict__ slots, const int64_t* __restrict__ pos, int64_t L, int Hq,
                           int Hkv, int Dh, float scale, int64_t window, bool alibi, int64_t C) {
    __shared__ float s_m[kSplitWarps], s_l[kSplitWarps], s_acc[kSplitWarps][DL * 32];
    pdl_trigger();
    pdl_wait();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int h = blockIdx.x, hk = h / (Hq / Hkv), S = gridDim.z, split = blockIdx.z;
    const int64_t i = blockIdx.y, p = pos[i];
    const int64_t first = max(max(int64_t(0), p - L + 1), window > 0 ? p - window + 1 : int64_t(0));
    const int64_t n = p - first + 1;
    const int64_t j0 = split * C, j1 = min(n, j0 + C);
    const float slope = alibi ? ops::cuda::detail::alibi_slope(h, Hq) : 0.0f;
    const int64_t ld_kv = int64_t(Hkv) * Dh;
    const uint16_t* kc = k_cache + slots[i] * L * ld_kv + int64_t(hk) * Dh;
    const uint16_t* vc = v_cache + slots[i] * L * ld_kv + int64_t(hk) * Dh;

    float qv[DL], acc[DL];
#pragma unroll
    for (int e = 0; e < DL; ++e) {
        const int d = lane + 32 * e;
        qv[e] = d < Dh ? bf(q[i * ld_q + int64_t(h) * Dh + d]) : 0.0f;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int64_t jb = j0 + warp * kKeysPerIter; jb < j1; jb += kSplitWarps * kKeysPerIter) {
        float kv[kKeysPerIter][DL], vv[kKeysPerIter][DL];
#pragma unroll
        for (int u = 0; u < kKeysPerIter; ++u) {  // every load of the group first
            const int64_t jj = jb + u;
            const int64_t row = jj < j1 ? ((first + jj) % L) * ld_kv : 0;
#pragma unroll
            for (int e = 0; e < DL; ++e) {
                const int d = lane + 32 * e;
                const bool ok = jj < j1 && d < Dh;
                kv[u][e] = ok ? bf(kc[row + d]) : 0.0f;
                vv[u][e] = ok ? bf(vc[row + d]) : 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < kKeysPerIter; ++u) {
            const int64_t jj = jb + u;
            if (jj >= j1) break;
            float dot = 0.0f;
#pragma unroll
            for (int e = 0; e < DL; ++e) dot = fmaf(qv[e], kv[u][e], dot);
            dot = warp_sum(dot);
            const float sc = scale * dot - slope * static_cast<float>(n - 1 - jj);
            const float m_new = fmaxf(m, sc);
            const float alpha = expf(m - m_new), w = expf(sc - m_new);  // alpha = 0 on the first key
            l = l * alpha + w;
#pragma unroll
            for (int e = 0; e < DL; ++e) acc[e] = acc[e] * alpha + w * vv[u][e];
            m = m_new;
        }
    }
    stash_warp(s_m, s_l, s_acc, m, l, acc);
    const WarpMerge<kSplitWarps> merged(s_m, s_l);
    float* out = part + ((i * Hq + h) * S + split) * int64_t(Dh + 2);
    if (threadIdx.x == 0) {
        out[0] = merged.mx;  // −∞: this split saw no key
        out[1] = merged.total;
    }
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) out[2 + d] = merged.acc(s_acc, d);
}

// ---- fused decode attention: RoPE + KV append + split-key attention + combine in one kernel

// Warps a block (a key a lane: one 32-key group a warp, C = 32 · W keys a split): kFusedWarpsShort
// for heads of ≤ 64 (their value rows fit the static shared memory), so that contexts of up to 256
// keys take one split and skip the splits' combine (its fence, counter and second pass over the
// partials), else kFusedWarps. MSLM_DECODE_ATTN_WARPS=4 takes 4 for every head (read at each launch).
constexpr int kFusedWarps = kAttentionSplitKeys / 32;
constexpr int kFusedWarpsShort = 8;
static_assert(kAttentionSplitKeys % 32 == 0);

// Block (h, i, split), W warps: the keys jj ∈ [split·C, (split + 1)·C) of query i as
// attention_split_kernel, with the work of rope_kv_append and attention_combine_kernel inside:
//   - the block rotates query head h itself (the same rounding to bf16 as the in-place rotation);
//   - the split holding the new key (jj = n − 1) rotates that key from k_src and takes its value
//     from v_src, uses both from shared memory, and (first query head of its KV group) appends them
//     to the caches; no other split reads that row, so nothing waits for the append;
//   - a lane per key: the q·k dot products without shuffles, the value rows copied to shared
//     memory (cp.async) while the scores' softmax runs, then Σ w·v with the weights broadcast;
//   - the last split of (i, h) to finish (a counter per (i, h), back to 0 after) combines the
//     splits' (max, sum, Σ w·v) into out; with one split the block writes out itself.
template <int DL, int W>
__global__ void __launch_bounds__(W * 32)
    attention_fused_kernel(uint16_t* __restrict__ out, float* __restrict__ part, unsigned* __restrict__ done,
                           const uint16_t* __restrict__ q, const uint16_t* __restrict__ k_src,
                           const uint16_t* __restrict__ v_src, int64_t ld, uint16_t* __restrict__ k_cache,
                           uint16_t* __restrict__ v_cache, const int64_t* __restrict__ slots,
                           const int64_t* __restrict__ pos, int64_t L, int Hq, int Hkv, int Dh,
                           int rotary_dim, double theta, float scale, int64_t window, bool alibi, int64_t C,
                           int trace_slot) {
    constexpr int D = DL * 32;
    // MSLM_DECODE_GEMV_TRACE: thread 0's stamps, as decode_gemv_kernel's (GemvTraceLaunch::attention).
    __shared__ unsigned long long stamps[3], marks[8];
    const bool trace = trace_slot >= 0 && threadIdx.x == 0;
    if (trace) {
        stamps[0] = global_ns();
        for (int t = 0; t < 8; ++t) marks[t] = 0;
    }
    auto mark = [&](int t) {
        if (trace) marks[t] = global_ns();
    };
    __shared__ float cs[64], sn[64], qs[D], s_m[W], s_l[W], s_acc[W][D];
    __shared__ __align__(16) uint16_t knew[D], vnew[D];
    __shared__ __align__(16) uint16_t vs[W][32][D];
    __shared__ bool last;
    pdl_trigger();
    // Before the wait: the positions and slots (uploaded before the step), the angles, and the
    // cached keys and values of earlier positions — their writers (this layer's kernel in earlier
    // steps) have finished, as every step starts with a kernel launched without programmatic
    // dependent launch (the embedding), and no kernel of this step writes those rows.
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int h = blockIdx.x, group = Hq / Hkv, hk = h / group, S = gridDim.z, split = blockIdx.z;
    const int64_t i = blockIdx.y, p = pos[i];
    const int64_t first = max(max(int64_t(0), p - L + 1), window > 0 ? p - window + 1 : int64_t(0));
    const int64_t n = p - first + 1;
    const int64_t j0 = split * C, j1 = min(n, j0 + C);
    // The grid has a split for every C keys the cache holds (fixed for CUDA graphs); the splits
    // past the row's n visible keys have nothing to do. Those leave at once, and the row's active
    // splits SA alone count to the combine — one active split (n ≤ C) writes out itself, with no
    // fence, counter or second pass, the arithmetic a cache of ≤ C positions always took. (With
    // SA ≥ 2 the combine sums what it summed over all S: the idle splits' partials were m = −∞
    // entries it skipped.)
    const int SA = int((n + C - 1) / C);
    if (split >= SA) return;
    const bool has_new = j0 <= n - 1 && n - 1 < j1;
    const int half = rotary_dim / 2;
    if (threadIdx.x < half) {  // rope_kv_append's angles
        const double angle = double(p) * pow(theta, -2.0 * threadIdx.x / rotary_dim);
        double sv, cv;
        sincos(angle, &sv, &cv);
        cs[threadIdx.x] = float(cv);
        sn[threadIdx.x] = float(sv);
    }
    // A key a lane: jj = j0 + 32·warp + lane (C = 32 · W keys a split).
    const int64_t ld_kv = int64_t(Hkv) * Dh;
    const int64_t slot = slots[i];
    const uint16_t* kc = k_cache + slot * L * ld_kv + int64_t(hk) * Dh;
    const uint16_t* vc = v_cache + slot * L * ld_kv + int64_t(hk) * Dh;
    const int64_t dst = (slot * L + p % L) * ld_kv + int64_t(hk) * Dh;  // the new key's cache row
    const int64_t jj = j0 + 32 * warp + lane;
    const bool valid = jj < j1, is_new = valid && jj == n - 1;
    const int64_t row = ((first + jj) % L) * ld_kv;
    const bool vec = Dh == D && ld_kv % 8 == 0;  // 16-byte rows
    uint4 kw[DL * 4];
    if (vec && valid && !is_new) {
#pragma unroll
        for (int u = 0; u < DL * 4; ++u) kw[u] = __ldg(reinterpret_cast<const uint4*>(kc + row) + u);
#pragma unroll
        for (int u = 0; u < DL * 4; ++u)
            ops::cuda::detail::cp_async_16(&vs[warp][lane][8 * u], vc + row + 8 * u);
    }
    ops::cuda::detail::cp_async_commit();
    pdl_wait();
    if (trace) stamps[1] = global_ns();
    __syncthreads();
    // The rotated query head (bf16-rounded, as stored in place by rope_kv_append), and the new key
    // and value rows where this split holds them.
    auto rotate = [&](const uint16_t* x, int c) -> float {
        if (c < half) return bf(x[c]) * cs[c] - bf(x[c + half]) * sn[c];
        if (c < 2 * half) return bf(x[c]) * cs[c - half] + bf(x[c - half]) * sn[c - half];
        return bf(x[c]);
    };
    const uint16_t* qr = q + i * ld + int64_t(h) * Dh;
    for (int c = threadIdx.x; c < D; c += blockDim.x) qs[c] = c < Dh ? round_bf(rotate(qr, c)) : 0.0f;
    if (has_new) {
        const uint16_t* kr = k_src + i * ld + int64_t(hk) * Dh;
        const uint16_t* vr = v_src + i * ld + int64_t(hk) * Dh;
        // Other threads than the query's where the block has them, so both rows' loads go out at once.
        const int c0 = int(blockDim.x) >= 2 * D ? int(threadIdx.x) - D : int(threadIdx.x);
        for (int c = c0; c >= 0 && c < D; c += blockDim.x) {
            const uint16_t kv = c < Dh ? to_bf(rotate(kr, c)) : uint16_t(0),
                           vv = c < Dh ? vr[c] : uint16_t(0);
            knew[c] = kv;
            vnew[c] = vv;
            if (c < Dh && h % group == 0) {
                k_cache[dst + c] = kv;
                v_cache[dst + c] = vv;
            }
        }
    }
    __syncthreads();
    mark(0);
    if (trace) stamps[2] = marks[0];

    const float slope = alibi ? ops::cuda::detail::alibi_slope(h, Hq) : 0.0f;
    float sc = -INFINITY;
    if (valid) {
        const uint16_t* kp = is_new ? knew : kc + row;
        float dot = 0.0f;
        if (vec && is_new) {  // the new key and value from shared memory, 16 bytes at a time
#pragma unroll
            for (int u = 0; u < DL * 4; ++u) {
                kw[u] = reinterpret_cast<const uint4*>(knew)[u];
                reinterpret_cast<uint4*>(&vs[warp][lane][0])[u] = reinterpret_cast<const uint4*>(vnew)[u];
            }
        }
        if (vec) {  // columns in order: the element loop's sum
#pragma unroll
            for (int u = 0; u < DL * 4; ++u) {
                const uint32_t w4[4] = {kw[u].x, kw[u].y, kw[u].z, kw[u].w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    dot = fmaf(qs[8 * u + 2 * e], __uint_as_float(w4[e] << 16), dot);
                    dot = fmaf(qs[8 * u + 2 * e + 1], __uint_as_float(w4[e] & 0xffff0000u), dot);
                }
            }
        } else {
            for (int c = 0; c < Dh; ++c) {
                dot = fmaf(qs[c], bf(kp[c]), dot);
                vs[warp][lane][c] = is_new ? vnew[c] : vc[row + c];
            }
        }
        sc = scale * dot - slope * static_cast<float>(n - 1 - jj);
    }
    mark(1);
    // The warp's softmax over its 32 keys.
    float m = sc;
    for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    const float w = valid ? expf(sc - m) : 0.0f;
    float l = w;
    for (int off = 16; off > 0; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
    mark(2);
    ops::cuda::detail::cp_async_wait<0>();
    __syncwarp();
    mark(3);
    float acc[DL] = {};
    if (m != -INFINITY) {
        const int64_t rest = j1 - (j0 + 32 * warp);
        const int nk = rest <= 0 ? 0 : rest >= 32 ? 32 : int(rest);
        for (int u = 0; u < nk; ++u) {
            const float wu = __shfl_sync(0xffffffffu, w, u);
#pragma unroll
            for (int e = 0; e < DL; ++e) acc[e] = fmaf(wu, bf(vs[warp][u][lane + 32 * e]), acc[e]);
        }
    }
    mark(4);
    stash_warp(s_m, s_l, s_acc, m, l, acc);
    // The block's (max, sum, Σ w·v), as attention_split_kernel's.
    const WarpMerge<W> merged(s_m, s_l);
    mark(5);
    uint16_t* o_row = out + (i * Hq + h) * int64_t(Dh);
    if (SA == 1) {  // split 0 holds the newest key: total > 0
        for (int d = threadIdx.x; d < Dh; d += blockDim.x)
            o_row[d] = to_bf(merged.acc(s_acc, d) / merged.total);
        if (trace) record_trace(trace_slot, stamps, marks);
        return;
    }
    float* po = part + ((i * Hq + h) * S + split) * int64_t(Dh + 2);
    if (threadIdx.x == 0) {
        po[0] = merged.mx;
        po[1] = merged.total;
    }
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) po[2 + d] = merged.acc(s_acc, d);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done + i * Hq + h, 1u) == unsigned(SA) - 1;
    __syncthreads();
    if (!last) {
        if (trace) record_trace(trace_slot, stamps, marks);
        return;
    }
    // The last split of (i, h): attention_combine_kernel's arithmetic, loads bypassing L1.
    __threadfence();
    combine_partials<true>(o_row, part + (i * Hq + h) * int64_t(S) * (Dh + 2), SA, Dh);
    if (threadIdx.x == 0) done[i * Hq + h] = 0;
    if (trace) record_trace(trace_slot, stamps, marks);
}

// out (k, Hq, Dh) = Σ_split e^(m_s − M)·acc_s / Σ_split e^(m_s − M)·l_s. Block (h, i), Dh threads.
__global__ void attention_combine_kernel(uint16_t* __restrict__ out, const float* __restrict__ part, int Hq,
                                         int Dh, int S) {
    pdl_trigger();
    pdl_wait();
    const int h = blockIdx.x;
    const int64_t i = blockIdx.y;
    combine_partials<false>(out + (i * Hq + h) * int64_t(Dh), part + (i * Hq + h) * int64_t(S) * (Dh + 2), S,
                            Dh);
}

// dst block i (words 16-bit wide) = src block idx[i].
__global__ void gather_blocks_kernel(uint16_t* __restrict__ dst, const uint16_t* __restrict__ src,
                                     const int64_t* __restrict__ idx, int64_t block) {
    const int64_t i = blockIdx.y;
    const uint16_t* from = src + idx[i] * block;
    uint16_t* to = dst + i * block;
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < block; c += int64_t(gridDim.x) * blockDim.x)
        to[c] = from[c];
}

// dst = fp32 values of the bf16 patterns src (exact), or dst = src rounded to bf16 (nearest even).
__global__ void widen_bf16_kernel(float* __restrict__ dst, const uint16_t* __restrict__ src, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = __uint_as_float(uint32_t(src[i]) << 16);
}
__global__ void narrow_bf16_kernel(uint16_t* __restrict__ dst, const float* __restrict__ src, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
}

void check(const char* kernel) {
    const cudaError_t err = cudaGetLastError();
    MSLM_CHECK(err == cudaSuccess, "CUDA kernel {}: {}", kernel, cudaGetErrorString(err));
}

}  // namespace

namespace {

// Launches kernel with programmatic dependent launch unless MSLM_DECODE_PDL=0 (common.cuh).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, void* stream, const char* name,
            Args&&... args) {
    const cudaError_t err = ops::cuda::detail::launch_pdl(
        kernel, grid, block, smem, static_cast<cudaStream_t>(stream), std::forward<Args>(args)...);
    MSLM_CHECK(err == cudaSuccess, "CUDA kernel {}: launch: {}", name, cudaGetErrorString(err));
    check(name);
}

}  // namespace

void rope_kv_append(uint16_t* q, const uint16_t* k_src, const uint16_t* v_src, int64_t ld, uint16_t* k_cache,
                    uint16_t* v_cache, const int64_t* slots, const int64_t* pos, int64_t k, int64_t L, int64_t Hq,
                    int64_t Hkv, int64_t Dh, int64_t rotary_dim, double theta, void* stream) {
    if (k <= 0) return;
    MSLM_CHECK(k <= 2147483647 && rotary_dim >= 0 && rotary_dim <= 128 && rotary_dim % 2 == 0 && rotary_dim <= Dh,
               "rope_kv_append: {} rows, rotary_dim {}, head_dim {}", k, rotary_dim, Dh);
    launch(rope_kv_append_kernel, dim3(unsigned(k)), dim3(256), 0, stream, "rope_kv_append", q, k_src, v_src, ld,
           k_cache, v_cache, slots, pos, L, int(Hq), int(Hkv), int(Dh), int(rotary_dim), theta);
}

int64_t attention_split_count(int64_t cache_len, int64_t window) {
    const int64_t visible = window > 0 ? std::min(cache_len, window) : cache_len;
    return std::max<int64_t>(1, (visible + kAttentionSplitKeys - 1) / kAttentionSplitKeys);
}

size_t attention_split_workspace_floats(int64_t k, int64_t Hq, int64_t Dh, int64_t cache_len, int64_t window) {
    // The splits' partials, then a counter per (row, head) for the fused kernel.
    return size_t(k * Hq * attention_split_count(cache_len, window) * (Dh + 2) + k * Hq);
}

void attention_decode_fused(uint16_t* out, const uint16_t* q, const uint16_t* k_src, const uint16_t* v_src,
                            int64_t ld, uint16_t* k_cache, uint16_t* v_cache, const int64_t* slots,
                            const int64_t* pos, int64_t k, int64_t cache_len, int64_t Hq, int64_t Hkv,
                            int64_t Dh, int64_t rotary_dim, double theta, float scale, int64_t window,
                            bool alibi, float* workspace, int64_t workspace_rows, void* stream) {
    if (k <= 0) return;
    MSLM_CHECK(Dh >= 1 && Dh <= 128 && rotary_dim >= 0 && rotary_dim <= Dh && rotary_dim % 2 == 0 &&
                   Hkv >= 1 && Hq % Hkv == 0 && k <= 65535 && Hq <= 65535 && k <= workspace_rows,
               "attention_decode_fused: k={} Hq={} Hkv={} Dh={} rotary_dim={} workspace rows {}", k, Hq, Hkv,
               Dh, rotary_dim, workspace_rows);
    const int64_t S = attention_split_count(cache_len, window);
    MSLM_CHECK(S <= 65535, "attention_decode_fused: {} splits", S);
    // The counters after the partials of workspace_rows rows: the same place whatever k (and
    // whatever the block's warps: its splits are at most S).
    unsigned* done = reinterpret_cast<unsigned*>(workspace + workspace_rows * Hq * S * (Dh + 2));
    const int64_t DL = (Dh + 31) / 32;
    const char* env = std::getenv("MSLM_DECODE_ATTN_WARPS");
    const bool wide = DL <= 2 && !(env && std::string(env) == "4");
    const int64_t C = 32 * (wide ? kFusedWarpsShort : kFusedWarps);
    const int64_t visible = window > 0 ? std::min(cache_len, window) : cache_len;
    const int64_t splits = std::max<int64_t>(1, (visible + C - 1) / C);
    const dim3 grid(static_cast<unsigned>(Hq), static_cast<unsigned>(k), static_cast<unsigned>(splits));
    auto run = [&](auto kernel, int warps) {
        launch(kernel, grid, dim3(warps * 32), 0, stream, "attention_fused", out, workspace, done, q, k_src,
               v_src, ld, k_cache, v_cache, slots, pos, cache_len, int(Hq), int(Hkv), int(Dh),
               int(rotary_dim), theta, scale, window, alibi, C,
               trace_slot(Dh, Hq, false, TraceKind::Attention));
    };
    if (DL == 1)
        wide ? run(attention_fused_kernel<1, kFusedWarpsShort>, kFusedWarpsShort)
             : run(attention_fused_kernel<1, kFusedWarps>, kFusedWarps);
    else if (DL == 2)
        wide ? run(attention_fused_kernel<2, kFusedWarpsShort>, kFusedWarpsShort)
             : run(attention_fused_kernel<2, kFusedWarps>, kFusedWarps);
    else if (DL == 3)
        run(attention_fused_kernel<3, kFusedWarps>, kFusedWarps);
    else
        run(attention_fused_kernel<4, kFusedWarps>, kFusedWarps);
}

void attention_decode_split(uint16_t* out, const uint16_t* q, int64_t ld_q, const uint16_t* k_cache,
                            const uint16_t* v_cache, const int64_t* slots, const int64_t* pos, int64_t k,
                            int64_t cache_len, int64_t Hq, int64_t Hkv, int64_t Dh, float scale, int64_t window,
                            bool alibi, float* workspace, void* stream) {
    if (k <= 0) return;
    MSLM_CHECK(Dh >= 1 && Dh <= 128 && Hkv >= 1 && Hq % Hkv == 0 && k <= 65535 && Hq <= 65535,
               "attention_decode_split: k={} Hq={} Hkv={} Dh={}", k, Hq, Hkv, Dh);
    const int64_t S = attention_split_count(cache_len, window);
    MSLM_CHECK(S <= 65535, "attention_decode_split: {} splits", S);
    auto s = static_cast<cudaStream_t>(stream);
    const dim3 grid(static_cast<unsigned>(Hq), static_cast<unsigned>(k), static_cast<unsigned>(S));
    auto split = [&](auto kernel) {
        launch(kernel, grid, dim3(kSplitWarps * 32), 0, s, "attention_split", workspace, q, ld_q, k_cache, v_cache,
               slots, pos, cache_len, int(Hq), int(Hkv), int(Dh), scale, window, alibi, kAttentionSplitKeys);
    };
    const int64_t DL = (Dh + 31) / 32;
    if (DL == 1) split(attention_split_kernel<1>);
    else if (DL == 2) split(attention_split_kernel<2>);
    else if (DL == 3) split(attention_split_kernel<3>);
    else split(attention_split_kernel<4>);
    launch(attention_combine_kernel, dim3(unsigned(Hq), unsigned(k)), dim3(unsigned(std::min<int64_t>(Dh, 128))), 0,
           s, "attention_combine", out, static_cast<const float*>(workspace), int(Hq), int(Dh), int(S));
}

namespace {

constexpr int kPickThreads = 256, kPickPer = 8;

// (value, index) of a first maximum: the larger value, the lower index among equals; index −1 means
// none yet.
__device__ __forceinline__ void take_max(float& best, int64_t& at, float v, int64_t i) {
    if (i >= 0 && (at < 0 || v > best || (v == best && i < at))) best = v, at = i;
}

// Grid (splits, k): block (s, i) reads columns [s · chunk, (s + 1) · chunk) of row i — their first
// maximum, then Σ exp(x − that maximum) in double — and writes them to part; the row's last block
// to finish (a counter per row, back to 0 after) merges the splits: the first maximum overall, and
// Σ_s sum_s · exp(max_s − max) (a split of only −inf adds 0).
__global__ void __launch_bounds__(kPickThreads)
    greedy_pick_kernel(const float* __restrict__ logits, int64_t V, int64_t chunk,
                       GreedyPart* __restrict__ part, unsigned* __restrict__ done,
                       double* __restrict__ log_prob, float* __restrict__ logit,
                       int32_t* __restrict__ token) {
    __shared__ float best_s[kPickThreads / 32];
    __shared__ int64_t index_s[kPickThreads / 32];
    __shared__ double sum_s[kPickThreads / 32];
    __shared__ bool last;
    pdl_trigger();
    pdl_wait();
    const int64_t i = blockIdx.y, split = blockIdx.x, splits = gridDim.x;
    const float* row = logits + i * V;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t c0 = split * chunk, c1 = c0 + chunk < V ? c0 + chunk : V;
    // The thread's columns (≤ kPickPer: chunk ≤ kPickThreads · kPickPer), every load issued first.
    float x[kPickPer];
#pragma unroll
    for (int j = 0; j < kPickPer; ++j) {
        const int64_t c = c0 + threadIdx.x + int64_t(j) * kPickThreads;
        x[j] = c < c1 ? row[c] : -INFINITY;
    }
    float best = -INFINITY;
    int64_t at = -1;
#pragma unroll
    for (int j = 0; j < kPickPer; ++j) {
        const int64_t c = c0 + threadIdx.x + int64_t(j) * kPickThreads;
        if (c < c1) take_max(best, at, x[j], c);
    }
    auto warp_max = [&] {
        for (int off = 16; off > 0; off /= 2) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, off);
            const int64_t oi = __shfl_xor_sync(0xffffffffu, at, off);
            take_max(best, at, ob, oi);
        }
    };
    warp_max();
    if (lane == 0) best_s[warp] = best, index_s[warp] = at;
    __syncthreads();
    best = -INFINITY, at = -1;
    for (int w = 0; w < kPickThreads / 32; ++w) take_max(best, at, best_s[w], index_s[w]);
    double sum = 0;
    if (best != -INFINITY)
#pragma unroll
        for (int j = 0; j < kPickPer; ++j) sum += exp(double(x[j]) - double(best));  // −inf pads add 0
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) sum_s[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0;
        for (int w = 0; w < kPickThreads / 32; ++w) total += sum_s[w];
        part[i * splits + split] = GreedyPart{total, at, best};
        __threadfence();
        last = atomicAdd(done + i, 1u) == unsigned(splits) - 1;
    }
    __syncthreads();
    if (!last || warp != 0) return;
    // The row's last block: warp 0 merges the splits, loads bypassing L1.
    __threadfence();
    const GreedyPart* p = part + i * splits;
    float mx = -INFINITY;
    int64_t arg = -1;
    for (int64_t s = lane; s < splits; s += 32) take_max(mx, arg, __ldcg(&p[s].max), __ldcg(&p[s].at));
    best = mx, at = arg;
    warp_max();
    mx = best, arg = at;
    double total = 0;
    for (int64_t s = lane; s < splits; s += 32) {
        const float m = __ldcg(&p[s].max);
        if (m != -INFINITY) total += __ldcg(&p[s].sum) * exp(double(m) - double(mx));
    }
    for (int off = 16; off > 0; off /= 2) total += __shfl_xor_sync(0xffffffffu, total, off);
    if (lane == 0) {
        token[i] = int32_t(arg);
        logit[i] = row[arg];
        log_prob[i] = double(row[arg]) - double(mx) - log(total);
        done[i] = 0;
    }
}

}  // namespace

namespace {

// greedy_loop_tail: one block; the stop test of every row before thread 0 sets the condition.
__global__ void greedy_loop_tail_kernel(int k, const double* __restrict__ log_prob,
                                        const float* __restrict__ logit, const int32_t* __restrict__ token,
                                        int32_t* __restrict__ ids, int64_t* __restrict__ pos,
                                        LoopPick* __restrict__ out, int32_t* ctl,
                                        cudaGraphConditionalHandle handle) {
    __shared__ int stop;
    pdl_trigger();
    if (threadIdx.x == 0) stop = 0;
    pdl_wait();  // launched with programmatic dependent launch after the pick
    __syncthreads();
    const int iter = ctl[0], most = ctl[1], n_stop = ctl[2];
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const int32_t t = token[i];
        out[int64_t(iter) * k + i] = LoopPick{log_prob[i], logit[i], t};
        ids[i] = t;
        pos[i] += 1;
        for (int s = 0; s < n_stop; ++s)
            if (ctl[3 + s] == t) stop = 1;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        ctl[0] = iter + 1;
        cudaGraphSetConditional(handle, iter + 1 < most && !stop ? 1u : 0u);
    }
}

}  // namespace

void greedy_loop_tail(int64_t k, const double* log_prob, const float* logit, const int32_t* token,
                      int32_t* ids, int64_t* pos, LoopPick* out, int32_t* ctl, unsigned long long handle,
                      void* stream) {
    MSLM_CHECK(k >= 1 && k <= INT_MAX, "greedy_loop_tail: {} rows", k);
    launch(greedy_loop_tail_kernel, dim3(1), dim3(256), 0, stream, "greedy_loop_tail", int(k), log_prob,
           logit, token, ids, pos, out, ctl, static_cast<cudaGraphConditionalHandle>(handle));
}

int64_t greedy_pick_splits(int64_t V) {
    return std::max<int64_t>(1, (V + kPickThreads * kPickPer - 1) / (kPickThreads * kPickPer));
}

void greedy_pick(const float* logits, int64_t k, int64_t V, GreedyPart* part, unsigned* done,
                 double* log_prob, float* logit, int32_t* token, void* stream) {
    if (k <= 0) return;
    MSLM_CHECK(k <= 65535 && V >= 1 && V <= (int64_t(1) << 40), "greedy_pick: {} rows of {} logits", k, V);
    const int64_t splits = greedy_pick_splits(V), chunk = (V + splits - 1) / splits;
    launch(greedy_pick_kernel, dim3(unsigned(splits), unsigned(k)), dim3(kPickThreads), 0, stream,
           "greedy_pick", logits, V, chunk, part, done, log_prob, logit, token);
}

void gather_blocks(void* dst, const void* src, const int64_t* idx, int64_t n, size_t block_bytes, void* stream) {
    if (n <= 0 || block_bytes == 0) return;
    MSLM_CHECK(block_bytes % 2 == 0 && n <= 65535, "gather_blocks: {} blocks of {} bytes", n, block_bytes);
    const auto words = static_cast<int64_t>(block_bytes / 2);
    const auto x = unsigned(std::min<int64_t>((words + 255) / 256, 1024));
    gather_blocks_kernel<<<dim3(x, unsigned(n)), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), idx, words);
    check("gather_blocks");
}

void widen_bf16(float* dst, const uint16_t* src, int64_t n, void* stream) {
    if (n <= 0) return;
    const auto blocks = unsigned(std::min<int64_t>((n + 255) / 256, 1024));
    widen_bf16_kernel<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(dst, src, n);
    check("widen_bf16");
}

void narrow_bf16(uint16_t* dst, const float* src, int64_t n, void* stream) {
    if (n <= 0) return;
    const auto blocks = unsigned(std::min<int64_t>((n + 255) / 256, 1024));
    narrow_bf16_kernel<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(dst, src, n);
    check("narrow_bf16");
}

// ---- decode_gemv

namespace {

namespace qd = ops::cuda::quant_detail;
using ops::cuda::QuantFormat;
using ops::cuda::QuantWeight;

constexpr int kGemvWarps = 8;  // warps per block
constexpr int kGemvUnroll = 4;  // 16-byte weight loads in flight per lane
// The batch-1 bf16 product with its weights prefetched (decode_gemv_kernel's PRE): at most this many
// outputs a warp, and this much shared memory for a block's rows, so that the next kernel's blocks
// fit beside it and can prefetch theirs while this one runs.
constexpr int kPreRows = 8;
constexpr size_t kPreSmem = 80 * 1024;
// Its blocks an SM: more blocks, fewer rows a warp, so the post-wait part (a few hundred
// instructions a warp at ~6 cycles each with 2 warps a scheduler) is shorter and more warps hide
// each other's latencies; the next kernel then prefetches beside fewer of this one's blocks.
// Measured (H200, decode b=1 tokens/s, docs/PERFORMANCE.md) 1 → 2 → 3 blocks: 130m 3,664 → 3,807 →
// 3,813; 370m 1,527 → 1,774 → 1,777 (more products fit kPreRows); 1b 968 → 1,028 → 1,021.
constexpr int kPreBlocksPerSm = 3;
// Warps with more rows than kPreRows whose rows do not all fit (the LM head) keep a ring of
// kRingSlots rows a warp in the same shared memory instead (decode_gemv_kernel's PRE, ring mode):
// the first kRingSlots copied before the wait, each next one issued as a slot frees, so every warp
// has up to kRingSlots rows' bytes in flight without holding them in registers.
constexpr int kRingSlots = 4;
// The batch-1 product on 4-bit rows with fp32 absmax on tensor cores (decode_gemv_kernel's TC): a
// warp's item is 8 outputs × kTcSub · kTcStrip columns (a lane's 4 × 32 codes of one row), items
// copied into a ring of slots a warp with cp.async: kTcStages (2 in flight while one is multiplied),
// or kTcStages - 1 for SwiGLU's two row sets (the shared memory of 2 blocks an SM).
constexpr int kTcStrip = 256;  // columns of one set of products (see the TC branch)
constexpr int kTcSub = 2;      // such strips an item
constexpr int kTcStages = 3;
// Bytes of one ring slot per row set (gate and up rows for SwiGLU are two): per strip the 2 × 32
// lanes' 16-byte code loads and the lanes' 2 absmax values.
constexpr size_t kTcSlotBytes = kTcSub * (2 * 32 * 16 + 2 * 32 * 4);

// The weight a product reads: bf16 rows, or a quantized layout (ops/cuda/quant_gemv.h).
enum class WeightKind { BF16, Q4, Q4DQ, I8 };

template <WeightKind WK>
struct Kind {
    static constexpr bool quant = WK != WeightKind::BF16;
    static constexpr bool four = WK == WeightKind::Q4 || WK == WeightKind::Q4DQ;
    static constexpr int segs = four ? 4 : WK == WeightKind::I8 ? 2 : 1;  // 8-column segments a load covers
    static constexpr int cols = segs * 8;                                 // columns per 16-byte load
    // 16-byte loads a lane has in flight per row: bf16 rows are long (4); quantized rows are short
    // (2, i.e. 2048 4-bit columns), and the warp keeps a second row in flight instead.
    static constexpr int unroll = quant ? 2 : kGemvUnroll;
};

// Where column i of a staged row sits: in order for bf16 weights; in swizzled 8-column segments for
// quantized ones (ops/cuda/quant_decode.cuh: conflict-free reads of 2 or 4 segments per lane).
template <WeightKind WK>
__device__ __forceinline__ int64_t xpos(int64_t i) {
    if constexpr (Kind<WK>::quant)
        return qd::swizzle<Kind<WK>::segs>(i >> 3) * 8 + (i & 7);
    else
        return i;
}

// A lane's share of one weight row for kGemvUnroll loads: the 16-byte words, and for 4-bit codes the
// absmax of each load's first and second half (equal unless the blocks are 16 columns), for int8
// the row's scale — all constants, so the first row's are requested before the kernel waits for
// its predecessor.
template <int U>
struct Chunk {
    uint4 w[U];
    float lo[U], hi[U];
    float row_scale;
};

// Loads the lane's chunk of row `row` at columns i0 + u · 32 · cols (u < unroll); lim: the row's
// length in the layout (I for bf16, the padded length for quantized codes).
template <WeightKind WK>
__device__ __forceinline__ void load_chunk(Chunk<Kind<WK>::unroll>& c, const uint16_t* __restrict__ W,
                                           const QuantWeight& q, int bs_log2, int64_t row, int64_t i0,
                                           int64_t I, int64_t lim, uint64_t pol) {
    constexpr int cols = Kind<WK>::cols;
#pragma unroll
    for (int u = 0; u < Kind<WK>::unroll; ++u) {
        const int64_t i = i0 + u * 32 * cols;
        if constexpr (WK == WeightKind::BF16) {
            c.w[u] = i < I ? ops::cuda::detail::ldg_stream(W + row * I + i, pol) : make_uint4(0, 0, 0, 0);
        } else {
            const bool in = i < lim;
            c.w[u] = in ? qd::load_stream(q.data + row * q.row_bytes + (Kind<WK>::four ? i / 2 : i), pol)
                        : make_uint4(0, 0, 0, 0);
            if constexpr (Kind<WK>::four) {
                const int64_t b = i >> bs_log2;
                constexpr bool dq = WK == WeightKind::Q4DQ;
                c.lo[u] = in ? qd::block_absmax<dq>(q, q.nested_code, row, b) : 0.0f;
                // Blocks of 16: the load's second half has a block of its own (the last block of a
                // row stands in past the row's end, where x is zero).
                c.hi[u] = bs_log2 >= 5 || !in ? c.lo[u]
                                              : qd::block_absmax<dq>(q, q.nested_code, row,
                                                                     min(b + 1, q.row_blocks - 1));
            }
        }
    }
    if constexpr (WK == WeightKind::I8) c.row_scale = __ldg(q.scale + row);
}

// acc[r] += Σ_i W[row, i] · xs[r, i] over this lane's share of the row; `first` holds the lane's
// first chunk when use_first (loaded ahead, to overlap). xs rows have stride `lim`.
template <WeightKind WK, int MK>
__device__ __forceinline__ void dot_row(float (&acc)[MK], const uint16_t* __restrict__ W,
                                        const QuantWeight& q, int bs_log2, int64_t row, const uint16_t* xs,
                                        int64_t I, int64_t lim, int k, int lane,
                                        const Chunk<Kind<WK>::unroll>& first, bool use_first,
                                        const char* code_base, uint64_t pol) {
    constexpr int cols = Kind<WK>::cols, segs = Kind<WK>::segs, U = Kind<WK>::unroll;
    const int64_t step = 32 * cols;
    for (int64_t i0 = int64_t(lane) * cols; i0 < lim; i0 += step * U) {
        Chunk<U> c;
        if (use_first && i0 == int64_t(lane) * cols)
            c = first;
        else
            load_chunk<WK>(c, W, q, bs_log2, row, i0, I, lim, pol);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t i = i0 + u * step;
            if (i >= lim) break;
            if constexpr (WK == WeightKind::BF16) {
                const uint32_t wv[4] = {c.w[u].x, c.w[u].y, c.w[u].z, c.w[u].w};
                float wf[8];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    wf[2 * j] = __uint_as_float(wv[j] << 16);
                    wf[2 * j + 1] = __uint_as_float(wv[j] & 0xffff0000u);
                }
#pragma unroll
                for (int r = 0; r < MK; ++r) {
                    if (r >= k) break;
                    const uint4 xv = *reinterpret_cast<const uint4*>(xs + r * lim + i);
                    const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        acc[r] = fmaf(wf[2 * j], __uint_as_float(xw[j] << 16), acc[r]);
                        acc[r] = fmaf(wf[2 * j + 1], __uint_as_float(xw[j] & 0xffff0000u), acc[r]);
                    }
                }
            } else {
                // Each 8-column segment: decode once, then every row of x; 4-bit sums are scaled by
                // their block's absmax per segment, int8 sums by the row scale in the epilogue.
#pragma unroll
                for (int sg = 0; sg < segs; ++sg) {
                    float wv[8];
                    qd::decode8<Kind<WK>::four>(wv, c.w[u], sg, code_base);
                    const int64_t xoff = qd::swizzle<segs>((i >> 3) + sg) * 8;
#pragma unroll
                    for (int r = 0; r < MK; ++r) {
                        if (r >= k) break;
                        float xf[8];
                        qd::load_x(xf, xs + r * lim + xoff);
                        const float p = qd::dot8(wv, xf);
                        if constexpr (Kind<WK>::four)
                            acc[r] = fmaf(p, sg < segs / 2 ? c.lo[u] : c.hi[u], acc[r]);
                        else
                            acc[r] += p;
                    }
                }
            }
        }
    }
}

// acc plus the lane's share of one chunk c of a row, its first column i0 (dot_row_x32's inner loop;
// c0 the lane's first column, base its x units' shared-memory address).
template <WeightKind WK>
__device__ __forceinline__ float dot_chunk_x32(float acc, const Chunk<Kind<WK>::unroll>& c, int64_t i0,
                                               int64_t c0, uint32_t base, int64_t lim,
                                               const uint32_t (&jo)[8], uint32_t book) {
    constexpr int segs = Kind<WK>::segs, U = Kind<WK>::unroll;
    constexpr int64_t step = 32 * Kind<WK>::cols;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + u * step;
        if (i >= lim) break;
        const uint32_t p = base + uint32_t(i - c0) * 4u;
#pragma unroll
        for (int sg = 0; sg < segs; ++sg) {
            float wv[8];
            if constexpr (Kind<WK>::four)
                qd::decode8_shared(wv, qd::word_of(c.w[u], sg), book);
            else
                qd::decode8<false>(wv, c.w[u], sg, nullptr);
            const float4 a = qd::load_shared4(p + jo[2 * sg]);
            const float4 b = qd::load_shared4(p + jo[2 * sg + 1]);
            const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
            const float d = qd::dot8(wv, xv);
            if constexpr (Kind<WK>::four)
                acc = fmaf(d, c.lo[u], acc);  // blocks of ≥ 32 columns here (decode_gemv_supported)
            else
                acc += d;
        }
    }
    return acc;
}

// The batch-1 product on quantized rows with x in fp32 (xf): the same sums as dot_row, but x is
// converted once per block instead of once per product, its addresses are lane constants and each
// code-book address is one byte permute — 17% fewer instructions per weight than dot_row, measured,
// for no measured speed-up (docs/PERFORMANCE.md: the dependent permute → shared load → FMA chain,
// not issue slots or bytes in flight, is what is left). xf holds 16-byte units of 4 floats, unit v
// at v ^ ((v >> 3) & 7), so the 8 lanes of a quarter-warp reading their j-th unit hit 8 bank groups.
// jo[j]: the byte offset of the lane's j-th unit of a load from its first unit's 8-aligned base; xf
// and book (the 4-bit code book) are shared-memory addresses.
template <WeightKind WK>
__device__ __forceinline__ float dot_row_x32(const uint16_t* __restrict__ W, const QuantWeight& q,
                                             int bs_log2, int64_t row, uint32_t xf, int64_t I, int64_t lim,
                                             int lane, const Chunk<Kind<WK>::unroll>& first,
                                             const uint32_t (&jo)[8], uint32_t book, uint64_t pol) {
    constexpr int cols = Kind<WK>::cols, U = Kind<WK>::unroll;
    constexpr int64_t step = 32 * cols;
    const int64_t c0 = int64_t(lane) * cols;
    // The lane's first unit rounded down to 8 units (32 floats), as a shared-memory byte address.
    const uint32_t base = xf + uint32_t(c0 & ~int64_t(31)) * 4u;
    float acc = 0.0f;
    for (int64_t i0 = c0; i0 < lim; i0 += step * U) {
        Chunk<U> c;
        if (i0 == c0)
            c = first;
        else
            load_chunk<WK>(c, W, q, bs_log2, row, i0, I, lim, pol);
        acc = dot_chunk_x32<WK>(acc, c, i0, c0, base, lim, jo, book);
    }
    return acc;
}

// The lane's share of a row's first chunk (columns lane · 32 + u · 1024): byte offsets of its codes,
// absmax blocks and whether each load is in the row — constants of the kernel, so that a row's
// loads cost one row address (dp_load_first; the batch-1 4-bit products, DP and x32, use it).
template <int U>
struct DpLane {
    uint32_t code[U], blk[U];
    bool in[U];
};
template <WeightKind WK>
__device__ __forceinline__ void dp_load_first(Chunk<Kind<WK>::unroll>& c, const QuantWeight& q, int64_t row,
                                              const DpLane<Kind<WK>::unroll>& L, uint64_t pol) {
    const uint8_t* rp = q.data + row * q.row_bytes;
#pragma unroll
    for (int u = 0; u < Kind<WK>::unroll; ++u) {
        c.w[u] = L.in[u] ? qd::load_stream(rp + L.code[u], pol) : make_uint4(0, 0, 0, 0);
        c.lo[u] = L.in[u] ? qd::block_absmax<WK == WeightKind::Q4DQ>(q, q.nested_code, row, L.blk[u]) : 0.0f;
    }
}
template <WeightKind WK>
__device__ __forceinline__ float dp_chunk(float acc, const Chunk<Kind<WK>::unroll>& c, int i0, int lim,
                                          uint32_t xq, uint32_t swz16, const float* sx,
                                          const uint32_t (&book)[4]) {
#pragma unroll
    for (int u = 0; u < Kind<WK>::unroll; ++u) {
        const int i = i0 + u * 1024;
        if (i >= lim) break;
        const int g = i >> 5;
        const uint32_t at = xq + uint32_t(g) * 32u;
        uint32_t v[8];
        qd::decode32_i8(v, c.w[u], book);
        const int sum = qd::dot32_i8(v, qd::lds128(at + swz16), qd::lds128(at + (swz16 ^ 16u)));
        acc = fmaf(__int2float_rn(sum), c.lo[u] * sx[g], acc);
    }
    return acc;
}
// The batch-1 product on 4-bit rows with x in int8 (DP): per 16-byte load (32 columns, one group of
// x), the 32 codes as int8 (quant_detail::decode8_i8) dotted with x's int8 values by dp4a — exact
// integer sums — then scaled by the block's absmax times the group's scale. `first`: the row's first
// chunk (dp_load_first); later chunks (rows over 2048 columns) are loaded here. xq: the groups' int8
// values (32 bytes a group, its two 16-byte halves swapped in groups g with bit 2 of g set, so that
// the 8 lanes of a quarter-warp hit 8 bank groups; swz16 = 16 · that bit, a lane constant), sx: the
// groups' scales. Blocks of ≥ 32 columns: a load lies in one block.
template <WeightKind WK>
__device__ __forceinline__ float dot_row_dp(const QuantWeight& q, int bs_log2, int64_t row, uint32_t xq,
                                            const float* sx, int64_t I, int lim, int lane,
                                            const Chunk<Kind<WK>::unroll>& first, uint32_t swz16,
                                            const uint32_t (&book)[4], uint64_t pol) {
    constexpr int span = 1024 * Kind<WK>::unroll;  // columns of one chunk
    const int c0 = lane * 32;
    float acc = dp_chunk<WK>(0.0f, first, c0, lim, xq, swz16, sx, book);
    for (int i0 = c0 + span; i0 < lim; i0 += span) {
        Chunk<Kind<WK>::unroll> c;
        load_chunk<WK>(c, nullptr, q, bs_log2, row, i0, I, lim, pol);
        acc = dp_chunk<WK>(acc, c, i0, lim, xq, swz16, sx, book);
    }
    return acc;
}

// Σ over the block of v[r] for the rows r < k: warp sums, then the warps' partials through shared
// memory. Every thread gets the totals. (Loops unrolled over the maximum so v stays in registers.)
template <int MK>
__device__ __forceinline__ void block_sums(float (&v)[MK], int k, float* red) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int r = 0; r < MK; ++r) {
        if (r >= k) break;
        const float w = warp_sum(v[r]);
        if (lane == 0) red[r * kGemvWarps + warp] = w;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < MK; ++r) {
        if (r >= k) break;
        float t = 0;
#pragma unroll
        for (int q = 0; q < kGemvWarps; ++q) t += red[r * kGemvWarps + q];
        v[r] = t;
    }
    __syncthreads();
}

// The warp sums of v[j] (and v2[j] when two) for j < n, and lane j's own pair of them in (out, out2)
// (registers indexed by a runtime lane: selected by an unrolled loop); other lanes get zeros.
template <int N>
__device__ __forceinline__ void warp_sums_to_lanes(float (&v)[N], float (&v2)[N], int n, bool two, int lane,
                                                   float& out, float& out2) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
        if (j >= n) break;
        v[j] = warp_sum(v[j]);
        if (two) v2[j] = warp_sum(v2[j]);
    }
    out = 0.0f, out2 = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j)
        if (j == lane) {
            out = v[j];
            out2 = v2[j];
        }
}

// Copies rows (rows, I) of src (row stride ld) into dst (rows, lim) in shared memory, column i at
// xpos<WK>(i), zeros in [I, lim); every load issued before any is waited on: 16-byte loads when src
// and its rows are 16-byte aligned (I is a multiple of 8 here), else 2-byte ones.
template <WeightKind WK, int MK = kDecodeGemvMaxRows>
__device__ __forceinline__ void stage_rows(uint16_t* dst, const uint16_t* __restrict__ src, int64_t ld, int rows,
                                           int64_t I, int64_t lim) {
    constexpr int threads = kGemvWarps * 32;
    if ((reinterpret_cast<uintptr_t>(src) | uintptr_t(ld * 2)) % 16 == 0) {
        const int64_t packs = lim / 8;
#pragma unroll
        for (int r = 0; r < MK; ++r) {
            if (r >= rows) break;
            for (int64_t c = threadIdx.x; c < packs; c += threads)
                *reinterpret_cast<uint4*>(dst + r * lim + xpos<WK>(c * 8)) =
                    c * 8 < I ? __ldg(reinterpret_cast<const uint4*>(src + r * ld + c * 8)) : make_uint4(0, 0, 0, 0);
        }
    } else {
#pragma unroll
        for (int r = 0; r < MK; ++r) {
            if (r >= rows) break;
#pragma unroll 4
            for (int64_t i = threadIdx.x; i < lim; i += threads)
                dst[r * lim + xpos<WK>(i)] = i < I ? src[r * ld + i] : uint16_t(0);
        }
    }
}

// The row length a weight kind lays x out in: I, or the quantized layout's padded length.
int64_t staged_length(const DecodeGemv& a) {
    return a.q ? ops::cuda::quant_padded_in(a.q->format, a.I) : a.I;
}

// The epilogue's inputs for one output, read ahead (decode_gemv_kernel): conv weights and window
// for conv kernels of up to kConvPreK taps (longer ones read theirs in the epilogue).
constexpr int kConvPreK = 4;
struct EpiloguePre {
    float bias = 0, bias2 = 0, residual = 0, conv_b = 0;
    float conv_w[kConvPreK] = {}, win[kConvPreK - 1] = {};  // win: bf16 values, exact in fp32
    bool conv = false;
    // Output o of x row r: everything but the residual (which the previous kernel writes).
    __device__ __forceinline__ void load_constants(const DecodeGemv& a, int r, int64_t o) {
        if (a.bias) {
            bias = bf(a.bias[o]);
            if (a.epi == DecodeEpilogue::SwiGLU) bias2 = bf(a.bias[a.O + o]);
        }
        const int64_t c = o - a.conv_col0;
        conv = a.conv_state && c >= 0 && c < a.conv_C && a.conv_K <= kConvPreK;
        if (!conv) return;
        const int K = int(a.conv_K);
        conv_b = a.conv_b ? bf(a.conv_b[c]) : 0.0f;
        const uint16_t* win_p = a.conv_state + a.conv_slots[r] * (K - 1) * a.conv_C + c;
#pragma unroll
        for (int t = 0; t < kConvPreK; ++t)
            if (t < K) conv_w[t] = bf(a.conv_w[c * K + t]);
#pragma unroll
        for (int t = 0; t + 1 < kConvPreK; ++t)
            if (t + 1 < K) win[t] = bf(win_p[t * a.conv_C]);
    }
};

// Output o of x row r from the fp32 products v (and v2: SwiGLU's up row) through the product's epilogue;
// pre: whether ep holds that output's constants (read ahead: the lane's first output), const_pre:
// whether the kernel reads them ahead at all.
__device__ __forceinline__ void finish_output(const DecodeGemv& a, const EpiloguePre& ep, int64_t r,
                                              int64_t o, float v, float v2, bool pre, bool const_pre) {
    const float b = a.bias ? (const_pre && pre ? ep.bias : bf(a.bias[o])) : 0.0f;
    switch (a.epi) {
        case DecodeEpilogue::Store: {
            const uint16_t xv = to_bf(a.bias ? v + b : v);
            a.out[r * a.ld_out + o] = xv;
            const int64_t c = o - a.conv_col0;
            if (a.conv_state && c >= 0 && c < a.conv_C) {  // conv1d_causal_update's arithmetic
                const int K = int(a.conv_K);
                uint16_t* win = a.conv_state + a.conv_slots[r] * (K - 1) * a.conv_C + c;
                if (pre && ep.conv) {
                    float acc = ep.conv_b, w_last = 0.0f;
#pragma unroll
                    for (int t = 0; t < kConvPreK; ++t) {
                        if (t + 1 < K) acc = fmaf(ep.conv_w[t], ep.win[t], acc);
                        if (t + 1 == K) w_last = ep.conv_w[t];
                    }
                    acc = fmaf(w_last, bf(xv), acc);
                    a.conv_out[r * a.conv_C + c] = to_bf(silu_rounded<__nv_bfloat16>(acc));
#pragma unroll
                    for (int t = 0; t + 2 < kConvPreK; ++t)
                        if (t + 2 < K) win[t * a.conv_C] = to_bf(ep.win[t + 1]);
                } else {
                    float acc = a.conv_b ? bf(a.conv_b[c]) : 0.0f;
                    for (int t = 0; t + 1 < K; ++t)
                        acc = fmaf(bf(a.conv_w[c * K + t]), bf(win[t * a.conv_C]), acc);
                    acc = fmaf(bf(a.conv_w[c * K + K - 1]), bf(xv), acc);
                    a.conv_out[r * a.conv_C + c] = to_bf(silu_rounded<__nv_bfloat16>(acc));
                    for (int t = 0; t + 2 < K; ++t) win[t * a.conv_C] = win[(t + 1) * a.conv_C];
                }
                if (K > 1) win[(K - 2) * a.conv_C] = xv;
            }
            break;
        }
        case DecodeEpilogue::Residual: {  // out = round(out + round(v + b)), the unfused axpy
            const float t = round_bf(a.bias ? v + b : v);
            uint16_t* p = a.out + r * a.ld_out + o;
            *p = to_bf((pre ? ep.residual : bf(*p)) + t);
            break;
        }
        case DecodeEpilogue::SwiGLU: {
            const float g = round_bf(a.bias ? v + b : v);
            const float u = round_bf(a.bias ? v2 + (const_pre && pre ? ep.bias2 : bf(a.bias[a.O + o])) : v2);
            a.out[r * a.ld_out + o] = to_bf(silu_rounded<__nv_bfloat16>(g) * u);
            break;
        }
        case DecodeEpilogue::F32:
            a.out32[r * a.ld_out + o] = a.bias ? v + b : v;
            break;
    }
}

// MK: the most rows of x the instantiation takes (1: the batch-1 step, with its registers for one
// row; bf16 also 2; else kDecodeGemvMaxRows).
// PRE (one row of x, bf16 rows): kPreBlocksPerSm blocks an SM; every warp copies all its weight rows (≤
// kPreRows outputs, gate and up rows for SwiGLU) into shared memory with cp.async before it waits for its
// predecessor, so the weights stream while the previous kernels run; with more rows a warp (the LM
// head), its first kRingSlots rows, then each next one into the slot just read (a ring). The sums
// are the same as without (same order, same FMAs).
// TC (one row of x, 4-bit rows with fp32 absmax, blocks of ≥ 32 columns): tensor-core products on
// fp16 operands — the code book in fp16 (quant_detail::decode8_table), x scaled by a power of two into
// fp16 — each warp a share of the columns of 8-output tiles, its first items in flight before the
// wait; see the TC branch below. pre_at: where the PRE rows or the TC ring start in shared memory.
template <WeightKind WK, int MK, bool PRE = false, bool TC = false, int DP = 0>
__global__ void __launch_bounds__(kGemvWarps * 32, MK == 1 && !Kind<WK>::quant ? 3 : 2)
    decode_gemv_kernel(DecodeGemv a, QuantWeight q, int bs_log2, int trace_slot, int pre_at) {
    // Trace stamps go to shared memory at once (held in registers they cost the kernel spills).
    __shared__ unsigned long long stamps[3], marks[8];
    const bool trace = trace_slot >= 0 && threadIdx.x == 0;
    if (trace) stamps[0] = global_ns();
    if (trace)
        for (int i = 0; i < 8; ++i) marks[i] = 0;
    auto mark = [&](int i) {  // block 0's phases (GemvTrace::b0)
        if (trace) marks[i] = global_ns();
    };
    static_assert(!PRE || (WK == WeightKind::BF16 && MK == 1), "PRE: the batch-1 product on bf16 rows");
    static_assert(!TC || (WK == WeightKind::Q4 && MK == 1),
                  "TC: the batch-1 product on 4-bit rows, fp32 absmax");
    static_assert(!DP || (Kind<WK>::four && MK == 1 && !TC), "DP: the batch-1 product on 4-bit rows");
    // Shared: xs (k, lim) the (normalised) input rows; zs (k, I) the gate (gated norm); ws, bs (I) the
    // norm's weight and bias — all bf16, all staged before the prologue computes anything.
    extern __shared__ __align__(16) uint16_t xs[];
    __shared__ float red[MK * kGemvWarps];
    __shared__ __align__(256) float code_s[16];  // 256-byte aligned: qd::decode8_shared
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k = int(a.k);
    const int64_t I = a.I;
    constexpr int threads = kGemvWarps * 32;
    constexpr int cols = Kind<WK>::cols;
    // Quantized rows are padded to whole loads (quant_padded_in); x's staged rows likewise, with zeros.
    const int64_t lim = Kind<WK>::quant ? (I + cols - 1) / cols * cols : I;
    uint16_t* zs = xs + k * lim;
    uint16_t* ws = zs + (a.norm == DecodeNorm::Gated ? k * I : 0);
    uint16_t* bs = ws + I;
    const bool swiglu = a.epi == DecodeEpilogue::SwiGLU;
    // The first weight row's first chunk, in flight while the prologue runs.
    const int64_t o0 = int64_t(blockIdx.x) * kGemvWarps + warp;
    const int64_t stride = int64_t(gridDim.x) * kGemvWarps;
    Chunk<Kind<WK>::unroll> first, first2;
    // The weights are read once a step: evict_first, so that L2 keeps what the step reads again
    // (ops::cuda::detail::l2_evict_first).
    const uint64_t pol = ops::cuda::detail::l2_evict_first();
    if (!a.late_trigger) pdl_trigger();
    // PRE: the warp's rows o0, o0 + stride, ... (npre of them) at pre_at bytes (decode_gemv_smem),
    // each lane copying the 16-byte words it reads back itself, so the wait needs no barrier.
    const int wr = swiglu ? 2 : 1;
    const int64_t pre_rows = (a.O + stride - 1) / stride;  // ≤ kPreRows with PRE, or the ring's
    const bool pre_ring = PRE && pre_rows > kPreRows;      // (pre_plan's choice)
    const int64_t slots = pre_ring ? kRingSlots : pre_rows;
    uint16_t* pre = reinterpret_cast<uint16_t*>(reinterpret_cast<char*>(xs) + pre_at) + warp * slots * wr * I;
    int npre = 0;  // PRE: the warp's rows (ring: not all of them in shared memory at once)
    // The warp's row o's copies into ring slot s (PRE; the lane's own words).
    auto issue_row = [&](int64_t o, int64_t s) {
        for (int h = 0; h < wr; ++h) {
            const uint16_t* src = a.W + (o + h * a.O) * I;
            uint16_t* dst = pre + (s * wr + h) * I;
            for (int64_t i = int64_t(lane) * 8; i < I; i += 256)
                ops::cuda::detail::cp_async_16_stream(dst + i, src + i, pol);
        }
    };
    // TC: tiles of 8 outputs; the tensor cores' 16 rows are each output's row twice, row tg for the
    // first half of a strip's kTcStrip columns and row tg + 8 for the second (lane 4·tg + t4 loads its
    // 32 codes at column 32·t4 of each half). An item is kTcSub consecutive strips; wpt warps share a
    // tile's items (warp tws = warp % wpt of it: items tws, tws + wpt, ...), and a block takes tpb
    // tiles at once when a row has fewer than 8 items. The warp's items in order: for each tile group
    // of the block, its items — item idx in ring slot idx % stages (the lane's own words: it reads
    // back only what it copied, so no barrier), with the absmax values of the 2 result columns the
    // lane flushes per strip (see the TC branch).
    const int tg = lane >> 2, t4 = lane & 3;
    const int64_t tiles = (a.O + 7) / 8;
    const int items_row = int((lim + kTcSub * kTcStrip - 1) / (kTcSub * kTcStrip));
    const int wpt = min(items_row, kGemvWarps), tpb = kGemvWarps / wpt;
    const int tl = warp / wpt, tws = warp % wpt;
    const int tc_per_tile = tl < tpb ? (items_row - tws + wpt - 1) / wpt : 0;
    const int64_t groups = (tiles + tpb - 1) / tpb;
    const int tc_groups = int64_t(blockIdx.x) < groups ? int((groups - 1 - blockIdx.x) / gridDim.x + 1) : 0;
    const int nb_log2 =
        bs_log2 >= 7 ? 0 : 7 - bs_log2;  // absmax blocks a half strip (128 columns): 2^nb_log2
    const int nb = 1 << nb_log2;
    const int stages = wr == 1 ? kTcStages : kTcStages - 1;
    // The pair code book (quant_detail::decode8_table) first, then the warps' rings.
    uint32_t* pair_book = reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(xs) + pre_at);
    char* ring =
        reinterpret_cast<char*>(xs) + pre_at + qd::kPairBookBytes + size_t(warp) * stages * wr * kTcSlotBytes;
    constexpr size_t kSub = kTcSlotBytes / kTcSub;  // one strip's bytes in a slot
    auto slot_codes = [&](int slot, int h, int u, int half) {
        return reinterpret_cast<uint4*>(ring + (size_t(slot) * wr + h) * kTcSlotBytes + u * kSub) +
               half * 32 + lane;
    };
    auto slot_absmax = [&](int slot, int h, int u, int j) {
        return reinterpret_cast<float*>(ring + (size_t(slot) * wr + h) * kTcSlotBytes + u * kSub +
                                        2 * 32 * 16) +
               j * 32 + lane;
    };
    // The absmax block of the lane's result column 2·t4 + j of strip s (−1: none): column n holds
    // half n / nb, block n % nb of it.
    auto tc_block = [&](int64_t s, int j) -> int64_t {
        const int n = 2 * t4 + j;
        if (n >= 2 * nb) return -1;
        const int64_t b = ((s * kTcStrip + (n >> nb_log2) * (kTcStrip / 2)) >> bs_log2) + (n & (nb - 1));
        return b < q.row_blocks ? b : -1;
    };
    // The issue cursor: the next item's group (of this block's) and its index in the tile.
    int cur_g = 0, cur_j = 0, cur_slot = 0;
    auto tc_issue = [&]() {
        if (cur_g < tc_groups && tc_per_tile > 0) {
            const int64_t tile = (blockIdx.x + int64_t(cur_g) * gridDim.x) * tpb + tl;
            const int64_t item = tws + int64_t(cur_j) * wpt, o = tile * 8 + tg;
            if (o < a.O)
                for (int h = 0; h < wr; ++h) {
                    const int64_t row = o + h * a.O;
#pragma unroll
                    for (int u = 0; u < kTcSub; ++u) {
                        const int64_t s = item * kTcSub + u;
#pragma unroll
                        for (int half = 0; half < 2; ++half) {
                            const int64_t col = s * kTcStrip + half * (kTcStrip / 2) + 32 * t4;
                            if (col < lim)
                                ops::cuda::detail::cp_async_16_stream(slot_codes(cur_slot, h, u, half),
                                                                      q.data + row * q.row_bytes + col / 2,
                                                                      pol);
                        }
#pragma unroll
                        for (int j = 0; j < 2; ++j) {
                            const int64_t b = tc_block(s, j);
                            if (b >= 0)
                                ops::cuda::detail::cp_async_4(slot_absmax(cur_slot, h, u, j),
                                                              q.scale + row * q.row_blocks + b);
                        }
                    }
                }
            if (++cur_j == tc_per_tile) {
                cur_j = 0;
                ++cur_g;
            }
        }
        cur_slot = cur_slot + 1 == stages ? 0 : cur_slot + 1;
        ops::cuda::detail::cp_async_commit();  // one group an item, empty or not: the waits count them
    };
    if constexpr (TC) {
        for (int i = 0; i + 1 < stages; ++i) tc_issue();
        for (int i = threadIdx.x; i < 256 * qd::kPairBookCopies; i += kGemvWarps * 32)
            pair_book[i] = qd::pair_book_entry(q.code, i / qd::kPairBookCopies);
    } else if constexpr (PRE) {
        for (int64_t o = o0; o < a.O; o += stride, ++npre)
            if (npre < slots) {
                issue_row(o, npre);
                if (pre_ring) ops::cuda::detail::cp_async_commit();  // a group a row
            }
        if (pre_ring)  // kRingSlots groups whatever the rows: the ring's waits count them
            for (int s = npre; s < kRingSlots; ++s) ops::cuda::detail::cp_async_commit();
        else
            ops::cuda::detail::cp_async_commit();
    } else if (!TC && o0 < a.O) {
        load_chunk<WK>(first, a.W, q, bs_log2, o0, int64_t(lane) * cols, I, lim, pol);
        if (swiglu) load_chunk<WK>(first2, a.W, q, bs_log2, a.O + o0, int64_t(lane) * cols, I, lim, pol);
    }
    if (Kind<WK>::four && threadIdx.x < 16) code_s[threadIdx.x] = q.code[threadIdx.x];
    // The norm's weights are constants: staged before the wait.
    if (a.norm != DecodeNorm::None) stage_rows<WeightKind::BF16>(ws, a.norm_w, I, 1, I, I);
    if (a.norm == DecodeNorm::Layer && a.norm_b) stage_rows<WeightKind::BF16>(bs, a.norm_b, I, 1, I, I);
    // What the epilogue of the first output this lane finishes needs (row pr of x, output po): the
    // bias and conv weights before the wait (constants), the conv window too (see DecodeGemv: only
    // this kernel writes it, in the previous step), the residual just after the wait. At batch 1
    // lane j finishes the warp's j-th output (its rows o0, o0 + stride, ...; lane_outputs), so every
    // lane's first one is read ahead; with more x rows lane r finishes row r of each output.
    constexpr bool lane_outputs = MK == 1 && !TC;
    const int pr = lane_outputs ? 0 : lane;
    const int64_t po = lane_outputs ? o0 + lane * stride : o0;
    const bool pmine = PRE ? lane < npre : lane_outputs ? po < a.O : !TC && lane < k && o0 < a.O;
    // (Not in the streaming batch-1 bf16 kernel: at its 3 blocks an SM the registers spill.)
    constexpr bool const_pre = !(WK == WeightKind::BF16 && MK == 1 && !PRE);
    EpiloguePre ep;
    if (const_pre && pmine) ep.load_constants(a, pr, po);
    pdl_wait();  // the inputs are the previous kernels' outputs
    if (a.late_trigger) pdl_trigger();
    if (trace) stamps[1] = global_ns();
    if (pmine && a.epi == DecodeEpilogue::Residual) ep.residual = bf(a.out[pr * a.ld_out + po]);
    // The gated norm's x and z rows in one pass (PRE, and batch 1 on quantized rows; 16-byte
    // aligned rows: every load issued before any store, where two passes cost the prologue a second
    // round trip); else row by row.
    const bool pair = (PRE || (Kind<WK>::quant && MK == 1)) && a.norm == DecodeNorm::Gated &&
                      ((reinterpret_cast<uintptr_t>(a.x) | reinterpret_cast<uintptr_t>(a.z) |
                        uintptr_t(a.ld_x * 2) | uintptr_t(a.ld_z * 2)) %
                       16) == 0;
    if (pair) {
#pragma unroll
        for (int r = 0; r < MK; ++r) {
            if (r >= k) break;
            for (int64_t c = threadIdx.x; c < I / 8; c += threads) {
                const uint4 xv = __ldg(reinterpret_cast<const uint4*>(a.x + r * a.ld_x + c * 8));
                const uint4 zv = __ldg(reinterpret_cast<const uint4*>(a.z + r * a.ld_z + c * 8));
                *reinterpret_cast<uint4*>(xs + r * lim + xpos<WK>(c * 8)) = xv;
                *reinterpret_cast<uint4*>(zs + r * I + c * 8) = zv;
            }
            for (int64_t c = I / 8 + threadIdx.x; c < lim / 8; c += threads)  // quantized rows' padding
                *reinterpret_cast<uint4*>(xs + r * lim + xpos<WK>(c * 8)) = make_uint4(0, 0, 0, 0);
        }
    } else {
        stage_rows<WK, MK>(xs, a.x, a.ld_x, k, I, lim);
        if (a.norm == DecodeNorm::Gated) stage_rows<WeightKind::BF16, MK>(zs, a.z, a.ld_z, k, I, I);
    }
    __syncthreads();
    mark(0);
    // Prologue: normalised as the unfused path's norm kernel would store them; every thread handles
    // the columns tid, tid + 256, ... of every row (batch 1: by 8-column chunks, below), statistics
    // by block sums.
    auto X = [&](int r, int64_t i) -> uint16_t& { return xs[r * lim + xpos<WK>(i)]; };
    // Batch 1 on quantized rows: x once more in fp32 (DP: in int8), past the bf16 rows (decode_gemv_smem).
    float* xf = reinterpret_cast<float*>(xs + k * lim + (a.norm == DecodeNorm::Gated ? k * I : 0) +
                                         (a.norm == DecodeNorm::None ? 0 : 2 * I));
    // DP: x in int8 in the same place, per group of 32 columns (a 16-byte load of codes): thread t
    // quantizes 8-column segment s = t + 256·j (4 consecutive lanes a group: the group's largest
    // magnitude by two shuffles), m / 127² to sx past the groups. Segment j of a group is code word
    // j of a load, stored as two words in decode8_i8's column order (1, 0, 3, 2), (5, 4, 7, 6).
    // dp_segment: segment s's 8 bf16 values v (every lane of the warp calls it: the shuffles; those
    // with in false only take part).
    float* sxw = xf + lim / 4;  // past lim bytes of int8 values
    auto dp_segment = [&](int64_t s, const uint4& v, bool in) {
        uint32_t mb = __vmaxu2(__vmaxu2(v.x & 0x7fff7fffu, v.y & 0x7fff7fffu),
                               __vmaxu2(v.z & 0x7fff7fffu, v.w & 0x7fff7fffu));
        mb = max(mb & 0xffffu, mb >> 16);
        mb = max(mb, __shfl_xor_sync(0xffffffffu, mb, 1));
        mb = max(mb, __shfl_xor_sync(0xffffffffu, mb, 2));
        if (!in) return;
        const float m = __uint_as_float(mb << 16);
        const float inv = qd::x_group_inv(m);
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
        uint32_t b[8];  // columns 0..7 as int8 bytes
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            b[2 * e] = qd::x_i8(qd::bf_lo(w[e]), inv);
            b[2 * e + 1] = qd::x_i8(qd::bf_hi(w[e]), inv);
        }
        const int64_t g = s >> 2;
        const int j = int(s & 3);
        const int64_t at = g * 32 + qd::x_segment_at(g, j);
        *reinterpret_cast<uint2*>(reinterpret_cast<char*>(xf) + at) = qd::pack_segment_i8(b);
        if (j == 0) sxw[g] = qd::x_group_scale(m);
    };
    // Batch 1 (MK == 1): the norm's passes by 8-column chunks, thread t the chunks t, t + 256, …, each
    // a 16-byte load (x at its staged place, z and the norm's weights as they are), its columns in
    // order — about a third of the element loops' instructions; the statistics are the same sums in
    // another order. (Gated: groups of whole chunks, else the element loops.)
    auto x_chunk = [&](int64_t c) -> uint4& { return *reinterpret_cast<uint4*>(xs + xpos<WK>(c * 8)); };
    auto pack = [](float lo, float hi) { return uint32_t(to_bf(lo)) | uint32_t(to_bf(hi)) << 16; };
    const int64_t chunks = I / 8;
    // DP after an RMS or layer norm: each thread normalises whole segments and quantizes them at
    // once (the same values; one pass and one barrier less than normalising, then quantizing).
    const bool dp_fused = DP && (a.norm == DecodeNorm::RMS || a.norm == DecodeNorm::Layer);
    if (a.norm == DecodeNorm::RMS || a.norm == DecodeNorm::Layer) {
        float mean[MK] = {}, ss[MK] = {};
        if (a.norm == DecodeNorm::Layer) {
#pragma unroll
            for (int r = 0; r < MK; ++r) {
                if (r >= k) break;
                if (MK == 1)
                    for (int64_t c = threadIdx.x; c < chunks; c += threads) {
                        const uint4 v = x_chunk(c);
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            mean[0] += qd::bf_lo(qd::word_of(v, e));
                            mean[0] += qd::bf_hi(qd::word_of(v, e));
                        }
                    }
                else
                    for (int64_t i = threadIdx.x; i < I; i += threads) mean[r] += bf(X(r, i));
            }
            block_sums(mean, k, red);
#pragma unroll
            for (int r = 0; r < MK; ++r) mean[r] /= float(I);
        }
#pragma unroll
        for (int r = 0; r < MK; ++r) {
            if (r >= k) break;
            if (MK == 1)
                for (int64_t c = threadIdx.x; c < chunks; c += threads) {
                    const uint4 v = x_chunk(c);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float d0 = qd::bf_lo(qd::word_of(v, e)) - mean[0],
                                    d1 = qd::bf_hi(qd::word_of(v, e)) - mean[0];
                        ss[0] += d0 * d0;
                        ss[0] += d1 * d1;
                    }
                }
            else
                for (int64_t i = threadIdx.x; i < I; i += threads) {
                    const float d = bf(X(r, i)) - mean[r];
                    ss[r] += d * d;
                }
        }
        block_sums(ss, k, red);
        mark(1);
        const bool bias = a.norm == DecodeNorm::Layer && a.norm_b;
        if (dp_fused) {
            const float rstd = rsqrtf(ss[0] / float(I) + a.eps);
            const int64_t nseg = lim / 8;
            for (int64_t base = 0; base < nseg; base += threads) {
                const int64_t s = base + threadIdx.x;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (s < nseg) {
                    uint4* p = reinterpret_cast<uint4*>(xs + qd::swizzle<4>(s) * 8);
                    alignas(16) uint16_t h[8];
                    *reinterpret_cast<uint4*>(h) = *p;
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        const int64_t i = s * 8 + e;
                        if (i >= I) break;  // padding: zeros
                        float t = (bf(h[e]) - mean[0]) * rstd * bf(ws[i]);
                        if (bias) t += bf(bs[i]);
                        h[e] = to_bf(t);
                    }
                    v = *reinterpret_cast<const uint4*>(h);
                    *p = v;
                }
                dp_segment(s, v, s < nseg);
            }
        } else if (MK == 1) {
            const float rstd = rsqrtf(ss[0] / float(I) + a.eps);
            for (int64_t c = threadIdx.x; c < chunks; c += threads) {
                uint4& p = x_chunk(c);
                const uint4 v = p, w = *reinterpret_cast<const uint4*>(ws + c * 8);
                const uint4 b = bias ? *reinterpret_cast<const uint4*>(bs + c * 8) : make_uint4(0, 0, 0, 0);
                uint32_t o[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float lo = (qd::bf_lo(qd::word_of(v, e)) - mean[0]) * rstd * qd::bf_lo(qd::word_of(w, e));
                    float hi = (qd::bf_hi(qd::word_of(v, e)) - mean[0]) * rstd * qd::bf_hi(qd::word_of(w, e));
                    if (bias) {
                        lo += qd::bf_lo(qd::word_of(b, e));
                        hi += qd::bf_hi(qd::word_of(b, e));
                    }
                    o[e] = pack(lo, hi);
                }
                p = make_uint4(o[0], o[1], o[2], o[3]);
            }
        } else {
#pragma unroll
            for (int r = 0; r < MK; ++r) {
                if (r >= k) break;
                const float rstd = rsqrtf(ss[r] / float(I) + a.eps);
                for (int64_t i = threadIdx.x; i < I; i += threads) {
                    float v = (bf(X(r, i)) - mean[r]) * rstd * bf(ws[i]);
                    if (bias) v += bf(bs[i]);
                    X(r, i) = to_bf(v);
                }
            }
        }
    } else if (a.norm == DecodeNorm::Gated) {  // g = x · silu(z), RMS over each of `groups` groups
        const int64_t width = I / a.groups;
        // x · silu(z) of chunk c's column pair e (MK == 1 by chunks).
        auto gate = [&](const uint4& x, const uint4& z, int e, float& lo, float& hi) {
            lo = qd::bf_lo(qd::word_of(x, e)) * silu_rounded<__nv_bfloat16>(qd::bf_lo(qd::word_of(z, e)));
            hi = qd::bf_hi(qd::word_of(x, e)) * silu_rounded<__nv_bfloat16>(qd::bf_hi(qd::word_of(z, e)));
        };
        const bool by_chunks = MK == 1 && width % 8 == 0;
        for (int64_t g0 = 0; g0 < I; g0 += width) {  // one group at a time
            float ss[MK] = {};
            if (by_chunks) {
                for (int64_t c = g0 / 8 + threadIdx.x; c < (g0 + width) / 8; c += threads) {
                    const uint4 x = x_chunk(c), z = *reinterpret_cast<const uint4*>(zs + c * 8);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float lo, hi;
                        gate(x, z, e, lo, hi);
                        ss[0] += lo * lo;
                        ss[0] += hi * hi;
                    }
                }
                block_sums(ss, k, red);
                mark(1);
                const float rstd = rsqrtf(ss[0] / float(width) + a.eps);
                for (int64_t c = g0 / 8 + threadIdx.x; c < (g0 + width) / 8; c += threads) {
                    uint4& p = x_chunk(c);
                    const uint4 x = p, z = *reinterpret_cast<const uint4*>(zs + c * 8),
                                w = *reinterpret_cast<const uint4*>(ws + c * 8);
                    uint32_t o[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float lo, hi;
                        gate(x, z, e, lo, hi);
                        o[e] = pack(lo * rstd * qd::bf_lo(qd::word_of(w, e)),
                                    hi * rstd * qd::bf_hi(qd::word_of(w, e)));
                    }
                    p = make_uint4(o[0], o[1], o[2], o[3]);
                }
                continue;
            }
#pragma unroll
            for (int r = 0; r < MK; ++r) {
                if (r >= k) break;
                for (int64_t i = g0 + threadIdx.x; i < g0 + width; i += threads) {
                    const float v = bf(X(r, i)) * silu_rounded<__nv_bfloat16>(bf(zs[r * I + i]));
                    ss[r] += v * v;
                }
            }
            block_sums(ss, k, red);
            mark(1);
#pragma unroll
            for (int r = 0; r < MK; ++r) {
                if (r >= k) break;
                const float rstd = rsqrtf(ss[r] / float(width) + a.eps);
                for (int64_t i = g0 + threadIdx.x; i < g0 + width; i += threads) {
                    const float v = bf(X(r, i)) * silu_rounded<__nv_bfloat16>(bf(zs[r * I + i]));
                    X(r, i) = to_bf(v * rstd * bf(ws[i]));
                }
            }
        }
    }
    __syncthreads();
    if (trace) stamps[2] = global_ns();
    if (a.x_out && blockIdx.x == 0)  // the normalised rows, for the caller (final hidden states)
        for (int64_t e = threadIdx.x; e < a.k * I; e += blockDim.x) a.x_out[e] = X(int(e / I), e % I);
    constexpr bool x32 = Kind<WK>::quant && MK == 1 && !TC && !DP;
    uint32_t jo[8] = {};
    const uint32_t xf_at = static_cast<uint32_t>(__cvta_generic_to_shared(xf));
    const uint32_t book = static_cast<uint32_t>(__cvta_generic_to_shared(code_s));
    if constexpr (x32) {
        for (int64_t v = threadIdx.x; v < lim / 4; v += threads)
            *reinterpret_cast<float4*>(xf + 4 * (v ^ ((v >> 3) & 7))) =
                make_float4(bf(X(0, 4 * v)), bf(X(0, 4 * v + 1)), bf(X(0, 4 * v + 2)), bf(X(0, 4 * v + 3)));
        // The lane's units start at lane · cols / 4; within their group of 8 the XOR key is constant
        // (loads are 32 · cols columns apart, a multiple of 8 units of 8).
        const int first_unit = lane * (cols / 4), key = (first_unit >> 3) & 7, a7 = first_unit & 7;
#pragma unroll
        for (int j = 0; j < 8; ++j) jo[j] = 16u * uint32_t((a7 + j) ^ key);
        __syncthreads();
    }
    const uint32_t xq_at = xf_at;
    const float* sx = sxw;
    uint32_t book8[4] = {};
    if constexpr (DP) {
        if (!dp_fused) {  // (else quantized with the norm, before the barrier above)
            const int64_t nseg = lim / 8;
            for (int64_t base = 0; base < nseg; base += threads) {
                const int64_t s = base + threadIdx.x;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (s < nseg) v = *reinterpret_cast<const uint4*>(xs + qd::swizzle<4>(s) * 8);
                dp_segment(s, v, s < nseg);
            }
        }
        qd::int8_book(book8, q.code);
        __syncthreads();
    }
    // TC: x in fp16 in the same place, in column order, scaled by 2^-xe so that its largest
    // magnitude lies in [2^14, 2^15): every value within 2^28 of it converts exactly (bf16's 8
    // significant bits fit fp16's 11), and the products come back times 2^xe, exactly. The largest
    // magnitude from the bf16 patterns (their order is the integers' with the sign bit cleared).
    __half* xh = reinterpret_cast<__half*>(xf);
    float xup = 1.0f;
    if constexpr (TC) {
        __shared__ uint32_t xmax[kGemvWarps];
        uint32_t mb = 0;
        for (int64_t c = threadIdx.x; c < lim / 8; c += threads) {
            const uint4 v = *reinterpret_cast<const uint4*>(xs + c * 8);
            mb = __vmaxu2(mb, __vmaxu2(__vmaxu2(v.x & 0x7fff7fffu, v.y & 0x7fff7fffu),
                                       __vmaxu2(v.z & 0x7fff7fffu, v.w & 0x7fff7fffu)));
        }
        mb = __reduce_max_sync(0xffffffffu, max(mb & 0xffffu, mb >> 16));
        if (lane == 0) xmax[warp] = mb;
        __syncthreads();
#pragma unroll
        for (int w = 0; w < kGemvWarps; ++w) mb = max(mb, xmax[w]);
        const float m = __uint_as_float(mb << 16);
        const int xe = m > 0.0f && m <= FLT_MAX ? min(max(ilogbf(m) - 14, -100), 100) : 0;
        const float down = __int_as_float((127 - xe) << 23);
        xup = __int_as_float((127 + xe) << 23);
        for (int64_t c = threadIdx.x; c < lim / 8; c += threads) {
            const uint4 v = *reinterpret_cast<const uint4*>(xs + xpos<WK>(c * 8));
            const uint32_t w[4] = {v.x, v.y, v.z, v.w};
            uint32_t hv[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const __half2 p = __floats2half2_rn(qd::bf_lo(w[e]) * down, qd::bf_hi(w[e]) * down);
                hv[e] = *reinterpret_cast<const uint32_t*>(&p);
            }
            *reinterpret_cast<uint4*>(xh + c * 8) = make_uint4(hv[0], hv[1], hv[2], hv[3]);
        }
        __syncthreads();
    }

    const char* code_base = reinterpret_cast<const char*>(code_s);
    // Output o of row r from the fp32 products v (and v2: SwiGLU's up row); pre: whether it is the
    // output ep was read ahead for (this lane's first).
    auto finish = [&](int64_t r, int64_t o, float v, float v2, bool pre) {
        finish_output(a, ep, r, o, v, v2, pre, const_pre);
    };
    // The batch-1 streaming loops (lane_outputs): the warp's j-th output's sums (v, v2) wait in
    // shared memory (in registers they spill the 3-blocks-an-SM bf16 kernel); after every 32
    // outputs, and after the last, lane j finishes the j-th — one epilogue's round trips a group
    // instead of one per output, serialized on lane 0 (the conv epilogue of an in-projection reads
    // and writes its window there). o: the j-th output.
    __shared__ float2 kept[lane_outputs ? kGemvWarps : 1][32];
    auto keep = [&](int j, int64_t o, float v, float v2) {
        const int jl = j & 31;
        if (lane == 0) kept[warp][jl] = make_float2(v, v2);
        if (jl == 31 || o + stride >= a.O) {
            __syncwarp();
            if (lane <= jl) {
                const float2 m = kept[warp][lane];
                finish(0, o - int64_t(jl - lane) * stride, m.x, m.y, j < 32);
            }
            __syncwarp();
        }
    };
    if constexpr (PRE && WK == WeightKind::BF16) {
        if (pre_ring) {  // row j in slot j % kRingSlots; its copies are the oldest group pending
            for (int j = 0; j < npre; ++j) {
                ops::cuda::detail::cp_async_wait<kRingSlots - 1>();
                const uint16_t* w = pre + int64_t(j % kRingSlots) * wr * I;
                float acc = 0.0f, acc2 = 0.0f;
#pragma unroll 4
                for (int i = lane * 8; i < int(I); i += 256) {
                    const uint4 xv = *reinterpret_cast<const uint4*>(xs + i);
                    acc = dot8_bf16(*reinterpret_cast<const uint4*>(w + i), xv, acc);
                    if (swiglu) acc2 = dot8_bf16(*reinterpret_cast<const uint4*>(w + I + i), xv, acc2);
                }
                asm volatile("" ::: "memory");  // the slot's reads before its next copies
                const int64_t next = o0 + int64_t(j + kRingSlots) * stride;
                if (next < a.O) issue_row(next, j % kRingSlots);
                ops::cuda::detail::cp_async_commit();
                const float v = warp_sum(acc), v2 = swiglu ? warp_sum(acc2) : 0.0f;
                keep(j, o0 + int64_t(j) * stride, v, v2);
            }
            ops::cuda::detail::cp_async_wait<0>();
        } else {
            ops::cuda::detail::cp_async_wait<0>();
            mark(2);
            float acc[kPreRows] = {}, acc2[kPreRows] = {};
#pragma unroll
            for (int j = 0; j < kPreRows; ++j) {
                if (j >= npre) break;
                const uint16_t* w = pre + int64_t(j * wr) * I;
#pragma unroll 4
                for (int i = lane * 8; i < int(I); i += 256) {
                    const uint4 xv = *reinterpret_cast<const uint4*>(xs + i);
                    acc[j] = dot8_bf16(*reinterpret_cast<const uint4*>(w + i), xv, acc[j]);
                    if (swiglu) acc2[j] = dot8_bf16(*reinterpret_cast<const uint4*>(w + I + i), xv, acc2[j]);
                }
            }
            mark(3);
            float v, v2;  // lane j finishes output j
            warp_sums_to_lanes(acc, acc2, npre, swiglu, lane, v, v2);
            mark(4);
            if (lane < npre) finish(0, po, v, v2, true);
            mark(5);
        }
    } else if constexpr (TC) {
        // Item by item: the next item's copies issued, this one's awaited, then per strip its
        // products — per 32-bit word of the lane's codes (8 columns of each half) two m16n8k16
        // products, A the word of the first half (row tg) and of the second (row tg + 8), B the
        // matching 8 values of x. A's 16 k positions are any 16 columns as long as B lists them
        // alike: lane t4's are its own 4 consecutive columns of each half. B column n carries half
        // n / nb, absmax block n % nb of it (lanes 4n .. 4n + 3 hold it, zeros elsewhere), so result
        // column n of row tg (half 0) or tg + 8 (half 1) is that block's partial sum, and the flush
        // scales each by its absmax: lane t4 holds columns 2·t4 and 2·t4 + 1.
        const uint32_t book_lane = static_cast<uint32_t>(__cvta_generic_to_shared(pair_book)) +
                                   4u * uint32_t(lane % qd::kPairBookCopies);
        __shared__ float red_tc[2][2][kGemvWarps][8];           // [group parity][row set][warp][row]
        const int bhalf = tg >> nb_log2, bblk = tg & (nb - 1);  // this lane's B column: half, block
        const bool bcol = tg < 2 * nb && ((32 * t4) >> bs_log2) == bblk;
        const int half0 = (2 * t4) >> nb_log2, half1 = (2 * t4 + 1) >> nb_log2;
        int slot = 0;
        for (int gi = 0; gi < tc_groups; ++gi) {
            const int64_t group = blockIdx.x + int64_t(gi) * gridDim.x;
            float acc[2] = {0.0f, 0.0f};  // [row set]
            for (int j = 0; j < tc_per_tile; ++j) {
                tc_issue();
                if (stages == kTcStages)
                    ops::cuda::detail::cp_async_wait<kTcStages - 1>();
                else
                    ops::cuda::detail::cp_async_wait<kTcStages - 2>();
                const int64_t item = tws + int64_t(j) * wpt;
#pragma unroll
                for (int u = 0; u < kTcSub; ++u) {
                    const int64_t s = item * kTcSub + u;
                    const int64_t colb = s * kTcStrip + bhalf * (kTcStrip / 2) + 32 * t4;
                    const bool give = bcol && colb < lim;
                    uint4 xv[4];
#pragma unroll
                    for (int w = 0; w < 4; ++w)
                        xv[w] = give ? *reinterpret_cast<const uint4*>(xh + colb + 8 * w)
                                     : make_uint4(0, 0, 0, 0);
                    const int64_t blk0 = tc_block(s, 0), blk1 = tc_block(s, 1);
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        if (h >= wr) break;
                        const uint4 c0 = *slot_codes(slot, h, u, 0), c1 = *slot_codes(slot, h, u, 1);
                        // Two accumulators (a word's first and second product): chains of 4 products.
                        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f}, e[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                        for (int w = 0; w < 4; ++w) {
                            uint32_t p0[4], p1[4];
                            qd::decode8_table(p0, qd::word_of(c0, w), book_lane);
                            qd::decode8_table(p1, qd::word_of(c1, w), book_lane);
                            ops::cuda::detail::mma_m16n8k16_f16(d, {p0[0], p1[0], p0[1], p1[1]},
                                                                {xv[w].x, xv[w].y});
                            ops::cuda::detail::mma_m16n8k16_f16(e, {p0[2], p1[2], p0[3], p1[3]},
                                                                {xv[w].z, xv[w].w});
                        }
#pragma unroll
                        for (int i = 0; i < 4; ++i) d[i] += e[i];
                        if (blk0 >= 0)
                            acc[h] = fmaf(*slot_absmax(slot, h, u, 0), half0 ? d[2] : d[0], acc[h]);
                        if (blk1 >= 0)
                            acc[h] = fmaf(*slot_absmax(slot, h, u, 1), half1 ? d[3] : d[1], acc[h]);
                    }
                }
                slot = slot + 1 == stages ? 0 : slot + 1;
            }
            // The tile's outputs: the 4 lanes of a row's quad, then the tile's warps in order (a
            // fixed order: the same bits every run).
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float v = acc[h];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                if (t4 == 0 && h < wr) red_tc[gi & 1][h][warp][tg] = v;
            }
            __syncthreads();
            if (threadIdx.x < tpb * 8) {
                const int t = threadIdx.x / 8, r = threadIdx.x % 8;
                const int64_t o = (group * tpb + t) * 8 + r;
                float v = 0.0f, v2 = 0.0f;
                for (int w = t * wpt; w < (t + 1) * wpt; ++w) {
                    v += red_tc[gi & 1][0][w][r];
                    if (swiglu) v2 += red_tc[gi & 1][1][w][r];
                }
                if (o < a.O) finish(0, o, v * xup, v2 * xup, false);
            }
        }
        ops::cuda::detail::cp_async_wait<0>();
    } else if constexpr (DP) {
        // As x32 below, with dot_row_dp's int8 sums, and DP rows (their first chunks) in flight a
        // warp while one is multiplied.
        const uint32_t swz16 = 16u * uint32_t((lane >> 2) & 1);
        DpLane<Kind<WK>::unroll> L;
#pragma unroll
        for (int u = 0; u < Kind<WK>::unroll; ++u) {
            const int64_t i = int64_t(lane) * 32 + u * 1024;
            L.code[u] = uint32_t(i / 2);
            L.blk[u] = uint32_t(i >> bs_log2);
            L.in[u] = i < lim;
        }
        Chunk<Kind<WK>::unroll> ring[DP + 1], ring2[DP + 1];  // [0]: this row; [d]: row o + d · stride
        ring[0] = first;
        ring2[0] = first2;
#pragma unroll
        for (int d = 1; d <= DP; ++d) {
            const int64_t od = o0 + d * stride;
            if (od < a.O) {
                dp_load_first<WK>(ring[d], q, od, L, pol);
                if (swiglu) dp_load_first<WK>(ring2[d], q, a.O + od, L, pol);
            }
        }
        int j = 0;
        for (int64_t o = o0; o < a.O; o += stride, ++j) {
            const Chunk<Kind<WK>::unroll> cur = ring[0], cur2 = ring2[0];
#pragma unroll
            for (int d = 0; d < DP; ++d) {
                ring[d] = ring[d + 1];
                ring2[d] = ring2[d + 1];
            }
            const int64_t on = o + (DP + 1) * stride;
            if (on < a.O) {
                dp_load_first<WK>(ring[DP], q, on, L, pol);
                if (swiglu) dp_load_first<WK>(ring2[DP], q, a.O + on, L, pol);
            }
            float v = dot_row_dp<WK>(q, bs_log2, o, xq_at, sx, I, int(lim), lane, cur, swz16, book8, pol);
            float v2 = swiglu ? dot_row_dp<WK>(q, bs_log2, a.O + o, xq_at, sx, I, int(lim), lane, cur2, swz16,
                                               book8, pol)
                              : 0.0f;
            v = warp_sum(v);
            if (swiglu) v2 = warp_sum(v2);
            keep(j, o, v, v2);
        }
    } else if constexpr (x32) {
        // Batch 1, quantized: the warp's next row's loads go out before this row's product. (A
        // ring of 3 rows in flight measured 8% slower on the H200, docs/PERFORMANCE.md: bytes in
        // flight are not what bounds the 4-bit product.)
        Chunk<Kind<WK>::unroll> next = first, next2 = first2;
        DpLane<Kind<WK>::unroll> L;  // 4-bit rows: the first chunks' lane constants (dp_load_first)
#pragma unroll
        for (int u = 0; u < Kind<WK>::unroll; ++u) {
            const int64_t i = int64_t(lane) * cols + u * 32 * cols;
            L.code[u] = uint32_t(i / 2);
            L.blk[u] = uint32_t(i >> bs_log2);
            L.in[u] = i < lim;
        }
        int j = 0;
        for (int64_t o = o0; o < a.O; o += stride, ++j) {
            const Chunk<Kind<WK>::unroll> cur = next, cur2 = next2;
            if (o + stride < a.O) {
                if constexpr (Kind<WK>::four) {
                    dp_load_first<WK>(next, q, o + stride, L, pol);
                    if (swiglu) dp_load_first<WK>(next2, q, a.O + o + stride, L, pol);
                } else {
                    load_chunk<WK>(next, a.W, q, bs_log2, o + stride, int64_t(lane) * cols, I, lim, pol);
                    if (swiglu)
                        load_chunk<WK>(next2, a.W, q, bs_log2, a.O + o + stride, int64_t(lane) * cols, I, lim,
                                       pol);
                }
            }
            float v = dot_row_x32<WK>(a.W, q, bs_log2, o, xf_at, I, lim, lane, cur, jo, book, pol);
            float v2 =
                swiglu ? dot_row_x32<WK>(a.W, q, bs_log2, a.O + o, xf_at, I, lim, lane, cur2, jo, book, pol)
                       : 0.0f;
            v = warp_sum(v);
            if (swiglu) v2 = warp_sum(v2);
            if constexpr (WK == WeightKind::I8) {
                v *= cur.row_scale;
                v2 *= cur2.row_scale;
            }
            keep(j, o, v, v2);
        }
    } else {
        int j = 0;
        for (int64_t o = o0; o < a.O; o += stride, ++j) {
            float acc[MK] = {}, acc2[MK] = {};
            // Quantized rows are short (a 2048-column NF4 row is two loads a lane), so the warp asks for
            // its next row's first chunk before it works on this one: two rows in flight a warp. (Not
            // bf16 at batch 1: its 3 blocks an SM leave no registers for a second row's chunk.)
            constexpr bool ahead = Kind<WK>::quant;
            Chunk<Kind<WK>::unroll> next, next2;
            if constexpr (ahead) {
                if (o + stride < a.O) {
                    load_chunk<WK>(next, a.W, q, bs_log2, o + stride, int64_t(lane) * cols, I, lim, pol);
                    if (swiglu)
                        load_chunk<WK>(next2, a.W, q, bs_log2, a.O + o + stride, int64_t(lane) * cols, I, lim,
                                       pol);
                }
            }
            const bool use_first = ahead || o == o0;
            dot_row<WK, MK>(acc, a.W, q, bs_log2, o, xs, I, lim, k, lane, first, use_first, code_base, pol);
            if (swiglu)
                dot_row<WK, MK>(acc2, a.W, q, bs_log2, a.O + o, xs, I, lim, k, lane, first2, use_first,
                                code_base, pol);
            float scale = 1.0f, scale2 = 1.0f;  // int8: the rows' scales
            if constexpr (WK == WeightKind::I8) {
                scale = first.row_scale;
                scale2 = first2.row_scale;
            }
            if constexpr (ahead) {
                first = next;
                first2 = next2;
            }
            if constexpr (lane_outputs) {
                float v = warp_sum(acc[0]), v2 = swiglu ? warp_sum(acc2[0]) : 0.0f;
                if constexpr (WK == WeightKind::I8) {
                    v *= scale;
                    v2 *= scale2;
                }
                keep(j, o, v, v2);
                continue;
            }
            float v, v2;  // lane r writes row r's output
            warp_sums_to_lanes(acc, acc2, k, swiglu, lane, v, v2);
            if (lane >= k) continue;
            if constexpr (WK == WeightKind::I8) {
                v *= scale;
                v2 *= scale2;
            }
            finish(lane, o, v, v2, o == o0);
        }
    }
    if (trace_slot >= 0) {
        __syncthreads();
        if (trace) record_trace(trace_slot, stamps, marks);
    }
}

// The PRE kernel's grid: kPreBlocksPerSm blocks an SM (fewer when there are fewer than 8 outputs a
// block), and the shared memory its rows (or its ring) take; 0 blocks when it does not take the
// product (rows over kPreSmem, or MSLM_DECODE_GEMV_PRE=0). MSLM_DECODE_GEMV_PRE = 1, 2 or 3 sets the
// blocks an SM (read at each launch).
struct PrePlan {
    int64_t blocks = 0;
    size_t smem = 0;
};
PrePlan pre_plan(const DecodeGemv& a, int sms) {
    const char* env = std::getenv("MSLM_DECODE_GEMV_PRE");
    const std::string mode = env ? env : "";
    if (a.k != 1 || a.q || mode == "0") return {};
    const int per_sm = mode == "1" ? 1 : mode == "2" ? 2 : mode == "3" ? 3 : kPreBlocksPerSm;
    const int64_t blocks = std::min<int64_t>((a.O + kGemvWarps - 1) / kGemvWarps, int64_t(sms) * per_sm);
    const int64_t rows = (a.O + blocks * kGemvWarps - 1) / (blocks * kGemvWarps);
    const int64_t wr = a.epi == DecodeEpilogue::SwiGLU ? 2 : 1;
    const size_t bytes = size_t(kGemvWarps * rows * wr * a.I) * sizeof(uint16_t);
    if (rows <= kPreRows && bytes <= kPreSmem && decode_gemv_smem(a) + bytes <= kDecodeGemvMaxSmem)
        return {blocks, decode_gemv_smem(a) + bytes};
    // More rows a warp than kPreRows: the ring of kRingSlots rows a warp where it fits (the kernel
    // tells the modes apart by its rows a warp); MSLM_DECODE_GEMV_RING=0 streams them instead.
    const char* ring_env = std::getenv("MSLM_DECODE_GEMV_RING");
    const size_t ring = size_t(kGemvWarps * kRingSlots * wr * a.I) * sizeof(uint16_t);
    if (rows > kPreRows && ring <= kPreSmem && decode_gemv_smem(a) + ring <= kDecodeGemvMaxSmem &&
        !(ring_env && std::string(ring_env) == "0"))
        return {blocks, decode_gemv_smem(a) + ring};
    return {};
}

// The TC kernel's shared memory: decode_gemv_smem's, the pair code book, the warps' rings.
size_t tc_smem(const DecodeGemv& a) {
    const size_t wr = a.epi == DecodeEpilogue::SwiGLU ? 2 : 1, stages = wr == 1 ? kTcStages : kTcStages - 1;
    return decode_gemv_smem(a) + qd::kPairBookBytes + size_t(kGemvWarps) * stages * wr * kTcSlotBytes;
}
// Whether the batch-1 product takes the tensor-core kernel (TC): 4-bit rows with fp32 absmax in
// blocks of ≥ 32 columns, with MSLM_DECODE_GEMV_TC=1 (read at each launch). Opt-in: measured no
// faster than the streaming kernel on the H200 (docs/PERFORMANCE.md: both bound by instruction
// issue at low occupancy, not by their decode), which keeps the exact fp32 code book.
bool tc_takes(const DecodeGemv& a) {
    const char* env = std::getenv("MSLM_DECODE_GEMV_TC");
    return a.k == 1 && a.q && a.q->format != QuantFormat::Int8 && a.q->scale && a.q->blocksize >= 32 &&
           tc_smem(a) <= kDecodeGemvMaxSmem && env && std::string(env) == "1";
}
// Whether the batch-1 product on 4-bit rows takes the int8 dp4a kernel (DP; the code book and x in
// int8: quant_detail::decode8_i8): MSLM_DECODE_GEMV_DP4A=1 or 0 (read at each launch), else
// kDp4aDefault. On by default: 4-13% faster products than the fp32 code book's (1b NF4 decode +12%);
// its rounding of x and the code book to int8 moves a product by ~1% rms, and a trained 130m
// model's perplexity through the decode step by +0.06% (NF4 itself: +0.7% over bf16), measured with
// bench_cuda_score (docs/PERFORMANCE.md).
constexpr bool kDp4aDefault = true;
// Rows in flight a warp ahead of the one multiplied: 2 and 3 measured slower than 1 on the H200
// (2048 × 16384: 12.80 / 13.78 / 14.99 µs; 3 spills), docs/PERFORMANCE.md.
constexpr int kDpDepth = 1;
bool dp_takes(const DecodeGemv& a) {
    const char* env = std::getenv("MSLM_DECODE_GEMV_DP4A");
    const bool on = env && std::string(env) == "1"   ? true
                    : env && std::string(env) == "0" ? false
                                                     : kDp4aDefault;
    return a.k == 1 && a.q && a.q->format != QuantFormat::Int8 && on;
}

template <WeightKind WK, int MK, bool PRE = false, bool TC = false, int DP = 0>
void launch_gemv_rows(const DecodeGemv& a, void* stream) {
    auto kernel = decode_gemv_kernel<WK, MK, PRE, TC, DP>;
    static int configured_device = -1;  // per instantiation
    int device = 0;
    cudaGetDevice(&device);
    if (configured_device != device) {
        const cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kDecodeGemvMaxSmem));
        MSLM_CHECK(err == cudaSuccess, "decode_gemv: cudaFuncSetAttribute: {}", cudaGetErrorString(err));
        configured_device = device;
    }
    int sms = 0, resident = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    const PrePlan plan = PRE ? pre_plan(a, sms) : PrePlan{};
    const size_t smem = PRE ? plan.smem : TC ? tc_smem(a) : decode_gemv_smem(a);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kGemvWarps * 32, smem);
    // One wave: every block pays the prologue once, then strides over the rows (TC: 16-row tiles).
    int64_t units = (a.O + kGemvWarps - 1) / kGemvWarps;
    if (TC) {  // groups of tpb 8-output tiles (decode_gemv_kernel's TC setup)
        const int64_t items = (staged_length(a) + kTcSub * kTcStrip - 1) / (kTcSub * kTcStrip);
        const int64_t tpb = kGemvWarps / std::min<int64_t>(items, kGemvWarps);
        units = ((a.O + 7) / 8 + tpb - 1) / tpb;
    }
    const int64_t blocks = PRE ? plan.blocks : std::min<int64_t>(units, int64_t(sms) * std::max(resident, 1));
    QuantWeight q;
    int bs_log2 = 0;
    if (a.q) {
        q = *a.q;
        while (Kind<WK>::four && (int64_t(1) << bs_log2) < q.blocksize) ++bs_log2;
    }
    launch(kernel, dim3(unsigned(blocks)), dim3(kGemvWarps * 32), smem, stream, "decode_gemv", a, q, bs_log2,
           trace_slot(a, PRE || TC), int(decode_gemv_smem(a)));
}

template <WeightKind WK>
void launch_gemv(const DecodeGemv& a, void* stream) {
    if (a.k == 1) {
        if constexpr (WK == WeightKind::BF16) {
            int device = 0, sms = 0;
            cudaGetDevice(&device);
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
            if (pre_plan(a, sms).blocks > 0) {
                launch_gemv_rows<WK, 1, true>(a, stream);
                return;
            }
        }
        if constexpr (WK == WeightKind::Q4) {
            if (tc_takes(a)) {
                launch_gemv_rows<WK, 1, false, true>(a, stream);
                return;
            }
        }
        if constexpr (Kind<WK>::four) {
            if (dp_takes(a)) {
                launch_gemv_rows<WK, 1, false, false, kDpDepth>(a, stream);
                return;
            }
        }
        launch_gemv_rows<WK, 1>(a, stream);
        return;
    }
    // bf16 at 2 rows (batch 2, CudaCausalLM's largest fused batch): registers for 2 rows
    // (MSLM_DECODE_GEMV_ROWS=8 takes the 8-row one, for comparison; read at each 2-row launch).
    // More rows (only with MSLM_DECODE_FUSED_MAX_ROWS) take the 8-row instantiation.
    if constexpr (WK == WeightKind::BF16) {
        if (a.k == 2) {
            const char* env = std::getenv("MSLM_DECODE_GEMV_ROWS");
            if (!(env && std::string(env) == "8")) {
                launch_gemv_rows<WK, 2>(a, stream);
                return;
            }
        }
    }
    launch_gemv_rows<WK, int(kDecodeGemvMaxRows)>(a, stream);
}

}  // namespace

void decode_gemv_trace_reset(bool restart_slots) {
    if (restart_slots) g_trace_used = 0;
    std::vector<GemvTrace> clear(kGemvTraceSlots, GemvTrace{~0ull, 0, ~0ull, 0, 0, 0, {}});
    const cudaError_t err =
        cudaMemcpyToSymbol(g_gemv_trace, clear.data(), sizeof(GemvTrace) * kGemvTraceSlots);
    MSLM_CHECK(err == cudaSuccess, "decode_gemv trace: {}", cudaGetErrorString(err));
}
int decode_gemv_trace_used() {
    return g_trace_used;
}
std::vector<GemvTrace> decode_gemv_trace_read(int first, int count) {
    MSLM_CHECK(first >= 0 && count >= 0 && first + count <= kGemvTraceSlots,
               "decode_gemv trace: slots {}..{}", first, first + count);
    std::vector<GemvTrace> out(static_cast<size_t>(count));
    const cudaError_t err =
        cudaMemcpyFromSymbol(out.data(), g_gemv_trace, sizeof(GemvTrace) * count, sizeof(GemvTrace) * first);
    MSLM_CHECK(err == cudaSuccess, "decode_gemv trace: {}", cudaGetErrorString(err));
    return out;
}
ops::cuda::KernelTrace* decode_trace_record(TraceKind kind, int64_t I, int64_t O) {
    const int slot = trace_slot(I, O, false, kind);
    if (slot < 0) return nullptr;
    void* base = nullptr;
    const cudaError_t err = cudaGetSymbolAddress(&base, g_gemv_trace);
    MSLM_CHECK(err == cudaSuccess, "decode trace: {}", cudaGetErrorString(err));
    return static_cast<GemvTrace*>(base) + slot;
}
GemvTraceLaunch decode_gemv_trace_launch(int slot) {
    MSLM_CHECK(slot >= 0 && slot < g_trace_used, "decode_gemv trace: slot {} of {}", slot, g_trace_used);
    return g_trace_launch[slot];
}

size_t decode_gemv_smem(const DecodeGemv& a) {
    const int64_t extra = a.k * (a.norm == DecodeNorm::Gated ? a.I : 0) + (a.norm == DecodeNorm::None ? 0 : 2 * a.I);
    // Batch 1 on quantized rows: x in fp32, whole groups of 8 units (32 floats) as the XOR swizzle
    // permutes within a group (an int8 row of 16 · odd columns ends mid-group); the dp4a product's
    // int8 x and its group scales (1.125 bytes a column) fit in the same place.
    const size_t x32 = a.q && a.k == 1 ? sizeof(float) * size_t((staged_length(a) + 31) / 32 * 32) : 0;
    return size_t(a.k * staged_length(a) + extra) * sizeof(uint16_t) + x32;
}

bool decode_gemv_supported(const DecodeGemv& a) {
    auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const int64_t w_rows = a.epi == DecodeEpilogue::SwiGLU ? 2 * a.O : a.O;
    const bool weight_ok =
        a.q ? (a.q->in == a.I && a.q->out == w_rows && a.q->data && aligned16(a.q->data) && a.q->row_bytes % 16 == 0 &&
               (a.q->format == QuantFormat::Int8 ? a.q->scale != nullptr
                                                 : a.q->blocksize >= 16 && a.q->blocksize <= 4096 &&
                                                       (a.q->blocksize & (a.q->blocksize - 1)) == 0 &&
                                                       (a.q->scale || (a.q->absmax_q && a.q->nested_absmax &&
                                                                       a.q->nested_code))))
            : aligned16(a.W);
    // Batch 1 on 4-bit codes scales each 32-column load by one absmax: blocks of 16 go unfused.
    const bool blocks_ok = !a.q || a.k > 1 || a.q->format == QuantFormat::Int8 || a.q->blocksize >= 32;
    const bool conv_ok = !a.conv_state || (a.epi == DecodeEpilogue::Store && a.conv_slots && a.conv_w &&
                                           a.conv_out && a.conv_K >= 1 && a.conv_K <= 8 && a.conv_C > 0 &&
                                           a.conv_col0 >= 0 && a.conv_col0 + a.conv_C <= a.O);
    return a.k >= 1 && a.k <= kDecodeGemvMaxRows && a.I % 8 == 0 && a.I > 0 && w_rows > 0 && weight_ok && blocks_ok && conv_ok &&
           (a.norm != DecodeNorm::Gated || (a.groups > 0 && a.I % a.groups == 0)) &&
           decode_gemv_smem(a) <= kDecodeGemvMaxSmem;
}

void decode_gemv(const DecodeGemv& a, void* stream) {
    MSLM_CHECK(decode_gemv_supported(a), "decode_gemv: unsupported shape k={} I={} O={}{}", a.k, a.I, a.O,
               a.q ? " (quantized weight)" : "");
    if (!a.q)
        launch_gemv<WeightKind::BF16>(a, stream);
    else if (a.q->format == QuantFormat::Int8)
        launch_gemv<WeightKind::I8>(a, stream);
    else if (a.q->scale)
        launch_gemv<WeightKind::Q4>(a, stream);
    else
        launch_gemv<WeightKind::Q4DQ>(a, stream);
}

}  // namespace mslm::cuda_decoder_detail
