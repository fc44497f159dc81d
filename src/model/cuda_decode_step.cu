// The persistent batch-1 decode step (cuda_decode_step.h).
//
// Layout of the work: the grid is one block of kThreads per SM, all resident (cooperative launch).
// A product stage gives block b the contiguous output rows [b·R, (b + 1)·R), R = ⌈O / blocks⌉, and
// warp w of it the rows b·R + w, b·R + w + kWarps, …; every block first builds the stage's input
// vector in shared memory (the normalised residual stream, the gated norm of y, the combined
// attention heads, the MLP activations). Values written by one stage and read by another go through
// global memory (L2) and are read with ld.global.cg (__ldcg: not through L1, which a barrier does
// not invalidate); weights, which never change during the kernel, through the read-only path.
//
// Weight staging: a block's rows of a stage are one contiguous range of the weight matrix, so one
// bulk copy (cp.async.bulk, completion on an mbarrier) brings them into shared memory. The copy for
// stage s + 1 is issued when stage s starts, into the other of two buffers; the L2 prefetch runs a
// stage further ahead. After a barrier a stage then waits only for its input vector (from L2), not
// for a DRAM round trip per weight row. (The head, larger than the buffers, streams from global.)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "model/cuda_bf16_bits.cuh"
#include "model/cuda_decode_step.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/reduce.cuh"

namespace mslm::cuda_decoder_detail {

namespace {

constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
// 16-byte weight loads a lane has in flight per row in a product (8 bf16 each).
constexpr int kUnroll = 4;
// Rows of the head a block prefetches (the head is larger than the L2; the rest streams).
constexpr int64_t kHeadPrefetchRows = 64;

using ops::cuda::detail::silu;
using ops::cuda::detail::silu_rounded;
using ops::cuda::detail::warp_sum;

// A value another block wrote during this kernel: from L2.
__device__ __forceinline__ float bf_cg(const uint16_t* p) {
    return bf(__ldcg(reinterpret_cast<const unsigned short*>(p)));
}
__device__ __forceinline__ float bf_w(const uint16_t* p) {  // a weight (read-only for the kernel)
    return bf(__ldg(reinterpret_cast<const unsigned short*>(p)));
}
__device__ __forceinline__ float softplus(float v) {
    return v > 20.0f ? v : log1pf(expf(v));
}

// Grid-wide barrier on a counter that starts at 0: the e-th barrier waits for e · blocks arrivals.
// Thread 0 publishes the block's writes (fence, then the arrival) and spins with acquire loads.
__device__ __forceinline__ void grid_sync(unsigned* counter, unsigned& epoch) {
    __syncthreads();
    ++epoch;
    if (threadIdx.x == 0) {
        const unsigned target = epoch * gridDim.x;
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
        unsigned seen = 0;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        } while (seen < target);
        __threadfence();
    }
    __syncthreads();
}

// Asks the L2 for [p, p + bytes) (rounded out to 16 bytes), in pieces spread over the block's threads.
__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (p == nullptr || bytes <= 0) return;
    constexpr uint64_t kPiece = 16384;
    const uint64_t lo = reinterpret_cast<uint64_t>(p) & ~uint64_t(15);
    const uint64_t hi = (reinterpret_cast<uint64_t>(p) + uint64_t(bytes) + 15) & ~uint64_t(15);
    for (uint64_t q = lo + uint64_t(threadIdx.x) * kPiece; q < hi; q += uint64_t(kThreads) * kPiece) {
        const unsigned size = unsigned(min(kPiece, hi - q));
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(q), "r"(size) : "memory");
    }
#endif
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bar)) : "memory");
#endif
}
// Thread 0: the transfer of `bytes` into the buffer of `bar` is announced, then issued in pieces.
__device__ __forceinline__ void bulk_copies(void* dst, const void* const* src, const uint32_t* bytes, int n,
                                            uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t total = 0;
    for (int i = 0; i < n; ++i) total += bytes[i];
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // after the buffer's last generic reads
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(total)
                 : "memory");
    char* d = static_cast<char*>(dst);
    for (int i = 0; i < n; ++i) {
        if (bytes[i] == 0) continue;
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                smem_addr(d)),
            "l"(src[i]), "r"(bytes[i]), "r"(smem_addr(bar))
            : "memory");
        d += bytes[i];
    }
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
            : "=r"(done)
            : "r"(smem_addr(bar)), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// This block's rows of a stage with O output rows.
__device__ __forceinline__ void block_rows(int64_t O, int64_t& r0, int64_t& r1) {
    const int64_t R = (O + gridDim.x - 1) / gridDim.x;
    r0 = min(O, int64_t(blockIdx.x) * R);
    r1 = min(O, r0 + R);
}

// Σ over the block, every thread gets the total. `red` holds kWarps floats.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = 0.0f;
#pragma unroll
    for (int q = 0; q < kWarps; ++q) t += red[q];
    __syncthreads();
    return t;
}

// (w0·xs, w1·xs) over I columns (I % 8 == 0, rows 16-byte aligned; in global or shared memory), the
// warp's sums in every lane. w1 may be null (one row). A round's weight loads are all issued before
// any is used.
__device__ __forceinline__ void dot2(const uint16_t* __restrict__ w0, const uint16_t* __restrict__ w1,
                                     const uint16_t* xs, int64_t I, int lane, float& a0, float& a1) {
    const int64_t chunks = I / 8;
    const uint4* p0 = reinterpret_cast<const uint4*>(w0);
    const uint4* p1 = reinterpret_cast<const uint4*>(w1);
    const uint4* x = reinterpret_cast<const uint4*>(xs);
    float s0 = 0.0f, s1 = 0.0f;
    for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
        uint4 v0[kUnroll], v1[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t c = c0 + 32 * u;
            v0[u] = c < chunks ? p0[c] : make_uint4(0, 0, 0, 0);
            v1[u] = c < chunks && w1 ? p1[c] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t c = c0 + 32 * u;
            if (c < chunks) {
                const uint4 xv = x[c];
                s0 = dot8_bf16(v0[u], xv, s0);
                s1 = dot8_bf16(v1[u], xv, s1);
            }
        }
    }
    a0 = warp_sum(s0);
    a1 = warp_sum(s1);
}

