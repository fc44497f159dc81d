// Causal depthwise conv1d on CUDA. Channels are the fastest index everywhere, so the threads of a
// warp handle consecutive channels and every load of x, dout or the window is coalesced.
// Fast kernels (the default; MSLM_CONV_FAST=0 selects the one-element kernels below them, kept for
// the ablation and for K > 8 in the forward):
// - forward: thread (pack of 8 bytes of channels, run of kRun = 16 tokens) slides the K-row window of
//   x over its run in registers, in groups of 8 tokens whose loads are issued before their stores
//   (the K − 1 rows before the run go with the first group); it stores out (and pre) by packs.
// - backward: thread (2 channels, run) walks its run plus K − 1 rows with the last K rows of x and
//   of the pre-activation gradient g in registers, in groups of 8 tokens whose x, dout and dx loads
//   are issued before any store; dx gets the old walk's bits. dw and dbias sums stay in registers per
//   run; the block adds its 8 runs in order into one partial per (128-token chunk, channel) and a
//   second kernel adds the partials in fixed slices and the slices in order.
// - Unaligned pointers or strides, or a channel count that is not a multiple of the pack, take the
//   same kernels with one channel per thread.
// - tiled backward (bf16 with 16-byte aligned x and dout rows; MSLM_CONV_BWD_TILE=0 takes the run
//   kernel above): a block stages 128 tokens of x and dout (with the K − 1 rows on either side) for 64
//   channels in shared memory by cp.async (and, for +=, the old dx), every copy issued before any
//   arithmetic, so 4 blocks an SM keep ~200 KB of loads in flight where the run kernel's groups had a
//   few KB and waited on each; then thread (channel, run of 32 tokens) walks its run from shared
//   memory as the run kernel does, so dx gets the same bits, into a shared dx tile that the block
//   stores by 16-byte rows. dw and dbias: the 4 runs added in order into the same partials.
// - tiled forward (bf16 with 16-byte aligned x and out rows, no history rows and no pre-activation
//   output — the training step's call; MSLM_CONV_FWD_TILE=0 takes the run kernel): the same staging
//   of x, the same walk, out through a shared tile (H200: 59.8 → 43.9 µs at the 130m shape).
// One-element kernels:
// - forward: one thread per output (b, t, c); K taps from L1/L2.
// - backward: one thread per (sequence chunk of kChunk rows, channel) walks its rows in order with
//   the last K inputs and the last K pre-activation gradients in registers (K is a template
//   parameter), writes dx once per row and leaves its dw and dbias partial sums in the workspace;
//   a second kernel adds the partials in chunk order.
// - update: one thread per (row, channel).
// The backward's SiLU derivative is silu_grad_rounded<D> in every kernel (fast σ for bf16, as the
// gated norm's backward), so the kernels keep giving each other's dx bits.
// No float atomics anywhere: the bits do not depend on the device or the scheduling. Taps are summed
// with explicit fmaf in k order in forward, backward and update, so the update gives the forward's
// bits and the backward's recomputed pre-activation is the forward's.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <initializer_list>
#include <string_view>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/conv1d.h"
#include "ops/cuda/mma.cuh"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

// Rows per backward thread. Fixed (not derived from the device) so that dw and dbias are summed in
// the same order everywhere; 64 rows amortise the K − 1 rows each chunk re-reads past its end.
constexpr int64_t kChunk = 64;

int64_t n_chunks(int64_t Tn) {
    return (Tn + kChunk - 1) / kChunk;
}

// hist (B, K − 1, C) or null: the inputs before each sequence's start (oldest first), else zeros.
template <typename D>
__global__ void conv_forward_kernel(D* out, D* pre, const D* x, int64_t ld_x, const D* hist, const D* w,
                                    const D* bias, int64_t Tn, int64_t C, int K, bool silu_out,
                                    int64_t total) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t row = i / C, c = i - row * C, t = row % Tn, b = row / Tn;
        float acc = bias ? to_f32(bias[c]) : 0.0f;
        // Tap k reads token t − (K − 1) + k; taps before the sequence start read hist, or are
        // skipped (zeros) without it.
        for (int k = t < K - 1 && !hist ? int(K - 1 - t) : 0; k < K; ++k) {
            const int64_t src = t - (K - 1) + k;
            const D v =
                src >= 0 ? x[(row - (K - 1) + k) * ld_x + c] : hist[(b * (K - 1) + (K - 1) + src) * C + c];
            acc = fmaf(to_f32(w[c * K + k]), to_f32(v), acc);
        }
        if (silu_out) {
            if (pre) pre[i] = from_f32<D>(acc);
            acc = silu_rounded<D>(acc);
        }
        out[i] = from_f32<D>(acc);
    }
}

// Thread (chunk j, channel c), j over (B, n_chunks): rows [t0, t1) of sequence b. At step t the
// registers hold x_win[i] = x[t − (K − 1) + i] and g_win[i] = g[t − (K − 1) + i], g = d loss / d
// pre-activation (0 past the sequence end). Step t adds g_t to dw and dbias when t < t1, and
// finishes dx[s] for s = t − (K − 1) ≥ t0: dx[s] = Σ_k g[s + K − 1 − k] · w[k] needs g up to row
// s + K − 1, so the walk runs K − 1 rows past t1 (recomputing g there; the next chunk counts
// those rows' dw and dbias).
template <int K, typename D>
__global__ void conv_backward_kernel(D* dx, float* part, const D* dout, const D* x, int64_t ld_x, const D* w,
                                     const D* bias, int64_t Tn, int64_t C, bool silu_in, int64_t total) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t chunks = (Tn + kChunk - 1) / kChunk;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t j = i / C, c = i - j * C;
        const int64_t b = j / chunks, t0 = (j - b * chunks) * kChunk, t1 = min(Tn, t0 + kChunk);
        const D* xb = x + b * Tn * ld_x + c;  // (T) with stride ld_x
        float wk[K], x_win[K], g_win[K], dw_acc[K];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            wk[k] = to_f32(w[c * K + k]);
            g_win[k] = 0.0f;
            dw_acc[k] = 0.0f;
            // rows t0 − K .. t0 − 1 (x_win[0] is shifted out before use)
            const int64_t r = t0 - K + k;
            x_win[k] = r >= 0 ? to_f32(xb[r * ld_x]) : 0.0f;
        }
        const float b_c = bias ? to_f32(bias[c]) : 0.0f;
        float db_acc = 0.0f;
        for (int64_t t = t0; t < t1 + K - 1; ++t) {
            const bool in_seq = t < Tn;
#pragma unroll
            for (int k = 0; k + 1 < K; ++k) {
                x_win[k] = x_win[k + 1];
                g_win[k] = g_win[k + 1];
            }
            x_win[K - 1] = in_seq ? to_f32(xb[t * ld_x]) : 0.0f;
            float g = 0.0f;
            if (in_seq) {
                g = to_f32(dout[(b * Tn + t) * C + c]);
                if (silu_in) {
                    float p = b_c;
#pragma unroll
                    for (int k = 0; k < K; ++k) p = fmaf(wk[k], x_win[k], p);
                    g *= silu_grad_rounded<D>(p);
                }
            }
            g_win[K - 1] = g;
            if (t < t1) {
                db_acc += g;
#pragma unroll
                for (int k = 0; k < K; ++k) dw_acc[k] = fmaf(g, x_win[k], dw_acc[k]);
            }
            const int64_t s = t - (K - 1);
            if (dx && s >= t0) {
                float acc = 0.0f;
#pragma unroll
                for (int k = 0; k < K; ++k) acc = fmaf(g_win[K - 1 - k], wk[k], acc);
                D* p = dx + (b * Tn + s) * ld_x + c;
                *p = from_f32<D>(to_f32(*p) + acc);
            }
        }
        if (part) {
            float* pj = part + j * (K + 1) * C + c;  // (K + 1, C) of chunk j
#pragma unroll
            for (int k = 0; k < K; ++k) pj[k * C] = dw_acc[k];
            pj[K * C] = db_acc;
        }
    }
}

