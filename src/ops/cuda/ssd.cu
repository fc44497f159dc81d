// Mamba-2 SSD on CUDA: the chunked algorithm of ops/cpu/ssd.cpp split into kernels (ssd.h lists
// the steps). Every matrix product goes through a tiled product whose operands come from loader
// lambdas; the loaders fold in the decays, dt and the causal mask, so no scaled copy of an operand
// is ever stored. Three engines:
//   tile_mma   shared-memory tiled fp32 FMA, one 32 × 32 output tile per block: every product of
//              the f32 instantiation, and the bf16 products not listed below;
//   block_mma  (mma.cuh) tensor cores, one 64 × 64 output tile per block from loader lambdas (fp32
//              values rounded once to bf16): C·Bᵀ (step 2);
//   staged tiles (warp_mma_k64) tensor cores, 64 × 64 tiles of exact bf16 inputs copied by
//              cp.async and fp32-formed operands rounded or split into shared tiles (or split per
//              warp from staged fp32 tiles), fragments by ldmatrix: the chunk states (3), the output
//              (5), and the backward's dCB with the dcum sums, its per-token head and finish kernels,
//              and dB, dC.
//   register scores: the output (5) by default (ssd_output_reg_kernel): scores formed in registers
//              from C·Bᵀ loaded into the A fragment's layout, no shared-memory round trip for them,
//              below the diagonal tile as a row factor times a column factor; MSLM_SSD_OUT_REG=0
//              takes the staged kernel, =exact the register kernel with the staged kernel's bits.
// MSLM_SSD_TC=0 in the environment selects tile_mma for all of them. The tensor-core path also takes
// step (1) as a warp scan (ssd_decay_scan_kernel), the fp32 path the serial ssd_decay_kernel.
//
// Within a chunk of length L, with cum_t the chunk-local Σ_{r ≤ t} dt_r·A (fp64), X̃ = diag(dt)·X,
// Lm[t, s] = exp(cum_t − cum_s) for s ≤ t (else 0), M = C·Bᵀ ∘ Lm and decay_s = exp(cum_last − cum_s):
//   Y     = M·X̃ + diag(exp(cum))·C·S_inᵀ + D·X
//   S_out = exp(cum_last)·S_in + Σ_s decay_s·X̃_s ⊗ B_s
// The backward mirrors ssd_backward of the CPU: with dS the gradient of the state leaving a chunk,
// found by a reverse pass over the chunks (dS_in = exp(cum_last)·dS + Σ_t exp(cum_t)·dY_tᵀ ⊗ C_t),
// every chunk's gradients are independent of the others'.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernel_trace.cuh"
#include "ops/cuda/linear.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/ssd.h"
#include "ops/cuda/ssd_common.cuh"
#include "ops/cuda/wgmma_probe.h"

namespace mslm::ops::cuda {

namespace {

using namespace detail;
using namespace ssd_detail;

// ---- shapes

// The effective chunk length is capped so that the backward's per-chunk vectors (4·Q floats) fit
// in shared memory next to the tiles; Mamba-2 uses 256.
constexpr int64_t kMaxChunk = 1024;

struct Plan {
    int64_t batch, seqlen, H, P, G, N, Q, n_chunks, heads_per_group;
};

Plan make_plan(const SsdDims& d, const char* op) {
    MSLM_CHECK(d.batch >= 0 && d.seqlen >= 0, "CUDA {}: negative batch {} or seqlen {}", op, d.batch,
               d.seqlen);
    MSLM_CHECK(d.n_heads > 0 && d.head_dim > 0 && d.d_state > 0,
               "CUDA {}: heads {}, head_dim {}, d_state {} must be positive", op, d.n_heads, d.head_dim,
               d.d_state);
    MSLM_CHECK(d.chunk_size > 0, "CUDA {}: chunk_size {} must be positive", op, d.chunk_size);
    MSLM_CHECK(d.n_groups > 0 && d.n_heads % d.n_groups == 0, "CUDA {}: {} heads do not split into {} groups",
               op, d.n_heads, d.n_groups);
    Plan p{};
    p.batch = d.batch, p.seqlen = d.seqlen, p.H = d.n_heads, p.P = d.head_dim, p.G = d.n_groups,
    p.N = d.d_state;
    p.Q = std::min(d.chunk_size, std::max<int64_t>(d.seqlen, 1));
    MSLM_CHECK(p.Q <= kMaxChunk, "CUDA {}: chunk length {} above the supported {}", op, p.Q, kMaxChunk);
    p.n_chunks = (d.seqlen + p.Q - 1) / p.Q;
    p.heads_per_group = p.H / p.G;
    return p;
}

template <typename T>
void check_strides(const SsdInputs<T>& in, const Plan& p, const char* op) {
    MSLM_CHECK(in.ld_x >= p.H * p.P && in.ld_dt >= p.H && in.ld_B >= p.G * p.N && in.ld_C >= p.G * p.N,
               "CUDA {}: row strides (x {}, dt {}, B {}, C {}) below the row widths ({}, {}, {}, {})", op,
               in.ld_x, in.ld_dt, in.ld_B, in.ld_C, p.H * p.P, p.H, p.G * p.N, p.G * p.N);
}

__host__ __device__ inline int64_t tiles(int64_t n) {
    return (n + 31) / 32;
}

// ---- workspace: [dtv | cum | CB | states] for the forward, then [dS | dCB | partial sums] for the
// backward. Each piece starts on a 256-byte boundary.

struct Workspace {
    float* dtv;     // (B, H, T)                  dt after softplus and clamp
    double* cum;    // (B, H, T)                  chunk-local cumulative Σ dt·A
    float* CB;      // (B, n_chunks, G, Q, Q)      C·Bᵀ per chunk and group
    float* states;  // (B, n_chunks, H, P, N)      chunk states, when the caller gives none
    __nv_bfloat16* states16;  // (B, n_chunks, H, P, N)  the same rounded to bf16 (forward, bf16 storage)
    float* dS;      // (B, n_chunks, H, P, N)      d loss / d (state leaving the chunk)
    float* dCB;     // (B, n_chunks, G, Q, Q)      d loss / d (C·Bᵀ), summed over the group's heads
    float* part;    // (3, B, n_chunks, H)         per-chunk sums for dA_log, dD, ddt_bias
    // the tensor-core backward's slots (ssd_dcb_tc_kernel, ssd_backward_head_tc_kernel), nT = ⌈Q/64⌉:
    float* erow;    // (B, n_chunks, H, nT, Q)     row sums of E per s tile
    float* ecol;    // (B, n_chunks, H, nT, Q)     column sums of E per t tile
    float* tok;     // (3 + ⌈N/64⌉, B, n_chunks, H, Q)  per-token sums, slots kTok* below
    float* dss;  // (⌈P·N / kThreads⌉, B, n_chunks, H)  ⟨dS, S_in⟩ in parts (the reverse state pass)
};

size_t layout(const Plan& p, bool backward, char* base, Workspace* ws) {
    const int64_t bht = p.batch * p.H * p.seqlen;
    const int64_t cb = p.batch * p.n_chunks * p.G * p.Q * p.Q;
    const int64_t st = p.batch * p.n_chunks * p.H * p.P * p.N;
    size_t at = 0;
    auto take = [&](int64_t n, size_t elem) {
        char* ptr = base ? base + at : nullptr;
        at += (size_t(n) * elem + 255) / 256 * 256;
        return ptr;
    };
    Workspace w{};
    w.dtv = reinterpret_cast<float*>(take(bht, sizeof(float)));
    w.cum = reinterpret_cast<double*>(take(bht, sizeof(double)));
    w.CB = reinterpret_cast<float*>(take(cb, sizeof(float)));
    w.states = reinterpret_cast<float*>(take(st, sizeof(float)));
    w.states16 = reinterpret_cast<__nv_bfloat16*>(take(st, sizeof(__nv_bfloat16)));
    if (backward) {
        w.dS = reinterpret_cast<float*>(take(st, sizeof(float)));
        w.dCB = reinterpret_cast<float*>(take(cb, sizeof(float)));
        w.part = reinterpret_cast<float*>(take(3 * p.batch * p.n_chunks * p.H, sizeof(float)));
        const int64_t bch_q = p.batch * p.n_chunks * p.H * p.Q, n_tiles = (p.Q + 63) / 64;
        w.erow = reinterpret_cast<float*>(take(bch_q * n_tiles, sizeof(float)));
        w.ecol = reinterpret_cast<float*>(take(bch_q * n_tiles, sizeof(float)));
        w.tok = reinterpret_cast<float*>(take((kTokZ + mma_tiles(p.N)) * bch_q, sizeof(float)));
        w.dss = reinterpret_cast<float*>(
            take((p.P * p.N + kThreads - 1) / kThreads * p.batch * p.n_chunks * p.H, sizeof(float)));
    }
    if (ws) *ws = w;
    return at;
}

// Caller's workspace, or one allocated and freed on the stream.
template <typename T>
class Scratch {
public:
    Scratch(void* given, size_t bytes, cudaStream_t stream, const char* op) : stream_(stream) {
        if (given || bytes == 0) {
            ptr_ = given;
            return;
        }
        check_cuda<T>(cudaMallocAsync(&ptr_, bytes, stream), "cudaMallocAsync", op);
        owned_ = true;
    }
    ~Scratch() {
        if (owned_) static_cast<void>(cudaFreeAsync(ptr_, stream_));
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    char* get() const { return static_cast<char*>(ptr_); }

private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
    bool owned_ = false;
};

// ---- the arguments every kernel reads, by value

template <typename S>
Args<device_t<S>> make_args(const SsdInputs<S>& in, const Plan& p, const Workspace& ws) {
    using T = device_t<S>;
    auto dev = [](const S* ptr) { return reinterpret_cast<const T*>(ptr); };
    Args<T> a{};
    a.x = dev(in.x), a.ld_x = in.ld_x, a.dt = dev(in.dt), a.ld_dt = in.ld_dt;
    a.dt_bias = dev(in.dt_bias), a.A_log = dev(in.A_log), a.D = dev(in.D);
    a.Bm = dev(in.Bm), a.ld_B = in.ld_B, a.Cm = dev(in.Cm), a.ld_C = in.ld_C;
    a.dt_min = in.dt_min, a.dt_max = in.dt_max;
    a.batch = p.batch, a.seqlen = p.seqlen, a.H = p.H, a.P = p.P, a.G = p.G, a.N = p.N, a.Q = p.Q;
    a.n_chunks = p.n_chunks, a.heads_per_group = p.heads_per_group;
    a.dtv = ws.dtv, a.cum = ws.cum;
    return a;
}

// ---- scalar math, as ops/cpu/scalar_math.h

__device__ __forceinline__ float softplus(float v) {
    return v > 20.0f ? v : log1pf(expf(v));
}
// dt = clamp(softplus(v), lo, hi); the gradient is zero where the clamp is active (torch.clamp).
__device__ __forceinline__ float dt_value(float v, float lo, float hi) {
    return fminf(fmaxf(softplus(v), lo), hi);
}
__device__ __forceinline__ float dt_grad(float v, float lo, float hi) {
    const float s = softplus(v);
    if (s < lo || s > hi) return 0.0f;
    return v > 20.0f ? 1.0f : sigmoid_pair(v).s;
}

template <typename T>
__device__ __forceinline__ float head_A(const Args<T>& a, int64_t h) {
    return -expf(to_f32(a.A_log[h]));
}
template <typename T>
__device__ __forceinline__ float head_bias(const Args<T>& a, int64_t h) {
    return a.dt_bias ? to_f32(a.dt_bias[h]) : 0.0f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;  // the same bits in every lane
}

// ---- the tiled product. A block of 256 threads owns a 32 × 32 output tile: thread (tx, ty) =
// (threadIdx.x % 32, threadIdx.x / 32) holds rows ty + 8i (i < 4) of column tx, so a warp is one
// row set and row sums are warp reductions.

constexpr int kTile = 32;
constexpr int kTileThreads = 256;
static_assert(kTileThreads == kThreads, "the tiled kernels launch with common.cuh's block size");

struct TileSmem {
    float a[kTile][kTile + 1];  // a[k][row]
    float b[kTile][kTile + 1];  // b[k][col]
};

__device__ __forceinline__ int tile_col() {
    return threadIdx.x % kTile;
}
__device__ __forceinline__ int tile_row(int i) {
    return threadIdx.x / kTile + 8 * i;
}

// acc[i] += Σ_{k ∈ [k_begin, k_end)} load_a(row, k) · load_b(k, col) with row = tile_row(i),
// col = tile_col() (tile-local; the loaders add the tile origin and return 0 outside the operand).
// Every thread of the block must call it with the same k range.
template <class LoadA, class LoadB>
__device__ __forceinline__ void tile_mma(float (&acc)[4], int64_t k_begin, int64_t k_end, const LoadA& load_a,
                                         const LoadB& load_b, TileSmem& sm) {
    const int tx = tile_col();
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kTile) {
        for (int e = threadIdx.x; e < kTile * kTile; e += kTileThreads) {
            const int k = e / kTile, j = e % kTile;
            const bool in = k0 + k < k_end;
            sm.a[k][j] = in ? load_a(j, k0 + k) : 0.0f;
            sm.b[k][j] = in ? load_b(k0 + k, j) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < kTile; ++k) {
            const float bv = sm.b[k][tx];
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[i] += sm.a[k][tile_row(i)] * bv;
        }
        __syncthreads();
    }
}

// ---- (1) dt and the chunk-local cumulative sums, one thread per (b, h, chunk)

template <typename T>
__global__ void ssd_decay_kernel(Args<T> a, float* dtv, double* cum) {
    const int64_t total = a.batch * a.H * a.n_chunks;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t c = i % a.n_chunks, bh = i / a.n_chunks, h = bh % a.H, b = bh / a.H;
        const float A = head_A(a, h), bias = head_bias(a, h);
        const Chunk ch = chunk_of(a, b, c);
        double run = 0.0;
        for (int64_t t = 0; t < ch.L; ++t) {
            const float d = dt_value(to_f32(a.dt[(ch.row0 + t) * a.ld_dt + h]) + bias, a.dt_min, a.dt_max);
            const int64_t at = bh * a.seqlen + ch.t0 + t;
            dtv[at] = d;
            run += double(d * A);
            cum[at] = run;
        }
    }
}

// (1) for the tensor-core path: one warp per (b, h, chunk), 32 tokens at a time, the cumulative
// sum by a warp scan in fp64 (Hillis–Steele, then the running total of the earlier tokens). The
// order of the fp64 additions differs from ssd_decay_kernel's, by a few 2^-53 of Σ|dt·A|: far below
// the fp32 resolution at which cum is used.
template <typename T>
__global__ void ssd_decay_scan_kernel(Args<T> a, float* dtv, double* cum) {
    pdl_wait();  // may be launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    const int lane = threadIdx.x % 32;
    const int64_t total = a.batch * a.H * a.n_chunks;
    const int64_t n_warps = int64_t(gridDim.x) * blockDim.x / 32;
    for (int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < total; w += n_warps) {
        const int64_t c = w % a.n_chunks, bh = w / a.n_chunks, h = bh % a.H, b = bh / a.H;
        const float A = head_A(a, h), bias = head_bias(a, h);
        const Chunk ch = chunk_of(a, b, c);
        double carry = 0.0;
        // kBatch rows of 32 tokens a round: their dt loads issued together (the stores below could
        // alias them as far as the compiler knows, so a load per row would wait out a latency each).
        constexpr int kBatch = 8;
        for (int64_t r0 = 0; r0 < ch.L; r0 += 32 * kBatch) {  // uniform over the warp
            float raw[kBatch];
#pragma unroll
            for (int i = 0; i < kBatch; ++i) {
                const int64_t t = r0 + 32 * i + lane;
                raw[i] = t < ch.L ? to_f32(a.dt[(ch.row0 + t) * a.ld_dt + h]) : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < kBatch; ++i) {
                const int64_t t0 = r0 + 32 * i, t = t0 + lane;
                if (t0 >= ch.L) break;
                float d = 0.0f;
                double run = 0.0;
                if (t < ch.L) {
                    d = dt_value(raw[i] + bias, a.dt_min, a.dt_max);
                    run = double(d * A);
                }
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const double up = __shfl_up_sync(0xffffffffu, run, o);
                    if (lane >= o) run += up;
                }
                run += carry;
                if (t < ch.L) {
                    const int64_t at = bh * a.seqlen + ch.t0 + t;
                    dtv[at] = d;
                    cum[at] = run;
                }
                carry = __shfl_sync(0xffffffffu, run, 31);
            }
        }
    }
}

// ---- (2) CB (Q, Q) = C·Bᵀ per (b, chunk, group); grid (B·n_chunks·G, tiles²). Tiles wholly
// above the diagonal are never read and not written.

template <typename T>
__global__ void ssd_cb_kernel(Args<T> a, float* CB) {
    __shared__ TileSmem sm;
    const int64_t bcg = blockIdx.x, g = bcg % a.G, c = bcg / a.G % a.n_chunks, b = bcg / (a.G * a.n_chunks);
    const int64_t tq = tiles(a.Q), ti = blockIdx.y / tq, si = blockIdx.y % tq;
    const Chunk ch = chunk_of(a, b, c);
    if (si > ti || ti * kTile >= ch.L) return;
    const int64_t t0 = ti * kTile, s0 = si * kTile, col = g * a.N;
    float acc[4] = {};
    tile_mma(
        acc, 0, a.N,
        [&](int j, int64_t n) {
            return t0 + j < ch.L ? to_f32(a.Cm[(ch.row0 + t0 + j) * a.ld_C + col + n]) : 0.0f;
        },
        [&](int64_t n, int j) {
            return s0 + j < ch.L ? to_f32(a.Bm[(ch.row0 + s0 + j) * a.ld_B + col + n]) : 0.0f;
        },
        sm);
    float* out = CB + bcg * a.Q * a.Q;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t t = t0 + tile_row(i), s = s0 + tile_col();
        if (t < ch.L && s < ch.L) out[t * a.Q + s] = acc[i];
    }
}

// ---- (3) per (b, chunk, head) a (P, N) sum over the chunk's tokens of w_t · X_t ⊗ Y_t; grid
// (B·n_chunks·H, tiles(P)·tiles(N)), out (B, n_chunks, H, P, N).
//   forward (kGrad false): X = x, Y = B, w_t = exp(cum_last − cum_t)·dt_t: the chunk's own end state
//   backward (kGrad true): X = dy, Y = C, w_t = exp(cum_t): what the chunk's outputs pass back to
//   the state entering it

template <bool kGrad, typename T>
__global__ void ssd_chunk_state_kernel(Args<T> a, const T* dy, float* out) {
    __shared__ TileSmem sm;
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const int64_t tn = tiles(a.N), p0 = blockIdx.y / tn * kTile, n0 = blockIdx.y % tn * kTile;
    const Chunk ch = chunk_of(a, b, c);
    const int64_t g = h / a.heads_per_group, bh = b * a.H + h;
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const double cum_last = cum[ch.L - 1];
    float acc[4] = {};
    tile_mma(
        acc, 0, ch.L,
        [&](int j, int64_t t) {
            if (p0 + j >= a.P) return 0.0f;
            const int64_t row = ch.row0 + t;
            if constexpr (kGrad) {
                return expf(static_cast<float>(cum[t])) * to_f32(dy[(row * a.H + h) * a.P + p0 + j]);
            } else {
                return exp_diff(cum_last, cum[t]) * dtv[t] * to_f32(a.x[row * a.ld_x + h * a.P + p0 + j]);
            }
        },
        [&](int64_t t, int j) {
            if (n0 + j >= a.N) return 0.0f;
            const int64_t at = ch.row0 + t;
            return kGrad ? to_f32(a.Cm[at * a.ld_C + g * a.N + n0 + j])
                         : to_f32(a.Bm[at * a.ld_B + g * a.N + n0 + j]);
        },
        sm);
    float* o = out + bch * a.P * a.N;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t p = p0 + tile_row(i), n = n0 + tile_col();
        if (p < a.P && n < a.N) o[p * a.N + n] = acc[i];
    }
}

// ---- (4) the pass over the chunks, one thread per state element (b, h, p, n), in place on
// `states` (B, n_chunks, H, P, N).
//   forward: in, each chunk's own end state; out, the state entering each chunk. S starts at h0
//   (or 0) and ends in h_last (which may be h0: the element is read before it is written).
//   backward (kReverse): in, each chunk's pass-back to its entering state; out, dS leaving each
//   chunk, walking from the last chunk (where it is 0) to the first.
// states16 (forward, optional): each state written to `states` also rounded once to bf16 there, the
// operand of the register-score output kernel's C·S_inᵀ; with it, store_f32 false leaves `states`
// holding the chunks' own states (an inference forward, whose only reader is that kernel).
// dot_with (backward, optional; needs P·N a multiple of blockDim.x, so every thread of a block holds
// an element): the forward's chunk states S_in, laid out as `states`; each dS written is also
// multiplied by its S_in and summed over the block (warp sums, then the warps in order), so that
// dot_part[blockIdx.x · B·n_chunks·H + bch] = Σ over the block's elements of dS ∘ S_in: the finish
// kernel's ⟨dS, S_in⟩ term in gridDim.x parts, without reading both states again.