// xs = RMSNorm(x)·w rounded to bf16 (decode_gemv's RMS prologue); x is the residual stream (from
// L2) or, for the first layer, the token's embedding row (a weight).
__device__ __forceinline__ void rms_prologue(uint16_t* xs, const uint16_t* x, bool x_is_weight,
                                             const uint16_t* __restrict__ w, int64_t I, float eps, float* red) {
    // Columns tid and tid + kThreads in registers (I ≤ 2·kThreads), the rest through xs.
    float v0 = 0.0f, v1 = 0.0f, w0 = 0.0f, w1 = 0.0f, ss = 0.0f;
    const int64_t i0 = threadIdx.x, i1 = threadIdx.x + kThreads;
    if (i0 < I) v0 = x_is_weight ? bf_w(x + i0) : bf_cg(x + i0), w0 = bf_w(w + i0);
    if (i1 < I) v1 = x_is_weight ? bf_w(x + i1) : bf_cg(x + i1), w1 = bf_w(w + i1);
    ss = v0 * v0 + v1 * v1;
    for (int64_t i = i1 + kThreads; i < I; i += kThreads) {
        const float v = x_is_weight ? bf_w(x + i) : bf_cg(x + i);
        xs[i] = to_bf(v);
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float rstd = rsqrtf(ss / float(I) + eps);
    if (i0 < I) xs[i0] = to_bf(v0 * rstd * w0);
    if (i1 < I) xs[i1] = to_bf(v1 * rstd * w1);
    for (int64_t i = i1 + kThreads; i < I; i += kThreads) xs[i] = to_bf(bf(xs[i]) * rstd * bf_w(w + i));
    __syncthreads();
}

// xs = gated RMSNorm: g = y·silu(z), RMS over each of `groups` groups, times w (decode_gemv's
// Gated prologue).
__device__ __forceinline__ void gated_prologue(uint16_t* xs, const uint16_t* y, const uint16_t* z,
                                               const uint16_t* __restrict__ w, int64_t I, int groups, float eps,
                                               float* red) {
    // g = y·silu(z) in fp32 for the statistics and the output, as the fused kernel computes it.
    const int64_t width = I / groups;
    if (I <= 4 * kThreads) {  // columns tid + k·kThreads in registers, every load issued at once
        float g[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int64_t i = threadIdx.x + k * kThreads;
            g[k] = i < I ? bf_cg(y + i) * silu_rounded<__nv_bfloat16>(bf_cg(z + i)) : 0.0f;
        }
        for (int64_t g0 = 0; g0 < I; g0 += width) {
            float ss = 0.0f;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const int64_t i = threadIdx.x + k * kThreads;
                if (i >= g0 && i < g0 + width) ss += g[k] * g[k];
            }
            ss = block_sum(ss, red);
            const float rstd = rsqrtf(ss / float(width) + eps);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const int64_t i = threadIdx.x + k * kThreads;
                if (i >= g0 && i < g0 + width) xs[i] = to_bf(g[k] * rstd * bf_w(w + i));
            }
        }
        __syncthreads();
        return;
    }
    for (int64_t g0 = 0; g0 < I; g0 += width) {
        float ss = 0.0f;
        for (int64_t i = g0 + threadIdx.x; i < g0 + width; i += kThreads) {
            const float v = bf_cg(y + i) * silu_rounded<__nv_bfloat16>(bf_cg(z + i));
            ss += v * v;
        }
        ss = block_sum(ss, red);
        const float rstd = rsqrtf(ss / float(width) + eps);
        for (int64_t i = g0 + threadIdx.x; i < g0 + width; i += kThreads) {
            const float v = bf_cg(y + i) * silu_rounded<__nv_bfloat16>(bf_cg(z + i));
            xs[i] = to_bf(v * rstd * bf_w(w + i));
        }
    }
    __syncthreads();
}

__device__ __forceinline__ float bias_at(const uint16_t* b, int64_t o) {
    return b ? bf_w(b + o) : 0.0f;
}

// res[o] = round(res[o] + round(v + b[o])): the fused Residual epilogue; `old` is res[o].
__device__ __forceinline__ void add_residual(uint16_t* res, int64_t o, float v, const uint16_t* b, float old) {
    const float t = round_bf(v + bias_at(b, o));
    res[o] = to_bf(old + t);
}

// Rows [r0, r1) of W (I columns) against xs, this warp's rows in pairs; out(o, value) per row (lane 0).
// The rows come from `staged` (the block's rows, in shared memory) when it is not null.
template <typename Out>
__device__ __forceinline__ void product(const uint16_t* __restrict__ W, const uint16_t* staged, int64_t I,
                                        int64_t O, const uint16_t* xs, Out out) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t r0, r1;
    block_rows(O, r0, r1);
    const uint16_t* base = staged ? staged - r0 * I : W;
    for (int64_t o = r0 + warp; o < r1; o += 2 * kWarps) {
        const int64_t o2 = o + kWarps;
        float v0, v1;
        dot2(base + o * I, o2 < r1 ? base + o2 * I : nullptr, xs, I, lane, v0, v1);
        if (lane == 0) {
            out(o, v0);
            if (o2 < r1) out(o2, v1);
        }
    }
}

