// The kernels CudaCausalLM (model/cuda_inference.h) needs of its own: RoPE fused with appending one
// token's key and value rows to each slot's KV ring buffer, gathering per-slot state blocks by index (beam search's
// reorder), and the decode step's fused matrix-vector products (decode_gemv, cuda_decoder_kernels.h).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include "core/error.h"
#include "model/cuda_bf16_bits.cuh"
#include "model/cuda_decoder_kernels.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/reduce.cuh"

namespace mslm::cuda_decoder_detail {

namespace {

using ops::cuda::detail::silu;


using ops::cuda::detail::warp_sum;  // reduce.cuh


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
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < DL; ++e) s_acc[warp][lane + 32 * e] = acc[e];
    __syncthreads();
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kSplitWarps; ++w) mx = fmaxf(mx, s_m[w]);
    float* out = part + ((i * Hq + h) * S + split) * int64_t(Dh + 2);
    if (threadIdx.x == 0) {
        float total = 0.0f;
        if (mx != -INFINITY)
            for (int w = 0; w < kSplitWarps; ++w)
                total += s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - mx) * s_l[w];
        out[0] = mx;  // −∞: this split saw no key
        out[1] = total;
    }
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
        float o = 0.0f;
        if (mx != -INFINITY)
#pragma unroll
            for (int w = 0; w < kSplitWarps; ++w)
                o += s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - mx) * s_acc[w][d];
        out[2 + d] = o;
    }
}

// out (k, Hq, Dh) = Σ_split e^(m_s − M)·acc_s / Σ_split e^(m_s − M)·l_s. Block (h, i), Dh threads.
__global__ void attention_combine_kernel(uint16_t* __restrict__ out, const float* __restrict__ part, int Hq,
                                         int Dh, int S) {
    pdl_trigger();
    pdl_wait();
    const int h = blockIdx.x;
    const int64_t i = blockIdx.y;
    const float* pp = part + (i * Hq + h) * int64_t(S) * (Dh + 2);
    float mx = -INFINITY;
    for (int s = 0; s < S; ++s) mx = fmaxf(mx, pp[s * (Dh + 2)]);  // split 0 holds the first key: finite
    float total = 0.0f;
    for (int s = 0; s < S; ++s) {
        const float ms = pp[s * (Dh + 2)];
        if (ms != -INFINITY) total += expf(ms - mx) * pp[s * (Dh + 2) + 1];
    }
    const float inv = 1.0f / total;
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < S; ++s) {
            const float ms = pp[s * (Dh + 2)];
            if (ms != -INFINITY) o += expf(ms - mx) * pp[s * (Dh + 2) + 2 + d];
        }
        out[(i * Hq + h) * Dh + d] = to_bf(o * inv);
    }
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

void check(const char* kernel) {
    const cudaError_t err = cudaGetLastError();
    MSLM_CHECK(err == cudaSuccess, "CUDA kernel {}: {}", kernel, cudaGetErrorString(err));
}

}  // namespace

namespace {

// Launches kernel with programmatic dependent launch unless MSLM_DECODE_PDL=0 (read at each launch:
// a graph replays what was captured).
bool pdl_enabled() {
    const char* env = std::getenv("MSLM_DECODE_PDL");
    return !(env && std::string(env) == "0");
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, void* stream, const char* name,
            Args&&... args) {
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = static_cast<cudaStream_t>(stream);
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
    config.attrs = &attribute;
    config.numAttrs = 1;
    const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
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
    return size_t(k * Hq * attention_split_count(cache_len, window) * (Dh + 2));
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

void gather_blocks(void* dst, const void* src, const int64_t* idx, int64_t n, size_t block_bytes, void* stream) {
    if (n <= 0 || block_bytes == 0) return;
    MSLM_CHECK(block_bytes % 2 == 0 && n <= 65535, "gather_blocks: {} blocks of {} bytes", n, block_bytes);
    const auto words = static_cast<int64_t>(block_bytes / 2);
    const auto x = unsigned(std::min<int64_t>((words + 255) / 256, 1024));
    gather_blocks_kernel<<<dim3(x, unsigned(n)), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), idx, words);
    check("gather_blocks");
}

// ---- decode_gemv