// Grid (⌈P·N / blockDim.x⌉, batch·H, strided by gridDim.y): a thread per (b, h, p, n) element, with
// every chunk's decay of its (b, h) computed once per block into shared memory (n_chunks floats). The
// grid-stride form before it (a 64-bit division and an expf per element and chunk) ran at a third of
// the bandwidth (docs/PERFORMANCE.md).
template <bool kReverse, typename T>
__global__ void ssd_state_pass_kernel(Args<T> a, float* states, const float* h0, float* h_last,
                                      __nv_bfloat16* states16, bool store_f32, const float* dot_with,
                                      float* dot_part) {
    extern __shared__ float decay[];  // (n_chunks): exp of each chunk's total log decay
    __shared__ float dot_red[kThreads / 32][8];
    pdl_wait();  // may be launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    // The loads of kBatch chunks are issued before their stores: the compiler cannot tell a store to
    // `states` from a later load of it, so one chunk at a time would wait out a memory latency each.
    constexpr int kBatch = 8;
    const int64_t PN = a.P * a.N, BH = a.batch * a.H;
    const int64_t pn = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    for (int64_t bh = blockIdx.y; bh < BH; bh += gridDim.y) {
        const int64_t h = bh % a.H, b = bh / a.H;
        __syncthreads();  // the previous (b, h)'s decays are read
        for (int64_t c = threadIdx.x; c < a.n_chunks; c += blockDim.x) {
            const Chunk ch = chunk_of(a, b, c);
            decay[c] = expf(static_cast<float>(a.cum[bh * a.seqlen + ch.t0 + ch.L - 1]));
        }
        __syncthreads();
        if (pn >= PN) continue;
        const int64_t e = bh * PN + pn;
        // Element (b, c, h, pn) of states at base + c·H·PN.
        float* base = states + (b * a.n_chunks * a.H + h) * PN + pn;
        const int64_t chunk_stride = a.H * PN;
        float S = h0 ? h0[e] : 0.0f;
        for (int64_t step0 = 0; step0 < a.n_chunks; step0 += kBatch) {
            float own[kBatch], with[kBatch], prod[kBatch] = {};
#pragma unroll
            for (int i = 0; i < kBatch; ++i) {
                const int64_t step = step0 + i;
                if (step >= a.n_chunks) break;
                const int64_t c = kReverse ? a.n_chunks - 1 - step : step;
                own[i] = base[c * chunk_stride];
                if (kReverse && dot_with) with[i] = dot_with[(base - states) + c * chunk_stride];
            }
#pragma unroll
            for (int i = 0; i < kBatch; ++i) {
                const int64_t step = step0 + i;
                if (step >= a.n_chunks) break;
                const int64_t c = kReverse ? a.n_chunks - 1 - step : step;
                const int64_t at = c * chunk_stride;
                if (store_f32) base[at] = S;
                if (states16) states16[(base - states) + at] = __float2bfloat16_rn(S);
                if (kReverse && dot_with) prod[i] = S * with[i];
                S = decay[c] * S + own[i];
            }
            if (kReverse && dot_with) {
                static_assert(kBatch == 8, "dot_red holds a batch's sums");
                const int warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
#pragma unroll
                for (int i = 0; i < kBatch; ++i) {
                    const float v = warp_sum(prod[i]);
                    if (threadIdx.x % 32 == 0) dot_red[warp][i] = v;
                }
                __syncthreads();
                const int64_t step = step0 + threadIdx.x;
                if (int(threadIdx.x) < kBatch && step < a.n_chunks) {
                    float v = 0.0f;
                    for (int w = 0; w < n_warps; ++w) v += dot_red[w][threadIdx.x];
                    const int64_t c = a.n_chunks - 1 - step;
                    dot_part[int64_t(blockIdx.x) * BH * a.n_chunks + (b * a.n_chunks + c) * a.H + h] = v;
                }
                __syncthreads();  // dot_red is rewritten by the next batch
            }
        }
        if (h_last) h_last[e] = S;
    }
}

// The state pass's grid and shared memory.
template <typename S, typename T>
dim3 state_pass_grid(const Args<T>& a) {
    const int64_t PN = a.P * a.N, BH = a.batch * a.H;
    MSLM_CHECK(PN <= int64_t(kThreads) * 65535 && a.n_chunks <= 12 * 1024,
               "CUDA kernel ssd_state_pass<{}>: state of {} elements or {} chunks too large",
               dtype_label<S>(), PN, a.n_chunks);
    return dim3(unsigned((PN + kThreads - 1) / kThreads), unsigned(std::min<int64_t>(BH, 65535)));
}
template <typename T>
size_t state_pass_smem(const Args<T>& a) {
    return size_t(a.n_chunks) * sizeof(float);
}

// ---- (5) Y per (b, chunk, head); grid (B·n_chunks·H, tiles(Q)·tiles(P)).

template <typename T>
__global__ void ssd_output_kernel(Args<T> a, const float* CB, const float* states, T* y) {
    __shared__ TileSmem sm;
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const int64_t tp = tiles(a.P), t0 = blockIdx.y / tp * kTile, p0 = blockIdx.y % tp * kTile;
    const Chunk ch = chunk_of(a, b, c);
    if (t0 >= ch.L) return;
    const int64_t g = h / a.heads_per_group, bh = b * a.H + h;
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const float* cb = CB + ((b * a.n_chunks + c) * a.G + g) * a.Q * a.Q;
    const float* S_in = states + bch * a.P * a.N;  // (P, N)
    const T* x = a.x + ch.row0 * a.ld_x + h * a.P;

    // Within the chunk: M·X̃, s ≤ t.
    float intra[4] = {};
    tile_mma(
        intra, 0, min(ch.L, t0 + kTile),
        [&](int j, int64_t s) {
            const int64_t t = t0 + j;
            return t < ch.L && s <= t ? cb[t * a.Q + s] * exp_diff(cum[t], cum[s]) * dtv[s] : 0.0f;
        },
        [&](int64_t s, int j) { return p0 + j < a.P ? to_f32(x[s * a.ld_x + p0 + j]) : 0.0f; }, sm);
    // From earlier chunks: C·S_inᵀ, scaled by exp(cum_t) below.
    float inter[4] = {};
    tile_mma(
        inter, 0, a.N,
        [&](int j, int64_t n) {
            return t0 + j < ch.L ? to_f32(a.Cm[(ch.row0 + t0 + j) * a.ld_C + g * a.N + n]) : 0.0f;
        },
        [&](int64_t n, int j) { return p0 + j < a.P ? S_in[(p0 + j) * a.N + n] : 0.0f; }, sm);

    const float Dh = a.D ? to_f32(a.D[h]) : 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t t = t0 + tile_row(i), p = p0 + tile_col();
        if (t >= ch.L || p >= a.P) continue;
        const float v =
            intra[i] + expf(static_cast<float>(cum[t])) * inter[i] + Dh * to_f32(x[t * a.ld_x + p]);
        y[((ch.row0 + t) * a.H + h) * a.P + p] = from_f32<T>(v);
    }
}

// ---- tensor-core versions of (2) and (5), for bf16 storage: C·Bᵀ by block_mma with ssd_cb_kernel's
// loaders, the output by the staged pipeline below (64 × 64 output tiles, 128 threads). Every
// operand value but two is a bf16 input and passes through exactly; the two rounded once to bf16 are the decayed score
// M[t, s]·dt_s, formed in fp32 as in ssd_output_kernel, and the fp32 state S_in of C·S_inᵀ.

static_assert(kMmaM == kMmaN, "C·Bᵀ tiles are square: tile (ti, si) with si > ti lies above the diagonal");

// CB (Q, Q) = C·Bᵀ per (b, chunk, group); grid (B·n_chunks·G, mma_tiles(Q)²).
template <typename T>
__global__ void __launch_bounds__(kMmaThreads) ssd_cb_tc_kernel(Args<T> a, float* CB) {
    __shared__ MmaSmem sm;
    const int64_t bcg = blockIdx.x, g = bcg % a.G, c = bcg / a.G % a.n_chunks, b = bcg / (a.G * a.n_chunks);
    const int64_t tq = mma_tiles(a.Q), ti = blockIdx.y / tq, si = blockIdx.y % tq;
    const Chunk ch = chunk_of(a, b, c);
    if (si > ti || ti * kMmaM >= ch.L) return;
    const int64_t t0 = ti * kMmaM, s0 = si * kMmaN, col = g * a.N;
    MmaAcc acc{};
    block_mma<true>(
        acc, 0, a.N,
        [&](int j, int64_t n) {
            return t0 + j < ch.L ? to_f32(a.Cm[(ch.row0 + t0 + j) * a.ld_C + col + n]) : 0.0f;
        },
        [&](int64_t n, int j) {
            return s0 + j < ch.L ? to_f32(a.Bm[(ch.row0 + s0 + j) * a.ld_B + col + n]) : 0.0f;
        },
        sm);
    float* out = CB + bcg * a.Q * a.Q;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int64_t t = t0 + mma_row(i, r), s = s0 + mma_col(j, r);
                if (t < ch.L && s < ch.L) out[t * a.Q + s] = acc.c[i][j][r];
            }
}

// ---- warp-tiled products for the staged tensor-core kernels (output, backward).

// acc[j] (8 n8 tiles) += A·B over one 64-deep k step: A from an [m][k] tile (a_km: [k][m]), B from
// an [n][k] tile (b_kn: [k][n]). Split operands: the lo tile's products first, then hi (as block_mma_ex).
template <bool kAKM, bool kBKN>
__device__ __forceinline__ void warp_mma_k64(float (&acc)[8][4], const __nv_bfloat16* sa, const __nv_bfloat16* sb) {
    const int m0 = threadIdx.x / 32 * 16;
#pragma unroll
    for (int kk = 0; kk < kSt; kk += 16) {
        uint32_t af[4];
        if constexpr (kAKM) {
            lda_km(af, sa, kStLd, m0, kk);
        } else {
            lda_mk(af, sa, kStLd, m0, kk);
        }
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            uint32_t bq[4];
            if constexpr (kBKN) {
                ldb_kn(bq, sb, kStLd, 16 * jj, kk);
            } else {
                ldb_nk(bq, sb, kStLd, 16 * jj, kk);
            }
            const uint32_t b0[2] = {bq[0], bq[1]}, b1[2] = {bq[2], bq[3]};
            mma_m16n8k16_bf16(acc[2 * jj], af, b0);
            mma_m16n8k16_bf16(acc[2 * jj + 1], af, b1);
        }
    }
}

// As warp_mma_k64 with one operand split into hi + lo tiles, both read per 16-deep slice and the lo
// product issued first: B split (A [m][k], B [n][k]) or A split (A [k][m], B [k][n]).
__device__ __forceinline__ void warp_mma_k64_split_b(float (&acc)[8][4], const __nv_bfloat16* sa,
                                                     const __nv_bfloat16* sb_hi, const __nv_bfloat16* sb_lo) {
    const int m0 = threadIdx.x / 32 * 16;
#pragma unroll
    for (int kk = 0; kk < kSt; kk += 16) {
        uint32_t af[4];
        lda_mk(af, sa, kStLd, m0, kk);
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            uint32_t bh[4], bl[4];
            ldb_nk(bh, sb_hi, kStLd, 16 * jj, kk);
            ldb_nk(bl, sb_lo, kStLd, 16 * jj, kk);
            const uint32_t h0[2] = {bh[0], bh[1]}, h1[2] = {bh[2], bh[3]};
            const uint32_t l0[2] = {bl[0], bl[1]}, l1[2] = {bl[2], bl[3]};
            mma_m16n8k16_bf16(acc[2 * jj], af, l0);
            mma_m16n8k16_bf16(acc[2 * jj], af, h0);
            mma_m16n8k16_bf16(acc[2 * jj + 1], af, l1);
            mma_m16n8k16_bf16(acc[2 * jj + 1], af, h1);
        }
    }
}

// acc (8 n8 tiles) += A·B over the 16-deep slice at kk, A split into the fragments ah + al and B from
// a [k][n] tile: per n8 tile the lo product, then the hi one.
__device__ __forceinline__ void mma_split_a_slice(float (&acc)[8][4], const uint32_t (&ah)[4],
                                                  const uint32_t (&al)[4], const __nv_bfloat16* sb, int kk) {
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
        uint32_t bq[4];
        ldb_kn(bq, sb, kStLd, 16 * jj, kk);
        const uint32_t b0[2] = {bq[0], bq[1]}, b1[2] = {bq[2], bq[3]};
        mma_m16n8k16_bf16(acc[2 * jj], al, b0);
        mma_m16n8k16_bf16(acc[2 * jj], ah, b0);
        mma_m16n8k16_bf16(acc[2 * jj + 1], al, b1);
        mma_m16n8k16_bf16(acc[2 * jj + 1], ah, b1);
    }
}

// A split (A [k][m] hi / lo, B [k][n]) for kNT B tiles sb[q] (kSt × kStLd each, kSt·kStLd apart)
// sharing the split A, each A fragment loaded once for all of them; every acc[q] gets the products of
// one tile in one order (per 16-deep slice and n8 tile: lo, then hi).
template <int kNT>
__device__ __forceinline__ void warp_mma_k64_split_a_tiles(float (&acc)[kNT][8][4],
                                                           const __nv_bfloat16* sa_hi,
                                                           const __nv_bfloat16* sa_lo,
                                                           const __nv_bfloat16* sb) {
    const int m0 = threadIdx.x / 32 * 16;
#pragma unroll
    for (int kk = 0; kk < kSt; kk += 16) {
        uint32_t ah[4], al[4];
        lda_km(ah, sa_hi, kStLd, m0, kk);
        lda_km(al, sa_lo, kStLd, m0, kk);
#pragma unroll
        for (int q = 0; q < kNT; ++q) mma_split_a_slice(acc[q], ah, al, sb + q * kSt * kStLd, kk);
    }
}

// The A-split product for one B tile.
__device__ __forceinline__ void warp_mma_k64_split_a(float (&acc)[8][4], const __nv_bfloat16* sa_hi,
                                                     const __nv_bfloat16* sa_lo, const __nv_bfloat16* sb) {
    warp_mma_k64_split_a_tiles<1>(reinterpret_cast<float(&)[1][8][4]>(acc), sa_hi, sa_lo, sb);
}

// ---- pieces of both tensor-core output kernels (a warp owns t rows 16·warp + grp + 8·hf of a 64 × 64
// tile, columns 8j + 2·quad + odd of acc[j][2·hf + odd]).

// acc = C_t·S_inᵀ of rows t0 + tl → exp(cum_t)·acc (rows past rows_t: 0).
__device__ __forceinline__ void scale_rows_by_exp_cum(float (&acc)[8][4], const double* cum_c, int64_t t0,
                                                      int rows_t) {
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int tl = 16 * warp + grp + 8 * hf;
        const float et = tl < rows_t ? expf(static_cast<float>(cum_c[t0 + tl])) : 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int odd = 0; odd < 2; ++odd) acc[j][2 * hf + odd] *= et;
    }
}

// y rows t0 + tl (< rows_t), columns p0 + pl (< cols_p) = acc + D·x_t, x_t from the staged x tile of
// the t tile itself.
template <typename T>
__device__ __forceinline__ void store_output_rows(const Args<T>& a, const float (&acc)[8][4],
                                                  const __nv_bfloat16 (&xt)[kSt][kStLd], T* y,
                                                  const Chunk& ch, int64_t h, int64_t t0, int64_t p0,
                                                  int rows_t, int cols_p) {
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
    const float Dh = a.D ? to_f32(a.D[h]) : 0.0f;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int tl = 16 * warp + grp + 8 * hf;
        if (tl >= rows_t) continue;
        T* yrow = y + ((ch.row0 + t0 + tl) * a.H + h) * a.P + p0;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int odd = 0; odd < 2; ++odd) {
                const int pl = 8 * j + 2 * quad + odd;
                if (pl < cols_p)
                    yrow[pl] = from_f32<T>(acc[j][2 * hf + odd] + Dh * __bfloat162float(xt[tl][pl]));
            }
    }
}

// Y per (b, chunk, head) and t tile; grid (B·n_chunks·H, mma_tiles(Q)). Per 64-wide p tile:
//   acc = C_t·S_inᵀ (S_in rounded once to bf16), then acc *= exp(cum_t);
//   acc += Σ over the s tiles ≤ t's of S[t, s]·x_s, the score S[t, s] = CB[t, s]·exp(cum_t − cum_s)·dt_s
//   (s ≤ t < L) formed in fp32 as in ssd_output_kernel and rounded once to bf16;
//   y = acc + D·x_t (x_t: the last s tile's staged x).
// The products of a p tile are one pipeline of 64-deep steps (the n tiles of C·S_inᵀ, then the s
// tiles), as in ssd_backward_head_tc_kernel: a step's bf16 operand (C rows t, x rows s; double-
// buffered) and the fp32 source of its rounded one (the S_in tile, or the C·Bᵀ tile) are copied by
// cp.async; per step: wait, round the fp32 source into u (forming the scores first), barrier, issue
// the next step's copies, products. Dynamic shared memory: sizeof(OutSmem) (3 blocks a multiprocessor).
struct OutSmem {
    __nv_bfloat16 h[2][kSt][kStLd];  // the bf16 operand: C rows t [t][n] | x rows s [s][p]
    __nv_bfloat16 u[kSt][kStLd];     // the rounded one: S_in [p][n] | scores [t][s]
    float f[kSt][kF32Ld];            // its fp32 source: S_in [p][n] | C·Bᵀ [t][s]
    double cum_c[kMaxChunk];         // the chunk's cum and dt up to the tile's end
    float dt_c[kMaxChunk];
};

template <typename T>
__global__ void __launch_bounds__(kMmaThreads, 3)
    ssd_output_tc_kernel(Args<T> a, const float* CB, const float* states, T* y) {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "tensor-core kernels are bf16");
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    OutSmem& sm = *reinterpret_cast<OutSmem*>(dyn_smem);
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const Chunk ch = chunk_of(a, b, c);
    // t tiles from the last: the blocks with the most s tiles start first (grid order is x fastest).
    const int ty = int(gridDim.y - 1 - blockIdx.y);
    const int64_t L = ch.L, t0 = int64_t(ty) * kSt;
    if (t0 >= L) return;
    const int rows_t = int(min(L - t0, int64_t(kSt)));
    const int64_t g = h / a.heads_per_group, bh = b * a.H + h;
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const float* cb = CB + ((b * a.n_chunks + c) * a.G + g) * a.Q * a.Q;
    const float* S_in = states + bch * a.P * a.N;  // (P, N)
    const T* xg = a.x + ch.row0 * a.ld_x + h * a.P;
    const T* Cg = a.Cm + ch.row0 * a.ld_C + g * a.N;
    const bool vec_x = aligned16(a.x) && a.ld_x % 8 == 0 && a.P % 8 == 0;
    const bool vec_c = aligned16(a.Cm) && a.ld_C % 8 == 0 && a.N % 8 == 0;
    const bool vec_st = aligned16(states) && a.N % 4 == 0;
    const bool vec_cb = aligned16(CB) && a.Q % 4 == 0 && L % 4 == 0;  // tile columns end at L
    const int64_t s_end = min(L, t0 + kSt);
    for (int64_t s = threadIdx.x; s < s_end; s += kMmaThreads) {
        sm.cum_c[s] = cum[s];
        sm.dt_c[s] = dtv[s];
    }
    // (visible after the first step's barrier)
    const int n_n = int(mma_tiles(a.N)), n_it = n_n + ty + 1;
    for (int64_t p0 = 0; p0 < a.P; p0 += kSt) {
        const int cols_p = int(a.P - p0);
        // Step it's copies: the n tile it of C·S_inᵀ (it < n_n), else the s tile it − n_n.
        auto stage = [&](int it) {
            const int buf = it & 1;
            if (it < n_n) {
                const int64_t n0 = int64_t(it) * kSt;
                stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.h[buf][0][0], Cg + t0 * a.ld_C + n0, a.ld_C,
                                                              rows_t, int(a.N - n0), vec_c);
                stage_f32_tile<kSt, kSt, kF32Ld, kMmaThreads>(&sm.f[0][0], S_in + p0 * a.N + n0, a.N,
                                                              int(min(a.P - p0, int64_t(kSt))), int(a.N - n0),
                                                              vec_st);
            } else {
                const int64_t s0 = int64_t(it - n_n) * kSt;
                stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.h[buf][0][0], xg + s0 * a.ld_x + p0, a.ld_x,
                                                              int(min(L - s0, int64_t(kSt))), cols_p, vec_x);
                stage_f32_tile<kSt, kSt, kF32Ld, kMmaThreads>(&sm.f[0][0], cb + t0 * a.Q + s0, a.Q, rows_t,
                                                              int(min(L - s0, int64_t(kSt))), vec_cb);
            }
            cp_async_commit();
        };
        // The rounded operand of step it into u, 4 consecutive columns a piece, 8 pieces a thread.
        auto round = [&](int it) {
            const bool s_step = it >= n_n;
            const int64_t s0 = int64_t(it - n_n) * kSt;
            constexpr int kPer = kSt * kSt / 4 / kMmaThreads;
#pragma unroll 2
            for (int i = 0; i < kPer; ++i) {
                const int e = int(threadIdx.x) + i * kMmaThreads, r = e / (kSt / 4), col = e % (kSt / 4) * 4;
                const float4 v4 = *reinterpret_cast<const float4*>(&sm.f[r][col]);
                float v[4] = {v4.x, v4.y, v4.z, v4.w};
                if (s_step) {
                    const int64_t t = t0 + r;
                    const bool row_in = r < rows_t;
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const int64_t s = s0 + col + k;
                        v[k] = row_in && s <= t ? v[k] * exp_diff(sm.cum_c[t], sm.cum_c[s]) * sm.dt_c[s] : 0.0f;
                    }
                }
                uint2 packed;
                packed.x = pack_bf16x2(v[0], v[1]);
                packed.y = pack_bf16x2(v[2], v[3]);
                *reinterpret_cast<uint2*>(&sm.u[r][col]) = packed;
            }
        };

        stage(0);
        float acc[8][4] = {};
        for (int it = 0; it < n_it; ++it) {
            cp_async_wait<0>();
            __syncthreads();
            round(it);
            __syncthreads();
            if (it + 1 < n_it) stage(it + 1);
            const int buf = it & 1;
            if (it < n_n) {
                warp_mma_k64<false, false>(acc, &sm.h[buf][0][0], &sm.u[0][0]);
            } else {
                warp_mma_k64<false, true>(acc, &sm.u[0][0], &sm.h[buf][0][0]);
            }
            if (it == n_n - 1) scale_rows_by_exp_cum(acc, sm.cum_c, t0, rows_t);  // acc = C_t·S_inᵀ
        }
        // y = acc + D·x_t, x_t being the last step's x (s tile = t tile).
        store_output_rows(a, acc, sm.h[(n_it - 1) & 1], y, ch, h, t0, p0, rows_t, cols_p);
        __syncthreads();  // the step buffers are restaged for the next p tile
    }
}

