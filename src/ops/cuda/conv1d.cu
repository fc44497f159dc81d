// Causal depthwise conv1d on CUDA. Channels are the fastest index everywhere, so the threads of a
// warp handle consecutive channels and every load of x, dout or the window is coalesced.
// - forward: one thread per output (b, t, c); K taps from L1/L2.
// - backward: one thread per (sequence chunk of kChunk rows, channel) walks its rows in order with
//   the last K inputs and the last K pre-activation gradients in registers (K is a template
//   parameter), writes dx once per row and leaves its dw and dbias partial sums in the workspace;
//   a second kernel adds the partials in chunk order. No float atomics: the bits do not depend on
//   the device or the scheduling.
// - update: one thread per (row, channel).
// Taps are summed with explicit fmaf in k order in forward, backward and update, so the update
// gives the forward's bits and the backward's recomputed pre-activation is the forward's.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/conv1d.h"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

// Rows per backward thread. Fixed (not derived from the device) so that dw and dbias are summed in
// the same order everywhere; 64 rows amortise the K − 1 rows each chunk re-reads past its end.
constexpr int64_t kChunk = 64;

int64_t n_chunks(int64_t Tn) {
    return (Tn + kChunk - 1) / kChunk;
}

template <typename D>
__global__ void conv_forward_kernel(D* out, D* pre, const D* x, int64_t ld_x, const D* w, const D* bias,
                                    int64_t Tn, int64_t C, int K, bool silu_out, int64_t total) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t row = i / C, c = i - row * C, t = row % Tn;
        float acc = bias ? to_f32(bias[c]) : 0.0f;
        // Tap k reads token t − (K − 1) + k; taps before the sequence start see zeros.
        for (int k = t < K - 1 ? int(K - 1 - t) : 0; k < K; ++k)
            acc = fmaf(to_f32(w[c * K + k]), to_f32(x[(row - (K - 1) + k) * ld_x + c]), acc);
        if (silu_out) {
            if (pre) pre[i] = from_f32<D>(acc);
            acc = silu(acc);
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
                    g *= silu_grad(p);
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
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t row = i / C, c = i - row * C;
        D* win = state + slots[row] * (K - 1) * C + c;  // (K − 1) with stride C
        const D xv = x[row * ld_x + c];
        float acc = bias ? to_f32(bias[c]) : 0.0f;
        for (int k = 0; k + 1 < K; ++k) acc = fmaf(to_f32(w[c * K + k]), to_f32(win[k * C]), acc);
        acc = fmaf(to_f32(w[c * K + K - 1]), to_f32(xv), acc);
        out[i] = from_f32<D>(silu_out ? silu(acc) : acc);
        for (int k = 0; k + 2 < K; ++k) win[k * C] = win[(k + 1) * C];
        if (K > 1) win[(K - 2) * C] = xv;
    }
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

}  // namespace

size_t conv1d_causal_backward_workspace_bytes(int64_t B, int64_t Tn, int64_t C, int64_t K) {
    return size_t(B * n_chunks(Tn) * (K + 1) * C) * sizeof(float);
}

template <typename T>
void conv1d_causal_forward(T* out, T* pre, const T* x, int64_t ld_x, const T* w, const T* bias, int64_t B,
                           int64_t Tn, int64_t C, int64_t K, bool silu, void* stream) {
    const char* kernel = "conv1d_causal_forward";
    check_shape(kernel, B, Tn, C, K, ld_x);
    const int64_t total = B * Tn * C;
    if (total == 0) return;
    using D = device_t<T>;
    conv_forward_kernel<<<grid_size<T>(total, kernel), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<D*>(out), reinterpret_cast<D*>(pre), reinterpret_cast<const D*>(x), ld_x,
        reinterpret_cast<const D*>(w), reinterpret_cast<const D*>(bias), Tn, C, int(K), silu, total);
    check_launch<T>(kernel);
}

template <typename T>
void conv1d_causal_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, int64_t ld_x, const T* w,
                            const T* bias, int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu,
                            void* workspace, size_t workspace_bytes, void* stream) {
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
    switch (K) {
#define MSLM_CONV_CASE(KK)                                                                                \
    case KK:                                                                                              \
        launch_backward<KK, T>(ddx, part, ddout, dxin, ld_x, dw_in, dbias_in, B, Tn, C, silu, s, kernel); \
        break;
        MSLM_CONV_CASE(1)
        MSLM_CONV_CASE(2)
        MSLM_CONV_CASE(3)
        MSLM_CONV_CASE(4)
        MSLM_CONV_CASE(5)
        MSLM_CONV_CASE(6)
        MSLM_CONV_CASE(7)
        MSLM_CONV_CASE(8)
#undef MSLM_CONV_CASE
    }
    check_launch<T>(kernel);
    if (!need_part) return;
    const int64_t reduce_total = (K + 1) * C;
    conv_reduce_kernel<<<grid_size<T>(reduce_total, "conv1d_causal_backward (reduce)"), kThreads, 0, s>>>(
        reinterpret_cast<D*>(dw), reinterpret_cast<D*>(dbias), part, B * n_chunks(Tn), C, int(K));
    check_launch<T>("conv1d_causal_backward (reduce)");
}

template <typename T>
void conv1d_causal_update(T* out, T* state, const int64_t* slots, const T* x, int64_t ld_x, const T* w,
                          const T* bias, int64_t k, int64_t C, int64_t K, bool silu, void* stream) {
    const char* kernel = "conv1d_causal_update";
    check_shape(kernel, k, 1, C, K, ld_x);
    const int64_t total = k * C;
    if (total == 0) return;
    using D = device_t<T>;
    conv_update_kernel<<<grid_size<T>(total, kernel), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<D*>(out), reinterpret_cast<D*>(state), slots, reinterpret_cast<const D*>(x), ld_x,
        reinterpret_cast<const D*>(w), reinterpret_cast<const D*>(bias), C, int(K), silu, total);
    check_launch<T>(kernel);
}

#define MSLM_INSTANTIATE(T)                                                                                  \
    template void conv1d_causal_forward<T>(T*, T*, const T*, int64_t, const T*, const T*, int64_t, int64_t,  \
                                           int64_t, int64_t, bool, void*);                                   \
    template void conv1d_causal_backward<T>(T*, T*, T*, const T*, const T*, int64_t, const T*, const T*,     \
                                            int64_t, int64_t, int64_t, int64_t, bool, void*, size_t, void*); \
    template void conv1d_causal_update<T>(T*, T*, const int64_t*, const T*, int64_t, const T*, const T*,     \
                                          int64_t, int64_t, int64_t, bool, void*);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