namespace {

constexpr int kGemvWarps = 8;  // warps per block
constexpr int kGemvUnroll = 4;  // 16-byte weight loads in flight per lane

// This lane's first chunk of a weight row: the 16-byte loads at i = lane·8 + u·256.
__device__ __forceinline__ void load_chunk(uint4 (&w)[kGemvUnroll], const uint16_t* __restrict__ wrow, int64_t i0,
                                           int64_t I) {
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
        const int64_t i = i0 + u * 256;
        w[u] = i < I ? __ldg(reinterpret_cast<const uint4*>(wrow + i)) : make_uint4(0, 0, 0, 0);
    }
}

// acc[r] += Σ_i W[row, i] · xs[r, i] over this lane's share of the row (8 values per 16-byte load);
// `first` holds the lane's first chunk when use_first (loaded before the prologue, to overlap).
__device__ __forceinline__ void dot_row(float (&acc)[kDecodeGemvMaxRows], const uint16_t* __restrict__ wrow,
                                        const uint16_t* xs, int64_t I, int k, int lane,
                                        const uint4 (&first)[kGemvUnroll], bool use_first) {
    const int64_t step = 32 * 8;
    for (int64_t i0 = int64_t(lane) * 8; i0 < I; i0 += step * kGemvUnroll) {
        uint4 w[kGemvUnroll];
        if (use_first && i0 == int64_t(lane) * 8) {
#pragma unroll
            for (int u = 0; u < kGemvUnroll; ++u) w[u] = first[u];
        } else {
            load_chunk(w, wrow, i0, I);
        }
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u) {
            const int64_t i = i0 + u * step;
            if (i >= I) break;
            const uint32_t wv[4] = {w[u].x, w[u].y, w[u].z, w[u].w};
            float wf[8];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                wf[2 * j] = __uint_as_float(wv[j] << 16);
                wf[2 * j + 1] = __uint_as_float(wv[j] & 0xffff0000u);
            }
#pragma unroll
            for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
                if (r >= k) break;
                const uint4 xv = *reinterpret_cast<const uint4*>(xs + r * I + i);
                const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    acc[r] = fmaf(wf[2 * j], __uint_as_float(xw[j] << 16), acc[r]);
                    acc[r] = fmaf(wf[2 * j + 1], __uint_as_float(xw[j] & 0xffff0000u), acc[r]);
                }
            }
        }
    }
}

// Σ over the block of v[r] for the rows r < k: warp sums, then the warps' partials through shared
// memory. Every thread gets the totals. (Loops unrolled over the maximum so v stays in registers.)
__device__ __forceinline__ void block_sums(float (&v)[kDecodeGemvMaxRows], int k, float* red) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
        if (r >= k) break;
        const float w = warp_sum(v[r]);
        if (lane == 0) red[r * kGemvWarps + warp] = w;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
        if (r >= k) break;
        float t = 0;
#pragma unroll
        for (int q = 0; q < kGemvWarps; ++q) t += red[r * kGemvWarps + q];
        v[r] = t;
    }
    __syncthreads();
}

// Copies rows (rows, I) of src (row stride ld) into dst (rows, I) in shared memory, every load
// issued before any is waited on: 16-byte loads when src and its rows are 16-byte aligned (I is a
// multiple of 8 here), else 2-byte ones.
__device__ __forceinline__ void stage_rows(uint16_t* dst, const uint16_t* __restrict__ src, int64_t ld, int rows,
                                           int64_t I) {
    constexpr int threads = kGemvWarps * 32;
    if ((reinterpret_cast<uintptr_t>(src) | uintptr_t(ld * 2)) % 16 == 0) {
        const int64_t packs = I / 8;
#pragma unroll
        for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
            if (r >= rows) break;
            for (int64_t c = threadIdx.x; c < packs; c += threads)
                *reinterpret_cast<uint4*>(dst + r * I + c * 8) = __ldg(reinterpret_cast<const uint4*>(src + r * ld + c * 8));
        }
    } else {
#pragma unroll
        for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
            if (r >= rows) break;
#pragma unroll 4
            for (int64_t i = threadIdx.x; i < I; i += threads) dst[r * I + i] = src[r * ld + i];
        }
    }
}