// Y per (b, chunk, head) and t tile as ssd_output_tc_kernel, the same products in the same order,
// without its shared-memory round trip per step: the scores S[t, s] of a warp's 16 rows are formed
// in registers from C·Bᵀ values loaded straight from global memory into the A fragment's layout
// (one s tile ahead), and rounded into the fragment; S_in comes already rounded to bf16 (the state
// pass's states16). Per step one barrier: the step's bf16 tiles (C rows t and S_in for an n step, x
// rows s for an s step) wait in a two-slot cp.async ring. Grid (B·n_chunks·H, mma_tiles(Q)),
// kMmaThreads threads, dynamic shared memory sizeof(OutRegSmem).
// kFactored false: every score as ssd_output_tc_kernel forms it, CB·exp(cum_t − cum_s)·dt_s (the
// same bits). kFactored true: below the diagonal tile, with c the cum of the s tile's last token
// (s ≤ that token < t), the score is CB·exp(cum_t − c)·w_s with w_s = exp(c − cum_s)·dt_s: both
// exponents ≤ 0 (cum falls along the chunk), so neither factor overflows and one that underflows
// bounds the true product below it; w_s is formed once per block (with the cum staging), exp(cum_t
// − c) once per row and tile: two multiplies a score instead of an fp64 difference, a conversion
// and an exp. The value differs from the direct one by a few fp32 roundings, before its rounding
// to bf16. The diagonal tile keeps the direct form (there c is not between s and t).
struct OutRegSmem {
    __nv_bfloat16 a[2][kSt][kStLd];  // per slot: C rows t [t][n] | x rows s [s][p]
    __nv_bfloat16 b[2][kSt][kStLd];  // per slot: S_in [p][n] (n steps)
    double cum_c[kMaxChunk];         // the chunk's cum and dt up to the tile's end
    float dt_c[kMaxChunk];
    float w_c[kMaxChunk];  // kFactored: w_s for s before the t tile
};

template <typename T, bool kFactored, int kMinBlocks = 4>
__global__ void __launch_bounds__(kMmaThreads, kMinBlocks)
    ssd_output_reg_kernel(Args<T> a, const float* CB, const __nv_bfloat16* states16, T* y) {
    pdl_wait();  // may be launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    static_assert(std::is_same_v<T, __nv_bfloat16>, "tensor-core kernels are bf16");
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    OutRegSmem& sm = *reinterpret_cast<OutRegSmem*>(dyn_smem);
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const Chunk ch = chunk_of(a, b, c);
    // t tiles from the last: the blocks with the most s tiles start first (grid order is x fastest).
    const int ty = int(gridDim.y - 1 - blockIdx.y);
    // Chunk-local positions fit in int (Q ≤ kMaxChunk).
    const int L = int(ch.L), t0 = ty * kSt, Q = int(a.Q);
    if (t0 >= L) return;
    const int rows_t = min(L - t0, kSt);
    const int64_t g = h / a.heads_per_group, bh = b * a.H + h;
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const float* cb = CB + ((b * a.n_chunks + c) * a.G + g) * a.Q * a.Q;
    const __nv_bfloat16* S16 = states16 + bch * a.P * a.N;  // (P, N)
    const T* xg = a.x + ch.row0 * a.ld_x + h * a.P;
    const T* Cg = a.Cm + ch.row0 * a.ld_C + g * a.N;
    const bool vec_x = aligned16(a.x) && a.ld_x % 8 == 0 && a.P % 8 == 0;
    const bool vec_c = aligned16(a.Cm) && a.ld_C % 8 == 0 && a.N % 8 == 0;
    const bool vec_s = aligned16(states16) && a.N % 8 == 0;
    const bool vec_cb = a.Q % 2 == 0;  // float2 pairs (the workspace is 256-byte aligned)
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
    const int s_end = min(L, t0 + kSt);
    for (int s = threadIdx.x; s < s_end; s += kMmaThreads) {
        sm.cum_c[s] = cum[s];
        sm.dt_c[s] = dtv[s];
        if (kFactored && s < t0) sm.w_c[s] = exp_diff(cum[s / kSt * kSt + kSt - 1], cum[s]) * dtv[s];
    }
    // (visible after the first step's barrier)
    const int n_n = int(mma_tiles(a.N)), n_s = ty + 1, n_it = n_n + n_s;

    // This thread's C·Bᵀ values of s tile j: fragment register r of 16-deep slice kk holds row
    // 16·warp + grp + 8·(r % 2), columns s0 + 16·kk + 2·quad + 8·(r / 2) and the next one.
    float2 cbv[4][4];
    const int t_lo = t0 + 16 * warp + grp;  // this thread's rows t_lo and t_lo + 8
    const float* cb_row = cb + t_lo * Q + 2 * quad;
    auto load_cb = [&](int j) {
        const int s0 = j * kSt;
        if (vec_cb && t0 + kSt <= L && s0 + kSt <= L) {  // the whole tile in the chunk: float2 loads
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                for (int r = 0; r < 4; ++r)
                    cbv[kk][r] = *reinterpret_cast<const float2*>(cb_row + (r % 2) * 8 * Q + s0 + 16 * kk +
                                                                  8 * (r / 2));
            return;
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int t = t_lo + 8 * (r % 2), s = s0 + 16 * kk + 2 * quad + 8 * (r / 2);
                const float* src = cb_row + (r % 2) * 8 * Q + s0 + 16 * kk + 8 * (r / 2);
                cbv[kk][r].x = t < L && s < L ? src[0] : 0.0f;
                cbv[kk][r].y = t < L && s + 1 < L ? src[1] : 0.0f;
            }
    };
    load_cb(0);

    for (int64_t p0 = 0; p0 < a.P; p0 += kSt) {
        const int cols_p = int(a.P - p0);
        auto stage = [&](int it) {
            const int slot = it & 1;
            if (it < n_n) {
                const int64_t n0 = int64_t(it) * kSt;
                stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.a[slot][0][0], Cg + t0 * a.ld_C + n0,
                                                              a.ld_C, rows_t, int(a.N - n0), vec_c);
                stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.b[slot][0][0], S16 + p0 * a.N + n0, a.N,
                                                              int(min(a.P - p0, int64_t(kSt))), int(a.N - n0),
                                                              vec_s);
            } else {
                const int64_t s0 = int64_t(it - n_n) * kSt;
                stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.a[slot][0][0], xg + s0 * a.ld_x + p0,
                                                              a.ld_x, int(min(L - s0, int64_t(kSt))), cols_p,
                                                              vec_x);
            }
            cp_async_commit();
        };

        stage(0);
        float acc[8][4] = {};
        for (int it = 0; it < n_it; ++it) {
            cp_async_wait<0>();
            __syncthreads();  // slot it & 1 is filled; every warp is done with the other slot
            if (it + 1 < n_it) stage(it + 1);
            const int slot = it & 1;
            if (it < n_n) {
                warp_mma_k64<false, false>(acc, &sm.a[slot][0][0], &sm.b[slot][0][0]);
                if (it == n_n - 1) scale_rows_by_exp_cum(acc, sm.cum_c, t0, rows_t);  // acc = C_t·S_inᵀ
                continue;
            }
            // An s step: the scores of this warp's rows, as ssd_output_tc_kernel's round(), into
            // fragments; then the next s tile's C·Bᵀ values are requested.
            const int j = it - n_n, s0 = j * kSt;
            uint32_t af[4][4];
            if (kFactored && s0 + kSt <= t0) {  // below the diagonal tile: every s < every t
                const double c_ref = sm.cum_c[s0 + kSt - 1];
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    const int tl = 16 * warp + grp + 8 * hf;
                    const float et = tl < rows_t ? exp_diff(sm.cum_c[t0 + tl], c_ref) : 0.0f;
#pragma unroll
                    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                        for (int half = 0; half < 2; ++half) {
                            const int r = hf + 2 * half, s = s0 + 16 * kk + 2 * quad + 8 * half;
                            const float2 w = *reinterpret_cast<const float2*>(&sm.w_c[s]);
                            af[kk][r] = pack_bf16x2(cbv[kk][r].x * et * w.x, cbv[kk][r].y * et * w.y);
                        }
                }
            } else {
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int tl = 16 * warp + grp + 8 * hf;
                const int t = t0 + tl;
                const bool row_in = tl < rows_t;
                const double cum_t = sm.cum_c[row_in ? t : 0];
#pragma unroll
                for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int r = hf + 2 * half;
                        const int s = s0 + 16 * kk + 2 * quad + 8 * half;
                        const float v0 = row_in && s <= t
                                             ? cbv[kk][r].x * exp_diff(cum_t, sm.cum_c[s]) * sm.dt_c[s]
                                             : 0.0f;
                        const float v1 =
                            row_in && s + 1 <= t
                                ? cbv[kk][r].y * exp_diff(cum_t, sm.cum_c[s + 1]) * sm.dt_c[s + 1]
                                : 0.0f;
                        af[kk][r] = pack_bf16x2(v0, v1);
                    }
            }
            }
            if (j + 1 < n_s) load_cb(j + 1);
            const __nv_bfloat16* xs = &sm.a[slot][0][0];
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) {
                    uint32_t bq[4];
                    ldb_kn(bq, xs, kStLd, 16 * jj, 16 * kk);
                    const uint32_t b0[2] = {bq[0], bq[1]}, b1[2] = {bq[2], bq[3]};
                    mma_m16n8k16_bf16(acc[2 * jj], af[kk], b0);
                    mma_m16n8k16_bf16(acc[2 * jj + 1], af[kk], b1);
                }
        }
        // y = acc + D·x_t, x_t being the last step's x (s tile = t tile).
        store_output_rows(a, acc, sm.a[(n_it - 1) & 1], y, ch, h, t0, p0, rows_t, cols_p);
        __syncthreads();  // the ring is restaged for the next p tile
        if (p0 + kSt < a.P) load_cb(0);
    }
}

// A block's sum of v (blockDim.x a power of two, red blockDim.x floats), in a fixed tree; returns
// synchronised, the same bits in every thread.
__device__ float block_tree_sum(float v, float* red) {
    __syncthreads();
    red[threadIdx.x] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    return red[0];
}

// ---- backward, per (b, chunk, head), one block looping over the chunk's tiles (grid
// B·n_chunks·H). With dM = dY·X̃ᵀ, E = dM ∘ M (s < t), V = B·dSᵀ, Z = C·S_inᵀ:
//   dX̃     = Mᵀ·dY + diag(decay)·V
//   dcum_t = Σ_s E[t, s] − Σ_t' E[t', t] + exp(cum_t)·⟨dY_t, Z_t⟩ − q_t (t < L−1)
//            + [t = L−1]·(Σ_{s<L−1} q_s + exp(cum_last)·⟨dS, S_in⟩),   q_s = decay_s·⟨X̃_s, V_s⟩
//   da_t = Σ_{t' ≥ t} dcum_t' (the gradient of dt_t·A), ddt_t = da_t·A + ⟨x_t, dX̃_t⟩
// It writes dx and ddt (each row of a head has one block) and per-chunk sums for dA_log, dD and
// ddt_bias; dB and dC, shared by a group's heads, come from ssd_dcb_kernel and ssd_dbc_kernel.
// Dynamic shared memory: 4·Q floats.

// The end of both backward head kernels, from the per-token sums in vecs (dcum, xdx, qsum, rsum;
// ssd_backward_head_kernel) and each thread's share dD_acc of Σ dY·x: ⟨dS, S_in⟩ and Σ dY·x reduced in
// a fixed tree over red (blockDim.x floats, a power of two), then thread 0 walks the chunk backwards
// for ddt and the per-chunk sums of dA_log, dD and ddt_bias.
template <typename T>
__device__ void finish_backward_head(const Args<T>& a, const Chunk& ch, int64_t h, int64_t bch,
                                     const float* S_in, const float* dS, float dD_acc, float* vecs,
                                     float* red, T* ddt, float* part) {
    const int64_t L = ch.L, bh = ch.b * a.H + h;
    float* dcum = vecs;
    const float* xdx = vecs + a.Q;
    const float* qsum = xdx + a.Q;
    const float* rsum = qsum + a.Q;
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const double cum_last = cum[L - 1];
    float dss = 0.0f;
    for (int64_t e = threadIdx.x; e < a.P * a.N; e += blockDim.x) dss += dS[e] * S_in[e];
    auto block_sum = [&](float v) { return block_tree_sum(v, red); };
    dss = block_sum(dss);
    const float dD_sum = block_sum(dD_acc);

    if (threadIdx.x != 0) return;
    float tail_q = 0.0f;
    for (int64_t t = 0; t < L; ++t) {
        dcum[t] += expf(static_cast<float>(cum[t])) * rsum[t];
        if (t < L - 1) {
            dcum[t] -= qsum[t];
            tail_q += qsum[t];
        }
    }
    dcum[L - 1] += tail_q + expf(static_cast<float>(cum_last)) * dss;
    const float A = head_A(a, h), bias = head_bias(a, h);
    float da = 0.0f, dA_acc = 0.0f, dbias_acc = 0.0f;
    for (int64_t t = L - 1; t >= 0; --t) {
        da += dcum[t];
        const float ddtv = da * A + xdx[t];
        dA_acc += da * dtv[t];
        const int64_t at = (ch.row0 + t) * a.ld_dt + h;
        const float draw = ddtv * dt_grad(to_f32(a.dt[at]) + bias, a.dt_min, a.dt_max);
        if (ddt) ddt[at] = from_f32<T>(to_f32(ddt[at]) + draw);
        dbias_acc += draw;
    }
    const int64_t n_part = a.batch * a.n_chunks * a.H;
    part[bch] = dA_acc;
    part[n_part + bch] = dD_sum;
    part[2 * n_part + bch] = dbias_acc;
}

template <typename T>
__global__ void ssd_backward_head_kernel(Args<T> a, const T* dy, const float* CB, const float* states,
                                         const float* dS_all, T* dx, T* ddt, float* part) {
    __shared__ TileSmem sm;
    __shared__ float colbuf[8][kTile];
    __shared__ float red[kTileThreads];
    extern __shared__ float vecs[];
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const Chunk ch = chunk_of(a, b, c);
    const int64_t L = ch.L, g = h / a.heads_per_group, bh = b * a.H + h;
    float* dcum = vecs;        // (Q)
    float* xdx = vecs + a.Q;   // (Q) ⟨x_t, dX̃_t⟩
    float* qsum = xdx + a.Q;   // (Q) q_s
    float* rsum = qsum + a.Q;  // (Q) ⟨dY_t, Z_t⟩
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const float* cb = CB + ((b * a.n_chunks + c) * a.G + g) * a.Q * a.Q;
    const float* S_in = states + bch * a.P * a.N;  // (P, N)
    const float* dS = dS_all + bch * a.P * a.N;    // (P, N)
    const T* x = a.x + ch.row0 * a.ld_x + h * a.P;
    const T* dYc = dy + (ch.row0 * a.H + h) * a.P;  // row stride H·P
    const T* Bc = a.Bm + ch.row0 * a.ld_B + g * a.N;
    const T* Cc = a.Cm + ch.row0 * a.ld_C + g * a.N;
    const int64_t ld_y = a.H * a.P;
    const int tx = tile_col(), ty = threadIdx.x / kTile;
    const double cum_last = cum[L - 1];
    auto M = [&](int64_t t, int64_t s) { return cb[t * a.Q + s] * exp_diff(cum[t], cum[s]); };  // s ≤ t

    for (int64_t t = threadIdx.x; t < L; t += blockDim.x) dcum[t] = xdx[t] = qsum[t] = rsum[t] = 0.0f;
    __syncthreads();

    // dcum from E: row sums add, column sums subtract.
    for (int64_t t0 = 0; t0 < L; t0 += kTile)
        for (int64_t s0 = 0; s0 <= t0; s0 += kTile) {
            float acc[4] = {};
            tile_mma(
                acc, 0, a.P,
                [&](int j, int64_t p) { return t0 + j < L ? to_f32(dYc[(t0 + j) * ld_y + p]) : 0.0f; },
                [&](int64_t p, int j) {
                    return s0 + j < L ? dtv[s0 + j] * to_f32(x[(s0 + j) * a.ld_x + p]) : 0.0f;
                },
                sm);
            float col = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int64_t t = t0 + tile_row(i), s = s0 + tx;
                const float e = s < t && t < L ? acc[i] * M(t, s) : 0.0f;
                col += e;
                const float row = warp_sum(e);
                if (tx == 0 && t < L) dcum[t] += row;
            }
            colbuf[ty][tx] = col;
            __syncthreads();
            if (ty == 0 && s0 + tx < L) {
                float sum = 0.0f;
                for (int w = 0; w < 8; ++w) sum += colbuf[w][tx];
                dcum[s0 + tx] -= sum;
            }
            __syncthreads();
        }

    // Per (token, p) tile: dX̃, then dx, and the row sums ⟨x, dX̃⟩, q and ⟨dY, Z⟩.
    const float Dh = a.D ? to_f32(a.D[h]) : 0.0f;
    float dD_acc = 0.0f;
    for (int64_t s0 = 0; s0 < L; s0 += kTile)
        for (int64_t p0 = 0; p0 < a.P; p0 += kTile) {
            float mty[4] = {}, v[4] = {}, z[4] = {};
            tile_mma(
                mty, s0, L, [&](int j, int64_t t) { return s0 + j <= t ? M(t, s0 + j) : 0.0f; },
                [&](int64_t t, int j) { return p0 + j < a.P ? to_f32(dYc[t * ld_y + p0 + j]) : 0.0f; }, sm);
            tile_mma(
                v, 0, a.N,
                [&](int j, int64_t n) { return s0 + j < L ? to_f32(Bc[(s0 + j) * a.ld_B + n]) : 0.0f; },
                [&](int64_t n, int j) { return p0 + j < a.P ? dS[(p0 + j) * a.N + n] : 0.0f; }, sm);
            tile_mma(
                z, 0, a.N,
                [&](int j, int64_t n) { return s0 + j < L ? to_f32(Cc[(s0 + j) * a.ld_C + n]) : 0.0f; },
                [&](int64_t n, int j) { return p0 + j < a.P ? S_in[(p0 + j) * a.N + n] : 0.0f; }, sm);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int64_t s = s0 + tile_row(i), p = p0 + tx;
                float r_xdx = 0.0f, r_q = 0.0f, r_z = 0.0f;
                if (s < L && p < a.P) {
                    const float decay = exp_diff(cum_last, cum[s]);
                    const float xv = to_f32(x[s * a.ld_x + p]), dyv = to_f32(dYc[s * ld_y + p]);
                    const float dxt = mty[i] + decay * v[i];
                    r_xdx = xv * dxt;
                    r_q = decay * (dtv[s] * xv) * v[i];
                    r_z = dyv * z[i];
                    dD_acc += dyv * xv;
                    if (dx) {
                        T* d = dx + (ch.row0 + s) * a.ld_x + h * a.P + p;
                        *d = from_f32<T>(to_f32(*d) + dtv[s] * dxt + Dh * dyv);
                    }
                }
                r_xdx = warp_sum(r_xdx), r_q = warp_sum(r_q), r_z = warp_sum(r_z);
                if (tx == 0 && s < L) {
                    xdx[s] += r_xdx;
                    qsum[s] += r_q;
                    rsum[s] += r_z;
                }
            }
        }

    finish_backward_head(a, ch, h, bch, S_in, dS, dD_acc, vecs, red, ddt, part);
}

// dCB (Q, Q) per (b, chunk, group) = Σ_{h in g} (dY_h·X̃_hᵀ) ∘ Lm_h on s ≤ t, heads in order;
// grid (B·n_chunks·G, tiles²). As for CB, tiles above the diagonal are neither written nor read.
template <typename T>
__global__ void ssd_dcb_kernel(Args<T> a, const T* dy, float* dCB) {
    __shared__ TileSmem sm;
    const int64_t bcg = blockIdx.x, g = bcg % a.G, c = bcg / a.G % a.n_chunks, b = bcg / (a.G * a.n_chunks);
    const int64_t tq = tiles(a.Q), ti = blockIdx.y / tq, si = blockIdx.y % tq;
    const Chunk ch = chunk_of(a, b, c);
    if (si > ti || ti * kTile >= ch.L) return;
    const int64_t t0 = ti * kTile, s0 = si * kTile, ld_y = a.H * a.P;
    float dcb[4] = {};
    for (int64_t h = g * a.heads_per_group; h < (g + 1) * a.heads_per_group; ++h) {
        const int64_t bh = b * a.H + h;
        const double* cum = a.cum + bh * a.seqlen + ch.t0;
        const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
        const T* x = a.x + ch.row0 * a.ld_x + h * a.P;
        const T* dYc = dy + (ch.row0 * a.H + h) * a.P;
        float acc[4] = {};
        tile_mma(
            acc, 0, a.P,
            [&](int j, int64_t p) { return t0 + j < ch.L ? to_f32(dYc[(t0 + j) * ld_y + p]) : 0.0f; },
            [&](int64_t p, int j) {
                return s0 + j < ch.L ? dtv[s0 + j] * to_f32(x[(s0 + j) * a.ld_x + p]) : 0.0f;
            },
            sm);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int64_t t = t0 + tile_row(i), s = s0 + tile_col();
            if (s <= t && t < ch.L) dcb[i] += acc[i] * exp_diff(cum[t], cum[s]);
        }
    }
    float* out = dCB + bcg * a.Q * a.Q;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t t = t0 + tile_row(i), s = s0 + tile_col();
        if (t < ch.L && s < ch.L) out[t * a.Q + s] = dcb[i];  // 0 above the diagonal
    }
}

