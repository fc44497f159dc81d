// Mamba-1 selective scan on CUDA.
//
// Layout: a group of G lanes (G = the power of two ≥ N, at most 16) runs one (sequence b, channel
// d); lane n holds state h_n in a register. A block of kThreads covers kThreads / G consecutive
// channels of one sequence: grid (channel blocks, B). Per step every lane of a group loads the
// channel's Δ, u, z (one address: a broadcast) and its own B_t[n], C_t[n]; y_t = Σ_n C_n·h_n is a
// butterfly sum over the group's lanes (a fixed order, the same in forward, update and backward).
//
// Forward: walks the sequence, saving the state before every kScanChunk-th step (fp32) when the
// caller asks. Update: the same kernel for one step, the states addressed through `slots`, so k
// updates give the bits of a k-step forward.
//
// Backward: each group walks the chunks from last to first; per chunk it recomputes the forward
// from the saved state into shared memory (kScanChunk states per lane), then runs the reverse
// recurrence dh_{t−1} = exp(Δ_t·A)·(dh_t + dy_t·C_t) over it. Per-channel gradients (du, dΔ, dz)
// are sums over the group (butterfly again); dB and dC, shared by the channels, are summed per
// step over the block's channels (shuffles within a warp, warps in order through shared memory)
// into a per-block partial in the workspace; dA_log, dD and dΔ-bias, shared by the batch, go to a
// per-sequence partial. Small kernels then add the partials in a fixed order: no float atomics.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/selective_scan.h"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

constexpr int kWarps = kThreads / 32;

// PyTorch's softplus (beta 1, threshold 20), as ops/cpu/scalar_math.h.
__device__ __forceinline__ float softplus_thresholded(float v) {
    return v > 20.0f ? v : log1pf(expf(v));
}
__device__ __forceinline__ float softplus_thresholded_grad(float v) {
    return v > 20.0f ? 1.0f : sigmoid_pair(v).s;
}