// dw[c, k] += Σ_j part[j, k, c] and dbias[c] += Σ_j part[j, K, c], j in order.
template <typename D>
__global__ void conv_reduce_kernel(D* dw, D* dbias, const float* part, int64_t n_parts, int64_t C, int K) {
    const int64_t total = int64_t(K + 1) * C;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t k = i / C, c = i - k * C;
        D* dst = k < K ? (dw ? dw + c * K + k : nullptr) : dbias ? dbias + c : nullptr;
        if (!dst) continue;
        float acc = 0.0f;
        for (int64_t j = 0; j < n_parts; ++j) acc += part[j * total + i];
        *dst = from_f32<D>(to_f32(*dst) + acc);
    }
}

template <typename D>
__global__ void conv_update_kernel(D* out, D* state, const int64_t* slots, const D* x, int64_t ld_x,
                                   const D* w, const D* bias, int64_t C, int K, bool silu_out,
                                   int64_t total) {
    // Launched with programmatic dependent launch (launch_ops_pdl): x comes from the kernel before;
    // the trigger lets the decode step's SSD update start reading its states while this runs.
    pdl_wait();
    pdl_trigger();
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t row = i / C, c = i - row * C;
        D* win = state + slots[row] * (K - 1) * C + c;  // (K − 1) with stride C
        const D xv = x[row * ld_x + c];
        float acc = bias ? to_f32(bias[c]) : 0.0f;
        for (int k = 0; k + 1 < K; ++k) acc = fmaf(to_f32(w[c * K + k]), to_f32(win[k * C]), acc);
        acc = fmaf(to_f32(w[c * K + K - 1]), to_f32(xv), acc);
        out[i] = from_f32<D>(silu_out ? silu_rounded<D>(acc) : acc);
        for (int k = 0; k + 2 < K; ++k) win[k * C] = win[(k + 1) * C];
        if (K > 1) win[(K - 2) * C] = xv;
    }
}

// ---- fast path: each thread takes V channels (one pack) of a run of kRun tokens

// Tokens per thread. The K − 1 rows of x before the run (and, in the backward, K − 1 rows past it)
// are loaded again, mostly from L2, by the neighbouring run: 3/16 more loads of x for K = 4.
constexpr int kRun = 16;
// Runs per block (blockDim.y); blockDim.x = 32 packs of channels, so a warp reads 32 consecutive
// packs of a row.
constexpr int kRunsPerBlock = 8;
constexpr int kFastThreads = 32 * kRunsPerBlock;
// Tokens per block, and per dw/dbias partial of the fast backward.
constexpr int64_t kFastChunk = int64_t(kRun) * kRunsPerBlock;
// Tokens whose loads (x; in the backward also dout and dx) are issued together before any of their
// stores: one memory latency per group.
constexpr int kGroup = 8;
// dw/dbias partials are summed by kSlices threads per column, each over a contiguous, fixed range of
// partials in order, then the slices in order: the order depends on the shape alone.
constexpr int kSlices = 8;
// Blocks per SM the fast kernels are compiled for: 2 (≤ 128 registers) for K ≤ 4, 1 above, where
// the K·V taps, window and dw sums need more.
constexpr int min_blocks(int K) {
    return K <= 4 ? 2 : 1;
}

int64_t n_fast_chunks(int64_t Tn) {
    return (Tn + kFastChunk - 1) / kFastChunk;
}

// Channels per thread. Per channel a thread holds K taps and K window rows in fp32 (the backward
// also K rows of g and K dw sums), so wider packs cost registers, and ptxas (-Xptxas -v, sm_90) puts
// 16-byte bf16 packs at 166–255 registers with spills in the backward: one block of 256 threads per
// SM, 16–32 KB of loads in flight. 8-byte packs in the forward (4 bf16, 2 f32) and 2 channels in the
// backward keep K ≤ 4 at ≤ 128 registers, no spills: two blocks per SM, 32–48 KB in flight.
template <typename D>
constexpr int forward_vec() {
    return int(8 / sizeof(D));
}
template <typename D>
constexpr int backward_vec() {
    return 2;
}

template <typename D, int V>
__device__ __forceinline__ Pack<D, V> zero_pack() {
    Pack<D, V> p;
#pragma unroll
    for (int i = 0; i < V; ++i) p.v[i] = from_f32<D>(0.0f);
    return p;
}

// The run of thread (threadIdx.x, threadIdx.y) in block (j, channel tile): sequence b, tokens
// [t0, t1), channels [c0, c0 + V). Block j covers tokens [chunk · kFastChunk, + kFastChunk) of
// sequence b = j / chunks.
struct Run {
    int64_t b, t0, t1, c0;
    bool active;
};

template <int V>
__device__ __forceinline__ Run run_of(int64_t Tn, int64_t C, int64_t chunks) {
    Run r;
    const int64_t j = blockIdx.x;
    r.b = j / chunks;
    r.t0 = (j - r.b * chunks) * kFastChunk + int64_t(threadIdx.y) * kRun;
    r.t1 = min(Tn, r.t0 + kRun);
    r.c0 = (int64_t(blockIdx.y) * 32 + threadIdx.x) * V;
    r.active = r.c0 < C && r.t0 < Tn;
    return r;
}