__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// cs, sn: the rotation's cos and sin of each pair at position p (rope_tables).
__device__ __forceinline__ float rotated(const uint16_t* src, int d, int rotary_dim, const float* cs,
                                         const float* sn) {
    const int half = rotary_dim / 2;
    if (d >= 2 * half) return bf_cg(src + d);
    const int ch = d < half ? d : d - half;
    const float x0 = bf_cg(src + ch), x1 = bf_cg(src + ch + half);
    return round_bf(d < half ? x0 * cs[ch] - x1 * sn[ch] : x1 * cs[ch] + x0 * sn[ch]);
}

// The angles of rope_kv_append (in double, then float) for position p, into shared memory: computed
// in the qkv stage, where they overlap its input's loads, and read by the attention stage.
__device__ __forceinline__ void rope_tables(float* cs, float* sn, int rotary_dim, double theta, int64_t p) {
    const int half = rotary_dim / 2;
    if (int(threadIdx.x) < half) {
        const double angle = double(p) * pow(theta, -2.0 * threadIdx.x / rotary_dim);
        double s, co;
        sincos(angle, &s, &co);
        cs[threadIdx.x] = float(co);
        sn[threadIdx.x] = float(s);
    }
}

// ---- the stages

struct Ctx {
    const PersistentStep& a;
    int64_t slot, p;
    int32_t token;
    uint16_t* xs;  // shared: the stage's input vector
    float* red;    // shared: kWarps floats
    float* ml;     // shared: (Hq, kStepMaxSplits, 2) the splits' max and sum
    const void* staged = nullptr;  // shared: this stage's weight rows (or SSD states), null if not staged
    float* early;  // shared: per block row, what its epilogue reads (loaded before the prologue)
    float *cs, *sn;  // shared: RoPE's cos and sin at the new position (64 each)
    unsigned long long* tr = nullptr;  // this block's 5 trace slots of the stage, or null
    __device__ __forceinline__ void mark(int k) const;
};

// The block's rows' residual values, into early[o − r0] (their loads overlap the prologue's).
__device__ __forceinline__ void early_residual(const Ctx& c, int64_t O) {
    int64_t r0, r1;
    block_rows(O, r0, r1);
    for (int64_t o = r0 + threadIdx.x; o < r1; o += kThreads) c.early[o - r0] = bf_cg(c.a.res + o);
}

// Mamba-2 in_proj [z | xBC | dt] with the causal conv update (+ SiLU) of the xBC rows in the
// epilogue: channel c's window is private to the row that produces channel c.
__device__ void stage_mamba_in(const Ctx& c, const StepLayer& L, bool first_layer) {
    const PersistentStep& a = c.a;
    {  // the conv rows' weights, bias and window (K ≤ 4: 2K ≤ 8 values a row)
        int64_t r0, r1;
        block_rows(2 * int64_t(a.Din) + 2 * int64_t(a.G) * a.N + a.H, r0, r1);
        const uint16_t* window = L.conv + c.slot * int64_t(a.K - 1) * a.C2;
        for (int64_t t = threadIdx.x; t < (r1 - r0) * 8; t += kThreads) {
            const int64_t ch = r0 + t / 8 - a.Din;
            const int f = int(t % 8);
            if (ch < 0 || ch >= a.C2 || f >= 2 * a.K) continue;
            float v;
            if (f < a.K) v = bf_w(L.conv_w + ch * a.K + f);
            else if (f == a.K) v = L.conv_b ? bf_w(L.conv_b + ch) : 0.0f;
            else v = bf(window[int64_t(f - a.K - 1) * a.C2 + ch]);
            c.early[t] = v;
        }
    }
    const uint16_t* x = first_layer ? a.embed + int64_t(c.token) * a.D : a.res;
    rms_prologue(c.xs, x, first_layer, L.norm_w, a.D, a.eps, c.red);
    c.mark(2);
    if (first_layer && blockIdx.x == 0)
        for (int64_t i = threadIdx.x; i < a.D; i += kThreads) a.res[i] = __ldg(reinterpret_cast<const unsigned short*>(x + i));
    const int64_t W2 = 2 * int64_t(a.Din) + 2 * int64_t(a.G) * a.N + a.H;
    const int K = a.K;
    uint16_t* window = L.conv + c.slot * int64_t(K - 1) * a.C2;
    int64_t r0, r1;
    block_rows(W2, r0, r1);
    product(L.in_w, static_cast<const uint16_t*>(c.staged), a.D, W2, c.xs, [&](int64_t o, float v) {
        const uint16_t xv = to_bf(v + bias_at(L.in_b, o));
        a.proj[o] = xv;
        const int64_t ch = o - a.Din;
        if (ch >= 0 && ch < a.C2) {  // conv1d_causal_update's arithmetic: fma in k order
            const float* e = c.early + (o - r0) * 8;  // [w_0 … w_{K−1} | bias | window_0 … window_{K−2}]
            float acc = e[K];
            for (int k = 0; k + 1 < K; ++k) acc = fmaf(e[k], e[K + 1 + k], acc);
            acc = fmaf(e[K - 1], bf(xv), acc);
            a.conv_out[ch] = to_bf(silu_rounded<__nv_bfloat16>(acc));
            uint16_t* win = window + ch;
            for (int k = 0; k + 2 < K; ++k) win[int64_t(k) * a.C2] = to_bf(e[K + 2 + k]);
            if (K > 1) win[int64_t(K - 2) * a.C2] = xv;
        }
    });
}