// Sum over the G lanes of an aligned group (G a power of two ≤ 32); every lane gets the sum. All 32
// lanes of the warp must call it.
__device__ __forceinline__ float group_sum(float v, int G) {
    for (int off = G / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

int lanes_per_channel(int64_t N) {
    int G = 1;
    while (G < N) G *= 2;
    return G;
}

int64_t n_chunks(int64_t Tn) {
    return (Tn + kScanChunk - 1) / kScanChunk;
}

int64_t channel_blocks(const ScanDims& dims) {
    const int64_t per_block = kThreads / lanes_per_channel(dims.d_state);
    return (dims.d_inner + per_block - 1) / per_block;
}

template <typename D>
struct Inputs {
    const D* u;
    int64_t ld_u;
    const D* delta;
    int64_t ld_delta;
    const D* delta_bias;
    const D* A_log;
    const D* Bm;
    int64_t ld_B;
    const D* Cm;
    int64_t ld_C;
    const D* D_skip;
    const D* z;
    int64_t ld_z;
};

template <typename T>
Inputs<device_t<T>> device_inputs(const SelectiveScanInputs<T>& in) {
    using D = device_t<T>;
    auto p = [](const T* q) { return reinterpret_cast<const D*>(q); };
    return {p(in.u), in.ld_u,  p(in.delta), in.ld_delta, p(in.delta_bias), p(in.A_log), p(in.Bm),
            in.ld_B, p(in.Cm), in.ld_C,     p(in.D),     p(in.z),          in.ld_z};
}

// Where a thread sits: lane n of the group for channel d of sequence b.
struct Lane {
    int n;
    int64_t d;
    bool valid;   // d < Din
    bool active;  // valid and n < N
};

__device__ __forceinline__ Lane lane_of(int64_t Din, int N, int G) {
    Lane l;
    l.n = int(threadIdx.x) % G;
    l.d = int64_t(blockIdx.x) * (kThreads / G) + threadIdx.x / G;
    l.valid = l.d < Din;
    l.active = l.valid && l.n < N;
    return l;
}

// The per-step inputs of one lane at row `row`; zeros where the lane is idle, so that idle lanes
// keep h = 0 and add nothing.
struct Step {
    float raw;  // Δ before softplus, bias added
    float dl, dec, u, Bn, Cn;
};

template <typename D>
__device__ __forceinline__ Step load_step(const Inputs<D>& in, const Lane& l, int64_t row, float bias,
                                          float A) {
    Step s{0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    if (l.valid) {
        s.raw = to_f32(in.delta[row * in.ld_delta + l.d]) + bias;
        s.u = to_f32(in.u[row * in.ld_u + l.d]);
    }
    if (l.active) {
        s.Bn = to_f32(in.Bm[row * in.ld_B + l.n]);
        s.Cn = to_f32(in.Cm[row * in.ld_C + l.n]);
    }
    s.dl = softplus_thresholded(s.raw);
    s.dec = expf(s.dl * A);
    return s;
}

// h_t = exp(Δ·A)·h_{t−1} + Δ·B·u, with the roundings fixed (forward and backward recompute agree).
__device__ __forceinline__ float advance(float h, const Step& s) {
    return fmaf(s.dec, h, s.dl * s.Bn * s.u);
}

// Forward over sequences b = blockIdx.y, or one update step per row b when slots != null (Tn = 1):
// the state of row b is h_in / h_out[slot], slot = slots ? slots[b] : b.
template <typename D>
__global__ void __launch_bounds__(kThreads)
    scan_forward_kernel(D* y, float* h_out, const float* h_in, const int64_t* slots, Inputs<D> in, int64_t Tn,
                        int64_t Din, int N, int G, float* chunk_states, int64_t chunks) {
    const Lane l = lane_of(Din, N, G);
    const int64_t b = blockIdx.y;
    const int64_t slot = slots ? slots[b] : b;
    const float A = l.active ? -expf(to_f32(in.A_log[l.d * N + l.n])) : 0.0f;
    const float bias = l.valid && in.delta_bias ? to_f32(in.delta_bias[l.d]) : 0.0f;
    const float Dd = l.valid && in.D_skip ? to_f32(in.D_skip[l.d]) : 0.0f;
    const int64_t state_at = (slot * Din + l.d) * N + l.n;
    float h = l.active && h_in ? h_in[state_at] : 0.0f;
    for (int64_t t = 0; t < Tn; ++t) {
        const int64_t row = b * Tn + t;
        if (chunk_states && l.active && t % kScanChunk == 0)
            chunk_states[((b * chunks + t / kScanChunk) * Din + l.d) * N + l.n] = h;
        const Step s = load_step(in, l, row, bias, A);
        h = advance(h, s);
        float acc = group_sum(s.Cn * h, G);
        if (l.valid && l.n == 0) {
            if (in.D_skip) acc = fmaf(Dd, s.u, acc);
            if (in.z) acc *= silu(to_f32(in.z[row * in.ld_z + l.d]));
            y[row * Din + l.d] = from_f32<D>(acc);
        }
    }
    if (h_out && l.active) h_out[state_at] = h;
}

template <typename D>
struct Grads {
    D* du;
    D* ddelta;
    D* dz;
    float* part_dB;     // (B, channel blocks, T, N) or null
    float* part_dC;     // (B, channel blocks, T, N) or null
    float* part_dA;     // (B, Din, N) or null
    float* part_dD;     // (B, Din) or null
    float* part_dbias;  // (B, Din) or null
};

template <typename D>
__global__ void __launch_bounds__(kThreads)
    scan_backward_kernel(Grads<D> gr, const D* dy, Inputs<D> in, const float* chunk_states, int64_t Tn,
                         int64_t Din, int N, int G, int64_t chunks) {
    __shared__ float hs[kScanChunk * kThreads];         // (chunk step, thread): h after each step
    __shared__ float red[2][kWarps][2][kScanMaxState];  // per-warp dB, dC sums, two steps in flight

    const Lane l = lane_of(Din, N, G);
    const int64_t b = blockIdx.y;
    const int warp = int(threadIdx.x) / 32, lane32 = int(threadIdx.x) % 32;
    const float A = l.active ? -expf(to_f32(in.A_log[l.d * N + l.n])) : 0.0f;
    const float bias = l.valid && in.delta_bias ? to_f32(in.delta_bias[l.d]) : 0.0f;
    const float Dd = l.valid && in.D_skip ? to_f32(in.D_skip[l.d]) : 0.0f;
    const bool need_BC = gr.part_dB || gr.part_dC;

    float dh = 0.0f, dA = 0.0f, dD_acc = 0.0f, dbias_acc = 0.0f;
    for (int64_t c = chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * kScanChunk, t1 = min(Tn, t0 + kScanChunk);
        const float h_start = l.active ? chunk_states[((b * chunks + c) * Din + l.d) * N + l.n] : 0.0f;
        float h = h_start;
        for (int64_t t = t0; t < t1; ++t) {
            h = advance(h, load_step(in, l, b * Tn + t, bias, A));
            hs[(t - t0) * kThreads + threadIdx.x] = h;
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
            const int64_t row = b * Tn + t;
            const Step s = load_step(in, l, row, bias, A);
            const float h_t = hs[(t - t0) * kThreads + threadIdx.x];
            const float h_prev = t > t0 ? hs[(t - 1 - t0) * kThreads + threadIdx.x] : h_start;

            float dy_ssm = l.valid ? to_f32(dy[row * Din + l.d]) : 0.0f;  // d loss / d (C·h + D·u)
            if (in.z) {
                const float y_ssm = fmaf(Dd, s.u, group_sum(s.Cn * h_t, G));
                const float z = l.valid ? to_f32(in.z[row * in.ld_z + l.d]) : 0.0f;
                if (gr.dz && l.valid && l.n == 0) {
                    D* p = gr.dz + row * in.ld_z + l.d;
                    *p = from_f32<D>(to_f32(*p) + dy_ssm * y_ssm * silu_grad(z));
                }
                dy_ssm *= silu(z);
            }
            dD_acc = fmaf(dy_ssm, s.u, dD_acc);
            const float g = fmaf(dy_ssm, s.Cn, dh);  // d loss / d h_t, complete
            const float g_exp = g * h_prev * s.dec;  // d loss / d (Δ_t·A_n)
            const float ddl = group_sum(fmaf(g_exp, A, g * s.Bn * s.u), G);
            const float du = fmaf(dy_ssm, Dd, group_sum(g * s.dl * s.Bn, G));
            dA = fmaf(g_exp, s.dl, dA);
            dh = g * s.dec;
            const float ddelta = ddl * softplus_thresholded_grad(s.raw);
            dbias_acc += ddelta;
            if (l.valid && l.n == 0) {
                if (gr.du) {
                    D* p = gr.du + row * in.ld_u + l.d;
                    *p = from_f32<D>(to_f32(*p) + du);
                }
                if (gr.ddelta) {
                    D* p = gr.ddelta + row * in.ld_delta + l.d;
                    *p = from_f32<D>(to_f32(*p) + ddelta);
                }
            }
            if (need_BC) {
                // Sum over the warp's channels (lanes n, n + G, ...), then over the block's warps.
                float vB = l.active ? g * s.dl * s.u : 0.0f, vC = l.active ? dy_ssm * h_t : 0.0f;
                for (int off = G; off < 32; off <<= 1) {
                    vB += __shfl_xor_sync(0xffffffffu, vB, off);
                    vC += __shfl_xor_sync(0xffffffffu, vC, off);
                }
                const int buf = int(t & 1);
                if (lane32 < N) {
                    red[buf][warp][0][lane32] = vB;
                    red[buf][warp][1][lane32] = vC;
                }
                // One barrier per step: step t writes buffer t & 1, which warp 0 reads before it
                // reaches the next barrier, and which is written again only after that one.
                __syncthreads();
                if (warp == 0 && lane32 < N) {
                    float sB = 0.0f, sC = 0.0f;
                    for (int w = 0; w < kWarps; ++w) {
                        sB += red[buf][w][0][lane32];
                        sC += red[buf][w][1][lane32];
                    }
                    const int64_t at = ((b * gridDim.x + blockIdx.x) * Tn + t) * N + lane32;
                    if (gr.part_dB) gr.part_dB[at] = sB;
                    if (gr.part_dC) gr.part_dC[at] = sC;
                }
            }
        }
    }
    // A = −exp(A_log), so dA/dA_log = A.
    if (gr.part_dA && l.active) gr.part_dA[(b * Din + l.d) * N + l.n] = dA * A;
    if (l.valid && l.n == 0) {
        if (gr.part_dD) gr.part_dD[b * Din + l.d] = dD_acc;
        if (gr.part_dbias) gr.part_dbias[b * Din + l.d] = dbias_acc;
    }
}

// dst[b, t, n] (row stride ld) += Σ_j part[b, j, t, n], j < J in order.
template <typename D>
__global__ void reduce_rows_kernel(D* dst, int64_t ld, const float* part, int64_t Tn, int64_t N, int64_t J,
                                   int64_t total) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t row = i / N, n = i - row * N, b = row / Tn, t = row - b * Tn;
        const float* p = part + (b * J * Tn + t) * N + n;
        float acc = 0.0f;
        for (int64_t j = 0; j < J; ++j) acc += p[j * Tn * N];
        D* q = dst + row * ld + n;
        *q = from_f32<D>(to_f32(*q) + acc);
    }
}

// dst[i] += Σ_b part[b, i], b < B in order.
template <typename D>
__global__ void reduce_batch_kernel(D* dst, const float* part, int64_t B, int64_t M) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < M; i += stride) {
        float acc = 0.0f;
        for (int64_t b = 0; b < B; ++b) acc += part[b * M + i];
        dst[i] = from_f32<D>(to_f32(dst[i]) + acc);
    }
}

