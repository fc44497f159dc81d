// Norm kernels: one thread block per row (grid-stride over rows), threads striding over the row in
// 16-byte packs (4 × f32, 8 × bf16) when every pointer is 16-byte aligned and the group width is a
// multiple of the pack, one element at a time otherwise. Reductions over a row are block
// reductions in a fixed order (ops/cuda/reduce.cuh). RMSNorm is the gated kernel with one group
// and no gate.
//
// Backward: the same row kernel also accumulates this block's share of dw (db) in shared memory,
// each thread owning the same columns in every row, and writes it to workspace row blockIdx.x;
// column_sum_kernel then adds the partials into dw in block order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <string_view>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/norm.h"
#include "ops/cuda/reduce.cuh"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

// Blocks of the backward passes, hence partial sums in the workspace: enough to fill an H200
// (132 SMs) a few blocks deep, and fixed so results do not depend on the GPU. 1024 measured +0.7%
// on the 130m training step against 512 (2048 and 4096 no better; docs/PERFORMANCE.md).
constexpr int64_t kMaxPartials = 1024;
constexpr int kSliceRows = 16;  // column_sum_kernel: threads summing slices of the partials of one column

int64_t partials(int64_t N) {
    return std::min(N, kMaxPartials);
}

bool all_aligned(std::initializer_list<const void*> ptrs) {
    return std::all_of(ptrs.begin(), ptrs.end(), [](const void* p) { return p == nullptr || aligned16(p); });
}

void check_shape(const char* kernel, int64_t N, int64_t D, int64_t G = 1) {
    MSLM_CHECK(N >= 0 && D >= 0, "CUDA kernel {}: negative shape ({}, {})", kernel, N, D);
    MSLM_CHECK(D <= (int64_t(1) << 30), "CUDA kernel {}: rows of {} elements are too long", kernel, D);
    MSLM_CHECK(G > 0 && D % G == 0, "CUDA kernel {}: {} channels do not split into {} equal groups", kernel, D,
               G);
}

// Dynamic shared memory above the default 48 KiB needs an opt-in per kernel.
template <typename T, typename Kernel>
void allow_shared(Kernel kernel_fn, size_t bytes, const char* kernel) {
    if (bytes <= 48 * 1024) return;
    int device = 0, limit = 0;
    check_cuda<T>(cudaGetDevice(&device), "cudaGetDevice", kernel);
    check_cuda<T>(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                  "cudaDeviceGetAttribute", kernel);
    MSLM_CHECK(bytes <= size_t(limit), "CUDA kernel {}: rows too long for the parameter gradients' {} bytes of "
               "shared memory (the GPU has {})", kernel, bytes, limit);
    check_cuda<T>(cudaFuncSetAttribute(kernel_fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
                  "cudaFuncSetAttribute", kernel);
}

template <int V, typename T>
__device__ __forceinline__ void load_f32(float (&dst)[V], const T* p) {
    const Pack<T, V> pack = load<V>(p);
#pragma unroll
    for (int e = 0; e < V; ++e) dst[e] = to_f32(pack.v[e]);
}

template <int V, typename T>
__device__ __forceinline__ void store_f32(T* p, const float (&src)[V]) {
    Pack<T, V> pack;
#pragma unroll
    for (int e = 0; e < V; ++e) pack.v[e] = from_f32<T>(src[e]);
    store<V>(p, pack);
}

// ---- RMSNorm, residual + RMSNorm and gated RMSNorm forward.
// The normalised value is g = x (plain), x·silu(z) (gated) or z + x rounded to T (residual: z is the
// incoming residual stream, res or another buffer; the sum is stored into res in the first pass and
// read back, by the same thread, in the second).

enum class RmsKind { kPlain, kGated, kResidual };

template <RmsKind K, int V, typename T>
__device__ __forceinline__ void rms_input(float (&g)[V], T* res, const T* x, const T* z, int64_t i) {
    load_f32<V>(g, x + i);
    if constexpr (K == RmsKind::kGated) {
        float zv[V];
        load_f32<V>(zv, z + i);
#pragma unroll
        for (int e = 0; e < V; ++e) g[e] *= silu_rounded<T>(zv[e]);
    } else if constexpr (K == RmsKind::kResidual) {
        Pack<T, V> r = load<V>(z + i);
#pragma unroll
        for (int e = 0; e < V; ++e) {
            r.v[e] = from_f32<T>(to_f32(r.v[e]) + g[e]);
            g[e] = to_f32(r.v[e]);
        }
        store<V>(res + i, r);
    }
}

template <RmsKind K, int V, typename T>
__global__ void rms_forward_kernel(T* out, float* rstd, T* res, const T* x, const T* z, int64_t ld_z,
                                   const T* w, int64_t N, int D, int G, float eps) {
    pdl_wait();  // launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    __shared__ float scratch[32];
    const int Dg = D / G, packs = Dg / V;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        // z's row n starts ld_z·n in: shifted so that the row-major index n·D + i reads it.
        const T* zn = K == RmsKind::kGated ? z + n * (ld_z - D) : z;
        for (int k = 0; k < G; ++k) {
            const int64_t row = n * D + int64_t(k) * Dg;
            if (packs <= int(blockDim.x)) {  // a pack a thread: its values stay in registers for pass two
                const int p = threadIdx.x;
                const bool on = p < packs;
                float g[V] = {};
                if (on) rms_input<K, V>(g, res, x, zn, row + int64_t(p) * V);
                float ss = 0.0f;
#pragma unroll
                for (int e = 0; e < V; ++e) ss += g[e] * g[e];
                const float r = 1.0f / sqrtf(block_sum(ss, scratch) / float(Dg) + eps);
                if (threadIdx.x == 0) rstd[n * G + k] = r;
                if (on) {
                    float wv[V];
                    load_f32<V>(wv, w + k * Dg + p * V);
#pragma unroll
                    for (int e = 0; e < V; ++e) g[e] = g[e] * r * wv[e];
                    store_f32<V>(out + row + int64_t(p) * V, g);
                }
                continue;
            }
            float ss = 0.0f;
            for (int p = threadIdx.x; p < packs; p += blockDim.x) {
                float g[V];
                rms_input<K, V>(g, res, x, zn, row + int64_t(p) * V);
#pragma unroll
                for (int e = 0; e < V; ++e) ss += g[e] * g[e];
            }
            const float r = 1.0f / sqrtf(block_sum(ss, scratch) / float(Dg) + eps);
            if (threadIdx.x == 0) rstd[n * G + k] = r;
            for (int p = threadIdx.x; p < packs; p += blockDim.x) {
                const int64_t i = row + int64_t(p) * V;
                float g[V], wv[V];
                if constexpr (K == RmsKind::kResidual) {
                    load_f32<V>(g, res + i);
                } else {
                    rms_input<K, V>(g, res, x, zn, i);
                }
                load_f32<V>(wv, w + k * Dg + p * V);
#pragma unroll
                for (int e = 0; e < V; ++e) g[e] = g[e] * r * wv[e];
                store_f32<V>(out + i, g);
            }
        }
    }
}