// ssd_update for one token: unit u = (head, channel) of the state, a warp per unit, 4 states a lane.
__device__ void stage_ssd(const Ctx& c, const StepLayer& L) {
    const PersistentStep& a = c.a;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t u0, u1;
    block_rows(int64_t(a.H) * a.P, u0, u1);
    const int heads_per_group = a.H / a.G;
    for (int64_t u = u0 + warp; u < u1; u += kWarps) {
        const int h = int(u / a.P), g = h / heads_per_group;
        const float dtv = fminf(fmaxf(softplus(bf_cg(a.proj + 2 * int64_t(a.Din) + 2 * int64_t(a.G) * a.N + h) +
                                               (L.dt_bias ? bf_w(L.dt_bias + h) : 0.0f)),
                                      a.dt_min),
                                a.dt_max);
        const float decay = expf(dtv * -expf(bf_w(L.A_log + h)));
        const float xp = bf_cg(a.conv_out + u), xdt = dtv * xp;
        float* S = L.ssm + (c.slot * int64_t(a.H) * a.P + u) * a.N;
        const float* S_in = c.staged ? static_cast<const float*>(c.staged) + (u - u0) * a.N : S;
        const uint16_t* Bt = a.conv_out + a.Din + int64_t(g) * a.N;
        const uint16_t* Ct = a.conv_out + a.Din + int64_t(a.G) * a.N + int64_t(g) * a.N;
        float acc = 0.0f;
        for (int n = 4 * lane; n < a.N; n += 128) {
            float4 s = *reinterpret_cast<const float4*>(S_in + n);
            const uint2 b2 = __ldcg(reinterpret_cast<const uint2*>(Bt + n));
            const uint2 c2 = __ldcg(reinterpret_cast<const uint2*>(Ct + n));
            s.x = decay * s.x + xdt * __uint_as_float(b2.x << 16);
            s.y = decay * s.y + xdt * __uint_as_float(b2.x & 0xffff0000u);
            s.z = decay * s.z + xdt * __uint_as_float(b2.y << 16);
            s.w = decay * s.w + xdt * __uint_as_float(b2.y & 0xffff0000u);
            *reinterpret_cast<float4*>(S + n) = s;
            acc += s.x * __uint_as_float(c2.x << 16);
            acc += s.y * __uint_as_float(c2.x & 0xffff0000u);
            acc += s.z * __uint_as_float(c2.y << 16);
            acc += s.w * __uint_as_float(c2.y & 0xffff0000u);
        }
        acc = warp_sum(acc);
        if (lane == 0) a.y[u] = to_bf(acc + (L.D ? bf_w(L.D + h) : 0.0f) * xp);
    }
}

__device__ void stage_mamba_out(const Ctx& c, const StepLayer& L) {
    const PersistentStep& a = c.a;
    early_residual(c, a.D);
    gated_prologue(c.xs, a.y, a.proj, L.gnorm_w, a.Din, a.norm_groups, a.eps, c.red);
    c.mark(2);
    int64_t r0, r1;
    block_rows(a.D, r0, r1);
    product(L.out_w, static_cast<const uint16_t*>(c.staged), a.Din, a.D, c.xs,
            [&](int64_t o, float v) { add_residual(a.res, o, v, L.out_b, c.early[o - r0]); });
}

__device__ void stage_qkv(const Ctx& c, const StepLayer& L, bool first_layer) {
    const PersistentStep& a = c.a;
    rope_tables(c.cs, c.sn, a.rotary_dim, a.rope_theta, c.p);  // read after the next barrier
    const uint16_t* x = first_layer ? a.embed + int64_t(c.token) * a.D : a.res;
    rms_prologue(c.xs, x, first_layer, L.norm_w, a.D, a.eps, c.red);
    c.mark(2);
    if (first_layer && blockIdx.x == 0)
        for (int64_t i = threadIdx.x; i < a.D; i += kThreads) a.res[i] = __ldg(reinterpret_cast<const unsigned short*>(x + i));
    const int64_t Wq = int64_t(a.Hq + 2 * a.Hkv) * a.Dh;
    product(L.qkv_w, static_cast<const uint16_t*>(c.staged), a.D, Wq, c.xs,
            [&](int64_t o, float v) { a.proj[o] = to_bf(v + bias_at(L.qkv_b, o)); });
}

// The visible keys of the new token and their split into warps' ranges (the same in both stages).
struct KeyRange {
    int64_t first, n, chunk;
    int splits;
};
__device__ __forceinline__ KeyRange key_range(const PersistentStep& a, int64_t p) {
    KeyRange r;
    r.first = max(max(int64_t(0), p - a.cache_len + 1), a.window > 0 ? p - a.window + 1 : int64_t(0));
    r.n = p - r.first + 1;
    r.splits = int(min(int64_t(kStepMaxSplits), (r.n + 15) / 16));
    r.chunk = (r.n + r.splits - 1) / r.splits;
    return r;
}

// Channel d of a head (row of Dh values at src, bf16) after RoPE at position p, rounded to bf16 as
// rope_kv_append stores it: pairs (c, c + rot/2) of the first rotary_dim channels.