template <typename T>
void check_dims(const char* kernel, int64_t B, int64_t Tn, int64_t Din, int64_t N) {
    MSLM_CHECK(B >= 0 && Tn >= 0 && Din >= 0, "CUDA kernel {}<{}>: bad shape B {}, T {}, d_inner {}", kernel,
               dtype_label<T>(), B, Tn, Din);
    MSLM_CHECK(N >= 1 && N <= kScanMaxState, "CUDA kernel {}<{}>: d_state {} outside [1, {}]", kernel,
               dtype_label<T>(), N, kScanMaxState);
    MSLM_CHECK(B <= 65535, "CUDA kernel {}<{}>: {} sequences, at most 65535 per launch", kernel,
               dtype_label<T>(), B);
}

// Workspace layout, in floats: dB, dC partials, then dA_log, dD, ddelta_bias partials.
struct WorkspaceLayout {
    size_t dB, dC, dA, dD, dbias, total;
};

WorkspaceLayout workspace_layout(const ScanDims& dims) {
    const size_t rows = size_t(dims.batch * channel_blocks(dims) * dims.seqlen * dims.d_state);
    const size_t per_batch_channel = size_t(dims.batch * dims.d_inner);
    WorkspaceLayout w{};
    w.dB = 0;
    w.dC = w.dB + rows;
    w.dA = w.dC + rows;
    w.dD = w.dA + per_batch_channel * size_t(dims.d_state);
    w.dbias = w.dD + per_batch_channel;
    w.total = w.dbias + per_batch_channel;
    return w;
}