// ---- RMSNorm and gated RMSNorm backward. dw_partial (gridDim.x, D) or null.

// z and dz (gated) rows ld_z and ld_dz elements apart (D when dense). R rows at once (R ≤ 2): the
// block takes rows n, n + gridDim.x, … in that order as before, R of them an iteration, and where a
// pack a thread covers a group (the usual case) loads all R rows before their one block sum (a
// float2 for two, summed component by component in the same tree as one float): the same
// arithmetic in the same order, so the same bits, with R rows' loads in flight instead of one.
template <bool kGated, int V, int R, typename T>
__global__ void rms_backward_kernel(T* dx, T* dz, float* dw_partial, const T* dout, const T* x, const T* z,
                                    int64_t ld_z, int64_t ld_dz, const T* w, const float* rstd, int64_t N,
                                    int D, int G, bool overwrite) {
    static_assert(R == 1 || R == 2, "one or two rows an iteration");
    // (D): this block's Σ_n dout·ĝ, when dw_partial, column k·Dg + p·V + e at (k·V + e)·packs + p so
    // that a warp's threads (consecutive p) add into consecutive words: with acc in column order the
    // stride of V words made every access an 8-way bank conflict (bf16), and the L1 the kernel's
    // busiest unit (74%, docs/PERFORMANCE.md).
    extern __shared__ float acc[];
    __shared__ float scratch[32];
    __shared__ float2 scratch2[32];
    const int Dg = D / G, packs = Dg / V;
    const bool want_dw = dw_partial != nullptr, want_dxz = dx != nullptr || dz != nullptr;
    if (want_dw)
        for (int i = threadIdx.x; i < D; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    for (int64_t n0 = blockIdx.x; n0 < N; n0 += int64_t(R) * gridDim.x) {
        int64_t nr[R];
        bool valid[R];
#pragma unroll
        for (int m = 0; m < R; ++m) {
            nr[m] = n0 + int64_t(m) * gridDim.x;
            valid[m] = nr[m] < N;
        }
        // z's and dz's row n start ld·n in: shifted so that the row-major index n·D + i reads them.
        auto z_row = [&](int64_t n) { return kGated ? z + n * (ld_z - D) : z; };
        auto dz_row = [&](int64_t n) { return dz ? dz + n * (ld_dz - D) : dz; };
        for (int k = 0; k < G; ++k) {
            // Every multiply-add below is written out (fmaf, __fmul_rn where a product must round
            // before a sum): left to the compiler, the contraction into FMAs differed between the
            // one- and two-row instantiations, and with it the bits of dz.
            // Pass two for pack p of row `row` (z's and dz's rows zn, dzn), from its dout h, x, z
            // (gated) and weights: dw's share, dx and dz. sz: silu_rounded(z), the forward's gate
            // (kGated). dxv, dzv: the old dx and dz (zeros when overwritten), already loaded when
            // `loaded`, else loaded here.
            auto finish = [&](int64_t row, float r, const T* zn, T* dzn, int p, float(&h)[V],
                              const float(&xv)[V], const float(&zv)[V], const float(&wv)[V],
                              const float(&sz)[V], float c, float(&dxv)[V], float(&dzv)[V], bool loaded) {
                const int64_t i = row + int64_t(p) * V;
                if (want_dw) {  // column k·Dg + p·V + e of dw at acc[(k·V + e)·packs + p]
#pragma unroll
                    for (int e = 0; e < V; ++e) {
                        const float g = kGated ? xv[e] * sz[e] : xv[e];
                        acc[(k * V + e) * packs + p] = fmaf(h[e] * g, r, acc[(k * V + e) * packs + p]);
                    }
                }
                if (!want_dxz) return;
                float dg[V];
                if constexpr (kGated) {
#pragma unroll
                    for (int e = 0; e < V; ++e) {
                        // σ(z) for silu's derivative: fast for a bf16 result (H200: the 130m step's
                        // gated-norm backward 1.13 → 1.01 ms with silu(z) taken once, below).
                        const SigmoidPair sp = sigmoid_pair_rounded<T>(zv[e]);
                        const float silu_z = sz[e];
                        dg[e] = r * fmaf(h[e], wv[e], -(xv[e] * silu_z * c));
                        h[e] =
                            __fmul_rn(dg[e] * xv[e] * sp.s, fmaf(zv[e], sp.c, 1.0f));  // dz's term, reusing h
                        dg[e] = __fmul_rn(dg[e], silu_z);                              // dx's term
                    }
                    if (dzn) {  // (overwritten: added to zeros, the bits of a zeroed buffer's sum)
                        if (!overwrite && !loaded) load_f32<V>(dzv, dzn + i);
#pragma unroll
                        for (int e = 0; e < V; ++e) dzv[e] += h[e];
                        store_f32<V>(dzn + i, dzv);
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < V; ++e) dg[e] = __fmul_rn(r, fmaf(h[e], wv[e], -(xv[e] * c)));
                }
                if (dx) {
                    if (!overwrite && !loaded) load_f32<V>(dxv, dx + i);
#pragma unroll
                    for (int e = 0; e < V; ++e) dxv[e] += dg[e];
                    store_f32<V>(dx + i, dxv);
                }
            };
            if (packs <= int(blockDim.x)) {  // a pack a thread: its loads serve both passes
                const int p = threadIdx.x;
                const bool on = p < packs;
                float h[R][V] = {}, xv[R][V] = {}, zv[R][V] = {}, wv[V] = {}, sz[R][V] = {}, dxv[R][V] = {},
                      dzv[R][V] = {};
#pragma unroll
                for (int m = 0; m < R; ++m) {
                    if (!on || !valid[m]) continue;
                    const int64_t i = nr[m] * D + int64_t(k) * Dg + int64_t(p) * V;
                    load_f32<V>(h[m], dout + i);
                    load_f32<V>(xv[m], x + i);
                    if constexpr (kGated) load_f32<V>(zv[m], z_row(nr[m]) + i);
                    if (m == 0 && want_dxz) load_f32<V>(wv, w + k * Dg + p * V);
                    // The old gradients with the inputs, so that the row's one memory round trip
                    // comes before its block sum rather than a second one after it (H200: the 130m
                    // step's plain norm backward 1.219 → 1.111 ms).
                    if (!overwrite) {
                        if (dx) load_f32<V>(dxv[m], dx + i);
                        if (kGated && dz) load_f32<V>(dzv[m], dz_row(nr[m]) + i);
                    }
                }
                if constexpr (kGated) {
#pragma unroll
                    for (int m = 0; m < R; ++m)
#pragma unroll
                        for (int e = 0; e < V; ++e) sz[m][e] = silu_rounded<T>(zv[m][e]);
                }
                float r[R], c[R] = {};  // c: mean(h·ĝ) · rstd, folded as in the CPU reference
#pragma unroll
                for (int m = 0; m < R; ++m) r[m] = valid[m] ? rstd[nr[m] * G + k] : 0.0f;
                if (want_dxz) {
                    float sum[R] = {};
#pragma unroll
                    for (int m = 0; m < R; ++m)
#pragma unroll
                        for (int e = 0; e < V; ++e) {
                            const float g = kGated ? xv[m][e] * sz[m][e] : xv[m][e];
                            sum[m] = fmaf(h[m][e] * wv[e], g, sum[m]);
                        }
                    if constexpr (R == 1) {
                        c[0] = block_sum(sum[0], scratch) * r[0] * r[0] / float(Dg);
                    } else {
                        const float2 t = block_sum(make_float2(sum[0], sum[1]), scratch2);
                        c[0] = t.x * r[0] * r[0] / float(Dg);
                        c[1] = t.y * r[1] * r[1] / float(Dg);
                    }
                }
#pragma unroll
                for (int m = 0; m < R; ++m)
                    if (on && valid[m])
                        finish(nr[m] * D + int64_t(k) * Dg, r[m], z_row(nr[m]), dz_row(nr[m]), p, h[m], xv[m],
                               zv[m], wv, sz[m], c[m], dxv[m], dzv[m], true);
                continue;
            }
#pragma unroll
            for (int m = 0; m < R; ++m) {
                if (!valid[m]) continue;
                const int64_t row = nr[m] * D + int64_t(k) * Dg;
                const float r = rstd[nr[m] * G + k];
                const T* zn = z_row(nr[m]);
                T* dzn = dz_row(nr[m]);
                float c = 0.0f;  // mean(h·ĝ) · rstd, folded as in the CPU reference
                if (want_dxz) {
                    float sum = 0.0f;
                    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
                        const int64_t i = row + int64_t(p) * V;
                        float h[V], g[V], wv[V];
                        load_f32<V>(h, dout + i);
                        rms_input<kGated ? RmsKind::kGated : RmsKind::kPlain, V>(g, static_cast<T*>(nullptr),
                                                                                 x, zn, i);
                        load_f32<V>(wv, w + k * Dg + p * V);
#pragma unroll
                        for (int e = 0; e < V; ++e) sum = fmaf(h[e] * wv[e], g[e], sum);
                    }
                    c = block_sum(sum, scratch) * r * r / float(Dg);
                }
                for (int p = threadIdx.x; p < packs; p += blockDim.x) {
                    const int64_t i = row + int64_t(p) * V;
                    float h[V], xv[V], zv[V] = {}, wv[V] = {}, sz[V] = {};
                    load_f32<V>(h, dout + i);
                    load_f32<V>(xv, x + i);
                    if constexpr (kGated) {
                        load_f32<V>(zv, zn + i);
#pragma unroll
                        for (int e = 0; e < V; ++e) sz[e] = silu_rounded<T>(zv[e]);
                    }
                    if (want_dxz) load_f32<V>(wv, w + k * Dg + p * V);
                    float dxv[V] = {}, dzv[V] = {};
                    finish(row, r, zn, dzn, p, h, xv, zv, wv, sz, c, dxv, dzv, false);
                }
            }
        }
    }
    if (!want_dw) return;
    __syncthreads();
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const int k = i / Dg, p = (i - k * Dg) / V, e = i - k * Dg - p * V;
        dw_partial[int64_t(blockIdx.x) * D + i] = acc[(k * V + e) * packs + p];
    }
}