// The taps and bias of channels [c0, c0 + V) in fp32.
template <int K, int V, typename D>
__device__ __forceinline__ void load_taps(float (&wk)[K][V], float (&b_c)[V], const D* w, const D* bias,
                                          int64_t c0) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
#pragma unroll
        for (int k = 0; k < K; ++k) wk[k][i] = to_f32(w[(c0 + i) * K + k]);
        b_c[i] = bias ? to_f32(bias[c0 + i]) : 0.0f;
    }
}

// bias + Σ_k w[k] · win[k], fma in k order: the forward's and the update's pre-activation (win as
// loaded packs), and the backward's recomputation of it (win already in fp32).
template <int K, int V, typename D>
__device__ __forceinline__ float pre_activation(const float (&wk)[K][V], const float (&b_c)[V],
                                                const Pack<D, V> (&win)[K], int i) {
    float acc = b_c[i];
#pragma unroll
    for (int k = 0; k < K; ++k) acc = fmaf(wk[k][i], to_f32(win[k].v[i]), acc);
    return acc;
}
template <int K, int V>
__device__ __forceinline__ float pre_activation(const float (&wk)[K][V], const float (&b_c)[V],
                                                const float (&win)[K][V], int i) {
    float acc = b_c[i];
#pragma unroll
    for (int k = 0; k < K; ++k) acc = fmaf(wk[k][i], win[k][i], acc);
    return acc;
}

// win[i] = x[t − (K − 1) + i] after the shift that takes in x[t].
template <int K, typename P>
__device__ __forceinline__ void shift_in(P (&win)[K], const P& next) {
#pragma unroll
    for (int k = 0; k + 1 < K; ++k) win[k] = win[k + 1];
    win[K - 1] = next;
}

// Thread (pack, run) walks its run with the window of its K last x rows in registers; rows before
// the sequence start are zeros (fma with 0 leaves the sum as the update's zero window does).
template <int K, int V, typename D>
__global__ void __launch_bounds__(kFastThreads, min_blocks(K))
    conv_forward_run_kernel(D* out, D* pre, const D* x, int64_t ld_x, const D* hist, const D* w,
                            const D* bias, int64_t Tn, int64_t C, bool silu_out, int64_t chunks) {
    pdl_wait();  // launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    using P = Pack<D, V>;
    const Run r = run_of<V>(Tn, C, chunks);
    if (!r.active) return;
    float wk[K][V], b_c[V];
    load_taps(wk, b_c, w, bias, r.c0);
    // Token j of the run (t = t0 + j) at row offsets j·ld_x (x) and j·C (out, pre) from the run's
    // first row, in 32 bits, as in the backward.
    const D* xr = x + r.b * Tn * ld_x + r.c0 + r.t0 * ld_x;
    const int64_t o0 = r.b * Tn * C + r.c0 + r.t0 * C;
    D* outr = out + o0;
    D* prer = pre ? pre + o0 : nullptr;
    const int ld = int(ld_x), ldo = int(C), n_run = int(r.t1 - r.t0);
    P win[K];
#pragma unroll
    for (int k = 1; k < K; ++k) {
        const int64_t t = r.t0 - K + k;  // rows t0 − (K − 1) .. t0 − 1; win[0] is shifted out unused
        win[k] = t >= 0 ? load<V>(xr + (k - K) * ld)
                 : hist ? load<V>(hist + (r.b * (K - 1) + (K - 1) + t) * C + r.c0)
                        : zero_pack<D, V>();
    }
    for (int jg = 0; jg < n_run; jg += kGroup) {
        P xs[kGroup];
#pragma unroll
        for (int u = 0; u < kGroup; ++u)
            xs[u] = jg + u < n_run ? load<V>(xr + (jg + u) * ld) : zero_pack<D, V>();
#pragma unroll
        for (int u = 0; u < kGroup; ++u) {
            const int j = jg + u;
            if (j >= n_run) break;
            shift_in(win, xs[u]);
            P o, p;
#pragma unroll
            for (int i = 0; i < V; ++i) {
                float acc = pre_activation(wk, b_c, win, i);
                if (silu_out) {
                    p.v[i] = from_f32<D>(acc);
                    acc = silu_rounded<D>(acc);
                }
                o.v[i] = from_f32<D>(acc);
            }
            store(outr + j * ldo, o);
            if (silu_out && prer) store(prer + j * ldo, p);
        }
    }
}