// Unit (h, split) per warp: the split's keys by online softmax; the new token's key and value come
// from the projection (rotated here), and the first query head of each KV group's last split also
// writes them into the cache ring.
template <int DL>  // Dh ≤ 32·DL: channels lane + 32e
__device__ void stage_attention(const Ctx& c, const StepLayer& L) {
    const PersistentStep& a = c.a;
    const int lane = threadIdx.x % 32;
    const KeyRange kr = key_range(a, c.p);
    const int64_t units = int64_t(a.Hq) * kr.splits;
    // Units dealt over the blocks first, so that few units spread over many SMs.
    const int64_t gw = int64_t(blockIdx.x) + int64_t(gridDim.x) * (threadIdx.x / 32), all = int64_t(gridDim.x) * kWarps;
    const int group = a.Hq / a.Hkv;
    const int64_t ld_kv = int64_t(a.Hkv) * a.Dh;
    const uint16_t* kq = a.proj + int64_t(a.Hq) * a.Dh;  // the new token's keys
    const uint16_t* vq = kq + ld_kv;
    for (int64_t u = gw; u < units; u += all) {
        const int h = int(u / kr.splits), split = int(u % kr.splits), hk = h / group;
        const int64_t j0 = split * kr.chunk, j1 = min(kr.n, j0 + kr.chunk);
        float qv[DL], acc[DL];
#pragma unroll
        for (int e = 0; e < DL; ++e) {
            const int d = lane + 32 * e;
            qv[e] = d < a.Dh ? rotated(a.proj + int64_t(h) * a.Dh, d, a.rotary_dim, c.cs, c.sn) : 0.0f;
            acc[e] = 0.0f;
        }
        const float slope = a.alibi ? ops::cuda::detail::alibi_slope(h, a.Hq) : 0.0f;
        const uint16_t* kc = L.kc + c.slot * a.cache_len * ld_kv + int64_t(hk) * a.Dh;
        const uint16_t* vc = L.vc + c.slot * a.cache_len * ld_kv + int64_t(hk) * a.Dh;
        float m = -INFINITY, l = 0.0f;
        constexpr int kKeys = 8;
        int64_t ring = (kr.first + j0) % a.cache_len;  // the ring row of key jb
        for (int64_t jb = j0; jb < j1; jb += kKeys) {
            float kv[kKeys][DL], vv[kKeys][DL];
#pragma unroll
            for (int t = 0; t < kKeys; ++t) {
                const int64_t jj = jb + t;
                const bool cached = jj < j1 && jj < kr.n - 1;
                int64_t r = ring + t;
                if (r >= a.cache_len) r -= a.cache_len;
                const int64_t row = cached ? r * ld_kv : 0;
#pragma unroll
                for (int e = 0; e < DL; ++e) {
                    const int d = lane + 32 * e;
                    const bool ok = cached && d < a.Dh;
                    kv[t][e] = ok ? bf_cg(kc + row + d) : 0.0f;
                    vv[t][e] = ok ? bf_cg(vc + row + d) : 0.0f;
                }
            }
#pragma unroll
            for (int t = 0; t < kKeys; ++t) {
                const int64_t jj = jb + t;
                if (jj >= j1) break;
                if (jj == kr.n - 1) {  // the new token
#pragma unroll
                    for (int e = 0; e < DL; ++e) {
                        const int d = lane + 32 * e;
                        kv[t][e] = d < a.Dh ? rotated(kq + int64_t(hk) * a.Dh, d, a.rotary_dim, c.cs, c.sn)
                                            : 0.0f;
                        vv[t][e] = d < a.Dh ? bf_cg(vq + int64_t(hk) * a.Dh + d) : 0.0f;
                    }
                }
                float dot = 0.0f;
#pragma unroll
                for (int e = 0; e < DL; ++e) dot = fmaf(qv[e], kv[t][e], dot);
                dot = warp_sum(dot);
                const float sc = a.attn_scale * dot - slope * float(kr.n - 1 - jj);
                const float m_new = fmaxf(m, sc);
                const float alpha = expf(m - m_new), w = expf(sc - m_new);
                l = l * alpha + w;
#pragma unroll
                for (int e = 0; e < DL; ++e) acc[e] = acc[e] * alpha + w * vv[t][e];
                m = m_new;
            }
            ring += kKeys;
            if (ring >= a.cache_len) ring -= a.cache_len;
        }
        float* out = a.part + (int64_t(h) * kStepMaxSplits + split) * (a.Dh + 2);
        if (lane == 0) {
            out[0] = m;
            out[1] = l;
        }
#pragma unroll
        for (int e = 0; e < DL; ++e) {
            const int d = lane + 32 * e;
            if (d < a.Dh) out[2 + d] = acc[e];
        }
        if (split == kr.splits - 1 && h % group == 0) {  // append the new key (rotated) and value
            const int64_t dst = (c.slot * a.cache_len + c.p % a.cache_len) * ld_kv + int64_t(hk) * a.Dh;
            for (int d = lane; d < a.Dh; d += 32) {
                L.kc[dst + d] = to_bf(rotated(kq + int64_t(hk) * a.Dh, d, a.rotary_dim, c.cs, c.sn));
                L.vc[dst + d] = __ldcg(reinterpret_cast<const unsigned short*>(vq + int64_t(hk) * a.Dh + d));
            }
        }
    }
}

// The splits combined into xs (Hq·Dh, bf16 as attention_combine stores it), then o_proj + residual.
__device__ void stage_attn_out(const Ctx& c, const StepLayer& L) {
    const PersistentStep& a = c.a;
    early_residual(c, a.D);
    const KeyRange kr = key_range(a, c.p);
    const int S = kr.splits;
    for (int t = threadIdx.x; t < a.Hq * S; t += kThreads) {
        const int h = t / S, s = t % S;
        const float* pp = a.part + (int64_t(h) * kStepMaxSplits + s) * (a.Dh + 2);
        c.ml[2 * t] = __ldcg(pp);
        c.ml[2 * t + 1] = __ldcg(pp + 1);
    }
    __syncthreads();
    const int64_t HD = int64_t(a.Hq) * a.Dh;
    for (int64_t i = threadIdx.x; i < HD; i += kThreads) {
        const int h = int(i / a.Dh), d = int(i % a.Dh);
        const float* ml = c.ml + 2 * h * S;
        float mx = -INFINITY;
        for (int s = 0; s < S; ++s) mx = fmaxf(mx, ml[2 * s]);
        float total = 0.0f, o = 0.0f;
        for (int s = 0; s < S; ++s) {
            if (ml[2 * s] == -INFINITY) continue;  // a split without keys
            const float e = expf(ml[2 * s] - mx);
            total += e * ml[2 * s + 1];
            o += e * __ldcg(a.part + (int64_t(h) * kStepMaxSplits + s) * (a.Dh + 2) + 2 + d);
        }
        c.xs[i] = to_bf(o / total);
    }
    __syncthreads();
    c.mark(2);
    int64_t r0, r1;
    block_rows(a.D, r0, r1);
    product(L.out_w, static_cast<const uint16_t*>(c.staged), HD, a.D, c.xs,
            [&](int64_t o, float v) { add_residual(a.res, o, v, L.out_b, c.early[o - r0]); });
}