template <typename T>
void launch_forward(const char* kernel, T* y, float* h_out, const float* h_in, const int64_t* slots,
                    const SelectiveScanInputs<T>& in, int64_t B, int64_t Tn, int64_t Din, int64_t N,
                    float* chunk_states, void* stream) {
    check_dims<T>(kernel, B, Tn, Din, N);
    if (B == 0 || Din == 0) return;
    const ScanDims dims{B, Tn, Din, N};
    const dim3 grid(unsigned(channel_blocks(dims)), unsigned(B));
    using D = device_t<T>;
    scan_forward_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<D*>(y), h_out, h_in, slots, device_inputs(in), Tn, Din, int(N), lanes_per_channel(N),
        chunk_states, n_chunks(Tn));
    check_launch<T>(kernel);
}

}  // namespace

size_t selective_scan_chunk_states_size(const ScanDims& dims) {
    return size_t(dims.batch * n_chunks(dims.seqlen) * dims.d_inner * dims.d_state);
}

size_t selective_scan_backward_workspace_bytes(const ScanDims& dims) {
    return workspace_layout(dims).total * sizeof(float);
}

template <typename T>
void selective_scan_forward(T* y, float* h_last, const SelectiveScanInputs<T>& in, const float* h0,
                            const ScanDims& dims, float* chunk_states, void* stream) {
    launch_forward("selective_scan_forward", y, h_last, h0, nullptr, in, dims.batch, dims.seqlen,
                   dims.d_inner, dims.d_state, chunk_states, stream);
}