// ---- LayerNorm

template <int V, typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b,
                                         int64_t N, int D, float eps) {
    __shared__ float scratch[32];
    const int packs = D / V;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T* xr = x + n * D;
        float sum = 0.0f;
        for (int p = threadIdx.x; p < packs; p += blockDim.x) {
            float xv[V];
            load_f32<V>(xv, xr + p * V);
#pragma unroll
            for (int e = 0; e < V; ++e) sum += xv[e];
        }
        const float m = block_sum(sum, scratch) / float(D);
        // Two passes: the variance from centred values does not cancel catastrophically.
        float ss = 0.0f;
        for (int p = threadIdx.x; p < packs; p += blockDim.x) {
            float xv[V];
            load_f32<V>(xv, xr + p * V);
#pragma unroll
            for (int e = 0; e < V; ++e) ss += (xv[e] - m) * (xv[e] - m);
        }
        const float r = 1.0f / sqrtf(block_sum(ss, scratch) / float(D) + eps);
        if (threadIdx.x == 0) {
            mean[n] = m;
            rstd[n] = r;
        }
        for (int p = threadIdx.x; p < packs; p += blockDim.x) {
            float xv[V], wv[V], bv[V] = {};
            load_f32<V>(xv, xr + p * V);
            load_f32<V>(wv, w + p * V);
            if (b) load_f32<V>(bv, b + p * V);
#pragma unroll
            for (int e = 0; e < V; ++e) xv[e] = (xv[e] - m) * r * wv[e] + bv[e];
            store_f32<V>(out + n * D + p * V, xv);
        }
    }
}