// SwiGLU: gate row j and up row F + j of the same warp; a[j] = silu(round(g))·round(u).
__device__ void stage_mlp_up(const Ctx& c, const StepLayer& L) {
    const PersistentStep& a = c.a;
    rms_prologue(c.xs, a.res, false, L.mlp_norm_w, a.D, a.eps, c.red);
    c.mark(2);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t r0, r1;
    block_rows(a.F, r0, r1);
    const uint16_t* gate = c.staged ? static_cast<const uint16_t*>(c.staged) - r0 * a.D : L.up_w;
    const uint16_t* up = c.staged ? static_cast<const uint16_t*>(c.staged) + (r1 - 2 * r0) * a.D
                                  : L.up_w + int64_t(a.F) * a.D;
    for (int64_t j = r0 + warp; j < r1; j += kWarps) {
        float g, u;
        dot2(gate + j * a.D, up + j * a.D, c.xs, a.D, lane, g, u);
        if (lane == 0) {
            const float gr = round_bf(g + bias_at(L.up_b, j)), ur = round_bf(u + bias_at(L.up_b, a.F + j));
            a.a[j] = to_bf(silu_rounded<__nv_bfloat16>(gr) * ur);
        }
    }
}

__device__ void stage_mlp_down(const Ctx& c, const StepLayer& L) {
    const PersistentStep& a = c.a;
    early_residual(c, a.D);
    for (int64_t i = threadIdx.x; i < a.F; i += kThreads)
        c.xs[i] = __ldcg(reinterpret_cast<const unsigned short*>(a.a + i));
    __syncthreads();
    c.mark(2);
    int64_t r0, r1;
    block_rows(a.D, r0, r1);
    product(L.down_w, static_cast<const uint16_t*>(c.staged), a.F, a.D, c.xs,
            [&](int64_t o, float v) { add_residual(a.res, o, v, L.down_b, c.early[o - r0]); });
}

__device__ void stage_head(const Ctx& c) {
    const PersistentStep& a = c.a;
    rms_prologue(c.xs, a.res, false, a.final_w, a.D, a.eps, c.red);
    c.mark(2);
    if (blockIdx.x == 0)
        for (int64_t i = threadIdx.x; i < a.D; i += kThreads) a.hf[i] = c.xs[i];
    product(a.lm_head, nullptr, a.D, a.V, c.xs, [&](int64_t o, float v) { a.logits[o] = v; });
}

// This block's share of a stage's weights (and the SSD states), asked of the L2.
__device__ void prefetch_stage(const PersistentStep& a, const StepStageEntry& e, const StepLayer& L, int64_t slot) {
    int64_t r0, r1;
    switch (StepStage(e.stage)) {
        case StepStage::MambaIn: {
            const int64_t W2 = 2 * int64_t(a.Din) + 2 * int64_t(a.G) * a.N + a.H;
            block_rows(W2, r0, r1);
            prefetch_l2(L.in_w + r0 * a.D, (r1 - r0) * a.D * 2);
            break;
        }
        case StepStage::Ssd:
            block_rows(int64_t(a.H) * a.P, r0, r1);
            prefetch_l2(L.ssm + (slot * int64_t(a.H) * a.P + r0) * a.N, (r1 - r0) * a.N * 4);
            break;
        case StepStage::MambaOut:
            block_rows(a.D, r0, r1);
            prefetch_l2(L.out_w + r0 * a.Din, (r1 - r0) * a.Din * 2);
            break;
        case StepStage::Qkv: {
            const int64_t Wq = int64_t(a.Hq + 2 * a.Hkv) * a.Dh;
            block_rows(Wq, r0, r1);
            prefetch_l2(L.qkv_w + r0 * a.D, (r1 - r0) * a.D * 2);
            break;
        }
        case StepStage::Attention:
            break;
        case StepStage::AttnOut: {
            const int64_t HD = int64_t(a.Hq) * a.Dh;
            block_rows(a.D, r0, r1);
            prefetch_l2(L.out_w + r0 * HD, (r1 - r0) * HD * 2);
            break;
        }
        case StepStage::MlpUp:
            block_rows(a.F, r0, r1);
            prefetch_l2(L.up_w + r0 * a.D, (r1 - r0) * a.D * 2);
            prefetch_l2(L.up_w + (a.F + r0) * a.D, (r1 - r0) * a.D * 2);
            break;
        case StepStage::MlpDown:
            block_rows(a.D, r0, r1);
            prefetch_l2(L.down_w + r0 * a.F, (r1 - r0) * a.F * 2);
            break;
        case StepStage::Head:
            block_rows(a.V, r0, r1);
            prefetch_l2(a.lm_head + r0 * a.D, min(r1 - r0, kHeadPrefetchRows) * a.D * 2);
            break;
    }
}