template <typename T>
void selective_scan_update(T* y, float* h, const int64_t* slots, const SelectiveScanInputs<T>& in, int64_t k,
                           int64_t d_inner, int64_t d_state, void* stream) {
    const char* kernel = "selective_scan_update";
    MSLM_CHECK(k == 0 || (h && slots), "CUDA kernel {}<{}>: state and slots are required", kernel,
               dtype_label<T>());
    launch_forward(kernel, y, h, h, slots, in, k, 1, d_inner, d_state, nullptr, stream);
}

template <typename T>
void selective_scan_backward(const SelectiveScanGrads<T>& grads, const T* dy,
                             const SelectiveScanInputs<T>& in, const float* chunk_states,
                             const ScanDims& dims, void* workspace, size_t workspace_bytes, void* stream) {
    const char* kernel = "selective_scan_backward";
    const int64_t B = dims.batch, Tn = dims.seqlen, Din = dims.d_inner, N = dims.d_state;
    check_dims<T>(kernel, B, Tn, Din, N);
    if (B == 0 || Tn == 0 || Din == 0) return;
    MSLM_CHECK(chunk_states, "CUDA kernel {}<{}>: chunk states from the forward are required", kernel,
               dtype_label<T>());
    const WorkspaceLayout lay = workspace_layout(dims);
    MSLM_CHECK(workspace && workspace_bytes >= lay.total * sizeof(float),
               "CUDA kernel {}<{}>: workspace of {} bytes, needs {}", kernel, dtype_label<T>(),
               workspace ? workspace_bytes : 0, lay.total * sizeof(float));
    using D = device_t<T>;
    float* ws = static_cast<float*>(workspace);
    const bool need_dD = grads.dD && in.D, need_dbias = grads.ddelta_bias && in.delta_bias;
    Grads<D> gr{reinterpret_cast<D*>(grads.du),
                reinterpret_cast<D*>(grads.ddelta),
                in.z ? reinterpret_cast<D*>(grads.dz) : nullptr,
                grads.dB ? ws + lay.dB : nullptr,
                grads.dC ? ws + lay.dC : nullptr,
                grads.dA_log ? ws + lay.dA : nullptr,
                need_dD ? ws + lay.dD : nullptr,
                need_dbias ? ws + lay.dbias : nullptr};
    const int64_t J = channel_blocks(dims);
    auto s = static_cast<cudaStream_t>(stream);
    scan_backward_kernel<<<dim3(unsigned(J), unsigned(B)), kThreads, 0, s>>>(
        gr, reinterpret_cast<const D*>(dy), device_inputs(in), chunk_states, Tn, Din, int(N),
        lanes_per_channel(N), n_chunks(Tn));
    check_launch<T>(kernel);

    const char* reduce = "selective_scan_backward (reduce)";
    auto rows = [&](T* dst, int64_t ld, const float* part) {
        const int64_t total = B * Tn * N;
        reduce_rows_kernel<<<grid_size<T>(total, reduce), kThreads, 0, s>>>(reinterpret_cast<D*>(dst), ld,
                                                                            part, Tn, N, J, total);
        check_launch<T>(reduce);
    };
    auto batch = [&](T* dst, const float* part, int64_t M) {
        reduce_batch_kernel<<<grid_size<T>(M, reduce), kThreads, 0, s>>>(reinterpret_cast<D*>(dst), part, B,
                                                                         M);
        check_launch<T>(reduce);
    };
    if (grads.dB) rows(grads.dB, in.ld_B, gr.part_dB);
    if (grads.dC) rows(grads.dC, in.ld_C, gr.part_dC);
    if (grads.dA_log) batch(grads.dA_log, gr.part_dA, Din * N);
    if (need_dD) batch(grads.dD, gr.part_dD, Din);
    if (need_dbias) batch(grads.ddelta_bias, gr.part_dbias, Din);
}

#define MSLM_INSTANTIATE(T)                                                                                \
    template void selective_scan_forward<T>(T*, float*, const SelectiveScanInputs<T>&, const float*,       \
                                            const ScanDims&, float*, void*);                               \
    template void selective_scan_backward<T>(const SelectiveScanGrads<T>&, const T*,                       \
                                             const SelectiveScanInputs<T>&, const float*, const ScanDims&, \
                                             void*, size_t, void*);                                        \
    template void selective_scan_update<T>(T*, float*, const int64_t*, const SelectiveScanInputs<T>&,      \
                                           int64_t, int64_t, int64_t, void*);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