// Thread (pack, run) walks tokens t = t0 .. t1 + K − 2 with the last K rows of x and of g = d loss /
// d pre-activation in registers (rows ≥ T are zeros): step t adds g_t to dw and dbias when t < t1 and
// finishes dx[s], s = t − (K − 1) ≥ t0, from g[s .. s + K − 1] — the walk of conv_backward_kernel on
// a run of kRun tokens, so dx gets its bits. The block then adds its kRunsPerBlock runs' dw and dbias
// in run order and writes one partial per (block, channel): part (B · chunks, K + 1, C).
template <int K, int V, typename D>
__global__ void __launch_bounds__(kFastThreads, min_blocks(K))
    conv_backward_run_kernel(D* dx, float* part, const D* dout, const D* x, int64_t ld_x, const D* w,
                             const D* bias, int64_t Tn, int64_t C, bool silu_in, int64_t chunks,
                             bool dx_overwrite) {
    using P = Pack<D, V>;
    constexpr int kTile = 32 * V;  // channels per block
    __shared__ float red[kRunsPerBlock][K + 1][kTile];
    const Run r = run_of<V>(Tn, C, chunks);
    float dw_acc[K][V], db_acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
        db_acc[i] = 0.0f;
#pragma unroll
        for (int k = 0; k < K; ++k) dw_acc[k][i] = 0.0f;
    }
    if (r.active) {
        float wk[K][V], b_c[V], g_win[K][V], x_win[K][V];
        load_taps(wk, b_c, w, bias, r.c0);
        // Token j of the run (t = t0 + j) at row offsets j·ld_x (x, dx) and j·C (dout) from the run's
        // first row, in 32 bits (a run spans kRun + K − 1 rows): one multiply-add an address where
        // 64-bit row products cost ~8 instructions a load and were two thirds of the kernel's.
        const D* xr = x + r.b * Tn * ld_x + r.c0 + r.t0 * ld_x;
        const D* gr = dout + r.b * Tn * C + r.c0 + r.t0 * C;
        D* dxr = dx ? dx + r.b * Tn * ld_x + r.c0 + r.t0 * ld_x : nullptr;
        const int ld = int(ld_x), ldg = int(C);
        const int n_end = int(r.t1 - r.t0) + K - 1;          // walk length
        const int n_in = int(min(r.t1 + K - 1, Tn) - r.t0);  // rows read below n_in
        const int n_run = int(r.t1 - r.t0);                  // rows adding to dw, dbias
#pragma unroll
        for (int k = 0; k < K; ++k) {
#pragma unroll
            for (int i = 0; i < V; ++i) g_win[k][i] = 0.0f;
            const int j = k - K;  // rows t0 − K .. t0 − 1; win[0] is shifted out unused
            P xk = zero_pack<D, V>();
            if (k > 0 && r.t0 + j >= 0) xk = load<V>(xr + j * ld);
#pragma unroll
            for (int i = 0; i < V; ++i) x_win[k][i] = to_f32(xk.v[i]);
        }
        for (int jg = 0; jg < n_end; jg += kGroup) {
            P xs[kGroup], gs[kGroup], dxs[kGroup];
#pragma unroll
            for (int u = 0; u < kGroup; ++u) {
                const int j = jg + u, js = j - (K - 1);
                const bool in = j < n_in;
                xs[u] = in ? load<V>(xr + j * ld) : zero_pack<D, V>();
                gs[u] = in ? load<V>(gr + j * ldg) : zero_pack<D, V>();
                dxs[u] =
                    dxr && !dx_overwrite && js >= 0 && j < n_end ? load<V>(dxr + js * ld) : zero_pack<D, V>();
            }
#pragma unroll
            for (int u = 0; u < kGroup; ++u) {
                const int j = jg + u, js = j - (K - 1);
                if (j >= n_end) break;
#pragma unroll
                for (int i = 0; i < V; ++i) {
#pragma unroll
                    for (int k = 0; k + 1 < K; ++k) x_win[k][i] = x_win[k + 1][i];
                    x_win[K - 1][i] = to_f32(xs[u].v[i]);
                }
                float g[V];
#pragma unroll
                for (int i = 0; i < V; ++i) {
                    g[i] = to_f32(gs[u].v[i]);
                    if (silu_in) g[i] *= silu_grad_rounded<D>(pre_activation(wk, b_c, x_win, i));
#pragma unroll
                    for (int k = 0; k + 1 < K; ++k) g_win[k][i] = g_win[k + 1][i];
                    g_win[K - 1][i] = g[i];
                }
                if (j < n_run) {
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        db_acc[i] += g[i];
#pragma unroll
                        for (int k = 0; k < K; ++k) dw_acc[k][i] = fmaf(g[i], x_win[k][i], dw_acc[k][i]);
                    }
                }
                if (dxr && js >= 0) {
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        float acc = 0.0f;
#pragma unroll
                        for (int k = 0; k < K; ++k) acc = fmaf(g_win[K - 1 - k][i], wk[k][i], acc);
                        dxs[u].v[i] = from_f32<D>(to_f32(dxs[u].v[i]) + acc);
                    }
                    store(dxr + js * ld, dxs[u]);
                }
            }
        }
    }
    if (!part) return;  // uniform over the grid
#pragma unroll
    for (int i = 0; i < V; ++i) {
#pragma unroll
        for (int k = 0; k < K; ++k) red[threadIdx.y][k][threadIdx.x * V + i] = dw_acc[k][i];
        red[threadIdx.y][K][threadIdx.x * V + i] = db_acc[i];
    }
    __syncthreads();
    const int64_t tile_c0 = int64_t(blockIdx.y) * kTile;
    float* pj = part + int64_t(blockIdx.x) * (K + 1) * C + tile_c0;  // (K + 1, C) of this block
    for (int o = threadIdx.y * 32 + threadIdx.x; o < (K + 1) * kTile; o += kFastThreads) {
        const int k = o / kTile, cl = o - k * kTile;
        if (tile_c0 + cl >= C) continue;
        float acc = red[0][k][cl];
#pragma unroll
        for (int q = 1; q < kRunsPerBlock; ++q) acc += red[q][k][cl];
        pj[int64_t(k) * C + cl] = acc;
    }
}

// The tiled backward (file comment): channels a block, and runs of kTileRun tokens a block's
// kFastChunk; thread (channel tid % 64, run tid / 64).
constexpr int kTileCh = 64, kTileRuns = 4, kTileRun = int(kFastChunk) / kTileRuns;

// The tiled kernels' pieces (thread tid of kTileRuns · kTileCh; tiles of kTileCh bf16 channels a
// row, 8 pieces of 16 bytes).
// rows rows of src (row stride ld) from token t_first on, channels c0 .. c0 + kTileCh − 1, into the
// shared tile by cp.async: rows outside [0, Tn) and channels past C as zeros (a valid `fallback`
// address is passed for those copies).
__device__ __forceinline__ void stage_tile_rows(__nv_bfloat16 (*tile)[kTileCh], const __nv_bfloat16* src,
                                                int64_t ld, int64_t t_first, int rows, int64_t Tn, int64_t c0,
                                                int64_t C, const __nv_bfloat16* fallback, int tid) {
    for (int p = tid; p < rows * 8; p += kTileRuns * kTileCh) {
        const int row = p / 8, piece = p % 8;
        const int64_t t = t_first + row, c = c0 + piece * 8;
        const bool ok = t >= 0 && t < Tn && c < C;
        cp_async_16_zfill(&tile[row][piece * 8], ok ? src + t * ld + c : fallback, ok);
    }
}
// The shared tile's rows 0 .. kFastChunk − 1 to dst (row stride ld) from token t0 on, 16 bytes a
// piece, rows before Tn and pieces before C only.
__device__ __forceinline__ void store_tile_rows(__nv_bfloat16* dst, int64_t ld,
                                                const __nv_bfloat16 (*tile)[kTileCh], int64_t t0, int64_t Tn,
                                                int64_t c0, int64_t C, int tid) {
    for (int p = tid; p < int(kFastChunk) * 8; p += kTileRuns * kTileCh) {
        const int row = p / 8, piece = p % 8;
        const int64_t t = t0 + row, c = c0 + piece * 8;
        if (t < Tn && c < C)
            *reinterpret_cast<uint4*>(dst + t * ld + c) =
                *reinterpret_cast<const uint4*>(&tile[row][piece * 8]);
    }
}
// Channel c's taps and bias in fp32 (zeros for an inactive thread).
template <int K>
__device__ __forceinline__ void tile_taps(float (&wk)[K], float& b_c, const __nv_bfloat16* w,
                                          const __nv_bfloat16* bias, int64_t c, bool active) {
#pragma unroll
    for (int k = 0; k < K; ++k) wk[k] = active ? to_f32(w[c * K + k]) : 0.0f;
    b_c = bias && active ? to_f32(bias[c]) : 0.0f;
}