// The block's staged share of a stage: up to two contiguous ranges (sources and bytes), copied one
// after the other into the buffer. Returns how many; the same on every thread.
__device__ int stage_slices(const PersistentStep& a, const StepStageEntry& e, const StepLayer& L, int64_t slot,
                            const void* src[2], uint32_t bytes[2]) {
    int64_t r0, r1;
    auto rows = [&](const uint16_t* W, int64_t O, int64_t I) {
        block_rows(O, r0, r1);
        src[0] = W + r0 * I;
        bytes[0] = uint32_t((r1 - r0) * I * 2);
        return 1;
    };
    switch (StepStage(e.stage)) {
        case StepStage::MambaIn: return rows(L.in_w, 2 * int64_t(a.Din) + 2 * int64_t(a.G) * a.N + a.H, a.D);
        case StepStage::Ssd:
            block_rows(int64_t(a.H) * a.P, r0, r1);
            src[0] = L.ssm + (slot * int64_t(a.H) * a.P + r0) * a.N;
            bytes[0] = uint32_t((r1 - r0) * a.N * 4);
            return 1;
        case StepStage::MambaOut: return rows(L.out_w, a.D, a.Din);
        case StepStage::Qkv: return rows(L.qkv_w, int64_t(a.Hq + 2 * a.Hkv) * a.Dh, a.D);
        case StepStage::AttnOut: return rows(L.out_w, a.D, int64_t(a.Hq) * a.Dh);
        case StepStage::MlpUp:
            block_rows(a.F, r0, r1);
            src[0] = L.up_w + r0 * a.D;
            src[1] = L.up_w + (a.F + r0) * a.D;
            bytes[0] = bytes[1] = uint32_t((r1 - r0) * a.D * 2);
            return 2;
        case StepStage::MlpDown: return rows(L.down_w, a.D, a.F);
        case StepStage::Attention:
        case StepStage::Head: return 0;
    }
    return 0;
}

__device__ __forceinline__ void Ctx::mark(int k) const {
    if (tr && threadIdx.x == 0) tr[k] = global_ns();
}

__global__ void __launch_bounds__(kThreads, 1) persistent_step_kernel(PersistentStep a) {
    extern __shared__ __align__(128) unsigned char smem[];
    // The two weight buffers (128-byte aligned), xs (16-byte aligned rows for the products), the
    // reduction slots, the splits' (m, l), the buffers' mbarriers.
    unsigned char* wbuf[2] = {smem, smem + a.stage_buf};
    const int64_t xs_elems = (max(max(a.D, a.Din), max(a.F, a.Hq * a.Dh)) + 7) / 8 * 8;
    uint16_t* xs = reinterpret_cast<uint16_t*>(smem + 2 * size_t(a.stage_buf));
    float* red = reinterpret_cast<float*>(xs + xs_elems);
    float* ml = red + kWarps;
    uint64_t* mbar = reinterpret_cast<uint64_t*>(ml + 2 * a.Hq * kStepMaxSplits + 2);  // 8-byte aligned
    mbar = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(mbar) + 7) & ~uintptr_t(7));
    // The layer and stage tables, read at every stage: into shared memory once.
    StepLayer* layers = reinterpret_cast<StepLayer*>(mbar + 2);
    StepStageEntry* stages = reinterpret_cast<StepStageEntry*>(layers + a.n_layers);
    {
        const auto* from = reinterpret_cast<const unsigned long long*>(a.layers);
        auto* to = reinterpret_cast<unsigned long long*>(layers);
        for (size_t i = threadIdx.x; i < a.n_layers * sizeof(StepLayer) / 8; i += kThreads) to[i] = from[i];
        for (int i = threadIdx.x; i < a.n_stages; i += kThreads) stages[i] = a.stages[i];
        __syncthreads();
    }
    float* early = reinterpret_cast<float*>(stages + a.n_stages);
    const int64_t slot = a.slots[0];
    Ctx c{a, slot, a.pos[0], a.ids[0], xs, red, ml};
    c.early = early;
    c.cs = early + a.early_floats;
    c.sn = c.cs + 64;
    unsigned epoch = 0;
    uint32_t parity[2] = {0, 0};
    auto issue = [&](int s) {  // thread 0: stage s's weight rows into buffer s % 2
        const void* src[2];
        uint32_t bytes[2];
        const int n = stage_slices(a, stages[s], layers[stages[s].layer], slot, src, bytes);
        if (n > 0 && bytes[0] + (n > 1 ? bytes[1] : 0) > 0) bulk_copies(wbuf[s & 1], src, bytes, n, &mbar[s & 1]);
    };
    if (a.stage_buf > 0) {
        if (threadIdx.x == 0) {
            mbar_init(&mbar[0]);
            mbar_init(&mbar[1]);
            asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        }
        __syncthreads();
        if (threadIdx.x == 0) issue(0);
    }
    for (int s = 0; s < a.prefetch_ahead && s < a.n_stages; ++s)
        prefetch_stage(a, stages[s], layers[stages[s].layer], slot);
    for (int s = 0; s < a.n_stages; ++s) {
        c.tr = a.trace ? a.trace + (int64_t(s) * gridDim.x + blockIdx.x) * 5 : nullptr;
        c.mark(0);
        if (a.stage_buf > 0 && threadIdx.x == 0 && s + 1 < a.n_stages) issue(s + 1);
        if (a.prefetch_ahead > 0 && s + a.prefetch_ahead < a.n_stages)
            prefetch_stage(a, stages[s + a.prefetch_ahead], layers[stages[s + a.prefetch_ahead].layer], slot);
        const StepStageEntry e = stages[s];
        const StepLayer& L = layers[e.layer];
        c.staged = nullptr;
        if (a.stage_buf > 0) {
            const void* src[2];
            uint32_t bytes[2];
            const int n = stage_slices(a, e, L, slot, src, bytes);
            if (n > 0 && bytes[0] + (n > 1 ? bytes[1] : 0) > 0) {
                mbar_wait(&mbar[s & 1], parity[s & 1]);
                parity[s & 1] ^= 1;
                c.staged = wbuf[s & 1];
            }
        }
        c.mark(1);
        c.mark(2);
        switch (StepStage(e.stage)) {
            case StepStage::MambaIn: stage_mamba_in(c, L, e.layer == 0); break;
            case StepStage::Ssd: stage_ssd(c, L); break;
            case StepStage::MambaOut: stage_mamba_out(c, L); break;
            case StepStage::Qkv: stage_qkv(c, L, e.layer == 0); break;
            case StepStage::Attention:
                if (a.Dh <= 32) stage_attention<1>(c, L);
                else if (a.Dh <= 64) stage_attention<2>(c, L);
                else stage_attention<4>(c, L);
                break;
            case StepStage::AttnOut: stage_attn_out(c, L); break;
            case StepStage::MlpUp: stage_mlp_up(c, L); break;
            case StepStage::MlpDown: stage_mlp_down(c, L); break;
            case StepStage::Head: stage_head(c); break;
        }
        if (a.trace) __syncthreads();  // the block's share of the stage is done
        c.mark(3);
        if (s + 1 < a.n_stages) grid_sync(a.barrier, epoch);
        c.mark(4);
    }
}