// dC (kDC) or dB of one (b, chunk, group), grid (B·n_chunks·G, tiles(Q)·tiles(N)); rows are tokens:
//   dC[t] += Σ_s dCB[t, s]·B_s + Σ_{h in g} exp(cum_h,t)·dY_h,t·S_in,h
//   dB[s] += Σ_t dCB[t, s]·C_t + Σ_{h in g} decay_h,s·X̃_h,s·dS_h
// Each output element has one thread, so the += needs no atomics.
template <bool kDC, typename T>
__global__ void ssd_dbc_kernel(Args<T> a, const T* dy, const float* dCB, const float* states,
                               const float* dS_all, T* grad) {
    __shared__ TileSmem sm;
    const int64_t bcg = blockIdx.x, g = bcg % a.G, c = bcg / a.G % a.n_chunks, b = bcg / (a.G * a.n_chunks);
    const int64_t tn = tiles(a.N), r0 = blockIdx.y / tn * kTile, n0 = blockIdx.y % tn * kTile;
    const Chunk ch = chunk_of(a, b, c);
    if (r0 >= ch.L) return;
    const int64_t L = ch.L, ld_y = a.H * a.P;
    const float* dcb = dCB + bcg * a.Q * a.Q;
    const T* other = kDC ? a.Bm + ch.row0 * a.ld_B + g * a.N : a.Cm + ch.row0 * a.ld_C + g * a.N;
    const int64_t ld_other = kDC ? a.ld_B : a.ld_C;
    float acc[4] = {};
    if constexpr (kDC) {
        tile_mma(
            acc, 0, min(L, r0 + kTile),
            [&](int j, int64_t s) { return r0 + j < L && s <= r0 + j ? dcb[(r0 + j) * a.Q + s] : 0.0f; },
            [&](int64_t s, int j) { return n0 + j < a.N ? to_f32(other[s * ld_other + n0 + j]) : 0.0f; }, sm);
    } else {
        tile_mma(
            acc, r0, L, [&](int j, int64_t t) { return r0 + j <= t ? dcb[t * a.Q + r0 + j] : 0.0f; },
            [&](int64_t t, int j) { return n0 + j < a.N ? to_f32(other[t * ld_other + n0 + j]) : 0.0f; }, sm);
    }
    for (int64_t h = g * a.heads_per_group; h < (g + 1) * a.heads_per_group; ++h) {
        const int64_t bh = b * a.H + h, bch = (b * a.n_chunks + ch.c) * a.H + h;
        const double* cum = a.cum + bh * a.seqlen + ch.t0;
        const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
        const float* state = kDC ? states + bch * a.P * a.N : dS_all + bch * a.P * a.N;  // (P, N)
        const double cum_last = cum[L - 1];
        tile_mma(
            acc, 0, a.P,
            [&](int j, int64_t p) {
                const int64_t r = r0 + j;
                if (r >= L) return 0.0f;
                if constexpr (kDC) {
                    return expf(static_cast<float>(cum[r])) * to_f32(dy[((ch.row0 + r) * a.H + h) * a.P + p]);
                } else {
                    return exp_diff(cum_last, cum[r]) * dtv[r] *
                           to_f32(a.x[(ch.row0 + r) * a.ld_x + h * a.P + p]);
                }
            },
            [&](int64_t p, int j) { return n0 + j < a.N ? state[p * a.N + n0 + j] : 0.0f; }, sm);
    }
    const int64_t ld = kDC ? a.ld_C : a.ld_B;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t r = r0 + tile_row(i), n = n0 + tile_col();
        if (r >= L || n >= a.N) continue;
        T* d = grad + (ch.row0 + r) * ld + g * a.N + n;
        *d = from_f32<T>(to_f32(*d) + acc[i]);
    }
}

// ---- tensor-core versions of (3) and of the backward, for bf16 storage. The products keep the
// fp32 kernels' loaders, with two changes that keep them near fp32 accuracy:
//   - a per-row or per-column factor of an operand (dt_s, exp(cum_t), decay_s) is taken out of the
//     product where it can be, and applied to the fp32 result: the operand is then a bf16 input,
//     exact (dY·Xᵀ of dM and dCB, the state terms of dB and dC);
//   - an operand formed in fp32 that cannot be factored (the decayed x of the chunk states, the
//     scores M, dCB, the fp32 states S_in and dS) is split into hi + lo bf16 (block_mma_ex), within
//     2^-16 of its value: the states and every gradient feed later chunks or cancel (dcum subtracts
//     column sums of E from its row sums), where a single bf16 rounding (2^-8) would cost more than
//     the fp32 chain (tests/unit/test_cuda_ssd.cpp argues the tolerances).
// All 64 × 64 output tiles of 128 threads; every sum is over fixed tiles in a fixed order.

// Per (b, chunk, head) a (P, N) sum over the chunk's tokens, as ssd_chunk_state_kernel; grid
// (B·n_chunks·H, mma_tiles(P)·⌈mma_tiles(N) / kChunkStateNT⌉). A = w_t·X_t (P × L, formed in fp32 and
// split, stored [t][p]), B = Y (L × N, exact), 64 tokens a step; a block takes kChunkStateNT
// consecutive 64-column tiles of N, so each X tile is copied and split once for all of them (with
// one tile a block, the two N tiles of N = 128 each copied and split the same X). Both are copied by
// cp.async (X raw, Y double-buffered); per step: wait, split w_t·X into hi / lo cooperatively,
// barrier, issue the next step's copies, products (the pipeline of ssd_backward_head_tc_kernel).
// Every output gets the one-tile kernel's products in its order. kNT = 1 where two tiles a block would
// leave fewer than three blocks an SM (a prefill's single sequence: measured 1–2.6% slower with 2).
// Dynamic shared memory: sizeof(ChunkStateSmem<kNT>) (4 blocks a multiprocessor at 1 tile, 3 at 2).
template <int kNT>
struct ChunkStateSmem {
    __nv_bfloat16 ys[2][kNT][kSt][kStLd];  // Y[t][n] of each N tile
    __nv_bfloat16 xraw[kSt][kStLd];        // X[t][p] as copied
    __nv_bfloat16 xhi[kSt][kStLd];         // w_t·X[t][p] split
    __nv_bfloat16 xlo[kSt][kStLd];
    float w[kMaxChunk];  // the token weights w_t, once per block rather than per element
};

template <bool kGrad, int NT, typename T>
__global__ void __launch_bounds__(kMmaThreads, NT == 1 ? 4 : 3)
    ssd_chunk_state_tc_kernel(Args<T> a, const T* dy, float* out) {
    pdl_wait();  // may be launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    static_assert(std::is_same_v<T, __nv_bfloat16>, "tensor-core kernels are bf16");
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    ChunkStateSmem<NT>& sm = *reinterpret_cast<ChunkStateSmem<NT>*>(dyn_smem);
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const int64_t tn = (mma_tiles(a.N) + NT - 1) / NT, p0 = blockIdx.y / tn * kSt,
                  n0 = blockIdx.y % tn * NT * kSt;
    const Chunk ch = chunk_of(a, b, c);
    const int64_t L = ch.L, g = h / a.heads_per_group, bh = b * a.H + h;
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const double cum_last = cum[L - 1];
    const T* X = kGrad ? dy + (ch.row0 * a.H + h) * a.P : a.x + ch.row0 * a.ld_x + h * a.P;
    const int64_t ld_X = kGrad ? a.H * a.P : a.ld_x;
    const T* Y = kGrad ? a.Cm + ch.row0 * a.ld_C + g * a.N : a.Bm + ch.row0 * a.ld_B + g * a.N;
    const int64_t ld_Y = kGrad ? a.ld_C : a.ld_B;
    const bool vec_X = aligned16(kGrad ? static_cast<const void*>(dy) : a.x) && ld_X % 8 == 0 && a.P % 8 == 0;
    const bool vec_Y = aligned16(kGrad ? a.Cm : a.Bm) && ld_Y % 8 == 0 && a.N % 8 == 0;
    const int cols_p = int(a.P - p0);
    for (int64_t t = threadIdx.x; t < L; t += blockDim.x)
        sm.w[t] = kGrad ? expf(static_cast<float>(cum[t])) : exp_diff(cum_last, cum[t]) * dtv[t];
    // (visible after the first step's barrier)
    const int n_it = int(mma_tiles(L));
    auto stage = [&](int it) {
        const int64_t t0 = int64_t(it) * kSt;
        const int rows_t = int(min(L - t0, int64_t(kSt)));
#pragma unroll
        for (int q = 0; q < NT; ++q)  // a tile past N is staged as zeros (and never stored)
            stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.ys[it & 1][q][0][0],
                                                          Y + t0 * ld_Y + n0 + q * kSt, ld_Y, rows_t,
                                                          int(a.N - n0 - q * kSt), vec_Y);
        stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.xraw[0][0], X + t0 * ld_X + p0, ld_X, rows_t, cols_p,
                                                      vec_X);
        cp_async_commit();
    };
    stage(0);
    float acc[NT][8][4] = {};
    for (int it = 0; it < n_it; ++it) {
        const int64_t t0 = int64_t(it) * kSt;
        cp_async_wait<0>();
        __syncthreads();
        // xhi/xlo[r][col] = split(w[t0 + r]·X[t0 + r][p0 + col]), 8 consecutive p a piece, 4 pieces a
        // thread (rows past L: X staged as 0).
        constexpr int kPer = kSt * kSt / 8 / kMmaThreads;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int e = int(threadIdx.x) + i * kMmaThreads, r = e / (kSt / 8), col = e % (kSt / 8) * 8;
            const float wt = t0 + r < L ? sm.w[t0 + r] : 0.0f;
            const uint4 raw = *reinterpret_cast<const uint4*>(&sm.xraw[r][col]);
            const uint32_t in[4] = {raw.x, raw.y, raw.z, raw.w};
            uint32_t hi[4], lo[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&in[k]));
                hi[k] = split_pair_hi(wt * v.x, wt * v.y, lo[k]);
            }
            *reinterpret_cast<uint4*>(&sm.xhi[r][col]) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
            *reinterpret_cast<uint4*>(&sm.xlo[r][col]) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
        }
        __syncthreads();
        if (it + 1 < n_it) stage(it + 1);
        warp_mma_k64_split_a_tiles<NT>(acc, &sm.xhi[0][0], &sm.xlo[0][0], &sm.ys[it & 1][0][0][0]);
    }
    float* o = out + bch * a.P * a.N;
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
#pragma unroll
    for (int q = 0; q < NT; ++q)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int64_t p = p0 + 16 * warp + grp + 8 * (r / 2),
                              n = n0 + q * kSt + 8 * j + 2 * quad + r % 2;
                if (p < a.P && n < a.N) o[p * a.N + n] = acc[q][j][r];
            }
}

// finish_backward_head for the tensor-core kernel, parallel: the per-token corrections of dcum by
// all threads, then warp 0 takes the reverse cumulative sum da_t = Σ_{t' ≥ t} dcum_t' by segments
// (lane i owns ⌈L/32⌉ consecutive tokens: its segment's sum, a suffix scan over the lanes, then a
// walk down its segment) and writes ddt and the per-chunk sums. A fixed order throughout
// (deterministic); the sums are blocked rather than recursive, within the same n·u bound. dss:
// ⟨dS, S_in⟩ of the chunk; cum and dtv: the chunk's values (shared memory); red: kMmaThreads floats.
size_t head_tc_vec_bytes(int64_t Q) {
    return size_t(Q) * (4 * sizeof(float) + sizeof(double) + sizeof(float));
}

// ⟨dS, S_in⟩ over a (P, N) state by the block: 16-byte loads, 4 in flight a thread, where the slices
// allow.
__device__ float state_dot(const float* S_in, const float* dS, int64_t PN, float* red) {
    float dss = 0.0f;
    if (aligned16(S_in) && aligned16(dS) && PN % 4 == 0) {
        const float4* s4 = reinterpret_cast<const float4*>(S_in);
        const float4* d4 = reinterpret_cast<const float4*>(dS);
#pragma unroll 4
        for (int64_t e = threadIdx.x; e < PN / 4; e += blockDim.x) {
            const float4 u = d4[e], v = s4[e];
            dss += u.x * v.x + u.y * v.y + u.z * v.z + u.w * v.w;
        }
    } else {
        for (int64_t e = threadIdx.x; e < PN; e += blockDim.x) dss += dS[e] * S_in[e];
    }
    return block_tree_sum(dss, red);
}

template <typename T>
__device__ void finish_backward_head_tc(const Args<T>& a, const Chunk& ch, int64_t h, int64_t bch, float dss,
                                        float dD_acc, float* vecs, const double* cum, const float* dtv,
                                        float* red, T* ddt, float* part) {
    const int64_t L = ch.L;
    float* dcum = vecs;
    const float* xdx = vecs + a.Q;
    const float* qsum = xdx + a.Q;
    const float* rsum = qsum + a.Q;
    auto block_sum = [&](float v) { return block_tree_sum(v, red); };
    const float dD_sum = block_sum(dD_acc);
    float q_part = 0.0f;
    for (int64_t t = threadIdx.x; t < L; t += blockDim.x) {
        float v = dcum[t] + expf(static_cast<float>(cum[t])) * rsum[t];
        if (t < L - 1) {
            v -= qsum[t];
            q_part += qsum[t];
        }
        dcum[t] = v;
    }
    const float tail_q = block_sum(q_part);
    if (threadIdx.x == 0) dcum[L - 1] += tail_q + expf(static_cast<float>(cum[L - 1])) * dss;
    __syncthreads();
    if (threadIdx.x >= 32) return;

    const int lane = threadIdx.x;
    const int64_t seg = (L + 31) / 32, lo = min(L, lane * seg), hi = min(L, lo + seg);
    float own = 0.0f;
    for (int64_t t = lo; t < hi; ++t) own += dcum[t];
    float suffix = own;  // Σ over lanes ≥ lane
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float v = __shfl_down_sync(0xffffffffu, suffix, o);
        if (lane + o < 32) suffix += v;
    }
    float da = __shfl_down_sync(0xffffffffu, suffix, 1);  // Σ over lanes > lane
    if (lane == 31) da = 0.0f;
    const float A = head_A(a, h), bias = head_bias(a, h);
    float dA_acc = 0.0f, dbias_acc = 0.0f;
    for (int64_t t = hi - 1; t >= lo; --t) {
        da += dcum[t];
        const float ddtv = da * A + xdx[t];
        dA_acc += da * dtv[t];
        const int64_t at = (ch.row0 + t) * a.ld_dt + h;
        const float draw = ddtv * dt_grad(to_f32(a.dt[at]) + bias, a.dt_min, a.dt_max);
        if (ddt) ddt[at] = from_f32<T>((a.overwrite ? 0.0f : to_f32(ddt[at])) + draw);
        dbias_acc += draw;
    }
    dA_acc = warp_sum(dA_acc);
    dbias_acc = warp_sum(dbias_acc);
    if (lane == 0) {
        const int64_t n_part = a.batch * a.n_chunks * a.H;
        part[bch] = dA_acc;
        part[n_part + bch] = dD_sum;
        part[2 * n_part + bch] = dbias_acc;
    }
}

// ---- the tensor-core backward in three kernels (grids of many small blocks instead of one block
// per chunk and head looping over its tiles), with operands staged by cp.async and read by ldmatrix:
//   ssd_dcb_tc_kernel, per (b, chunk, group) and (t, s) tile pair: per head, G = (dY·Xᵀ)·dt_s·Lm
//   summed over the group's heads into dCB, and E = G ∘ C·Bᵀ (s < t), whose row and column sums
//   (the dcum terms) go to per-tile slots erow / ecol;
//   ssd_backward_head_tc_kernel, per (b, chunk, head) and s tile: dX̃ = diag(decay)·B·dSᵀ + Mᵀ·dY, dx,
//   and the per-token sums ⟨x, dX̃⟩, q, ⟨dY, x⟩ and (without dC wanted) ⟨dY, C·S_inᵀ⟩ to `tok`;
//   ssd_dbc_tc_kernel, per (b, chunk, group), row tile and n tile: dC and dB; its dC blocks also give
//   ⟨dY, C·S_inᵀ⟩ by n tile from their dY·S_in product, one launch ahead of the head kernel;
//   ssd_backward_finish_tc_kernel, per (b, chunk, head): dcum from the slots in a fixed order, then
//   finish_backward_head_tc (ddt and the per-chunk parameter sums).
// Every sum has one writer per output and a fixed order: deterministic.
// dCB per (b, chunk, group) as ssd_dcb_kernel, and the E slots; grid (B·n_chunks·G, nT·(nT + 1)/2)
// over the tile pairs si ≤ ti (nT = mma_tiles(Q)), tiles beyond the chunk exit. The heads' (dY_h,
// x_h) tiles, 64 p at a time, are double-buffered (cp.async of step i + 1 issued after step i's
// barrier, in flight during its products), with each head's cum and dt beside its last step; one
// barrier a step. Per head, in fp32 on the exact product: G[t, s] = (dY·Xᵀ)[t, s]·dt_s·
// exp(cum_t − cum_s) (s ≤ t < L), dCB += G, E = G·CB[t, s] (s < t):
//   erow[(bch·nT + si)·Q + t] = Σ_{s in tile si} E[t, s]      (t in tile ti)
//   ecol[(bch·nT + ti)·Q + s] = Σ_{t in tile ti} E[t, s]      (s in tile si)
// Dynamic shared memory: sizeof(DcbSmem).
struct DcbSmem {
    __nv_bfloat16 dy[2][kSt][kStLd];  // dY_h rows t, 64 columns p
    __nv_bfloat16 x[2][kSt][kStLd];   // x_h rows s
    double cum_t[2][kSt], cum_s[2][kSt];
    float dt_s[2][kSt];
    float cb[kSt][kSt + 4];  // the group's C·Bᵀ tile
    float colred[2][4][kSt];  // per head parity: the warps' column sums of E, emitted a step later
};

template <typename T>
__global__ void __launch_bounds__(kMmaThreads, 3)
    ssd_dcb_tc_kernel(Args<T> a, const T* dy, const float* CB, float* dCB, float* erow, float* ecol) {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "tensor-core kernels are bf16");
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    DcbSmem& sm = *reinterpret_cast<DcbSmem*>(dyn_smem);
    const int64_t bcg = blockIdx.x, g = bcg % a.G, c = bcg / a.G % a.n_chunks, b = bcg / (a.G * a.n_chunks);
    const int64_t nT = mma_tiles(a.Q);
    int64_t ti = 0;  // blockIdx.y = ti·(ti + 1)/2 + si, si ≤ ti
    while ((ti + 1) * (ti + 2) / 2 <= int64_t(blockIdx.y)) ++ti;
    const int64_t si = int64_t(blockIdx.y) - ti * (ti + 1) / 2;
    const Chunk ch = chunk_of(a, b, c);
    if (ti * kSt >= ch.L) return;
    const int64_t L = ch.L, t0 = ti * kSt, s0 = si * kSt, ld_y = a.H * a.P;
    const int rows_t = int(min(L - t0, int64_t(kSt))), rows_s = int(min(L - s0, int64_t(kSt)));
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
    const bool vec_y = aligned16(dy) && a.P % 8 == 0;
    const bool vec_x = aligned16(a.x) && a.ld_x % 8 == 0 && a.P % 8 == 0;
    const int n_kc = int((a.P + kSt - 1) / kSt), n_it = int(a.heads_per_group) * n_kc;
    const int64_t h_first = g * a.heads_per_group;
    const float* cb = CB + bcg * a.Q * a.Q;

    auto stage = [&](int it) {
        const int buf = it & 1, kc = it % n_kc;
        const int64_t h = h_first + it / n_kc, p0 = int64_t(kc) * kSt;
        stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.dy[buf][0][0], dy + (ch.row0 + t0) * ld_y + h * a.P + p0,
                                                      ld_y, rows_t, int(a.P - p0), vec_y);
        stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.x[buf][0][0], a.x + (ch.row0 + s0) * a.ld_x + h * a.P + p0,
                                                      a.ld_x, rows_s, int(a.P - p0), vec_x);
        if (kc == n_kc - 1) {
            const int64_t base = (b * a.H + h) * a.seqlen + ch.t0;
            for (int i = threadIdx.x; i < 3 * kSt; i += kMmaThreads) {
                const int r = i % kSt, which = i / kSt;
                if (which == 0) {
                    if (r < rows_t) cp_async_8(&sm.cum_t[buf][r], a.cum + base + t0 + r);
                    else sm.cum_t[buf][r] = 0.0;
                } else if (which == 1) {
                    if (r < rows_s) cp_async_8(&sm.cum_s[buf][r], a.cum + base + s0 + r);
                    else sm.cum_s[buf][r] = 0.0;
                } else {
                    if (r < rows_s) cp_async_4(&sm.dt_s[buf][r], a.dtv + base + s0 + r);
                    else sm.dt_s[buf][r] = 0.0f;
                }
            }
        }
        cp_async_commit();
    };

    stage(0);
    for (int e = threadIdx.x; e < kSt * kSt; e += kMmaThreads) {
        const int r = e / kSt, col = e % kSt;
        sm.cb[r][col] = r < rows_t && col < rows_s ? cb[(t0 + r) * a.Q + s0 + col] : 0.0f;
    }
    // One barrier a step: after it, the step's copies are visible, the previous step's reads of the
    // other buffer are done (so the next copies may start), and the column sums of the previous
    // head (colred, by head parity) are complete: threads 0..63 emit them.
    auto emit_ecol = [&](int64_t head) {
        const int64_t bch = (b * a.n_chunks + c) * a.H + head;
        const int hb = int(head - h_first) & 1;
        if (threadIdx.x < kSt && int(threadIdx.x) < rows_s) {
            const int sl = threadIdx.x;
            ecol[(bch * nT + ti) * a.Q + s0 + sl] =
                ((sm.colred[hb][0][sl] + sm.colred[hb][1][sl]) + sm.colred[hb][2][sl]) + sm.colred[hb][3][sl];
        }
    };
    float acc[8][4] = {}, dcb[8][4] = {};
    for (int it = 0; it < n_it; ++it) {
        cp_async_wait<0>();
        __syncthreads();
        if (it > 0 && it % n_kc == 0) emit_ecol(h_first + it / n_kc - 1);
        if (it + 1 < n_it) stage(it + 1);
        const int buf = it & 1;
        warp_mma_k64<false, false>(acc, &sm.dy[buf][0][0], &sm.x[buf][0][0]);
        if (it % n_kc == n_kc - 1) {
            const int64_t h = h_first + it / n_kc, bch = (b * a.n_chunks + c) * a.H + h;
            const int hb = int(it / n_kc) & 1;
            float rs[2] = {0.0f, 0.0f}, cs[8][2] = {};
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int tl = 16 * warp + grp + 8 * (r / 2), sl = 8 * j + 2 * quad + r % 2;
                    const int64_t t = t0 + tl, s = s0 + sl;
                    float gv = 0.0f;
                    if (s <= t && t < L)
                        gv = acc[j][r] * sm.dt_s[buf][sl] * exp_diff(sm.cum_t[buf][tl], sm.cum_s[buf][sl]);
                    dcb[j][r] += gv;
                    const float e = s < t ? gv * sm.cb[tl][sl] : 0.0f;
                    rs[r / 2] += e;
                    cs[j][r % 2] += e;
                    acc[j][r] = 0.0f;
                }
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                float v = rs[hf];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                const int tl = 16 * warp + grp + 8 * hf;
                if (quad == 0 && tl < rows_t) erow[(bch * nT + si) * a.Q + t0 + tl] = v;
            }
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int odd = 0; odd < 2; ++odd) {
                    float v = cs[j][odd];
                    v += __shfl_xor_sync(0xffffffffu, v, 4);
                    v += __shfl_xor_sync(0xffffffffu, v, 8);
                    v += __shfl_xor_sync(0xffffffffu, v, 16);
                    if (grp == 0) sm.colred[hb][warp][8 * j + 2 * quad + odd] = v;
                }
        }
    }
    __syncthreads();
    emit_ecol(h_first + a.heads_per_group - 1);
    float* out = dCB + bcg * a.Q * a.Q;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int64_t t = t0 + 16 * warp + grp + 8 * (r / 2), s = s0 + 8 * j + 2 * quad + r % 2;
            if (t < L && s < L) out[t * a.Q + s] = dcb[j][r];  // 0 above the diagonal
        }
}