__global__ void __launch_bounds__(kGemvWarps * 32) decode_gemv_kernel(DecodeGemv a) {
    // Shared: xs (k, I) the (normalised) input rows; zs (k, I) the gate (gated norm); ws, bs (I) the
    // norm's weight and bias — all bf16, all staged before the prologue computes anything.
    extern __shared__ __align__(16) uint16_t xs[];
    __shared__ float red[kDecodeGemvMaxRows * kGemvWarps];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k = int(a.k);
    const int64_t I = a.I;
    constexpr int threads = kGemvWarps * 32;
    uint16_t* zs = xs + k * I;
    uint16_t* ws = zs + (a.norm == DecodeNorm::Gated ? k * I : 0);
    uint16_t* bs = ws + I;
    // The first weight row's first chunk, in flight while the prologue runs.
    const int64_t o0 = int64_t(blockIdx.x) * kGemvWarps + warp;
    uint4 first[kGemvUnroll], first2[kGemvUnroll];
    pdl_trigger();
    if (o0 < a.O) {
        load_chunk(first, a.W + o0 * I, int64_t(lane) * 8, I);
        if (a.epi == DecodeEpilogue::SwiGLU) load_chunk(first2, a.W + (a.O + o0) * I, int64_t(lane) * 8, I);
    }
    pdl_wait();  // the inputs are the previous kernels' outputs
    stage_rows(xs, a.x, a.ld_x, k, I);
    if (a.norm == DecodeNorm::Gated) stage_rows(zs, a.z, a.ld_z, k, I);
    if (a.norm != DecodeNorm::None) stage_rows(ws, a.norm_w, I, 1, I);
    if (a.norm == DecodeNorm::Layer && a.norm_b) stage_rows(bs, a.norm_b, I, 1, I);
    __syncthreads();
    // Prologue: normalised as the unfused path's norm kernel would store them; every thread handles
    // the columns tid, tid + 256, ... of every row, statistics by block sums.
    if (a.norm == DecodeNorm::RMS || a.norm == DecodeNorm::Layer) {
        float mean[kDecodeGemvMaxRows] = {}, ss[kDecodeGemvMaxRows] = {};
        if (a.norm == DecodeNorm::Layer) {
#pragma unroll
            for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
                if (r >= k) break;
                for (int64_t i = threadIdx.x; i < I; i += threads) mean[r] += bf(xs[r * I + i]);
            }
            block_sums(mean, k, red);
#pragma unroll
            for (int r = 0; r < kDecodeGemvMaxRows; ++r) mean[r] /= float(I);
        }
#pragma unroll
        for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
            if (r >= k) break;
            for (int64_t i = threadIdx.x; i < I; i += threads) {
                const float d = bf(xs[r * I + i]) - mean[r];
                ss[r] += d * d;
            }
        }
        block_sums(ss, k, red);
        const bool bias = a.norm == DecodeNorm::Layer && a.norm_b;
#pragma unroll
        for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
            if (r >= k) break;
            const float rstd = rsqrtf(ss[r] / float(I) + a.eps);
            for (int64_t i = threadIdx.x; i < I; i += threads) {
                float v = (bf(xs[r * I + i]) - mean[r]) * rstd * bf(ws[i]);
                if (bias) v += bf(bs[i]);
                xs[r * I + i] = to_bf(v);
            }
        }
    } else if (a.norm == DecodeNorm::Gated) {  // g = x · silu(z), RMS over each of `groups` groups
        const int64_t width = I / a.groups;
        for (int64_t g0 = 0; g0 < I; g0 += width) {  // one group at a time
            float ss[kDecodeGemvMaxRows] = {};
#pragma unroll
            for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
                if (r >= k) break;
                for (int64_t i = g0 + threadIdx.x; i < g0 + width; i += threads) {
                    const float v = bf(xs[r * I + i]) * silu(bf(zs[r * I + i]));
                    ss[r] += v * v;
                }
            }
            block_sums(ss, k, red);
#pragma unroll
            for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
                if (r >= k) break;
                const float rstd = rsqrtf(ss[r] / float(width) + a.eps);
                for (int64_t i = g0 + threadIdx.x; i < g0 + width; i += threads) {
                    const float v = bf(xs[r * I + i]) * silu(bf(zs[r * I + i]));
                    xs[r * I + i] = to_bf(v * rstd * bf(ws[i]));
                }
            }
        }
    }
    __syncthreads();
    if (a.x_out && blockIdx.x == 0)  // the normalised rows, for the caller (final hidden states)
        for (int64_t e = threadIdx.x; e < a.k * I; e += blockDim.x) a.x_out[e] = xs[e];

    for (int64_t o = o0; o < a.O; o += int64_t(gridDim.x) * kGemvWarps) {
        float acc[kDecodeGemvMaxRows] = {}, acc2[kDecodeGemvMaxRows] = {};
        dot_row(acc, a.W + o * I, xs, I, k, lane, first, o == o0);
        if (a.epi == DecodeEpilogue::SwiGLU) dot_row(acc2, a.W + (a.O + o) * I, xs, I, k, lane, first2, o == o0);
#pragma unroll
        for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
            if (r >= k) break;
            acc[r] = warp_sum(acc[r]);
            if (a.epi == DecodeEpilogue::SwiGLU) acc2[r] = warp_sum(acc2[r]);
        }
        if (lane >= k) continue;
        // Lane r writes row r's output (registers indexed by a runtime lane: select by unrolled loop).
        float v = 0, v2 = 0;