// 8 floats for each row of the block's largest share (the in-projection's conv rows need 2K ≤ 8).
size_t early_floats(const PersistentStep& a) {
    int device = 0, sms = 1;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    const int64_t W2 = 2 * int64_t(a.Din) + 2 * int64_t(a.G) * a.N + a.H;
    const int64_t most = std::max<int64_t>(W2, a.D);
    return size_t(8 * ((most + sms - 1) / sms));
}

size_t smem_bytes(const PersistentStep& a) {
    const int64_t xs = (std::max({int64_t(a.D), int64_t(a.Din), int64_t(a.F), int64_t(a.Hq) * a.Dh}) + 7) / 8 * 8;
    return 2 * size_t(a.stage_buf) + size_t(xs) * 2 + sizeof(float) * (kWarps + 2 * size_t(a.Hq) * kStepMaxSplits + 2) +
           2 * sizeof(uint64_t) + 8 + sizeof(StepLayer) * size_t(a.n_layers) + sizeof(StepStageEntry) * size_t(a.n_stages) +
           sizeof(float) * (size_t(a.early_floats) + 128);
}

// The largest share of one stage a block stages (stage_slices' sizes), 128-byte rounded.
uint32_t stage_buffer_bytes(const PersistentStep& a, int64_t blocks) {
    auto R = [&](int64_t O) { return (O + blocks - 1) / blocks; };
    const int64_t W2 = 2 * int64_t(a.Din) + 2 * int64_t(a.G) * a.N + a.H, HD = int64_t(a.Hq) * a.Dh;
    const int64_t Wq = int64_t(a.Hq + 2 * a.Hkv) * a.Dh;
    const int64_t most = std::max({R(W2) * a.D * 2, R(int64_t(a.H) * a.P) * a.N * 4, R(a.D) * a.Din * 2,
                                   a.Hq ? R(Wq) * a.D * 2 : 0, R(a.D) * HD * 2, 2 * R(a.F) * a.D * 2,
                                   R(a.D) * a.F * 2});
    return uint32_t((most + 127) / 128 * 128);
}

int grid_blocks(size_t smem) {
    int device = 0, sms = 0, coop = 0, resident = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
    if (!coop) return 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, persistent_step_kernel, kThreads, smem) !=
        cudaSuccess)
        return 0;
    return resident >= 1 ? sms : 0;
}

}  // namespace

size_t persistent_step_part_floats(int64_t Hq, int64_t Dh) {
    return size_t(Hq) * kStepMaxSplits * size_t(Dh + 2);
}

bool persistent_step_available() {
    return grid_blocks(0) > 0;
}

void persistent_step(const PersistentStep& a, void* stream) {
    MSLM_CHECK(a.Dh <= 128 && a.D % 8 == 0 && a.Din % 8 == 0 && a.F % 8 == 0 && (a.Hq * a.Dh) % 8 == 0 &&
                   a.N % 4 == 0 && a.K >= 1 && a.K <= 4,
               "persistent_step: unsupported dimensions");
    PersistentStep arg = a;
    static int configured_device = -1;
    int device = 0, sms = 0, smem_max = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (configured_device != device) {
        const cudaError_t err = cudaFuncSetAttribute(persistent_step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     smem_max);
        MSLM_CHECK(err == cudaSuccess, "persistent_step: cudaFuncSetAttribute: {}", cudaGetErrorString(err));
        configured_device = device;
    }
    arg.early_floats = uint32_t(early_floats(a));
    arg.stage_buf = a.stage_weights ? stage_buffer_bytes(a, sms) : 0;
    if (smem_bytes(arg) > size_t(smem_max)) arg.stage_buf = 0;  // too large to stage: weights from global
    const size_t smem = smem_bytes(arg);
    MSLM_CHECK(smem <= size_t(smem_max), "persistent_step: {} bytes of shared memory", smem);
    const int blocks = grid_blocks(smem);
    MSLM_CHECK(blocks > 0, "persistent_step: the device cannot keep one block per SM resident");
    auto s = static_cast<cudaStream_t>(stream);
    cudaError_t err = cudaMemsetAsync(a.barrier, 0, sizeof(unsigned), s);
    MSLM_CHECK(err == cudaSuccess, "persistent_step: barrier reset: {}", cudaGetErrorString(err));
    void* args[] = {&arg};
    err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(persistent_step_kernel), dim3(unsigned(blocks)),
                                      dim3(kThreads), args, smem, s);
    MSLM_CHECK(err == cudaSuccess, "CUDA kernel persistent_step: launch: {}", cudaGetErrorString(err));
}

}  // namespace mslm::cuda_decoder_detail