// Per (b, chunk, head) and s tile (grid (B·n_chunks·H, mma_tiles(Q))), for each 64-wide p tile:
//   kZ: Z = C_s·S_inᵀ (S_in split), the row sums ⟨dY_s, Z_s⟩ (else ssd_dbc_tc_kernel gives them);
//   acc = V = B_s·dSᵀ (dS split), the row sums q_s = decay_s·dt_s·⟨x_s, V_s⟩, acc *= decay_s;
//   acc += Mᵀ·dY over the t tiles ≥ s's (M[t, s] = CB[t, s]·exp(cum_t − cum_s), s ≤ t < L, formed in
//   fp32 from the fp64 difference and split): acc = dX̃;
//   dx += dt_s·dX̃ + D·dY, and the row sums ⟨x, dX̃⟩, ⟨dY, x⟩.
// The per-token sums, added over the p tiles in order, go to tok's slots (kTokXdx, kTokQ, kTokDyX,
// and kTokZ with kZ).
// The products of a p tile are one pipeline of 64-deep steps (the n tiles of Z, those of V, the t
// tiles of Mᵀ·dY). A step's operands are both copied by cp.async: the bf16 one (C or B rows s, dY
// rows t; double-buffered) and the fp32 source of the split one (the state tile, or the C·Bᵀ tile
// and its cum_t). Per step: wait for its copies; all threads split the fp32 source into the hi / lo
// tiles (forming M first); barrier; issue the next step's copies, which run during this step's
// products. Two barriers a step. Dynamic shared memory: sizeof(HeadSmem) (3 blocks a multiprocessor).
// kRegM (the default; MSLM_SSD_BWD_REG=0 for the staged form): the M steps skip that round trip —
// each warp forms the A fragments of its 16 s rows of Mᵀ in registers from C·Bᵀ values loaded from
// global memory into the fragment layout (each slice's a step ahead) and splits them there, as
// ssd_output_reg_kernel does the forward's scores; an M step then copies only its dY tile and cum_t
// and has one barrier. The same split values go through the same products in the same order: the
// staged form's bits (CudaSsdBackward.RegisterMStepsGiveTheStagedKernelsBits). Measured 4% faster
// (docs/PERFORMANCE.md); a factored form of M below the diagonal tile (a row factor times a column
// factor, as the forward's) was slower than this direct one and is not kept.
struct HeadSmem {
    __nv_bfloat16 xs[kSt][kStLd];    // x rows s, the p tile
    __nv_bfloat16 dys[kSt][kStLd];   // dY rows s
    __nv_bfloat16 h[2][kSt][kStLd];  // the bf16 operand: C or B rows s [s][n] | dY rows t [t][p]
    __nv_bfloat16 hi[kSt][kStLd];    // the split operand: state [p][n] | M [t][s]
    __nv_bfloat16 lo[kSt][kStLd];
    float f[kSt][kF32Ld];  // its fp32 source: state [p][n] | C·Bᵀ [t][s]
    double cum_t[2][kSt];  // the M step's cum at its t rows (by step parity)
    double cum_s[kSt];
    float dt_s[kSt];
};

template <typename T, bool kRegM, bool kZ>
__global__ void __launch_bounds__(kMmaThreads, 3)
    ssd_backward_head_tc_kernel(Args<T> a, const T* dy, const float* CB, const float* states,
                                const float* dS_all, T* dx, float* tok) {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "tensor-core kernels are bf16");
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    HeadSmem& sm = *reinterpret_cast<HeadSmem*>(dyn_smem);
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const Chunk ch = chunk_of(a, b, c);
    const int64_t L = ch.L, s0 = int64_t(blockIdx.y) * kSt;
    if (s0 >= L) return;
    const int rows_s = int(min(L - s0, int64_t(kSt)));
    const int64_t g = h / a.heads_per_group, bh = b * a.H + h, ld_y = a.H * a.P;
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const float* cb = CB + ((b * a.n_chunks + c) * a.G + g) * a.Q * a.Q;
    const float* S_in = states + bch * a.P * a.N;  // (P, N)
    const float* dS = dS_all + bch * a.P * a.N;    // (P, N)
    const T* xg = a.x + ch.row0 * a.ld_x + h * a.P;
    const T* dYg = dy + (ch.row0 * a.H + h) * a.P;  // row stride H·P
    const T* Bg = a.Bm + ch.row0 * a.ld_B + g * a.N;
    const T* Cg = a.Cm + ch.row0 * a.ld_C + g * a.N;
    const bool vec_x = aligned16(a.x) && a.ld_x % 8 == 0 && a.P % 8 == 0;
    const bool vec_y = aligned16(dy) && a.P % 8 == 0;
    const bool vec_b = aligned16(a.Bm) && a.ld_B % 8 == 0 && a.N % 8 == 0;
    const bool vec_c = aligned16(a.Cm) && a.ld_C % 8 == 0 && a.N % 8 == 0;
    const bool vec_st = aligned16(states) && aligned16(dS_all) && a.N % 4 == 0;
    const bool vec_cb = aligned16(CB) && a.Q % 4 == 0 && L % 4 == 0;  // tile columns end at L
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
    for (int r = threadIdx.x; r < kSt; r += kMmaThreads) {
        sm.cum_s[r] = r < rows_s ? cum[s0 + r] : 0.0;
        sm.dt_s[r] = r < rows_s ? dtv[s0 + r] : 0.0f;
    }
    // (visible after the first step's barrier)
    const int n_nt = int(mma_tiles(a.N)), n_z = kZ ? n_nt : 0, n_zv = n_z + n_nt;
    const int n_it = n_zv + int(mma_tiles(L) - blockIdx.y);

    const HeadLanes ln;
    auto acc_ref = [](float(&acc)[8][4]) { return [&acc](int j, int i) -> float& { return acc[j][i]; }; };

    // kRegM: this thread's C·Bᵀ values for the M step of t tile j (counted from the s tile), slice by
    // slice in Mᵀ's A-fragment layout (head_load_cb_slice); zeros outside the chunk, as the staged copy
    // has them.
    const int n_t = int(mma_tiles(L) - blockIdx.y), sl_lo = 16 * warp + grp;
    float2 cbv[4][4];
    auto load_cb_slice = [&](int j, int kk) {
        head_load_cb_slice(cbv[kk], cb, a.Q, L, s0, s0 + int64_t(j) * kSt, kk, sl_lo, quad);
    };
    auto load_cb = [&](int j) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) load_cb_slice(j, kk);
    };
    // kRegM: the M step of t tile j, acc += Mᵀ·dY with Mᵀ's A fragments formed and split here (the
    // staged kernel's split() values) and dY from the step's tile hb [t][p]; each slice's values for
    // the next M step are requested as soon as the slice's fragments are formed.
    auto m_step_registers = [&](float(&acc)[8][4], int j, const double* cum_t, const __nv_bfloat16* hb) {
        const int64_t t0 = s0 + int64_t(j) * kSt;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            uint32_t ah[4], al[4];
            head_m_slice(ah, al, cbv[kk], L, s0, t0, kk, sl_lo, quad, cum_t, sm.cum_s);
            if (j + 1 < n_t) load_cb_slice(j + 1, kk);  // the next M step's values of this slice
            mma_split_a_slice(acc, ah, al, hb, 16 * kk);  // warp_mma_k64_split_a's order
        }
    };

    float tk[4][2] = {};  // ⟨x, dX̃⟩, q, ⟨dY, Z⟩, ⟨dY, x⟩ for rows 16w + grp + 8·hf
    for (int64_t p0 = 0; p0 < a.P; p0 += kSt) {
        const int cols_p = int(a.P - p0), rows_p = int(min(a.P - p0, int64_t(kSt)));
        // Step it's copies: Z (it < n_z), V (it < n_zv), else the M step of t tile blockIdx.y + it − n_zv.
        auto stage = [&](int it) {
            const int buf = it & 1;
            if (it < n_zv) {
                const bool z = it < n_z;
                const int64_t n0 = int64_t(z ? it : it - n_z) * kSt;
                const T* Y = z ? Cg : Bg;
                const int64_t ld_Y = z ? a.ld_C : a.ld_B;
                stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.h[buf][0][0], Y + s0 * ld_Y + n0, ld_Y, rows_s,
                                                              int(a.N - n0), z ? vec_c : vec_b);
                stage_f32_tile<kSt, kSt, kF32Ld, kMmaThreads>(&sm.f[0][0], (z ? S_in : dS) + p0 * a.N + n0, a.N,
                                                              rows_p, int(a.N - n0), vec_st);
            } else {
                const int64_t t0 = s0 + int64_t(it - n_zv) * kSt;
                const int rows_t = int(min(L - t0, int64_t(kSt)));
                stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.h[buf][0][0], dYg + t0 * ld_y + p0, ld_y, rows_t,
                                                              cols_p, vec_y);
                if constexpr (!kRegM)
                    stage_f32_tile<kSt, kSt, kF32Ld, kMmaThreads>(
                        &sm.f[0][0], cb + t0 * a.Q + s0, a.Q, rows_t, int(min(L - s0, int64_t(kSt))), vec_cb);
                for (int r = threadIdx.x; r < kSt; r += kMmaThreads) {
                    if (r < rows_t)
                        cp_async_8(&sm.cum_t[buf][r], cum + t0 + r);
                    else
                        sm.cum_t[buf][r] = 0.0;
                }
            }
            cp_async_commit();
        };
        // The split operand of step it into hi / lo, 4 consecutive columns a piece, 8 pieces a thread.
        auto split = [&](int it) {
            const bool m_step = it >= n_zv;
            const int64_t t0 = s0 + int64_t(it - n_zv) * kSt;
            const double* cum_t = sm.cum_t[it & 1];
            constexpr int kPer = kSt * kSt / 4 / kMmaThreads;
#pragma unroll 2
            for (int i = 0; i < kPer; ++i) {
                const int e = int(threadIdx.x) + i * kMmaThreads, r = e / (kSt / 4), col = e % (kSt / 4) * 4;
                const float4 v4 = *reinterpret_cast<const float4*>(&sm.f[r][col]);
                float v[4] = {v4.x, v4.y, v4.z, v4.w};
                if (m_step) {  // M[t][s] = CB[t][s]·exp(cum_t − cum_s) for s ≤ t < L (rows past L: cum_t
                               // staged as 0, masked here)
                    const int64_t t = t0 + r;
                    const bool row_in = t < L;
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const int64_t s = s0 + col + k;
                        v[k] = row_in && s <= t ? v[k] * exp_diff(cum_t[r], sm.cum_s[col + k]) : 0.0f;
                    }
                }
                uint2 hv, lv;
                hv.x = split_pair_hi(v[0], v[1], lv.x);
                hv.y = split_pair_hi(v[2], v[3], lv.y);
                *reinterpret_cast<uint2*>(&sm.hi[r][col]) = hv;
                *reinterpret_cast<uint2*>(&sm.lo[r][col]) = lv;
            }
        };

        stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.xs[0][0], xg + s0 * a.ld_x + p0, a.ld_x, rows_s, cols_p,
                                                      vec_x);
        stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.dys[0][0], dYg + s0 * ld_y + p0, ld_y, rows_s, cols_p,
                                                      vec_y);
        stage(0);  // (commits xs and dys with step 0's copies)
        float acc[8][4] = {};
        for (int it = 0; it < n_it; ++it) {
            cp_async_wait<0>();
            __syncthreads();
            const bool shared_split = !kRegM || it < n_zv;
            if (shared_split) {
                split(it);
                __syncthreads();
            }
            if (it + 1 < n_it) stage(it + 1);
            if (kRegM && it == n_zv) load_cb(0);  // the first M step's C·Bᵀ values (earlier spills registers)
            const int buf = it & 1;
            if (it < n_zv) {
                warp_mma_k64_split_b(acc, &sm.h[buf][0][0], &sm.hi[0][0], &sm.lo[0][0]);
            } else if constexpr (!kRegM) {
                warp_mma_k64_split_a(acc, &sm.hi[0][0], &sm.lo[0][0], &sm.h[buf][0][0]);
            } else {
                m_step_registers(acc, it - n_zv, sm.cum_t[buf], &sm.h[buf][0][0]);
            }
            if (kZ && it == n_z - 1) {  // acc = Z
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    const int sl = ln.row(hf);
                    tk[2][hf] += head_row_sum([&](int j, int odd) {
                        return tile_f32(sm.dys, sl, 8 * j + 2 * quad + odd) * acc[j][2 * hf + odd];
                    });
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[j][2 * hf] = acc[j][2 * hf + 1] = 0.0f;
                }
            } else if (it == n_zv - 1) {  // acc = V
                head_after_v(acc_ref(acc), tk[1], sm.xs, sm.cum_s, sm.dt_s, cum[L - 1], rows_s, ln);
            }
        }
        // acc = dX̃
        head_dx(a, acc_ref(acc), dx ? dx + (ch.row0 + s0) * a.ld_x + h * a.P + p0 : nullptr,
                a.D ? to_f32(a.D[h]) : 0.0f, sm.xs, sm.dys, sm.dt_s, rows_s, cols_p, tk[0], tk[3], ln);
        __syncthreads();  // xs, dys and the step buffers are restaged for the next p tile
    }
    head_store_tok(tok, a.batch * a.n_chunks * a.H * a.Q, bch * a.Q + s0, tk, kZ, rows_s, ln);
}

// Per (b, chunk, head) (grid B·n_chunks·H): dcum[t] = Σ_{si ≤ t's tile} erow − Σ_{ti ≥ t's tile} ecol
// (in tile order), the per-token sums from tok (⟨dY, Z⟩ the sum of z_slots slots from kTokZ, in
// order), then finish_backward_head_tc. Dynamic shared memory: head_tc_vec_bytes(Q).
template <typename T>
__global__ void __launch_bounds__(kMmaThreads)
    ssd_backward_finish_tc_kernel(Args<T> a, const float* states, const float* dS_all, const float* erow,
                                  const float* ecol, const float* tok, int z_slots, const float* dot_part,
                                  int n_dot_parts, T* ddt, float* part) {
    __shared__ float red[kMmaThreads];
    extern __shared__ float vecs[];
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const Chunk ch = chunk_of(a, b, c);
    const int64_t L = ch.L, bh = b * a.H + h, nT = mma_tiles(a.Q), nT_L = mma_tiles(L);
    const int64_t n_tok = a.batch * a.n_chunks * a.H * a.Q;
    float* dcum = vecs;
    float* xdx = vecs + a.Q;
    float* qsum = xdx + a.Q;
    float* rsum = qsum + a.Q;
    double* cum = reinterpret_cast<double*>(vecs + 4 * a.Q);
    float* dtv = reinterpret_cast<float*>(cum + a.Q);
    float dD_acc = 0.0f;
    for (int64_t t = threadIdx.x; t < L; t += blockDim.x) {
        const int64_t tt = t / kSt;
        float e = 0.0f;
        for (int64_t si = 0; si <= tt; ++si) e += erow[(bch * nT + si) * a.Q + t];
        for (int64_t ti = tt; ti < nT_L; ++ti) e -= ecol[(bch * nT + ti) * a.Q + t];
        dcum[t] = e;
        const int64_t at = bch * a.Q + t;
        xdx[t] = tok[kTokXdx * n_tok + at];
        qsum[t] = tok[kTokQ * n_tok + at];
        float z = 0.0f;
        for (int k = 0; k < z_slots; ++k) z += tok[(kTokZ + k) * n_tok + at];
        rsum[t] = z;
        dD_acc += tok[kTokDyX * n_tok + at];
        cum[t] = a.cum[bh * a.seqlen + ch.t0 + t];
        dtv[t] = a.dtv[bh * a.seqlen + ch.t0 + t];
    }
    // ⟨dS, S_in⟩: the reverse state pass's parts added in order, or the states read here.
    float dss = 0.0f;
    if (dot_part) {
        const int64_t n_bch = a.batch * a.n_chunks * a.H;
        for (int k = 0; k < n_dot_parts; ++k) dss += dot_part[k * n_bch + bch];
    } else {
        dss = state_dot(states + bch * a.P * a.N, dS_all + bch * a.P * a.N, a.P * a.N, red);
    }
    finish_backward_head_tc(a, ch, h, bch, dss, dD_acc, vecs, cum, dtv, red, ddt, part);
}

// dC and dB per (b, chunk, group), as ssd_dbc_kernel, in one launch: grid (B·n_chunks·G,
// mma_tiles(Q)·mma_tiles(N), kinds), blockIdx.z = 0 dC (when wanted), else dB. A block owns a
// 64-row (token) × 64-column (n) tile; warp w owns all 64 rows and columns 16w .. 16w + 15 (4 m16
// by 2 n8 fragments), so that an operand split from fp32 is split only where a warp reads it. Its
// k steps, 64 deep, double-buffered (cp.async of step i + 1 in flight during step i's products):
//   the dCB steps: acc += dCB·Y' over the s tiles ≤ the row tile's (dC: dCB rows t, Y' = B rows s)
//   or the t tiles ≥ it (dB: dCB columns s, Y' = C rows t); dCB fp32, split per warp into hi + lo
//   from its staged fp32 tile, Y' bf16 exact by ldmatrix. Above the diagonal the diagonal tile of
//   dCB holds zeros (ssd_dcb_tc_kernel writes them), and tiles past it are not visited;
//   the head steps, per head of the group and 64-wide p tile: hacc += Y_h·state_h (dC: dY, S_in;
//   dB: x, dS), Y_h bf16 exact by ldmatrix, the state fp32 split per warp from its staged tile; after
//   a head's last p tile, acc += w_h,r·hacc with w = exp(cum_r) (dC) or decay_r·dt_r (dB), as the
//   loader kernel did. With ztok, a dC block first takes Σ_n C[r, n]·hacc[r, n] over its n tile (C's
//   tile staged once): that is ⟨dY_r, C_r·S_inᵀ⟩'s part from the tile, which the head kernel would
//   otherwise form as Z = C·S_inᵀ in two extra steps a p tile; it goes to ztok's slot for the n tile
//   (its warps' parts added in order), for the finish kernel to add in order.
// Staged tiles are zero outside the operands (rows past L, columns past P or N). Dynamic shared
// memory: sizeof(DbcSmem).
struct DbcSmem {
    __nv_bfloat16 h[2][kSt][kStLd];  // bf16 operand: Y' rows [k][n] (dCB steps) | Y_h rows [r][p]
    float f[2][kSt][kF32Ld];         // fp32 operand: the dCB tile [t][s] | state_h [p][n]
    double cum_r[2][kSt];            // the head's cum at the tile's rows, and at the chunk's end
    double cum_last[2];
    float dt_r[2][kSt];
    __nv_bfloat16 cz[kSt][kStLd];  // dC blocks with ztok: C rows r, the n tile
    float zred[2][4][kSt];         // their warps' row sums of C ∘ (dY_h·S_in_h), by head parity
};