template <int K>
struct ConvTile {
    // x rows t0 − (K − 1) .. t1 + K − 2 (the window before the first token and the walk past the
    // last), dout rows t0 .. t1 + K − 2, dx rows t0 .. t1 − 1; bf16 rows of 64 channels (128 bytes).
    // The dw / dbias sums of the runs reuse x's rows once the walk is done.
    static constexpr int kXRows = int(kFastChunk) + 2 * (K - 1), kGRows = int(kFastChunk) + K - 1,
                         kRowBytes = kTileCh * 2, kX = 0, kG = kXRows * kRowBytes,
                         kDx = kG + kGRows * kRowBytes;
    static constexpr size_t kSmem = size_t(kDx) + size_t(kFastChunk) * kRowBytes;
    static_assert(kTileRuns * (K + 1) * kTileCh * 4 <= kXRows * kRowBytes, "the sums fit in x's rows");
};

template <int K>
__global__ void __launch_bounds__(kTileRuns* kTileCh)
    conv_backward_tile_kernel(__nv_bfloat16* dx, float* part, const __nv_bfloat16* dout,
                              const __nv_bfloat16* x, int64_t ld_x, const __nv_bfloat16* w,
                              const __nv_bfloat16* bias, int64_t Tn, int64_t C, bool silu_in, int64_t chunks,
                              bool dx_overwrite) {
    using L = ConvTile<K>;
    extern __shared__ __align__(16) unsigned char tile_raw[];
    auto xs = reinterpret_cast<__nv_bfloat16(*)[kTileCh]>(tile_raw + L::kX);
    auto gs = reinterpret_cast<__nv_bfloat16(*)[kTileCh]>(tile_raw + L::kG);
    auto dxs = reinterpret_cast<__nv_bfloat16(*)[kTileCh]>(tile_raw + L::kDx);
    auto red = reinterpret_cast<float(*)[K + 1][kTileCh]>(tile_raw + L::kX);  // after the walk
    const int64_t j = blockIdx.x, b = j / chunks, t0 = (j - b * chunks) * kFastChunk,
                  c0 = int64_t(blockIdx.y) * kTileCh;
    const int tid = threadIdx.x;
    // Every copy first: 8 pieces of 16 bytes a row; rows outside the sequence and channels past C
    // are zeros (so g = 0 there, as in the run kernel).
    stage_tile_rows(xs, x + b * Tn * ld_x, ld_x, t0 - (K - 1), L::kXRows, Tn, c0, C, x, tid);
    stage_tile_rows(gs, dout + b * Tn * C, C, t0, L::kGRows, Tn, c0, C, dout, tid);
    __nv_bfloat16* dxb = dx ? dx + b * Tn * ld_x : nullptr;
    if (dxb && !dx_overwrite) stage_tile_rows(dxs, dxb, ld_x, t0, int(kFastChunk), Tn, c0, C, dx, tid);
    cp_async_commit();
    const int cl = tid % kTileCh, r0 = (tid / kTileCh) * kTileRun;
    const int64_t c = c0 + cl;
    float wk[K], b_c;
    tile_taps<K>(wk, b_c, w, bias, c, c < C);
    cp_async_wait<0>();
    __syncthreads();

    float dw_acc[K], x_win[K], g_win[K], db_acc = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        dw_acc[k] = 0.0f;
        g_win[k] = 0.0f;
        // token t0 + r0 − K + k sits at row r0 + k − 1 of xs; x_win[0] is shifted out unused
        x_win[k] = k > 0 ? to_f32(xs[r0 + k - 1][cl]) : 0.0f;
    }
    // Walk step s: token t0 + r0 + s (xs row r0 + s + K − 1, gs row r0 + s); it finishes dx of token
    // t0 + r0 + s − (K − 1) into dxs row r0 + s − (K − 1).
#pragma unroll 4
    for (int s = 0; s < kTileRun + K - 1; ++s) {
#pragma unroll
        for (int k = 0; k + 1 < K; ++k) {
            x_win[k] = x_win[k + 1];
            g_win[k] = g_win[k + 1];
        }
        x_win[K - 1] = to_f32(xs[r0 + s + K - 1][cl]);
        float g = to_f32(gs[r0 + s][cl]);
        if (silu_in) {
            float p = b_c;
#pragma unroll
            for (int k = 0; k < K; ++k) p = fmaf(wk[k], x_win[k], p);
            g *= silu_grad_rounded<__nv_bfloat16>(p);
        }
        g_win[K - 1] = g;
        if (s < kTileRun) {
            db_acc += g;
#pragma unroll
            for (int k = 0; k < K; ++k) dw_acc[k] = fmaf(g, x_win[k], dw_acc[k]);
        }
        const int sd = s - (K - 1);
        if (dxb && sd >= 0) {
            float acc = 0.0f;
#pragma unroll
            for (int k = 0; k < K; ++k) acc = fmaf(g_win[K - 1 - k], wk[k], acc);
            __nv_bfloat16& q = dxs[r0 + sd][cl];
            q = from_f32<__nv_bfloat16>((dx_overwrite ? 0.0f : to_f32(q)) + acc);
        }
    }
    __syncthreads();  // the walk done: dxs complete, xs free for the sums
    if (dxb) store_tile_rows(dxb, ld_x, dxs, t0, Tn, c0, C, tid);
    if (!part) return;  // uniform over the grid
#pragma unroll
    for (int k = 0; k < K; ++k) red[r0 / kTileRun][k][cl] = dw_acc[k];
    red[r0 / kTileRun][K][cl] = db_acc;
    __syncthreads();
    float* pj = part + j * (K + 1) * C + c0;  // (K + 1, C) of this block's chunk
    for (int o = tid; o < (K + 1) * kTileCh; o += kTileRuns * kTileCh) {
        const int k = o / kTileCh, col = o - k * kTileCh;
        if (c0 + col >= C) continue;
        float acc = red[0][k][col];
#pragma unroll
        for (int q = 1; q < kTileRuns; ++q) acc += red[q][k][col];
        pj[int64_t(k) * C + col] = acc;
    }
}

