// The kernels CudaCausalLM (model/cuda_inference.h) needs of its own: appending one token's key and
// value rows to each slot's KV ring buffer, gathering per-slot state blocks by index (beam search's
// reorder), and the decode step's fused matrix-vector products (decode_gemv, cuda_decoder_kernels.h).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "model/cuda_decoder_kernels.h"
#include "ops/cuda/common.cuh"

namespace mslm::cuda_decoder_detail {

namespace {

// Row i of k_src / v_src (width values, row strides ld) goes to row pos[i] % L of slot slots[i] of
// k_cache / v_cache (S, L, width). One block per row.
__global__ void kv_append_kernel(uint16_t* __restrict__ k_cache, uint16_t* __restrict__ v_cache,
                                 const uint16_t* __restrict__ k_src, const uint16_t* __restrict__ v_src,
                                 int64_t ld, const int64_t* __restrict__ slots, const int64_t* __restrict__ pos,
                                 int64_t L, int64_t width) {
    const int64_t i = blockIdx.x;
    const int64_t dst = (slots[i] * L + pos[i] % L) * width;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
        k_cache[dst + c] = k_src[i * ld + c];
        v_cache[dst + c] = v_src[i * ld + c];
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

void kv_append(uint16_t* k_cache, uint16_t* v_cache, const uint16_t* k_src, const uint16_t* v_src, int64_t ld,
               const int64_t* slots, const int64_t* pos, int64_t k, int64_t L, int64_t width, void* stream) {
    if (k <= 0 || width <= 0) return;
    MSLM_CHECK(k <= 2147483647, "kv_append: {} rows", k);
    kv_append_kernel<<<unsigned(k), 128, 0, static_cast<cudaStream_t>(stream)>>>(k_cache, v_cache, k_src, v_src, ld,
                                                                                 slots, pos, L, width);
    check("kv_append");
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

using ops::cuda::detail::silu;

__device__ __forceinline__ float bf(uint16_t v) {
    return __uint_as_float(uint32_t(v) << 16);
}
__device__ __forceinline__ uint16_t to_bf(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
__device__ __forceinline__ float round_bf(float v) {
    return bf(to_bf(v));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

constexpr int kGemvWarps = 8;  // warps per block
constexpr int kGemvUnroll = 4;  // 16-byte weight loads in flight per lane

// acc[r] += Σ_i W[row, i] · xs[r, i] over this lane's share of the row (8 values per 16-byte load).
__device__ __forceinline__ void dot_row(float (&acc)[kDecodeGemvMaxRows], const uint16_t* __restrict__ wrow,
                                        const uint16_t* xs, int64_t I, int k, int lane) {
    const int64_t step = 32 * 8;
    for (int64_t i0 = int64_t(lane) * 8; i0 < I; i0 += step * kGemvUnroll) {
        uint4 w[kGemvUnroll];
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u) {
            const int64_t i = i0 + u * step;
            w[u] = i < I ? __ldg(reinterpret_cast<const uint4*>(wrow + i)) : make_uint4(0, 0, 0, 0);
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

__global__ void __launch_bounds__(kGemvWarps * 32) decode_gemv_kernel(DecodeGemv a) {
    extern __shared__ __align__(16) uint16_t xs[];  // (k, I) the (normalised) input rows, bf16
    __shared__ float red[kDecodeGemvMaxRows * kGemvWarps];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k = int(a.k);
    const int64_t I = a.I;
    constexpr int threads = kGemvWarps * 32;
    // Prologue: stage the input rows, normalised as the unfused path's norm kernel would store them;
    // every thread handles the columns tid, tid + 256, ... of every row, statistics by block sums.
#pragma unroll
    for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
        if (r >= k) break;
        for (int64_t i = threadIdx.x; i < I; i += threads) xs[r * I + i] = a.x[r * a.ld_x + i];
    }
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
#pragma unroll
        for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
            if (r >= k) break;
            const float rstd = rsqrtf(ss[r] / float(I) + a.eps);
            for (int64_t i = threadIdx.x; i < I; i += threads) {
                float v = (bf(xs[r * I + i]) - mean[r]) * rstd * bf(a.norm_w[i]);
                if (a.norm_b) v += bf(a.norm_b[i]);
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
                    const float v = bf(xs[r * I + i]) * silu(bf(a.z[r * a.ld_z + i]));
                    ss[r] += v * v;
                }
            }
            block_sums(ss, k, red);
#pragma unroll
            for (int r = 0; r < kDecodeGemvMaxRows; ++r) {
                if (r >= k) break;
                const float rstd = rsqrtf(ss[r] / float(width) + a.eps);
                for (int64_t i = g0 + threadIdx.x; i < g0 + width; i += threads) {
                    const float v = bf(xs[r * I + i]) * silu(bf(a.z[r * a.ld_z + i]));
                    xs[r * I + i] = to_bf(v * rstd * bf(a.norm_w[i]));
                }
            }
        }
    }
    __syncthreads();
    if (a.x_out && blockIdx.x == 0)  // the normalised rows, for the caller (final hidden states)
        for (int64_t e = threadIdx.x; e < a.k * I; e += blockDim.x) a.x_out[e] = xs[e];

    for (int64_t o = int64_t(blockIdx.x) * kGemvWarps + warp; o < a.O; o += int64_t(gridDim.x) * kGemvWarps) {
        float acc[kDecodeGemvMaxRows] = {}, acc2[kDecodeGemvMaxRows] = {};
        dot_row(acc, a.W + o * I, xs, I, k, lane);
        if (a.epi == DecodeEpilogue::SwiGLU) dot_row(acc2, a.W + (a.O + o) * I, xs, I, k, lane);
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

bool decode_gemv_supported(const DecodeGemv& a) {
    auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const int64_t w_rows = a.epi == DecodeEpilogue::SwiGLU ? 2 * a.O : a.O;
    return a.k >= 1 && a.k <= kDecodeGemvMaxRows && a.I % 8 == 0 && a.I > 0 && w_rows > 0 && aligned16(a.W) &&
           (a.norm != DecodeNorm::Gated || (a.groups > 0 && a.I % a.groups == 0)) &&
           size_t(a.k * a.I) * 2 <= kDecodeGemvMaxSmem;
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
    const size_t smem = size_t(a.k * a.I) * sizeof(uint16_t);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, decode_gemv_kernel, kGemvWarps * 32, smem);
    // One wave: every block pays the prologue once, then strides over the rows.
    const int64_t blocks =
        std::min<int64_t>((a.O + kGemvWarps - 1) / kGemvWarps, int64_t(sms) * std::max(resident, 1));
    decode_gemv_kernel<<<unsigned(blocks), kGemvWarps * 32, smem, static_cast<cudaStream_t>(stream)>>>(a);
    check("decode_gemv");
}

}  // namespace mslm::cuda_decoder_detail