// partial (2, gridDim.x, D): this block's Σ dout·x̂ then Σ dout; either half null when not wanted.
template <int V, typename T>
__global__ void layernorm_backward_kernel(T* dx, float* dw_partial, float* db_partial, const T* dout,
                                          const T* x, const T* w, const float* mean, const float* rstd,
                                          int64_t N, int D) {
    extern __shared__ float acc[];  // (2, D): Σ dout·x̂, Σ dout
    __shared__ float2 scratch[32];
    const int packs = D / V;
    const bool want_params = dw_partial != nullptr || db_partial != nullptr;
    if (want_params)
        for (int i = threadIdx.x; i < 2 * D; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T* xr = x + n * D;
        const T* gr = dout + n * D;
        const float m = mean[n], r = rstd[n];
        float mean_g = 0.0f, mean_gx = 0.0f;
        if (dx) {
            float2 sum = make_float2(0.0f, 0.0f);
            for (int p = threadIdx.x; p < packs; p += blockDim.x) {
                float h[V], xv[V], wv[V];
                load_f32<V>(h, gr + p * V);
                load_f32<V>(xv, xr + p * V);
                load_f32<V>(wv, w + p * V);
#pragma unroll
                for (int e = 0; e < V; ++e) {
                    sum.x += h[e] * wv[e];
                    sum.y += h[e] * wv[e] * (xv[e] - m);
                }
            }
            sum = block_sum(sum, scratch);
            mean_g = sum.x / float(D);
            mean_gx = sum.y * r / float(D);
        }
        for (int p = threadIdx.x; p < packs; p += blockDim.x) {
            float h[V], xv[V];
            load_f32<V>(h, gr + p * V);
            load_f32<V>(xv, xr + p * V);
            if (want_params) {
#pragma unroll
                for (int e = 0; e < V; ++e) {  // column p·V + e at e·packs + p, as in the RMS kernel
                    acc[e * packs + p] += h[e] * (xv[e] - m) * r;
                    acc[D + e * packs + p] += h[e];
                }
            }
            if (!dx) continue;
            float wv[V], dxv[V];
            load_f32<V>(wv, w + p * V);
            load_f32<V>(dxv, dx + n * D + p * V);
#pragma unroll
            for (int e = 0; e < V; ++e) dxv[e] += r * (h[e] * wv[e] - mean_g - (xv[e] - m) * r * mean_gx);
            store_f32<V>(dx + n * D + p * V, dxv);
        }
    }
    if (!want_params) return;
    __syncthreads();
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const int p = i / V, at = (i - p * V) * packs + p;
        if (dw_partial) dw_partial[int64_t(blockIdx.x) * D + i] = acc[at];
        if (db_partial) db_partial[int64_t(blockIdx.x) * D + i] = acc[D + at];
    }
}