// The tiled forward (bf16, no history rows, no pre-activation output: the training step's call):
// the block's x rows t0 − (K − 1) .. t0 + kFastChunk − 1 of kTileCh channels are staged by cp.async
// (zeros before the sequence, past its end and past C) before any arithmetic; thread (channel
// tid % kTileCh, run tid / kTileCh) walks its kTileRun tokens with the window in registers; the outputs
// go through a shared tile and leave in 16-byte stores. The run kernel held 8 loads of 8 bytes a
// thread in flight at 120 registers (2 blocks an SM): ~43% of the bandwidth. The same fma chain in k
// order and the same roundings as conv_forward_run_kernel: its bits.
template <int K>
struct ConvFwdTile {
    static constexpr int kXRows = int(kFastChunk) + K - 1, kRowBytes = kTileCh * 2, kX = 0,
                         kOut = kXRows * kRowBytes;
    static constexpr size_t kSmem = size_t(kOut) + size_t(kFastChunk) * kRowBytes;
};

template <int K>
__global__ void __launch_bounds__(kTileRuns* kTileCh)
    conv_forward_tile_kernel(__nv_bfloat16* out, const __nv_bfloat16* x, int64_t ld_x, const __nv_bfloat16* w,
                             const __nv_bfloat16* bias, int64_t Tn, int64_t C, bool silu_out,
                             int64_t chunks) {
    pdl_wait();  // launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    using L = ConvFwdTile<K>;
    extern __shared__ __align__(16) unsigned char tile_raw[];
    auto xs = reinterpret_cast<__nv_bfloat16(*)[kTileCh]>(tile_raw + L::kX);
    auto os = reinterpret_cast<__nv_bfloat16(*)[kTileCh]>(tile_raw + L::kOut);
    const int64_t j = blockIdx.x, b = j / chunks, t0 = (j - b * chunks) * kFastChunk,
                  c0 = int64_t(blockIdx.y) * kTileCh;
    const int tid = threadIdx.x;
    stage_tile_rows(xs, x + b * Tn * ld_x, ld_x, t0 - (K - 1), L::kXRows, Tn, c0, C, x, tid);
    cp_async_commit();
    const int cl = tid % kTileCh, r0 = (tid / kTileCh) * kTileRun;
    float wk[K], b_c;
    tile_taps<K>(wk, b_c, w, bias, c0 + cl, c0 + cl < C);
    cp_async_wait<0>();
    __syncthreads();
    float win[K];
#pragma unroll
    for (int k = 0; k < K; ++k)
        win[k] = k > 0 ? to_f32(xs[r0 + k - 1][cl]) : 0.0f;  // win[0] shifted out unused
#pragma unroll 4
    for (int s = 0; s < kTileRun; ++s) {  // token t0 + r0 + s: xs row r0 + s + K − 1
#pragma unroll
        for (int k = 0; k + 1 < K; ++k) win[k] = win[k + 1];
        win[K - 1] = to_f32(xs[r0 + s + K - 1][cl]);
        float acc = b_c;
#pragma unroll
        for (int k = 0; k < K; ++k) acc = fmaf(wk[k], win[k], acc);
        if (silu_out) acc = silu_rounded<__nv_bfloat16>(acc);
        os[r0 + s][cl] = from_f32<__nv_bfloat16>(acc);
    }
    __syncthreads();
    store_tile_rows(out + b * Tn * C, C, os, t0, Tn, c0, C, tid);
}

// dw[c, k] += Σ_j part[j, k, c] and dbias[c] += Σ_j part[j, K, c]: thread (column, slice s) adds
// the partials j ∈ [n·s / kSlices, n·(s + 1) / kSlices) in order, then slice 0 adds the slices in order.
template <typename D>
__global__ void __launch_bounds__(32 * kSlices)
    conv_reduce_slices_kernel(D* dw, D* dbias, const float* part, int64_t n_parts, int64_t C, int K) {
    __shared__ float sums[kSlices][32];
    const int64_t total = int64_t(K + 1) * C, col = int64_t(blockIdx.x) * 32 + threadIdx.x;
    const int s = threadIdx.y;
    float acc = 0.0f;
    if (col < total) {
        const int64_t j1 = n_parts * (s + 1) / kSlices;
#pragma unroll 4
        for (int64_t j = n_parts * s / kSlices; j < j1; ++j) acc += part[j * total + col];
    }
    sums[s][threadIdx.x] = acc;
    __syncthreads();
    if (s != 0 || col >= total) return;
    const int64_t k = col / C, c = col - k * C;
    D* dst = k < K ? (dw ? dw + c * K + k : nullptr) : dbias ? dbias + c : nullptr;
    if (!dst) return;
    for (int q = 1; q < kSlices; ++q) acc += sums[q][threadIdx.x];
    *dst = from_f32<D>(to_f32(*dst) + acc);
}

void check_shape(const char* kernel, int64_t B, int64_t Tn, int64_t C, int64_t K, int64_t ld_x) {
    MSLM_CHECK(B >= 0 && Tn >= 0 && C >= 0 && K >= 1, "CUDA kernel {}: bad shape B {}, T {}, C {}, K {}",
               kernel, B, Tn, C, K);
    MSLM_CHECK(ld_x >= C, "CUDA kernel {}: row stride {} below the {} channels", kernel, ld_x, C);
}

template <int K, typename T, typename D>
void launch_backward(D* dx, float* part, const D* dout, const D* x, int64_t ld_x, const D* w, const D* bias,
                     int64_t B, int64_t Tn, int64_t C, bool silu_in, cudaStream_t s, const char* kernel) {
    const int64_t total = B * n_chunks(Tn) * C;
    conv_backward_kernel<K><<<grid_size<T>(total, kernel), kThreads, 0, s>>>(dx, part, dout, x, ld_x, w, bias,
                                                                             Tn, C, silu_in, total);
}

// The fast kernels unless MSLM_CONV_FAST=0 (read at every call, for ablations: bench_cuda_conv).
bool use_fast_kernels() {
    return env_switch_on("MSLM_CONV_FAST");
}

// Packs of V elements of D fit when every given pointer and every row stride is a multiple of the
// pack's bytes; otherwise the fast kernels take one channel per thread.
template <typename D>
bool packs_fit(int V, std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
    const uintptr_t bytes = uintptr_t(V) * sizeof(D);
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
    for (int64_t stride : strides)
        if (stride % V != 0) return false;
    return true;
}

// (B · chunks of kFastChunk tokens, tiles of 32 packs of channels), blocks of (32, kRunsPerBlock).
template <typename T>
dim3 fast_grid(int64_t B, int64_t Tn, int64_t C, int V, const char* kernel) {
    const int64_t blocks = B * n_fast_chunks(Tn), tiles = (C + 32 * V - 1) / (32 * V);
    MSLM_CHECK(blocks <= INT32_MAX && tiles <= 65535, "CUDA kernel {}<{}>: grid of {} × {} blocks too large",
               kernel, dtype_label<T>(), blocks, tiles);
    return dim3(unsigned(blocks), unsigned(tiles));
}