#pragma unroll
        for (int r = 0; r < kDecodeGemvMaxRows; ++r)
            if (r == lane) {
                v = acc[r];
                v2 = acc2[r];
            }
        const int64_t r = lane;
        switch (a.epi) {
            case DecodeEpilogue::Store:
                a.out[r * a.ld_out + o] = to_bf(a.bias ? v + bf(a.bias[o]) : v);
                break;
            case DecodeEpilogue::Residual: {  // out = round(out + round(v + b)), the unfused axpy
                const float t = round_bf(a.bias ? v + bf(a.bias[o]) : v);
                uint16_t* p = a.out + r * a.ld_out + o;
                *p = to_bf(bf(*p) + t);
                break;
            }
            case DecodeEpilogue::SwiGLU: {
                const float g = round_bf(a.bias ? v + bf(a.bias[o]) : v);
                const float u = round_bf(a.bias ? v2 + bf(a.bias[a.O + o]) : v2);
                a.out[r * a.ld_out + o] = to_bf(silu(g) * u);
                break;
            }
            case DecodeEpilogue::F32:
                a.out32[r * a.ld_out + o] = a.bias ? v + bf(a.bias[o]) : v;
                break;
        }
    }
}

}  // namespace

size_t decode_gemv_smem(const DecodeGemv& a) {
    const int64_t rows = a.k * (a.norm == DecodeNorm::Gated ? 2 : 1) + (a.norm == DecodeNorm::None ? 0 : 2);
    return size_t(rows * a.I) * sizeof(uint16_t);
}

bool decode_gemv_supported(const DecodeGemv& a) {
    auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const int64_t w_rows = a.epi == DecodeEpilogue::SwiGLU ? 2 * a.O : a.O;
    return a.k >= 1 && a.k <= kDecodeGemvMaxRows && a.I % 8 == 0 && a.I > 0 && w_rows > 0 && aligned16(a.W) &&
           (a.norm != DecodeNorm::Gated || (a.groups > 0 && a.I % a.groups == 0)) &&
           decode_gemv_smem(a) <= kDecodeGemvMaxSmem;
}

void decode_gemv(const DecodeGemv& a, void* stream) {
    MSLM_CHECK(decode_gemv_supported(a), "decode_gemv: unsupported shape k={} I={} O={}", a.k, a.I, a.O);
    static int configured_device = -1;
    int device = 0;
    cudaGetDevice(&device);
    if (configured_device != device) {
        const cudaError_t err = cudaFuncSetAttribute(decode_gemv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     int(kDecodeGemvMaxSmem));
        MSLM_CHECK(err == cudaSuccess, "decode_gemv: cudaFuncSetAttribute: {}", cudaGetErrorString(err));
        configured_device = device;
    }
    int sms = 0, resident = 0;
    const size_t smem = decode_gemv_smem(a);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, decode_gemv_kernel, kGemvWarps * 32, smem);
    // One wave: every block pays the prologue once, then strides over the rows.
    const int64_t blocks =
        std::min<int64_t>((a.O + kGemvWarps - 1) / kGemvWarps, int64_t(sms) * std::max(resident, 1));
    launch(decode_gemv_kernel, dim3(unsigned(blocks)), dim3(kGemvWarps * 32), smem, stream, "decode_gemv", a);
}

}  // namespace mslm::cuda_decoder_detail