// acc (warp: 4 m16 × 2 n8 tiles, columns 16w ..) += A·B over one 64-deep step; A bf16 [m][k]
// (ldmatrix), B fp32 [k][n] split into hi + lo as the fragments are built (lo products first).
__device__ __forceinline__ void warp_mma_bf16_f32split(float (&acc)[4][2][4], const __nv_bfloat16* sa,
                                                       const float* sb) {
    const int lane = threadIdx.x % 32, grp = lane / 4, quad = lane % 4, nw = threadIdx.x / 32 * 16;
#pragma unroll
    for (int kk = 0; kk < kSt; kk += 16) {
        uint32_t bhi[2][2], blo[2][2];
#pragma unroll
        for (int jn = 0; jn < 2; ++jn) {
            const float* col = sb + nw + 8 * jn + grp;
#pragma unroll
            for (int hk = 0; hk < 2; ++hk) {  // b[hk] = B[k, k + 1][n], k = kk + 2q + 8·hk
                const int k = kk + 2 * quad + 8 * hk;
                bhi[jn][hk] = split_pair_hi(col[k * kF32Ld], col[(k + 1) * kF32Ld], blo[jn][hk]);
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint32_t af[4];
            lda_mk(af, sa, kStLd, 16 * i, kk);
#pragma unroll
            for (int jn = 0; jn < 2; ++jn) {
                mma_m16n8k16_bf16(acc[i][jn], af, blo[jn]);
                mma_m16n8k16_bf16(acc[i][jn], af, bhi[jn]);
            }
        }
    }
}

// acc += A·B over one 64-deep step; A fp32 split as the fragments are built, stored [m][k]
// (kAKM false) or [k][m] (true); B bf16 [k][n] (ldmatrix.trans).
template <bool kAKM>
__device__ __forceinline__ void warp_mma_f32split_bf16(float (&acc)[4][2][4], const float* sa,
                                                       const __nv_bfloat16* sb) {
    const int lane = threadIdx.x % 32, grp = lane / 4, quad = lane % 4, nw = threadIdx.x / 32 * 16;
    auto at = [&](int m, int k) { return kAKM ? sa[k * kF32Ld + m] : sa[m * kF32Ld + k]; };
#pragma unroll
    for (int kk = 0; kk < kSt; kk += 16) {
        uint32_t bq[4];
        ldb_kn(bq, sb, kStLd, nw, kk);
        const uint32_t b0[2] = {bq[0], bq[1]}, b1[2] = {bq[2], bq[3]};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint32_t ahi[4], alo[4];
#pragma unroll
            for (int reg = 0; reg < 4; ++reg) {  // a[reg] = A[m][k, k + 1], m = 16i + grp + 8·(reg % 2)
                const int m = 16 * i + grp + 8 * (reg % 2), k = kk + 2 * quad + 8 * (reg / 2);
                ahi[reg] = split_pair_hi(at(m, k), at(m, k + 1), alo[reg]);
            }
            mma_m16n8k16_bf16(acc[i][0], alo, b0);
            mma_m16n8k16_bf16(acc[i][0], ahi, b0);
            mma_m16n8k16_bf16(acc[i][1], alo, b1);
            mma_m16n8k16_bf16(acc[i][1], ahi, b1);
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(kMmaThreads, 3)
    ssd_dbc_tc_kernel(Args<T> a, const T* dy, const float* dCB, const float* states, const float* dS_all,
                      T* dC, T* dB, float* ztok) {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "tensor-core kernels are bf16");
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    DbcSmem& sm = *reinterpret_cast<DbcSmem*>(dyn_smem);
    const bool is_dc = blockIdx.z == 0 && dC != nullptr;
    const int64_t bcg = blockIdx.x, g = bcg % a.G, c = bcg / a.G % a.n_chunks, b = bcg / (a.G * a.n_chunks);
    const int64_t nN = mma_tiles(a.N), ri = blockIdx.y / nN, r0 = ri * kSt, n0 = blockIdx.y % nN * kSt;
    const Chunk ch = chunk_of(a, b, c);
    if (r0 >= ch.L) return;
    const int64_t L = ch.L, Q = a.Q, ld_y = a.H * a.P;
    const int rows_r = int(min(L - r0, int64_t(kSt))), cols_n = int(a.N - n0);
    const float* dcb = dCB + bcg * Q * Q;
    const T* other = is_dc ? a.Bm + ch.row0 * a.ld_B + g * a.N : a.Cm + ch.row0 * a.ld_C + g * a.N;
    const int64_t ld_o = is_dc ? a.ld_B : a.ld_C;
    const T* Y = is_dc ? dy + ch.row0 * ld_y : a.x + ch.row0 * a.ld_x;  // + h·P
    const int64_t ld_Y = is_dc ? ld_y : a.ld_x;
    const float* state_all = is_dc ? states : dS_all;
    const bool vec_o = aligned16(is_dc ? a.Bm : a.Cm) && ld_o % 8 == 0 && a.N % 8 == 0;
    const bool vec_Y = aligned16(is_dc ? static_cast<const void*>(dy) : a.x) && ld_Y % 8 == 0 && a.P % 8 == 0;
    const bool vec_f = aligned16(dCB) && Q % 4 == 0 && L % 4 == 0;  // tile columns end at L
    const bool vec_s = aligned16(state_all) && a.N % 4 == 0;
    const int n_dcb = is_dc ? int(ri + 1) : int(mma_tiles(L) - ri);
    const int n_pc = int(mma_tiles(a.P)), n_it = n_dcb + int(a.heads_per_group) * n_pc;
    const int64_t h_first = g * a.heads_per_group;
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;

    auto stage = [&](int it) {
        const int buf = it & 1;
        if (it < n_dcb) {
            const int64_t k0 = (is_dc ? it : ri + it) * kSt;
            const int64_t fr0 = is_dc ? r0 : k0, fc0 = is_dc ? k0 : r0;  // the dCB tile: rows t, columns s
            stage_f32_tile<kSt, kSt, kF32Ld, kMmaThreads>(&sm.f[buf][0][0], dcb + fr0 * Q + fc0, Q,
                                                          int(min(L - fr0, int64_t(kSt))),
                                                          int(min(L - fc0, int64_t(kSt))), vec_f);
            stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.h[buf][0][0], other + k0 * ld_o + n0, ld_o,
                                                          int(min(L - k0, int64_t(kSt))), cols_n, vec_o);
        } else {
            const int j = it - n_dcb, pc = j % n_pc;
            const int64_t h = h_first + j / n_pc, p0 = int64_t(pc) * kSt;
            const int64_t bch = (b * a.n_chunks + c) * a.H + h;
            stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(&sm.h[buf][0][0], Y + r0 * ld_Y + h * a.P + p0, ld_Y,
                                                          rows_r, int(a.P - p0), vec_Y);
            stage_f32_tile<kSt, kSt, kF32Ld, kMmaThreads>(&sm.f[buf][0][0], state_all + (bch * a.P + p0) * a.N + n0,
                                                          a.N, int(min(a.P - p0, int64_t(kSt))), cols_n, vec_s);
            if (pc == n_pc - 1) {
                const int64_t base = (b * a.H + h) * a.seqlen + ch.t0;
                for (int i = threadIdx.x; i <= 2 * kSt; i += kMmaThreads) {
                    const int r = i % kSt;
                    if (i == 2 * kSt) {
                        cp_async_8(&sm.cum_last[buf], a.cum + base + L - 1);
                    } else if (i < kSt) {
                        if (r < rows_r) cp_async_8(&sm.cum_r[buf][r], a.cum + base + r0 + r);
                        else sm.cum_r[buf][r] = 0.0;
                    } else {
                        if (r < rows_r) cp_async_4(&sm.dt_r[buf][r], a.dtv + base + r0 + r);
                        else sm.dt_r[buf][r] = 0.0f;
                    }
                }
            }
        }
        cp_async_commit();
    };

    const bool z_sums = is_dc && ztok != nullptr;
    if (z_sums) {  // (committed with step 0's copies)
        const bool vec_c = aligned16(a.Cm) && a.ld_C % 8 == 0 && a.N % 8 == 0;
        stage_bf16_tile<kSt, kSt, kStLd, kMmaThreads>(
            &sm.cz[0][0], a.Cm + (ch.row0 + r0) * a.ld_C + g * a.N + n0, a.ld_C, rows_r, cols_n, vec_c);
    }
    float acc[4][2][4] = {}, hacc[4][2][4] = {};
    stage(0);
    for (int it = 0; it < n_it; ++it) {
        if (it + 1 < n_it) {
            stage(it + 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int buf = it & 1;
        if (it < n_dcb) {
            if (is_dc) {
                warp_mma_f32split_bf16<false>(acc, &sm.f[buf][0][0], &sm.h[buf][0][0]);
            } else {
                warp_mma_f32split_bf16<true>(acc, &sm.f[buf][0][0], &sm.h[buf][0][0]);
            }
        } else {
            warp_mma_bf16_f32split(hacc, &sm.h[buf][0][0], &sm.f[buf][0][0]);
            if ((it - n_dcb) % n_pc == n_pc - 1) {
                if (z_sums) {  // the head's ⟨dY, C·S_inᵀ⟩ over this n tile: Σ_n C ∘ hacc, row by row
                    const int hp = (it - n_dcb) / n_pc & 1;
#pragma unroll
                    for (int i = 0; i < 4; ++i)
#pragma unroll
                        for (int hf = 0; hf < 2; ++hf) {
                            const int rl = 16 * i + grp + 8 * hf;
                            float v = 0.0f;
#pragma unroll
                            for (int jn = 0; jn < 2; ++jn)
#pragma unroll
                                for (int odd = 0; odd < 2; ++odd)
                                    v += __bfloat162float(sm.cz[rl][16 * warp + 8 * jn + 2 * quad + odd]) *
                                         hacc[i][jn][2 * hf + odd];
                            v += __shfl_xor_sync(0xffffffffu, v, 1);
                            v += __shfl_xor_sync(0xffffffffu, v, 2);
                            if (quad == 0) sm.zred[hp][warp][rl] = v;
                        }
                }
                const double cum_last = sm.cum_last[buf];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int hf = 0; hf < 2; ++hf) {
                        const int rl = 16 * i + grp + 8 * hf;
                        float w = 0.0f;
                        if (rl < rows_r)
                            w = is_dc ? expf(static_cast<float>(sm.cum_r[buf][rl]))
                                      : exp_diff(cum_last, sm.cum_r[buf][rl]) * sm.dt_r[buf][rl];
#pragma unroll
                        for (int jn = 0; jn < 2; ++jn)
#pragma unroll
                            for (int odd = 0; odd < 2; ++odd) {
                                acc[i][jn][2 * hf + odd] += w * hacc[i][jn][2 * hf + odd];
                                hacc[i][jn][2 * hf + odd] = 0.0f;
                            }
                    }
            }
        }
        __syncthreads();
        // A head's row sums, its warps' parts added in order (the parity's next writer is two heads on,
        // past the next step's barrier).
        if (z_sums && it >= n_dcb && (it - n_dcb) % n_pc == n_pc - 1 && int(threadIdx.x) < rows_r) {
            const int j = (it - n_dcb) / n_pc, hp = j & 1, r = threadIdx.x;
            const int64_t bch = (b * a.n_chunks + c) * a.H + h_first + j;
            const int64_t n_tok = a.batch * a.n_chunks * a.H * Q;
            ztok[(blockIdx.y % nN) * n_tok + bch * Q + r0 + r] =
                sm.zred[hp][0][r] + sm.zred[hp][1][r] + sm.zred[hp][2][r] + sm.zred[hp][3][r];
        }
    }
    // The += a row at a time, its 4 old values loaded before any is stored.
    T* grad = is_dc ? dC : dB;
    const int64_t ld_g = is_dc ? a.ld_C : a.ld_B;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int rl = 16 * i + grp + 8 * hf;
            if (rl >= rows_r) continue;
            T* row = grad + (ch.row0 + r0 + rl) * ld_g + g * a.N;
            float old[2][2];
#pragma unroll
            for (int jn = 0; jn < 2; ++jn)
#pragma unroll
                for (int odd = 0; odd < 2; ++odd) {
                    const int64_t n = n0 + 16 * warp + 8 * jn + 2 * quad + odd;
                    old[jn][odd] = !a.overwrite && n < a.N ? to_f32(row[n]) : 0.0f;
                }
#pragma unroll
            for (int jn = 0; jn < 2; ++jn)
#pragma unroll
                for (int odd = 0; odd < 2; ++odd) {
                    const int64_t n = n0 + 16 * warp + 8 * jn + 2 * quad + odd;
                    if (n < a.N) row[n] = from_f32<T>(old[jn][odd] + acc[i][jn][2 * hf + odd]);
                }
        }
}

// dA_log, dD, ddt_bias (H): the per-chunk sums added over (b, chunk) in order, one thread per head.
template <typename T>
__global__ void ssd_param_grad_kernel(Args<T> a, const float* part, T* dA_log, T* dD, T* ddt_bias) {
    const int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (h >= a.H) return;
    const int64_t n_part = a.batch * a.n_chunks * a.H;
    float sA = 0.0f, sD = 0.0f, sbias = 0.0f;
    for (int64_t bc = 0; bc < a.batch * a.n_chunks; ++bc) {
        sA += part[bc * a.H + h];
        sD += part[n_part + bc * a.H + h];
        sbias += part[2 * n_part + bc * a.H + h];
    }
    // A = −exp(A_log), so dA/dA_log = A.
    if (dA_log) dA_log[h] = from_f32<T>(to_f32(dA_log[h]) + sA * head_A(a, h));
    if (dD && a.D) dD[h] = from_f32<T>(to_f32(dD[h]) + sD);
    if (ddt_bias && a.dt_bias) ddt_bias[h] = from_f32<T>(to_f32(ddt_bias[h]) + sbias);
}

// ---- decode: one warp per (row, head, PB consecutive p), lanes over N (4 consecutive states a lane
// when N % 4 == 0, the layout of the persistent decode step's SSD stage, so both sum in the same
// order). The head's dt, decay, B and C are read once for its PB rows of state, and the PB rows'
// loads all go out before any is used: at batch 64 the state (fp32, read and written) is the whole
// cost, and one 512-byte row a warp at a time left it at a third of the bandwidth (H200, 130m).

// State storage of ssd_update: fp32, or bf16 (read as fp32, rounded once when stored).
__device__ __forceinline__ float4 load_state4(const float* p) {
    return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 load_state4(const __nv_bfloat16* p) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                       __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
}
__device__ __forceinline__ void store_state4(float* p, const float4& v) {
    *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ void store_state4(__nv_bfloat16* p, const float4& v) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
}
// A state value advanced, decay·s + (dt·x)·b, and its term of y, acc + s·c, each rounded as written:
// the product (dt·x)·b rounded, then fused multiply-adds. Left to ptxas, two instantiations of one
// expression were contracted differently (the fp32- and bf16-state kernels' bits parted), so every
// update kernel spells its roundings out through these.
__device__ __forceinline__ float advance_state(float s, float decay, float xdt, float b) {
    return __fmaf_rn(decay, s, __fmul_rn(xdt, b));
}
__device__ __forceinline__ void advance_state4(float4& st, float& acc, float decay, float xdt, float b0,
                                               float b1, float b2, float b3, float c0, float c1, float c2,
                                               float c3) {
    st.x = advance_state(st.x, decay, xdt, b0);
    st.y = advance_state(st.y, decay, xdt, b1);
    st.z = advance_state(st.z, decay, xdt, b2);
    st.w = advance_state(st.w, decay, xdt, b3);
    acc = __fmaf_rn(st.x, c0, acc);
    acc = __fmaf_rn(st.y, c1, acc);
    acc = __fmaf_rn(st.z, c2, acc);
    acc = __fmaf_rn(st.w, c3, acc);
}

// One work item of ssd_update (a row i, head hh, PB rows of state from p0): its place, and the
// head's constants (none of them written by a decode step's kernels), so that the warp's first item
// is set up before the kernel waits for its predecessor. 32-bit index arithmetic (the launch checks
// the items fit) instead of 64-bit divisions: the bf16 kernel's SASS went from 1,152 instructions and
// 5 division calls to 952 and none.
struct UpdateItem {
    int i, hh, g, p0, np;
    float A, bias, d;
    int64_t state;  // offset of its first state row
};
// Item (row i, head hh, rows from PB · pb).
template <typename T, int PB>
__device__ __forceinline__ UpdateItem update_item_at(const Args<T>& a, int i, int hh, int pb,
                                                     const int64_t* slots) {
    UpdateItem it;
    const int P = int(a.P);
    it.i = i, it.hh = hh, it.g = hh / int(a.heads_per_group);
    it.p0 = pb * PB;
    it.np = P - it.p0 < PB ? P - it.p0 : PB;
    it.A = head_A(a, it.hh);
    it.bias = head_bias(a, it.hh);
    it.d = a.D ? to_f32(a.D[it.hh]) : 0.0f;
    it.state = ((slots[it.i] * a.H + it.hh) * a.P + it.p0) * a.N;
    return it;
}
// Item w = (i · H + hh) · p_blocks + pb.
template <typename T, int PB>
__device__ __forceinline__ UpdateItem update_item(const Args<T>& a, int w, int p_blocks,
                                                  const int64_t* slots) {
    const int ih = w / p_blocks;
    return update_item_at<T, PB>(a, ih / int(a.H), ih % int(a.H), w % p_blocks, slots);
}
// A warp's item w as (i, hh, pb), stepped by the grid's warp count without dividing: the step is
// split once into the same digits (each below its radix), so an add carries at most 1 a digit.
struct ItemCursor {
    int i, hh, pb;
    __device__ __forceinline__ void advance(const ItemCursor& step, int H, int p_blocks) {
        pb += step.pb;
        const int c1 = pb >= p_blocks;
        pb -= c1 ? p_blocks : 0;
        hh += step.hh + c1;
        const int c2 = hh >= H;
        hh -= c2 ? H : 0;
        i += step.i + c2;
    }
};
__device__ __forceinline__ ItemCursor item_cursor(int w, int H, int p_blocks) {
    const int ih = w / p_blocks;
    return {ih / H, ih % H, w % p_blocks};
}

// HS: the state storage type (float, or __nv_bfloat16 with N % 4 == 0). kTrace: an instantiation of
// its own, so that the untraced kernel carries none of the trace's code.
// The 8-row form at two blocks an SM (≤ 128 registers): left free, ptxas put it at 127–132
// depending on the expression's spelling, and at 132 only one block fits (fp32 states at batch 64
// on 130m: 81.7K → 71.5K tokens/s, H200).
template <typename T, int PB, typename HS, bool kTrace>
__global__ void __launch_bounds__(kThreads, PB >= 8 ? 2 : 1)
    ssd_update_kernel(Args<T> a, T* y, HS* h, const int64_t* slots, bool early, KernelTrace* trace) {
    // Launched with programmatic dependent launch (the decode step): the inputs are earlier
    // kernels' outputs, read after the wait; the first item's place and head constants are read
    // before it, and with `early` (ssd.h) its state rows too (N ≤ 128: one 16-byte load a row a
    // lane; PB ≤ 2).
    // `trace` (the decode step's diagnostics, kernel_trace.h): thread 0's stamps; its first item's
    // phases are block 0's marks.
    __shared__ unsigned long long stamps[3], marks[8];
    const bool traced = kTrace && threadIdx.x == 0;
    if (traced) {
        stamps[0] = detail::global_ns();
        for (int m = 0; m < 8; ++m) marks[m] = 0;
    }
    auto mark = [&](int m, bool first_item) {
        if (traced && first_item) marks[m] = detail::global_ns();
    };
    pdl_trigger();
    const int lane = threadIdx.x % 32, N = int(a.N);
    const int p_blocks = int((a.P + PB - 1) / PB);
    const int total = int(a.batch * a.H * p_blocks);
    const int n_warps = int(gridDim.x * blockDim.x / 32);
    const int w_first = int((blockIdx.x * blockDim.x + threadIdx.x) / 32);
    // (Only the narrow variant, of small batches: the wide one's registers go to its 8 rows.)
    const bool pre = PB <= 2 && early && a.N % 4 == 0 && a.N <= 128 && w_first < total && 4 * lane < a.N;
    UpdateItem first{};
    if (w_first < total) first = update_item<T, PB>(a, w_first, p_blocks, slots);
    float4 st_pre[PB];
    if (pre) {
        const HS* S = h + first.state;
#pragma unroll
        for (int j = 0; j < PB; ++j)
            if (j < first.np) st_pre[j] = load_state4(S + j * a.N + 4 * lane);
    }
    pdl_wait();
    if (traced) stamps[1] = stamps[2] = detail::global_ns();
    for (int w = w_first; w < total; w += n_warps) {
        const UpdateItem it = w == w_first ? first : update_item<T, PB>(a, w, p_blocks, slots);
        const int i = it.i, hh = it.hh, g = it.g, p0 = it.p0, np = it.np;
        const float dtv = dt_value(to_f32(a.dt[i * a.ld_dt + hh]) + it.bias, a.dt_min, a.dt_max);
        const float decay = expf(dtv * it.A);
        float xp[PB], acc[PB];
#pragma unroll
        for (int j = 0; j < PB; ++j) {
            xp[j] = j < np ? to_f32(a.x[i * a.ld_x + hh * a.P + p0 + j]) : 0.0f;
            acc[j] = 0.0f;
        }
        if (traced && w == w_first) marks[0] = stamps[2] = detail::global_ns();
        HS* S = h + it.state;  // row j at S + j · N
        const T* Bt = a.Bm + i * a.ld_B + g * a.N;
        const T* Ct = a.Cm + i * a.ld_C + g * a.N;
        if (N % 4 == 0) {  // one 16-byte load and store a row a lane
            for (int n = 4 * lane; n < N; n += 128) {
                float4 st[PB];
#pragma unroll
                for (int j = 0; j < PB; ++j)
                    if (j < np) st[j] = pre && w == w_first ? st_pre[j] : load_state4(S + j * a.N + n);
                const float b0 = to_f32(Bt[n]), b1 = to_f32(Bt[n + 1]), b2 = to_f32(Bt[n + 2]), b3 = to_f32(Bt[n + 3]);
                const float c0 = to_f32(Ct[n]), c1 = to_f32(Ct[n + 1]), c2 = to_f32(Ct[n + 2]), c3 = to_f32(Ct[n + 3]);
#pragma unroll
                for (int j = 0; j < PB; ++j) {
                    if (j >= np) break;
                    const float xdt = __fmul_rn(dtv, xp[j]);
                    float4 sj = st[j];
                    advance_state4(sj, acc[j], decay, xdt, b0, b1, b2, b3, c0, c1, c2, c3);
                    store_state4(S + j * a.N + n, sj);  // acc holds y's terms of the unrounded state
                }
            }
        } else {
            for (int n = lane; n < N; n += 32) {
                float st[PB];
#pragma unroll
                for (int j = 0; j < PB; ++j)
                    if (j < np) st[j] = to_f32(S[j * a.N + n]);
                const float bn = to_f32(Bt[n]), cn = to_f32(Ct[n]);
#pragma unroll
                for (int j = 0; j < PB; ++j) {
                    if (j >= np) break;
                    const float s = advance_state(st[j], decay, __fmul_rn(dtv, xp[j]), bn);
                    S[j * a.N + n] = from_f32<HS>(s);
                    acc[j] = __fmaf_rn(s, cn, acc[j]);
                }
            }
        }
        mark(1, w == w_first);
        const float d = it.d;
#pragma unroll
        for (int j = 0; j < PB; ++j) {
            if (j >= np) break;
            const float sum = warp_sum(acc[j]);
            if (lane == 0) y[(i * a.H + hh) * a.P + p0 + j] = from_f32<T>(__fmaf_rn(d, xp[j], sum));
        }
        mark(2, w == w_first);
    }
    if constexpr (kTrace) {
        __syncthreads();
        if (traced) detail::record_trace(*trace, stamps, marks);
    }
}

// The wide update streamed (large batches, N % 4 == 0, N ≤ 128): the same items, lanes and arithmetic
// as ssd_update_kernel<T, 8, HS> — so the same bits — but each warp's state rows go through a
// kUpdStages-slot shared-memory ring by cp.async, the next items' rows in flight while one item is
// advanced, and the grid is what stays resident (a warp loops over its items). Each lane reads back
// only the bytes it copied, so the ring needs no barrier. An item's place, head constants and inputs
// are loaded one item ahead, and its 8 row sums are reduced together (below). At batch 64 on 130m the
// register form held 14 warps an SM with nothing in flight between a warp's items, and bf16 states
// left it at 12% of the DRAM bandwidth (Nsight Compute, H200); streamed, that kernel is at 64% of the
// L2's throughput and 54% of the SMs' issue rate, and 815 instructions an item are what is left.
constexpr int kUpdPB = 8;
constexpr int kUpdLd = 128;  // ring row pitch (states): N ≤ 128, 4 a lane

template <typename HS, int kUpdStages>
constexpr size_t update_stream_smem() {
    return size_t(kThreads / 32) * kUpdStages * kUpdPB * kUpdLd * sizeof(HS);
}
// A lane's 4 states of a row into the ring (16 or 8 bytes), to a shared-memory address converted once
// for the ring, not at every row's copy.
__device__ __forceinline__ void cp_async_state4_at(uint32_t smem, const float* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem));
}
__device__ __forceinline__ void cp_async_state4_at(uint32_t smem, const __nv_bfloat16* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem), "l"(gmem));
}
// Four consecutive values of B or C as fp32: one 8- or 16-byte load as a state's (vec: the four are
// aligned to it), else four element loads.
template <typename T>
__device__ __forceinline__ void load4_f32(const T* p, bool vec, float* out) {
    if (vec) {
        const float4 v = load_state4(p);
        out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) out[q] = to_f32(p[q]);
    }
}