// The fast kernels address a run's rows by 32-bit offsets (row j of the run, j < kRun + K, times the
// row stride): the strides must keep those in range.
template <typename T>
void check_run_offsets(int64_t ld_x, int64_t C, int64_t K, const char* kernel) {
    MSLM_CHECK((kRun + K) * std::max(ld_x, C) < int64_t(INT_MAX),
               "CUDA kernel {}<{}>: row stride {} too large for the fast kernels' 32-bit row offsets", kernel,
               dtype_label<T>(), std::max(ld_x, C));
}

template <int K, typename T, typename D>
void forward_fast(D* out, D* pre, const D* x, int64_t ld_x, const D* hist, const D* w, const D* bias,
                  int64_t B, int64_t Tn, int64_t C, bool silu, cudaStream_t s, const char* kernel) {
    constexpr int V = forward_vec<D>();
    check_run_offsets<T>(ld_x, C, K, kernel);
    if constexpr (std::is_same_v<D, __nv_bfloat16>) {
        const char* tile = std::getenv("MSLM_CONV_FWD_TILE");
        // x and out rows 16-byte aligned, C a multiple of 8; no history rows, no pre-activation output.
        if (!(tile && std::string_view(tile) == "0") && !hist && !(silu && pre) &&
            packs_fit<D>(8, {out, x}, {ld_x, C})) {
            const int64_t tiles = (C + kTileCh - 1) / kTileCh, blocks = B * n_fast_chunks(Tn);
            MSLM_CHECK(blocks <= INT32_MAX && tiles <= 65535,
                       "CUDA kernel {}<{}>: grid of {} × {} blocks too large", kernel, dtype_label<T>(),
                       blocks, tiles);
            static_assert(ConvFwdTile<K>::kSmem <= 48 * 1024, "the default dynamic shared memory");
            check_cuda<T>(launch_ops_pdl(conv_forward_tile_kernel<K>, dim3(unsigned(blocks), unsigned(tiles)),
                                         dim3(kTileRuns * kTileCh), ConvFwdTile<K>::kSmem, s, out, x, ld_x, w,
                                         bias, Tn, C, silu, n_fast_chunks(Tn)),
                          "launch", kernel);
            return;
        }
    }
    const dim3 block(32, kRunsPerBlock);
    const int v = packs_fit<D>(V, {out, x, silu ? pre : nullptr, hist}, {ld_x, C}) ? V : 1;
    check_cuda<T>(launch_ops_pdl(v == V ? conv_forward_run_kernel<K, V, D> : conv_forward_run_kernel<K, 1, D>,
                                 fast_grid<T>(B, Tn, C, v, kernel), block, 0, s, out, pre, x, ld_x, hist, w,
                                 bias, Tn, C, silu, n_fast_chunks(Tn)),
                  "launch", kernel);
}

template <int K, typename T, typename D>
void backward_fast(D* dx, float* part, const D* dout, const D* x, int64_t ld_x, const D* w, const D* bias,
                   int64_t B, int64_t Tn, int64_t C, bool silu_in, bool dx_overwrite, cudaStream_t s,
                   const char* kernel) {
    constexpr int V = backward_vec<D>();
    check_run_offsets<T>(ld_x, C, K, kernel);
    if constexpr (std::is_same_v<D, __nv_bfloat16>) {
        const char* tile = std::getenv("MSLM_CONV_BWD_TILE");
        // x, dout and dx rows 16-byte aligned (dx null passes).
        if (!(tile && std::string_view(tile) == "0") && packs_fit<D>(8, {dout, x, dx}, {ld_x, C})) {
            const int64_t tiles = (C + kTileCh - 1) / kTileCh, blocks = B * n_fast_chunks(Tn);
            MSLM_CHECK(blocks <= INT32_MAX && tiles <= 65535,
                       "CUDA kernel {}<{}>: grid of {} × {} blocks too large", kernel, dtype_label<T>(),
                       blocks, tiles);
            constexpr size_t smem = ConvTile<K>::kSmem;
            check_cuda<T>(cudaFuncSetAttribute(conv_backward_tile_kernel<K>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                          "cudaFuncSetAttribute", kernel);
            conv_backward_tile_kernel<K>
                <<<dim3(unsigned(blocks), unsigned(tiles)), kTileRuns * kTileCh, smem, s>>>(
                    dx, part, dout, x, ld_x, w, bias, Tn, C, silu_in, n_fast_chunks(Tn), dx_overwrite);
            return;
        }
    }
    const dim3 block(32, kRunsPerBlock);
    if (packs_fit<D>(V, {dx, dout, x}, {ld_x, C})) {
        conv_backward_run_kernel<K, V><<<fast_grid<T>(B, Tn, C, V, kernel), block, 0, s>>>(
            dx, part, dout, x, ld_x, w, bias, Tn, C, silu_in, n_fast_chunks(Tn), dx_overwrite);
    } else {
        conv_backward_run_kernel<K, 1><<<fast_grid<T>(B, Tn, C, 1, kernel), block, 0, s>>>(
            dx, part, dout, x, ld_x, w, bias, Tn, C, silu_in, n_fast_chunks(Tn), dx_overwrite);
    }
}

}  // namespace

// Sized for the old path's 64-token chunks, which the fast path's 128-token blocks never exceed.
size_t conv1d_causal_backward_workspace_bytes(int64_t B, int64_t Tn, int64_t C, int64_t K) {
    return size_t(B * n_chunks(Tn) * (K + 1) * C) * sizeof(float);
}

#define MSLM_CONV_CASES(CASE) \
    CASE(1)                   \
    CASE(2)                   \
    CASE(3)                   \
    CASE(4)                   \
    CASE(5)                   \
    CASE(6)                   \
    CASE(7)                   \
    CASE(8)

template <typename T>
void conv1d_causal_forward(T* out, T* pre, const T* x, int64_t ld_x, const T* w, const T* bias, int64_t B,
                           int64_t Tn, int64_t C, int64_t K, bool silu, void* stream) {
    conv1d_causal_forward(out, pre, x, ld_x, static_cast<const T*>(nullptr), w, bias, B, Tn, C, K, silu,
                          stream);
}