// ---- dst (D) += Σ_p partial (P, D) over p, in a fixed order: thread (c, s) of a (32, kSliceRows)
// block sums rows p ≡ s (mod kSliceRows) in increasing p, then thread (c, 0) adds the slices in
// increasing s.

template <typename T>
__global__ void column_sum_kernel(T* dst, const float* partial, int64_t P, int D) {
    __shared__ float slice[kSliceRows][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (j < D)
        for (int64_t p = threadIdx.y; p < P; p += kSliceRows) s += partial[p * D + j];
    slice[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || j >= D) return;
    float total = 0.0f;
#pragma unroll
    for (int k = 0; k < kSliceRows; ++k) total += slice[k][threadIdx.x];
    dst[j] = from_f32<T>(to_f32(dst[j]) + total);
}

template <typename T>
void launch_column_sum(T* dst, const float* partial, int64_t P, int64_t D, cudaStream_t s) {
    using Dev = device_t<T>;
    const unsigned blocks = unsigned((D + 31) / 32);
    column_sum_kernel<<<blocks, dim3(32, kSliceRows), 0, s>>>(reinterpret_cast<Dev*>(dst), partial, P, int(D));
    check_launch<T>("norm column_sum");
}

template <typename T>
T* dev(void* p) {
    return static_cast<T*>(p);
}

template <RmsKind K, typename T>
void launch_rms_forward(const char* kernel, T* out, float* rstd, T* res, const T* x, const T* z, int64_t ld_z,
                        const T* w, int64_t N, int64_t D, int64_t G, float eps, void* stream) {
    check_shape(kernel, N, D, G);
    MSLM_CHECK(ld_z >= D, "CUDA kernel {}: z's row stride {} < D = {}", kernel, ld_z, D);
    if (N == 0 || D == 0) return;
    using Dev = device_t<T>;
    constexpr int V = kVec<Dev>;
    const int64_t Dg = D / G;
    const bool vec = Dg % V == 0 && ld_z % V == 0 && all_aligned({out, res, x, z, w});
    const int threads = row_threads(Dg, vec ? V : 1);
    auto s = static_cast<cudaStream_t>(stream);
    auto o = reinterpret_cast<Dev*>(out);
    auto r = reinterpret_cast<Dev*>(res);
    auto xd = reinterpret_cast<const Dev*>(x), zd = reinterpret_cast<const Dev*>(z),
         wd = reinterpret_cast<const Dev*>(w);
    const unsigned grid = row_grid<T>(N, threads, kernel);
    check_cuda<T>(launch_ops_pdl(vec ? rms_forward_kernel<K, V, Dev> : rms_forward_kernel<K, 1, Dev>, grid,
                                 threads, 0, s, o, rstd, r, xd, zd, ld_z, wd, N, int(D), int(G), eps),
                  "launch", kernel);
}

template <bool kGated, typename T>
void launch_rms_backward(const char* kernel, T* dx, T* dz, int64_t ld_dz, T* dw, void* workspace,
                         const T* dout, const T* x, const T* z, int64_t ld_z, const T* w, const float* rstd,
                         int64_t N, int64_t D, int64_t G, void* stream, GradStore store = GradStore::Add) {
    const bool overwrite = store == GradStore::Overwrite;
    check_shape(kernel, N, D, G);
    MSLM_CHECK(ld_z >= D && ld_dz >= D, "CUDA kernel {}: z's row stride {} or dz's {} < D = {}", kernel, ld_z,
               ld_dz, D);
    if (N == 0 || D == 0 || (!dx && !dz && !dw)) return;
    MSLM_CHECK(!dw || workspace, "CUDA kernel {}: dw needs a workspace", kernel);
    using Dev = device_t<T>;
    constexpr int V = kVec<Dev>;
    const int64_t Dg = D / G, P = partials(N);
    const bool vec = Dg % V == 0 && ld_z % V == 0 && ld_dz % V == 0 && all_aligned({dx, dz, dout, x, z, w});
    const int threads = row_threads(Dg, vec ? V : 1);
    const size_t shared = dw ? size_t(D) * sizeof(float) : 0;
    float* partial = dw ? dev<float>(workspace) : nullptr;
    auto s = static_cast<cudaStream_t>(stream);
    auto dxd = reinterpret_cast<Dev*>(dx), dzd = reinterpret_cast<Dev*>(dz);
    auto g = reinterpret_cast<const Dev*>(dout), xd = reinterpret_cast<const Dev*>(x),
         zd = reinterpret_cast<const Dev*>(z), wd = reinterpret_cast<const Dev*>(w);
    // Two rows an iteration where one block an SM is all the one-row kernel's registers allow (wide
    // rows: the 1b preset's gated norm over 4096 channels, 512 threads a block): the block then has
    // two rows' loads in flight instead of one (H200: 8.25 → 5.68 ms a 1b step). Elsewhere one row,
    // whose smaller register count keeps more blocks resident (two rows measured 1.10 → 1.36 ms on
    // the 130m step's gated norm). MSLM_NORM_BWD_ROWS=1 or 2 forces either (the same bits).
    bool two = false;
    if (vec) {
        allow_shared<T>(rms_backward_kernel<kGated, V, 1, Dev>, shared, kernel);
        int blocks = 0;
        check_cuda<T>(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                          &blocks, rms_backward_kernel<kGated, V, 1, Dev>, threads, shared),
                      "cudaOccupancyMaxActiveBlocksPerMultiprocessor", kernel);
        two = blocks <= 1;
        if (const char* env = std::getenv("MSLM_NORM_BWD_ROWS")) {
            const std::string_view v(env);
            MSLM_CHECK(v == "1" || v == "2", "MSLM_NORM_BWD_ROWS={}: expected 1 or 2", v);
            two = v == "2";
        }
    }
    auto go = [&](auto kernel_fn) {
        allow_shared<T>(kernel_fn, shared, kernel);
        kernel_fn<<<unsigned(P), threads, shared, s>>>(dxd, dzd, partial, g, xd, zd, ld_z, ld_dz, wd, rstd, N,
                                                       int(D), int(G), overwrite);
    };
    if (vec && two)
        go(rms_backward_kernel<kGated, V, 2, Dev>);
    else if (vec)
        go(rms_backward_kernel<kGated, V, 1, Dev>);
    else
        go(rms_backward_kernel<kGated, 1, 1, Dev>);
    check_launch<T>(kernel);
    if (dw) launch_column_sum(dw, partial, P, D, s);
}

}  // namespace