// A warp's unit of the streamed update: a run of up to `run` consecutive 8-row items of one (row i,
// head hh), so that the head's inputs (dt and its decay, B and C, the constants, the state's place)
// are loaded and computed once for the run's rows, not once every 8 rows. Unit u = (i · H + hh) · runs
// + r covers items r · run .. of the head (runs = ⌈p_blocks / run⌉); it walks (i, hh, r) as an
// ItemCursor whose last digit has radix runs.
// kN: N where it is 128 (every preset), so that the rows' offsets are constants of the copies and
// stores; else 0 (read from a).
template <typename T, typename HS, int kUpdStages, int kN>
__global__ void __launch_bounds__(kThreads, 3)
    ssd_update_stream_kernel(Args<T> a, T* y, HS* h, const int64_t* slots, bool early, bool vec_bc, int run) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    pdl_trigger();
    const int lane = threadIdx.x % 32, N = kN ? kN : int(a.N), H = int(a.H), P = int(a.P);
    const int p_blocks = (P + kUpdPB - 1) / kUpdPB;
    const int runs = (p_blocks + run - 1) / run;
    const int total = int(a.batch * a.H * runs);
    const int n_warps = int(gridDim.x * blockDim.x / 32);
    const int w_first = int((blockIdx.x * blockDim.x + threadIdx.x) / 32);
    const bool active = 4 * lane < N;
    HS* ring =
        reinterpret_cast<HS*>(smem_raw) + size_t(threadIdx.x / 32) * kUpdStages * kUpdPB * kUpdLd + 4 * lane;
    const auto ring_at = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
    const int batch = int(a.batch);
    // The copy cursor: unit copy_at, its item copy_s, whose state rows (this lane's words) start at
    // copy_src, copy_rows rows before the head's end; copy_items items in the unit. The unit's place
    // is worked out once, when the cursor enters it.
    const ItemCursor step = item_cursor(n_warps, H, runs);
    ItemCursor copy_at = item_cursor(w_first, H, runs), load_at = copy_at;
    int copy_s = 0, copy_rows = 0, copy_items = 0;
    const HS* copy_src = h;
    auto enter_unit = [&] {
        if (copy_at.i >= batch) return;
        const int p0 = copy_at.pb * run * kUpdPB;
        copy_src = h + ((slots[copy_at.i] * a.H + copy_at.hh) * a.P + p0) * a.N + 4 * lane;
        copy_rows = P - p0;
        copy_items = min(run, p_blocks - copy_at.pb * run);
    };
    enter_unit();
    // The next item's state rows into ring slot `slot`, one copy a row a lane; a commit group either way.
    auto issue_next = [&](int slot) {
        if (copy_at.i < batch && active) {
            const uint32_t d = ring_at + uint32_t(slot * kUpdPB * kUpdLd * sizeof(HS));
            if (copy_rows >= kUpdPB) {
#pragma unroll
                for (int j = 0; j < kUpdPB; ++j)
                    cp_async_state4_at(d + j * kUpdLd * sizeof(HS), copy_src + j * N);
            } else {
#pragma unroll
                for (int j = 0; j < kUpdPB; ++j)
                    if (j < copy_rows) cp_async_state4_at(d + j * kUpdLd * sizeof(HS), copy_src + j * N);
            }
        }
        cp_async_commit();
        copy_src += kUpdPB * N;
        copy_rows -= kUpdPB;
        if (++copy_s == copy_items) {
            copy_s = 0;
            copy_at.advance(step, H, runs);
            enter_unit();
        }
    };
    auto issue_first = [&] {
#pragma unroll
        for (int s = 0; s < kUpdStages - 1; ++s) issue_next(s);
    };
    if (early) issue_first();
    pdl_wait();
    if (!early) issue_first();
    // Unit c's inputs, one unit ahead: its place and head constants (update_item_at, at its first
    // item), and from the kernel before — dt, lane l's x (row p0 + l of the run's rows), the lane's 4
    // B and 4 C values — so that an item waits on no load of its own but its rows.
    struct Inputs {
        int64_t state = 0;   // the unit's first state row
        int y0 = 0, p0 = 0;  // its first y element, its first row
        float A = 0.0f, bias = 0.0f, d = 0.0f, dt = 0.0f, x = 0.0f, b[4] = {}, c[4] = {};
    };
    auto load_inputs = [&](const ItemCursor& c) {
        Inputs in;
        if (c.i < batch) {
            const UpdateItem it = update_item_at<T, kUpdPB>(a, c.i, c.hh, c.pb * run, slots);
            const int i = it.i, hh = it.hh;
            in.state = it.state;
            in.p0 = it.p0;
            in.y0 = (i * H + hh) * P + it.p0;
            in.A = it.A, in.bias = it.bias, in.d = it.d;
            in.dt = to_f32(a.dt[i * a.ld_dt + hh]);
            if (lane < run * kUpdPB && it.p0 + lane < P)
                in.x = to_f32(a.x[i * a.ld_x + hh * a.P + it.p0 + lane]);
            if (active) {
                load4_f32(a.Bm + i * a.ld_B + it.g * a.N + 4 * lane, vec_bc, in.b);
                load4_f32(a.Cm + i * a.ld_C + it.g * a.N + 4 * lane, vec_bc, in.c);
            }
        }
        return in;
    };
    Inputs cur = load_inputs(load_at);
    load_at.advance(step, H, runs);
    int slot = 0;
    for (int u = w_first; u < total; u += n_warps) {
        const Inputs nxt = load_inputs(load_at);
        load_at.advance(step, H, runs);
        const float dtv = dt_value(cur.dt + cur.bias, a.dt_min, a.dt_max);
        const float decay = expf(dtv * cur.A);
        const int items = min(run, p_blocks - cur.p0 / kUpdPB);
        for (int s = 0; s < items; ++s) {
            issue_next((slot + kUpdStages - 1) % kUpdStages);
            const int np = min(P - cur.p0 - s * kUpdPB, kUpdPB);
            float xp[kUpdPB], acc[kUpdPB];
#pragma unroll
            for (int j = 0; j < kUpdPB; ++j) {
                xp[j] = __shfl_sync(0xffffffffu, cur.x, s * kUpdPB + j);  // 0 past the head's last row
                acc[j] = 0.0f;
            }
            if (active) {
                HS* S = h + cur.state + s * kUpdPB * N + 4 * lane;
                const HS* src = ring + slot * kUpdPB * kUpdLd;
                cp_async_wait<kUpdStages - 1>();  // this item's rows (this lane's copies) have landed
#pragma unroll
                for (int j = 0; j < kUpdPB; ++j) {
                    if (j >= np) break;
                    float4 st = load_state4(src + j * kUpdLd);
                    advance_state4(st, acc[j], decay, __fmul_rn(dtv, xp[j]), cur.b[0], cur.b[1], cur.b[2],
                                   cur.b[3], cur.c[0], cur.c[1], cur.c[2], cur.c[3]);
                    store_state4(S + j * N, st);  // acc holds y's terms of the unrounded state
                }
            }
            // The 8 rows' sums over the warp by a reduce-scatter on the butterfly's pairs (xor 16, 8,
            // 4, then 2, 1 on the one row left): each sum adds the same two values at every level as
            // warp_sum's, so the same bits, with 9 shuffles instead of 40. Row (lane >> 2) & 7 ends in
            // lanes 4r .. 4r + 3.
            float u4[4], t[2];
            const bool b4 = lane & 16, b3 = lane & 8, b2 = lane & 4;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float keep = b4 ? acc[q + 4] : acc[q], send = b4 ? acc[q] : acc[q + 4];
                u4[q] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
            }
#pragma unroll
            for (int q = 0; q < 2; ++q) {
                const float keep = b3 ? u4[q + 2] : u4[q], send = b3 ? u4[q] : u4[q + 2];
                t[q] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
            }
            float sum = (b2 ? t[1] : t[0]) + __shfl_xor_sync(0xffffffffu, b2 ? t[0] : t[1], 4);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            const int r = lane >> 2;
            const float xr = __shfl_sync(0xffffffffu, cur.x, s * kUpdPB + r);
            if ((lane & 3) == 0 && r < np)
                y[cur.y0 + s * kUpdPB + r] = from_f32<T>(__fmaf_rn(cur.d, xr, sum));
            static_assert(kUpdPB == 8, "the reduce-scatter above takes 8 rows");
            slot = slot + 1 == kUpdStages ? 0 : slot + 1;
        }
        cur = nxt;
    }
    cp_async_wait<0>();  // no copy outlives the block (the ring's last slots may still be filling)
}

// ---- launching

dim3 tiled_grid(int64_t blocks, int64_t tile_count, const char* kernel) {
    MSLM_CHECK(blocks <= INT_MAX && tile_count <= 65535, "CUDA kernel {}: grid ({}, {}) too large", kernel,
               blocks, tile_count);
    return dim3(unsigned(blocks), unsigned(tile_count));
}

// ssd_chunk_state_tc_kernel<kGrad, NT> over bhc (b, chunk, head) blocks: two N tiles a block where
// that still leaves three blocks an SM, else one.
template <bool kGrad, typename S, typename T>
cudaError_t launch_chunk_state_tc(const Args<T>& a, int64_t bhc, const T* dy, float* out, cudaStream_t s,
                                  bool pdl, const char* kernel) {
    const int64_t tp = mma_tiles(a.P), tn = mma_tiles(a.N);
    const bool two = tn >= 2 && bhc * tp * ((tn + 1) / 2) >= 3 * int64_t(multiprocessors<S>(kernel));
    auto go = [&](auto kernel_fn, int nt, size_t smem) {
        check_cuda<S>(cudaFuncSetAttribute(kernel_fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                      "cudaFuncSetAttribute", kernel);
        const dim3 grid = tiled_grid(bhc, tp * ((tn + nt - 1) / nt), kernel);
        if (pdl) return launch_ops_pdl(kernel_fn, grid, kMmaThreads, smem, s, a, dy, out);
        kernel_fn<<<grid, kMmaThreads, smem, s>>>(a, dy, out);
        return cudaGetLastError();
    };
    return two ? go(ssd_chunk_state_tc_kernel<kGrad, 2, T>, 2, sizeof(ChunkStateSmem<2>))
               : go(ssd_chunk_state_tc_kernel<kGrad, 1, T>, 1, sizeof(ChunkStateSmem<1>));
}

// MSLM_SSD_STAGE_TIMES=1 in the environment: every ssd_forward / ssd_backward call records a CUDA
// event after each of its stages on its stream, waits for the last, and prints the stages'
// milliseconds to stderr (bench_cuda_ssd --stages). Off (the default) it costs one getenv per call.
class StageTimes {
public:
    StageTimes(const char* op, const char* dtype, bool tc, cudaStream_t stream)
        : op_(op), dtype_(dtype), tc_(tc), stream_(stream) {
        const char* v = std::getenv("MSLM_SSD_STAGE_TIMES");
        on_ = v != nullptr && std::string_view(v) == "1";
        mark(nullptr);
    }
    // After the launches of one stage.
    void mark(const char* stage) {
        if (!on_ || n_ == kMax) return;
        cudaEvent_t e = nullptr;
        if (cudaEventCreate(&e) != cudaSuccess || cudaEventRecord(e, stream_) != cudaSuccess) {
            on_ = false;
            return;
        }
        events_[n_] = e, names_[n_] = stage, ++n_;
    }
    ~StageTimes() {
        if (on_ && n_ > 1 && cudaEventSynchronize(events_[n_ - 1]) == cudaSuccess) {
            std::fprintf(stderr, "%s<%s>%s:", op_, dtype_, tc_ ? " tensor cores" : "");
            float total = 0.0f;
            for (int i = 1; i < n_; ++i) {
                float ms = 0.0f;
                static_cast<void>(cudaEventElapsedTime(&ms, events_[i - 1], events_[i]));
                total += ms;
                std::fprintf(stderr, " %s %.3f |", names_[i], ms);
            }
            std::fprintf(stderr, " total %.3f ms\n", total);
        }
        for (int i = 0; i < n_; ++i) static_cast<void>(cudaEventDestroy(events_[i]));
    }
    StageTimes(const StageTimes&) = delete;
    StageTimes& operator=(const StageTimes&) = delete;

private:
    static constexpr int kMax = 16;
    const char *op_, *dtype_;
    bool tc_, on_ = false;
    cudaStream_t stream_;
    int n_ = 0;
    cudaEvent_t events_[kMax] = {};
    const char* names_[kMax] = {};
};

// (1): dtv and cum in the workspace; the warp-scan kernel on the tensor-core path, the serial one
// (the fp32 reference path, unchanged) otherwise.
template <typename S>
void launch_decay(const Args<device_t<S>>& a, const Workspace& ws, bool tc, cudaStream_t stream) {
    const int64_t bhc = a.batch * a.H * a.n_chunks;
    if (tc) {
        // A warp a block: one sequence's few warps (24 blocks of 8 at B = 1, T = 2048) spread over
        // as many SMs instead of sharing a few.
        const auto blocks = static_cast<unsigned>(std::min<int64_t>(bhc, int64_t(1) << 30));
        check_cuda<S>(
            launch_ops_pdl(ssd_decay_scan_kernel<device_t<S>>, blocks, 32, 0, stream, a, ws.dtv, ws.cum),
            "launch", "ssd_decay_scan");
        check_launch<S>("ssd_decay_scan");
    } else {
        ssd_decay_kernel<<<grid_size<S>(bhc, "ssd_decay"), kThreads, 0, stream>>>(a, ws.dtv, ws.cum);
        check_launch<S>("ssd_decay");
    }
}

// Steps (1), (3) and (4) of the forward, which the backward repeats when not given chunk_states:
// dtv, cum and the chunk states in the workspace (or in `states`), h_last if wanted.
template <typename S>
void state_pass(const Args<device_t<S>>& a, const Workspace& ws, float* states, const float* h0,
                float* h_last, __nv_bfloat16* states16, bool tc, cudaStream_t stream, StageTimes& times,
                bool store_f32 = true) {
    using T = device_t<S>;
    const int64_t bcn = a.batch * a.n_chunks;
    if (bcn > 0) {
        launch_decay<S>(a, ws, tc, stream);
        times.mark("decay");
        bool done = false;
        if constexpr (std::is_same_v<S, uint16_t>) {
            if (tc) {
                check_cuda<S>(launch_chunk_state_tc<false, S>(a, bcn * a.H, static_cast<const T*>(nullptr),
                                                              states, stream, true, "ssd_chunk_state_tc"),
                              "launch", "ssd_chunk_state_tc");
                check_launch<S>("ssd_chunk_state_tc");
                done = true;
            }
        }
        if (!done) {
            ssd_chunk_state_kernel<false>
                <<<tiled_grid(bcn * a.H, tiles(a.P) * tiles(a.N), "ssd_chunk_state"), kTileThreads, 0,
                   stream>>>(a, static_cast<const T*>(nullptr), states);
            check_launch<S>("ssd_chunk_state");
        }
        times.mark("chunk_state");
    }
    if (h_last || bcn > 0) {
        check_cuda<S>(launch_ops_pdl(ssd_state_pass_kernel<false, T>, state_pass_grid<S>(a), kThreads,
                                     state_pass_smem(a), stream, a, states, h0, h_last, states16,
                                     store_f32 || !states16, static_cast<const float*>(nullptr),
                                     static_cast<float*>(nullptr)),
                      "launch", "ssd_state_pass");
        check_launch<S>("ssd_state_pass");
        times.mark("state_pass");
    }
}

// Tensor cores for bf16 storage unless MSLM_SSD_TC=0 (read at every call, for ablations); f32
// always takes the fp32 kernels.
template <typename S>
bool use_tensor_cores() {
    if constexpr (!std::is_same_v<S, uint16_t>) {
        return false;
    } else {
        const char* v = std::getenv("MSLM_SSD_TC");
        return v == nullptr || std::string_view(v) != "0";
    }
}

// The output kernel: ssd_output_reg_kernel with the factored scores, unless MSLM_SSD_OUT_REG is 0
// (ssd_output_tc_kernel, the staged kernel) or exact (the register kernel forming every score
// directly: the staged kernel's bits); read at every call, for ablations. 0: staged, 1: exact,
// 2: factored.
int output_kernel_choice() {
    const char* v = std::getenv("MSLM_SSD_OUT_REG");
    if (v == nullptr) return 2;
    const std::string_view s(v);
    return s == "0" ? 0 : s == "exact" ? 1 : 2;
}

// The backward head's M steps (ssd_backward_head_tc_kernel): in registers unless MSLM_SSD_BWD_REG is 0
// (staged through shared memory; the same bits). Read at every call, for ablations.
bool backward_head_reg() {
    return env_switch_on("MSLM_SSD_BWD_REG");
}

// ⟨dY, C·S_inᵀ⟩ from the dC kernel's blocks (ssd_dbc_tc_kernel's ztok) unless MSLM_SSD_Z_IN_DC is 0
// (the head kernel's Z steps). Read at every call, for ablations.
bool z_in_dc_enabled() {
    return env_switch_on("MSLM_SSD_Z_IN_DC");
}

// The backward head on Hopper's warpgroup products (ssd_wgmma.sm90a.cu) where the device has them and
// the register-M, Z-in-dC form applies, unless MSLM_SSD_BWD_WGMMA is 0. Read at every call, for
// ablations.
#ifdef MSLM_HAVE_SM90A
bool backward_head_wgmma_enabled() {
    return env_switch_on("MSLM_SSD_BWD_WGMMA");
}
#endif

// The decode update's wide form streamed through shared memory (ssd_update_stream_kernel) unless
// MSLM_SSD_UPDATE_STREAM is 0 (the register form). H200, 130m at batch 64: bf16 states 43 → 18.3 µs
// a layer (89.2K → 95.1K tokens/s; 73.3K before the register form's 128-register bound), fp32 states
// 30.5 → 31.8 µs in Nsight Compute but +1% tokens/s in the step. Read at every call, for ablations.
bool update_stream_enabled() {
    return env_switch_on("MSLM_SSD_UPDATE_STREAM");
}

// The streamed update's items a warp's unit (ssd_update_stream_kernel): 1, 2 or 4 consecutive 8-row
// items of one (row, head), whose inputs and head constants a warp then loads and computes once. The
// largest that does not lengthen the busiest warp's list of items (warps: those resident at once),
// or MSLM_SSD_UPDATE_RUN (1, 2 or 4; read at every call, for ablations).
int update_run(int64_t heads, int64_t p_blocks, int64_t warps) {
    if (const char* env = std::getenv("MSLM_SSD_UPDATE_RUN")) {
        const std::string v(env);
        MSLM_CHECK(v == "1" || v == "2" || v == "4", "MSLM_SSD_UPDATE_RUN={}: expected 1, 2 or 4", v);
        return std::stoi(v);
    }
    auto busiest = [&](int64_t run) {
        const int64_t units = heads * ((p_blocks + run - 1) / run);
        return (units + warps - 1) / warps * run;
    };
    int run = 1;
    for (int r : {2, 4})
        if (busiest(r) <= busiest(1)) run = r;
    return run;
}

// ⟨dS, S_in⟩ of the finish from the reverse state pass (its dot_with) unless MSLM_SSD_DSS_IN_PASS is 0
// (the finish kernel reads both states). Read at every call, for ablations.
bool dss_in_pass_enabled() {
    return env_switch_on("MSLM_SSD_DSS_IN_PASS");
}

// C·Bᵀ of whole chunks as cuBLASLt's strided batched product (one call per group; every chunk's
// rows are Q·ld apart when T is a multiple of Q) unless MSLM_SSD_CB_GEMM=0 (read at every call, for
// ablations). bf16 products accumulate in fp32 either way and CB is fp32: only the order of the N
// terms of each sum differs from ssd_cb_tc_kernel. The kernel computes only the tiles on and below
// the diagonal; the product fills the whole Q × Q block, whose upper part no reader uses.
bool use_cb_gemm() {
    return env_switch_on("MSLM_SSD_CB_GEMM");
}

template <typename S>
void launch_cb(const Args<device_t<S>>& a, float* CB, bool tc, cudaStream_t stream) {
    const int64_t bcg = a.batch * a.n_chunks * a.G;
    if constexpr (std::is_same_v<S, uint16_t>) {
        if (tc && a.seqlen % a.Q == 0 && use_cb_gemm()) {
            auto bits = [](const __nv_bfloat16* p) { return reinterpret_cast<const uint16_t*>(p); };
            for (int64_t g = 0; g < a.G; ++g)
                batched_linear_f32_out(CB + g * a.Q * a.Q, a.Q, a.G * a.Q * a.Q, bits(a.Cm) + g * a.N, a.ld_C,
                                       a.Q * a.ld_C, bits(a.Bm) + g * a.N, a.ld_B, a.Q * a.ld_B,
                                       a.batch * a.n_chunks, a.Q, a.N, a.Q, stream);
            return;
        }
        if (tc) {
            ssd_cb_tc_kernel<<<tiled_grid(bcg, mma_tiles(a.Q) * mma_tiles(a.Q), "ssd_cb_tc"), kMmaThreads, 0,
                               stream>>>(a, CB);
            check_launch<S>("ssd_cb_tc");
            return;
        }
    }
    ssd_cb_kernel<<<tiled_grid(bcg, tiles(a.Q) * tiles(a.Q), "ssd_cb"), kTileThreads, 0, stream>>>(a, CB);
    check_launch<S>("ssd_cb");
}

}  // namespace