template <typename T>
void conv1d_causal_forward(T* out, T* pre, const T* x, int64_t ld_x, const T* hist, const T* w, const T* bias,
                           int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu, void* stream) {
    const char* kernel = "conv1d_causal_forward";
    check_shape(kernel, B, Tn, C, K, ld_x);
    const int64_t total = B * Tn * C;
    if (total == 0) return;
    using D = device_t<T>;
    D* dout = reinterpret_cast<D*>(out);
    D* dpre = reinterpret_cast<D*>(pre);
    const D* dxin = reinterpret_cast<const D*>(x);
    const D* dhist = reinterpret_cast<const D*>(hist);
    const D* dw = reinterpret_cast<const D*>(w);
    const D* dbias = reinterpret_cast<const D*>(bias);
    auto s = static_cast<cudaStream_t>(stream);
    if (use_fast_kernels() && K <= kConv1dBackwardMaxK) {
        switch (K) {
#define MSLM_CONV_CASE(KK)                                                                        \
    case KK:                                                                                      \
        forward_fast<KK, T>(dout, dpre, dxin, ld_x, dhist, dw, dbias, B, Tn, C, silu, s, kernel); \
        break;
            MSLM_CONV_CASES(MSLM_CONV_CASE)
#undef MSLM_CONV_CASE
        }
    } else {
        conv_forward_kernel<<<grid_size<T>(total, kernel), kThreads, 0, s>>>(
            dout, dpre, dxin, ld_x, dhist, dw, dbias, Tn, C, int(K), silu, total);
    }
    check_launch<T>(kernel);
}

template <typename T>
void conv1d_causal_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, int64_t ld_x, const T* w,
                            const T* bias, int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu,
                            void* workspace, size_t workspace_bytes, void* stream, GradStore dx_store) {
    const char* kernel = "conv1d_causal_backward";
    check_shape(kernel, B, Tn, C, K, ld_x);
    MSLM_CHECK(K <= kConv1dBackwardMaxK, "CUDA kernel {}: kernel size {} above {}", kernel, K,
               kConv1dBackwardMaxK);
    if (B * Tn * C == 0 || (!dx && !dw && !dbias)) return;
    const bool need_part = dw || dbias;
    const size_t need = conv1d_causal_backward_workspace_bytes(B, Tn, C, K);
    MSLM_CHECK(!need_part || (workspace && workspace_bytes >= need),
               "CUDA kernel {}: workspace of {} bytes, needs {}", kernel, workspace ? workspace_bytes : 0,
               need);
    using D = device_t<T>;
    D* ddx = reinterpret_cast<D*>(dx);
    float* part = need_part ? static_cast<float*>(workspace) : nullptr;
    const D* ddout = reinterpret_cast<const D*>(dout);
    const D* dxin = reinterpret_cast<const D*>(x);
    const D* dw_in = reinterpret_cast<const D*>(w);
    const D* dbias_in = reinterpret_cast<const D*>(bias);
    auto s = static_cast<cudaStream_t>(stream);
    const bool fast = use_fast_kernels();
    const bool overwrite = dx && dx_store == GradStore::Overwrite;
    if (overwrite && !fast)  // the one-element kernels add to zeros
        check_cuda<T>(cudaMemset2DAsync(dx, sizeof(T) * ld_x, 0, sizeof(T) * C, B * Tn, s),
                      "cudaMemset2DAsync", kernel);
    switch (K) {
#define MSLM_CONV_CASE(KK)                                                                                 \
    case KK:                                                                                               \
        if (fast) {                                                                                        \
            backward_fast<KK, T>(ddx, part, ddout, dxin, ld_x, dw_in, dbias_in, B, Tn, C, silu, overwrite, \
                                 s, kernel);                                                               \
        } else {                                                                                           \
            launch_backward<KK, T>(ddx, part, ddout, dxin, ld_x, dw_in, dbias_in, B, Tn, C, silu, s,       \
                                   kernel);                                                                \
        }                                                                                                  \
        break;
        MSLM_CONV_CASES(MSLM_CONV_CASE)
#undef MSLM_CONV_CASE
    }
    check_launch<T>(kernel);
    if (!need_part) return;
    const char* reduce = "conv1d_causal_backward (reduce)";
    const int64_t reduce_total = (K + 1) * C;
    D* dw_out = reinterpret_cast<D*>(dw);
    D* dbias_out = reinterpret_cast<D*>(dbias);
    if (fast) {
        conv_reduce_slices_kernel<<<unsigned((reduce_total + 31) / 32), dim3(32, kSlices), 0, s>>>(
            dw_out, dbias_out, part, B * n_fast_chunks(Tn), C, int(K));
    } else {
        conv_reduce_kernel<<<grid_size<T>(reduce_total, reduce), kThreads, 0, s>>>(
            dw_out, dbias_out, part, B * n_chunks(Tn), C, int(K));
    }
    check_launch<T>(reduce);
}

#undef MSLM_CONV_CASES

template <typename T>
void conv1d_causal_update(T* out, T* state, const int64_t* slots, const T* x, int64_t ld_x, const T* w,
                          const T* bias, int64_t k, int64_t C, int64_t K, bool silu, void* stream) {
    const char* kernel = "conv1d_causal_update";
    check_shape(kernel, k, 1, C, K, ld_x);
    const int64_t total = k * C;
    if (total == 0) return;
    using D = device_t<T>;
    check_cuda<T>(launch_ops_pdl(conv_update_kernel<D>, dim3(grid_size<T>(total, kernel)), dim3(kThreads), 0,
                                 static_cast<cudaStream_t>(stream), reinterpret_cast<D*>(out),
                                 reinterpret_cast<D*>(state), slots, reinterpret_cast<const D*>(x), ld_x,
                                 reinterpret_cast<const D*>(w), reinterpret_cast<const D*>(bias), C, int(K),
                                 silu, total),
                  "launch", kernel);
    check_launch<T>(kernel);
}

#define MSLM_INSTANTIATE(T)                                                                                  \
    template void conv1d_causal_forward<T>(T*, T*, const T*, int64_t, const T*, const T*, int64_t, int64_t,  \
                                           int64_t, int64_t, bool, void*);                                   \
    template void conv1d_causal_forward<T>(T*, T*, const T*, int64_t, const T*, const T*, const T*, int64_t, \
                                           int64_t, int64_t, int64_t, bool, void*);                          \
    template void conv1d_causal_backward<T>(T*, T*, T*, const T*, const T*, int64_t, const T*, const T*,     \
                                            int64_t, int64_t, int64_t, int64_t, bool, void*, size_t, void*,  \
                                            GradStore);                                                      \
    template void conv1d_causal_update<T>(T*, T*, const int64_t*, const T*, int64_t, const T*, const T*,     \
                                          int64_t, int64_t, int64_t, bool, void*);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