size_t norm_backward_workspace_bytes(int64_t N, int64_t D) {
    MSLM_CHECK(N >= 0 && D >= 0, "norm_backward_workspace_bytes: negative shape ({}, {})", N, D);
    return size_t(2 * partials(N) * D) * sizeof(float);  // LayerNorm's dw and db partials
}

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t D, float eps,
                     void* stream) {
    launch_rms_forward<RmsKind::kPlain>("rmsnorm_forward", out, rstd, static_cast<T*>(nullptr), x,
                                        static_cast<const T*>(nullptr), D, w, N, D, 1, eps, stream);
}

template <typename T>
void residual_rmsnorm_forward(T* out, float* rstd, T* res, const T* x, const T* w, int64_t N, int64_t D,
                              float eps, void* stream) {
    residual_rmsnorm_forward(out, rstd, res, res, x, w, N, D, eps, stream);
}

template <typename T>
void residual_rmsnorm_forward(T* out, float* rstd, T* res, const T* res_in, const T* x, const T* w, int64_t N,
                              int64_t D, float eps, void* stream) {
    launch_rms_forward<RmsKind::kResidual>("residual_rmsnorm_forward", out, rstd, res, x, res_in, D, w, N, D,
                                           1, eps, stream);
}

template <typename T>
void gated_rmsnorm_forward(T* out, float* rstd, const T* x, const T* z, const T* w, int64_t N, int64_t D,
                           int64_t G, float eps, void* stream) {
    launch_rms_forward<RmsKind::kGated>("gated_rmsnorm_forward", out, rstd, static_cast<T*>(nullptr), x, z, D,
                                        w, N, D, G, eps, stream);
}