int64_t ssd_chunk_states_numel(const SsdDims& dims) {
    const Plan p = make_plan(dims, "ssd_chunk_states_numel");
    return p.batch * p.n_chunks * p.H * p.P * p.N;
}

size_t ssd_forward_workspace_bytes(const SsdDims& dims) {
    return layout(make_plan(dims, "ssd_forward_workspace_bytes"), false, nullptr, nullptr);
}

size_t ssd_backward_workspace_bytes(const SsdDims& dims) {
    return layout(make_plan(dims, "ssd_backward_workspace_bytes"), true, nullptr, nullptr);
}

template <typename S>
void ssd_forward(S* y, float* h_last, const SsdInputs<S>& in, const float* h0, const SsdDims& dims,
                 float* chunk_states, void* workspace, void* stream) {
    const Plan p = make_plan(dims, "ssd_forward");
    check_strides(in, p, "ssd_forward");
    if (p.batch == 0) return;
    auto s = static_cast<cudaStream_t>(stream);
    const size_t bytes = layout(p, false, nullptr, nullptr);
    Scratch<S> scratch(workspace, bytes, s, "ssd_forward");
    Workspace ws{};
    layout(p, false, scratch.get(), &ws);
    const auto a = make_args(in, p, ws);
    const bool tc = use_tensor_cores<S>();
    StageTimes times("ssd_forward", dtype_label<S>(), tc, s);
    float* states = chunk_states ? chunk_states : ws.states;
    const int out_kernel = tc ? output_kernel_choice() : 0;
    const bool reg_scores = out_kernel > 0;
    // Without chunk_states to return, the register-score kernel reads only the bf16 states.
    state_pass<S>(a, ws, states, h0, h_last, reg_scores ? ws.states16 : nullptr, tc, s, times,
                  chunk_states != nullptr || !reg_scores);
    if (p.n_chunks == 0) return;
    launch_cb<S>(a, ws.CB, tc, s);
    times.mark("cb");
    const int64_t bch = p.batch * p.n_chunks * p.H;
    auto* out = reinterpret_cast<device_t<S>*>(y);
    if constexpr (std::is_same_v<S, uint16_t>) {
        if (reg_scores) {
            // A grid of at most two waves at 3 blocks an SM (one sequence's prefill: 768 blocks) takes the
            // build for 3 (168 registers) over the one for 4 (128, more spills): 37.0 → 34.3 µs at
            // 1 × 2048; at 8 × 2048 the one for 4 is faster (0.242 against 0.271 ms).
            const int64_t blocks = bch * mma_tiles(p.Q);
            const bool small = blocks <= 2 * 3 * int64_t(multiprocessors<S>("ssd_output_reg"));
            auto* kernel = out_kernel == 1 ? ssd_output_reg_kernel<device_t<S>, false>
                           : small         ? ssd_output_reg_kernel<device_t<S>, true, 3>
                                           : ssd_output_reg_kernel<device_t<S>, true>;
            check_cuda<S>(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               int(sizeof(OutRegSmem))),
                          "cudaFuncSetAttribute", "ssd_output_reg");
            check_cuda<S>(launch_ops_pdl(kernel, tiled_grid(bch, mma_tiles(p.Q), "ssd_output_reg"),
                                         kMmaThreads, sizeof(OutRegSmem), s, a, ws.CB, ws.states16, out),
                          "launch", "ssd_output_reg");
            check_launch<S>("ssd_output_reg");
            times.mark("output");
            return;
        }
        if (tc) {
            check_cuda<S>(cudaFuncSetAttribute(ssd_output_tc_kernel<device_t<S>>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, int(sizeof(OutSmem))),
                          "cudaFuncSetAttribute", "ssd_output_tc");
            ssd_output_tc_kernel<<<tiled_grid(bch, mma_tiles(p.Q), "ssd_output_tc"), kMmaThreads, sizeof(OutSmem),
                                   s>>>(a, ws.CB, states, out);
            check_launch<S>("ssd_output_tc");
            times.mark("output");
            return;
        }
    }
    ssd_output_kernel<<<tiled_grid(bch, tiles(p.Q) * tiles(p.P), "ssd_output"), kTileThreads, 0, s>>>(
        a, ws.CB, states, out);
    check_launch<S>("ssd_output");
    times.mark("output");
}

// The backward's kernels, fp32 tiles or (bf16, tc) tensor cores; the same stages either way.
template <typename S>
void backward_stages(const SsdGrads<S>& grads, const device_t<S>* dY, const Args<device_t<S>>& a,
                     const Plan& p, const Workspace& ws, const float* states, bool tc, cudaStream_t s,
                     StageTimes& times) {
    using T = device_t<S>;
    const int64_t bch = p.batch * p.n_chunks * p.H, bcg = p.batch * p.n_chunks * p.G;
    const size_t vec_bytes = 4 * p.Q * sizeof(float);
    auto* dx = reinterpret_cast<T*>(grads.dx);
    auto* ddt = reinterpret_cast<T*>(grads.ddt);
    auto* dB = reinterpret_cast<T*>(grads.dB);
    auto* dC = reinterpret_cast<T*>(grads.dC);
    if constexpr (std::is_same_v<S, uint16_t>) {
        if (tc) {
            check_cuda<S>(
                launch_chunk_state_tc<true, S>(a, bch, dY, ws.dS, s, false, "ssd_chunk_state_grad_tc"),
                "launch", "ssd_chunk_state_grad_tc");
            check_launch<S>("ssd_chunk_state_grad_tc");
            times.mark("chunk_state_grad");
            // ⟨dS, S_in⟩ by the reverse pass where every thread of its blocks holds an element (unless
            // MSLM_SSD_DSS_IN_PASS=0): the finish kernel then reads gridDim.x parts, not both states.
            const dim3 pass_grid = state_pass_grid<S>(a);
            const bool dss_in_pass = (p.P * p.N) % kThreads == 0 && dss_in_pass_enabled();
            ssd_state_pass_kernel<true><<<pass_grid, kThreads, state_pass_smem(a), s>>>(
                a, ws.dS, nullptr, nullptr, nullptr, true, dss_in_pass ? states : nullptr, ws.dss);
            check_launch<S>("ssd_state_pass_grad");
            times.mark("state_pass_grad");
            // dCB and the E slots (always: dcum needs E), then dC and dB, the per-s-tile head and the
            // finish.
            check_cuda<S>(cudaFuncSetAttribute(ssd_dcb_tc_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               int(sizeof(DcbSmem))),
                          "cudaFuncSetAttribute", "ssd_dcb_tc");
            ssd_dcb_tc_kernel<<<tiled_grid(bcg, mma_tiles(p.Q) * (mma_tiles(p.Q) + 1) / 2, "ssd_dcb_tc"), kMmaThreads,
                                sizeof(DcbSmem), s>>>(a, dY, ws.CB, ws.dCB, ws.erow, ws.ecol);
            check_launch<S>("ssd_dcb_tc");
            times.mark("dcb");
            // dC's blocks give ⟨dY, C·S_inᵀ⟩ by n tile (unless MSLM_SSD_Z_IN_DC=0); without dC the head
            // kernel forms it.
            const int64_t n_tok = bch * p.Q;
            const bool z_in_dc = dC != nullptr && z_in_dc_enabled();
            if (dB || dC) {
                check_cuda<S>(
                    cudaFuncSetAttribute(ssd_dbc_tc_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(sizeof(DbcSmem))),
                    "cudaFuncSetAttribute", "ssd_dbc_tc");
                dim3 grid = tiled_grid(bcg, mma_tiles(p.Q) * mma_tiles(p.N), "ssd_dbc_tc");
                grid.z = dB && dC ? 2 : 1;
                ssd_dbc_tc_kernel<<<grid, kMmaThreads, sizeof(DbcSmem), s>>>(
                    a, dY, ws.dCB, states, ws.dS, dC, dB, z_in_dc ? ws.tok + kTokZ * n_tok : nullptr);
                check_launch<S>("ssd_dbc_tc");
                times.mark("dC+dB");
            }
            const dim3 head_grid = tiled_grid(bch, mma_tiles(p.Q), "ssd_backward_head_tc");
            bool head_done = false;
#ifdef MSLM_HAVE_SM90A
            if (z_in_dc && backward_head_reg() && backward_head_wgmma_enabled() && wgmma_available()) {
                check_cuda<S>(launch_backward_head_wgmma(a, dY, ws.CB, ws.dS, dx, ws.tok, head_grid, s),
                              "launch", "ssd_backward_head_wgmma");
                head_done = true;
            }
#endif
            if (!head_done) {
                auto head = backward_head_reg() ? (z_in_dc ? ssd_backward_head_tc_kernel<T, true, false>
                                                           : ssd_backward_head_tc_kernel<T, true, true>)
                                                : (z_in_dc ? ssd_backward_head_tc_kernel<T, false, false>
                                                           : ssd_backward_head_tc_kernel<T, false, true>);
                check_cuda<S>(cudaFuncSetAttribute(head, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   int(sizeof(HeadSmem))),
                              "cudaFuncSetAttribute", "ssd_backward_head_tc");
                head<<<head_grid, kMmaThreads, sizeof(HeadSmem), s>>>(a, dY, ws.CB, states, ws.dS, dx,
                                                                      ws.tok);
            }
            check_launch<S>("ssd_backward_head_tc");
            times.mark("backward_head");
            ssd_backward_finish_tc_kernel<<<tiled_grid(bch, 1, "ssd_backward_finish_tc"), kMmaThreads,
                                            head_tc_vec_bytes(p.Q), s>>>(
                a, states, ws.dS, ws.erow, ws.ecol, ws.tok, z_in_dc ? int(mma_tiles(p.N)) : 1,
                dss_in_pass ? ws.dss : nullptr, int(pass_grid.x), ddt, ws.part);
            check_launch<S>("ssd_backward_finish_tc");
            times.mark("backward_finish");
            return;
        }
    }
    ssd_chunk_state_kernel<true>
        <<<tiled_grid(bch, tiles(p.P) * tiles(p.N), "ssd_chunk_state_grad"), kTileThreads, 0, s>>>(a, dY,
                                                                                                   ws.dS);
    check_launch<S>("ssd_chunk_state_grad");
    times.mark("chunk_state_grad");
    ssd_state_pass_kernel<true><<<state_pass_grid<S>(a), kThreads, state_pass_smem(a), s>>>(
        a, ws.dS, nullptr, nullptr, nullptr, true, nullptr, nullptr);
    check_launch<S>("ssd_state_pass_grad");
    times.mark("state_pass_grad");
    ssd_backward_head_kernel<<<tiled_grid(bch, 1, "ssd_backward_head"), kTileThreads, vec_bytes, s>>>(
        a, dY, ws.CB, states, ws.dS, dx, ddt, ws.part);
    check_launch<S>("ssd_backward_head");
    times.mark("backward_head");
    if (dB || dC) {
        ssd_dcb_kernel<<<tiled_grid(bcg, tiles(p.Q) * tiles(p.Q), "ssd_dcb"), kTileThreads, 0, s>>>(a, dY,
                                                                                                    ws.dCB);
        check_launch<S>("ssd_dcb");
        times.mark("dcb");
        const dim3 grid = tiled_grid(bcg, tiles(p.Q) * tiles(p.N), "ssd_dbc");
        if (dC) {
            ssd_dbc_kernel<true><<<grid, kTileThreads, 0, s>>>(a, dY, ws.dCB, states, ws.dS, dC);
            check_launch<S>("ssd_dbc");
            times.mark("dC");
        }
        if (dB) {
            ssd_dbc_kernel<false><<<grid, kTileThreads, 0, s>>>(a, dY, ws.dCB, states, ws.dS, dB);
            check_launch<S>("ssd_dbc");
            times.mark("dB");
        }
    }
}

template <typename S>
void ssd_backward(const SsdGrads<S>& grads, const S* dy, const SsdInputs<S>& in, const float* h0,
                  const float* chunk_states, const SsdDims& dims, void* workspace, void* stream) {
    using T = device_t<S>;
    const Plan p = make_plan(dims, "ssd_backward");
    check_strides(in, p, "ssd_backward");
    if (p.batch == 0 || p.n_chunks == 0) return;
    auto s = static_cast<cudaStream_t>(stream);
    const size_t bytes = layout(p, true, nullptr, nullptr);
    Scratch<S> scratch(workspace, bytes, s, "ssd_backward");
    Workspace ws{};
    layout(p, true, scratch.get(), &ws);
    auto a = make_args(in, p, ws);
    const bool tc = use_tensor_cores<S>();
    StageTimes times("ssd_backward", dtype_label<S>(), tc, s);
    // Overwritten activation gradients: the tensor-core kernels skip the old values; the fp32
    // kernels add to zeros.
    a.overwrite = grads.overwrite && tc;
    if (grads.overwrite && !tc) {
        const int64_t rows = p.batch * p.seqlen;
        auto zero_rows = [&](S* ptr, int64_t ld, int64_t width) {
            if (ptr && rows > 0)
                check_cuda<S>(cudaMemset2DAsync(ptr, sizeof(S) * ld, 0, sizeof(S) * width, rows, s),
                              "cudaMemset2DAsync", "ssd_backward");
        };
        zero_rows(grads.dx, in.ld_x, p.H * p.P);
        zero_rows(grads.ddt, in.ld_dt, p.H);
        zero_rows(grads.dB, in.ld_B, p.G * p.N);
        zero_rows(grads.dC, in.ld_C, p.G * p.N);
    }

    // Forward quantities: dt, cum, C·Bᵀ and the states entering each chunk.
    const float* states = chunk_states;
    if (chunk_states) {
        launch_decay<S>(a, ws, tc, s);
        times.mark("decay");
    } else {
        state_pass<S>(a, ws, ws.states, h0, nullptr, nullptr, tc, s, times);
        states = ws.states;
    }
    launch_cb<S>(a, ws.CB, tc, s);
    times.mark("cb");

    // dS leaving each chunk (each chunk's pass-back, then the reverse pass), the per-head
    // gradients, dCB and dB, dC.
    backward_stages<S>(grads, reinterpret_cast<const T*>(dy), a, p, ws, states, tc, s, times);

    if (grads.dA_log || grads.dD || grads.ddt_bias) {
        ssd_param_grad_kernel<<<unsigned((p.H + kThreads - 1) / kThreads), kThreads, 0, s>>>(
            a, ws.part, reinterpret_cast<T*>(grads.dA_log), reinterpret_cast<T*>(grads.dD),
            reinterpret_cast<T*>(grads.ddt_bias));
        check_launch<S>("ssd_param_grad");
        times.mark("param_grad");
    }
}

// 8 rows of state a warp once that leaves ≥ 16 warps an SM (batch 64 on 130m: 12,288 warps);
// fewer rows a warp at small batches, so the state still spreads over every SM.
template <typename S, typename A, typename D, typename HS>
void launch_update(const A& a, D* y, HS* h, const int64_t* slots, const Plan& p, cudaStream_t st,
                   const char* kernel, bool early, KernelTrace* trace) {
    const int64_t wide = p.batch * p.H * ((p.P + 7) / 8);
    MSLM_CHECK(p.batch * p.H * ((p.P + 1) / 2) < INT_MAX && p.N < INT_MAX,
               "{}: {} rows × {} heads × {} state rows: too many", kernel, p.batch, p.H, p.P);
    auto go = [&](auto kernel_fn, int64_t warps) {
        return launch_pdl(kernel_fn, grid_size<S>(warps * 32, kernel), dim3(kThreads), 0, st, a, y, h, slots,
                          early, trace);
    };
    cudaError_t err;
    const bool wide_form = wide >= 16 * int64_t(multiprocessors<S>(kernel));
    if (wide_form && !trace && p.N % 4 == 0 && p.N <= kUpdLd && update_stream_enabled()) {
        // 3 ring slots: 4 measured 3% slower (bf16 states, 130m batch 64, H200).
        auto kernel_fn =
            p.N == 128 ? ssd_update_stream_kernel<D, HS, 3, 128> : ssd_update_stream_kernel<D, HS, 3, 0>;
        constexpr size_t smem = update_stream_smem<HS, 3>();
        check_cuda<S>(cudaFuncSetAttribute(kernel_fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                      "cudaFuncSetAttribute", kernel);
        // B and C by whole 4-value loads where every lane's four are aligned to one.
        const uintptr_t v = 4 * sizeof(D);
        const bool vec_bc = (reinterpret_cast<uintptr_t>(a.Bm) % v | reinterpret_cast<uintptr_t>(a.Cm) % v |
                             uintptr_t(a.ld_B % 4) | uintptr_t(a.ld_C % 4)) == 0;
        // Items a unit (update_run): as many as keep the busiest warp's item count.
        const int64_t warps = int64_t(multiprocessors<S>(kernel)) *
                              resident_blocks<S>(kernel_fn, kThreads, smem, kernel) * (kThreads / 32);
        const int64_t p_blocks = (p.P + kUpdPB - 1) / kUpdPB;
        const int run = update_run(p.batch * p.H, p_blocks, warps);
        const int64_t units = p.batch * p.H * ((p_blocks + run - 1) / run);
        err = launch_pdl(kernel_fn, grid_size<S>(kernel_fn, units * 32, kernel, smem), dim3(kThreads), smem,
                         st, a, y, h, slots, early, vec_bc, run);
    } else if (wide_form) {
        err = trace ? go(ssd_update_kernel<D, 8, HS, true>, wide)
                    : go(ssd_update_kernel<D, 8, HS, false>, wide);
    } else {
        const int64_t narrow = p.batch * p.H * ((p.P + 1) / 2);
        err = trace ? go(ssd_update_kernel<D, 2, HS, true>, narrow)
                    : go(ssd_update_kernel<D, 2, HS, false>, narrow);
    }
    check_cuda<S>(err, "launch", kernel);
    check_launch<S>(kernel);
}

template <typename S>
void ssd_update(S* y, float* h, const int64_t* slots, const SsdInputs<S>& in, const SsdDims& dims,
                void* stream, bool early_state, KernelTrace* trace) {
    SsdDims one = dims;
    one.seqlen = 1, one.chunk_size = 1;
    const Plan p = make_plan(one, "ssd_update");
    check_strides(in, p, "ssd_update");
    if (p.batch == 0) return;
    const auto a = make_args(in, p, Workspace{});
    launch_update<S>(a, reinterpret_cast<device_t<S>*>(y), h, slots, p, static_cast<cudaStream_t>(stream),
                     "ssd_update", early_state, trace);
}

void ssd_update_bf16_state(uint16_t* y, uint16_t* h, const int64_t* slots, const SsdInputs<uint16_t>& in,
                           const SsdDims& dims, void* stream, bool early_state, KernelTrace* trace) {
    const char* kernel = "ssd_update_bf16_state";
    SsdDims one = dims;
    one.seqlen = 1, one.chunk_size = 1;
    const Plan p = make_plan(one, kernel);
    check_strides(in, p, kernel);
    MSLM_CHECK(p.N % 4 == 0, "CUDA kernel {}: state size {} is not a multiple of 4", kernel, p.N);
    MSLM_CHECK(reinterpret_cast<uintptr_t>(h) % 8 == 0, "CUDA kernel {}: the states are not 8-byte aligned",
               kernel);
    if (p.batch == 0) return;
    const auto a = make_args(in, p, Workspace{});
    launch_update<uint16_t>(a, reinterpret_cast<__nv_bfloat16*>(y), reinterpret_cast<__nv_bfloat16*>(h),
                            slots, p, static_cast<cudaStream_t>(stream), kernel, early_state, trace);
}

template void ssd_forward<float>(float*, float*, const SsdInputs<float>&, const float*, const SsdDims&,
                                 float*, void*, void*);
template void ssd_forward<uint16_t>(uint16_t*, float*, const SsdInputs<uint16_t>&, const float*,
                                    const SsdDims&, float*, void*, void*);
template void ssd_backward<float>(const SsdGrads<float>&, const float*, const SsdInputs<float>&, const float*,
                                  const float*, const SsdDims&, void*, void*);
template void ssd_backward<uint16_t>(const SsdGrads<uint16_t>&, const uint16_t*, const SsdInputs<uint16_t>&,
                                     const float*, const float*, const SsdDims&, void*, void*);
template void ssd_update<float>(float*, float*, const int64_t*, const SsdInputs<float>&, const SsdDims&,
                                void*, bool, KernelTrace*);
template void ssd_update<uint16_t>(uint16_t*, float*, const int64_t*, const SsdInputs<uint16_t>&,
                                   const SsdDims&, void*, bool, KernelTrace*);

}  // namespace mslm::ops::cuda