template <typename T>
void gated_rmsnorm_forward_strided_z(T* out, float* rstd, const T* x, const T* z, int64_t ld_z, const T* w,
                                     int64_t N, int64_t D, int64_t G, float eps, void* stream) {
    launch_rms_forward<RmsKind::kGated>("gated_rmsnorm_forward", out, rstd, static_cast<T*>(nullptr), x, z,
                                        ld_z, w, N, D, G, eps, stream);
}

template <typename T>
void rmsnorm_backward(T* dx, T* dw, void* workspace, const T* dout, const T* x, const T* w, const float* rstd,
                      int64_t N, int64_t D, void* stream) {
    launch_rms_backward<false>("rmsnorm_backward", dx, static_cast<T*>(nullptr), D, dw, workspace, dout, x,
                               static_cast<const T*>(nullptr), D, w, rstd, N, D, 1, stream);
}

template <typename T>
void gated_rmsnorm_backward(T* dx, T* dz, T* dw, void* workspace, const T* dout, const T* x, const T* z,
                            const T* w, const float* rstd, int64_t N, int64_t D, int64_t G, void* stream,
                            GradStore store) {
    launch_rms_backward<true>("gated_rmsnorm_backward", dx, dz, D, dw, workspace, dout, x, z, D, w, rstd, N,
                              D, G, stream, store);
}

template <typename T>
void gated_rmsnorm_backward_strided_z(T* dx, T* dz, int64_t ld_dz, T* dw, void* workspace, const T* dout,
                                      const T* x, const T* z, int64_t ld_z, const T* w, const float* rstd,
                                      int64_t N, int64_t D, int64_t G, void* stream, GradStore store) {
    launch_rms_backward<true>("gated_rmsnorm_backward", dx, dz, ld_dz, dw, workspace, dout, x, z, ld_z, w,
                              rstd, N, D, G, stream, store);
}

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t N,
                       int64_t D, float eps, void* stream) {
    const char* kernel = "layernorm_forward";
    check_shape(kernel, N, D);
    if (N == 0 || D == 0) return;
    using Dev = device_t<T>;
    constexpr int V = kVec<Dev>;
    const bool vec = D % V == 0 && all_aligned({out, x, w, b});
    const int threads = row_threads(D, vec ? V : 1);
    auto s = static_cast<cudaStream_t>(stream);
    auto o = reinterpret_cast<Dev*>(out);
    auto xd = reinterpret_cast<const Dev*>(x), wd = reinterpret_cast<const Dev*>(w),
         bd = reinterpret_cast<const Dev*>(b);
    const unsigned grid = row_grid<T>(N, threads, kernel);
    if (vec) {
        layernorm_forward_kernel<V><<<grid, threads, 0, s>>>(o, mean, rstd, xd, wd, bd, N, int(D), eps);
    } else {
        layernorm_forward_kernel<1><<<grid, threads, 0, s>>>(o, mean, rstd, xd, wd, bd, N, int(D), eps);
    }
    check_launch<T>(kernel);
}

template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, void* workspace, const T* dout, const T* x, const T* w,
                        const float* mean, const float* rstd, int64_t N, int64_t D, void* stream) {
    const char* kernel = "layernorm_backward";
    check_shape(kernel, N, D);
    if (N == 0 || D == 0 || (!dx && !dw && !db)) return;
    MSLM_CHECK((!dw && !db) || workspace, "CUDA kernel {}: dw and db need a workspace", kernel);
    using Dev = device_t<T>;
    constexpr int V = kVec<Dev>;
    const int64_t P = partials(N);
    const bool vec = D % V == 0 && all_aligned({dx, dout, x, w});
    const int threads = row_threads(D, vec ? V : 1);
    const size_t shared = (dw || db) ? size_t(2 * D) * sizeof(float) : 0;
    float* dw_partial = dw ? dev<float>(workspace) : nullptr;
    float* db_partial = db ? dev<float>(workspace) + P * D : nullptr;
    auto s = static_cast<cudaStream_t>(stream);
    auto dxd = reinterpret_cast<Dev*>(dx);
    auto g = reinterpret_cast<const Dev*>(dout), xd = reinterpret_cast<const Dev*>(x),
         wd = reinterpret_cast<const Dev*>(w);
    if (vec) {
        allow_shared<T>(layernorm_backward_kernel<V, Dev>, shared, kernel);
        layernorm_backward_kernel<V>
            <<<unsigned(P), threads, shared, s>>>(dxd, dw_partial, db_partial, g, xd, wd, mean, rstd, N, int(D));
    } else {
        allow_shared<T>(layernorm_backward_kernel<1, Dev>, shared, kernel);
        layernorm_backward_kernel<1>
            <<<unsigned(P), threads, shared, s>>>(dxd, dw_partial, db_partial, g, xd, wd, mean, rstd, N, int(D));
    }
    check_launch<T>(kernel);
    if (dw) launch_column_sum(dw, dw_partial, P, D, s);
    if (db) launch_column_sum(db, db_partial, P, D, s);
}

#define MSLM_INSTANTIATE(T)                                                                                \
    template void rmsnorm_forward<T>(T*, float*, const T*, const T*, int64_t, int64_t, float, void*);      \
    template void residual_rmsnorm_forward<T>(T*, float*, T*, const T*, const T*, int64_t, int64_t, float, \
                                              void*);                                                      \
    template void residual_rmsnorm_forward<T>(T*, float*, T*, const T*, const T*, const T*, int64_t,       \
                                              int64_t, float, void*);                                      \
    template void rmsnorm_backward<T>(T*, T*, void*, const T*, const T*, const T*, const float*, int64_t,  \
                                      int64_t, void*);                                                     \
    template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*, int64_t, int64_t, \
                                       float, void*);                                                      \
    template void layernorm_backward<T>(T*, T*, T*, void*, const T*, const T*, const T*, const float*,     \
                                        const float*, int64_t, int64_t, void*);                            \
    template void gated_rmsnorm_forward<T>(T*, float*, const T*, const T*, const T*, int64_t, int64_t,     \
                                           int64_t, float, void*);                                         \
    template void gated_rmsnorm_forward_strided_z<T>(T*, float*, const T*, const T*, int64_t, const T*,    \
                                                     int64_t, int64_t, int64_t, float, void*);             \
    template void gated_rmsnorm_backward<T>(T*, T*, T*, void*, const T*, const T*, const T*, const T*,     \
                                            const float*, int64_t, int64_t, int64_t, void*, GradStore);    \
    template void gated_rmsnorm_backward_strided_z<T>(T*, T*, int64_t, T*, void*, const T*, const T*,      \
                                                      const T*, int64_t, const T*, const float*, int64_t,  \
                                                      int64_t, int64_t, void*, GradStore);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
