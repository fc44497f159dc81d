// Shared by the CUDA kernel files (include from .cu files only): storage types and their fp32
// conversions, 16-byte packs, SiLU math, and launch helpers with error checks that name the kernel.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"

namespace mslm::ops::cuda {
namespace detail {

// ---- storage <-> fp32 math

__device__ __forceinline__ float to_f32(float v) {
    return v;
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// The public API names bf16 as uint16_t (core/dtype.h); kernels use the CUDA type.
template <typename T>
struct DeviceType {
    using type = T;
};
template <>
struct DeviceType<uint16_t> {
    using type = __nv_bfloat16;
};
template <typename T>
using device_t = typename DeviceType<T>::type;

template <typename T>
const char* dtype_label();
template <>
inline const char* dtype_label<float>() {
    return "f32";
}
template <>
inline const char* dtype_label<uint16_t>() {
    return "bf16";
}

// ---- 16-byte packs

template <typename T>
constexpr int kVec = 16 / sizeof(T);  // 4 × f32, 8 × bf16

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
    T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
    return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <int V, typename T>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& pack) {
    *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

__host__ __device__ inline bool aligned16(const void* p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// ---- math

// σ(x) and 1 − σ(x), both without cancellation or overflow: with t = e^-|x| ∈ (0, 1],
// 1/(1+t) is the larger of the two and t/(1+t) the smaller. (The textbook x / (1 + e^-x) makes
// e^-x = inf for x < -88 and the backward's (1 − σ) cancels for large x.)
struct SigmoidPair {
    float s;  // σ(x)
    float c;  // 1 − σ(x)
};

__device__ __forceinline__ SigmoidPair sigmoid_pair(float x) {
    float t = expf(-fabsf(x));
    float big = 1.0f / (1.0f + t);
    float small = t * big;
    return x >= 0.0f ? SigmoidPair{big, small} : SigmoidPair{small, big};
}

__device__ __forceinline__ float silu(float x) {
    return x * sigmoid_pair(x).s;
}

// sigmoid_pair on the fast exponential and divide (MUFU): t = e^-|x| ≤ 1, so neither overflows, and
// each of σ and 1 − σ is within (1.2·|x| + 4)·2^-23 of sigmoid_pair's, relative (the bounds of
// silu_fast below). sigmoid_pair_rounded<D>: this for a bf16 result (far inside its 2^-9 rounding),
// sigmoid_pair for an fp32 one.
__device__ __forceinline__ SigmoidPair sigmoid_pair_fast(float x) {
    const float t = __expf(-fabsf(x));
    const float big = __fdividef(1.0f, 1.0f + t), small = t * big;
    return x >= 0.0f ? SigmoidPair{big, small} : SigmoidPair{small, big};
}
// Whether a function whose result is rounded to D takes the fast (MUFU) form: every D but fp32,
// whose results keep the accurate one (the *_rounded functions here).
template <typename D>
constexpr bool kFastForResult = !std::is_same_v<D, float>;
template <typename D>
__device__ __forceinline__ SigmoidPair sigmoid_pair_rounded(float x) {
    return kFastForResult<D> ? sigmoid_pair_fast(x) : sigmoid_pair(x);
}

// x·σ(x) as x / (1 + e^-x) on the fast exponential and reciprocal (MUFU, 5 instructions against
// silu()'s ~18). __expf is within 2 + ⌊1.173·|x|⌋ ulp (CUDA C Programming Guide, intrinsic
// functions), the reciprocal within 1 and the add and product 1/2 each: ≤ (1.2·|x| + 4)·2^-23 of
// silu() relative, ~1e-5 at |x| = 88 (past which e^-x is 0 or inf), 150 times below half a bf16
// ulp (2^-9). e^-x overflows to inf below x ≈ −88 and the quotient is then −0 (silu() gives a
// denormal).
// silu_rounded<D>: the SiLU of every forward whose result is rounded to D (bf16: silu_fast; fp32:
// silu()) — the conv, SwiGLU and the gated norm, in the ops kernels and in the decoders' fused
// prologues and epilogues alike, so that those keep giving each other's bits. A backward that
// recomputes such a forward value (the gated norm's g) uses the same function; derivatives come from
// sigmoid_pair().
__device__ __forceinline__ float silu_fast(float x) {
    return __fdividef(x, 1.0f + __expf(-x));
}
template <typename D>
__device__ __forceinline__ float silu_rounded(float x) {
    return kFastForResult<D> ? silu_fast(x) : silu(x);
}

// silu'(x) = σ + x·σ·(1 − σ)
__device__ __forceinline__ float silu_grad(float x) {
    SigmoidPair p = sigmoid_pair(x);
    return p.s * (1.0f + x * p.c);
}
// The same from sigmoid_pair_rounded<D>: fast σ for a bf16 gradient, the accurate one for fp32.
template <typename D>
__device__ __forceinline__ float silu_grad_rounded(float x) {
    const SigmoidPair p = sigmoid_pair_rounded<D>(x);
    return p.s * (1.0f + x * p.c);
}

// ---- attention

// ALiBi slope of head h of n_heads (ops::alibi_slopes), evaluated in double and rounded once, as
// the CPU rounds its double slopes.
__device__ inline float alibi_slope(int h, int n_heads) {
    int m = 1;
    while (m * 2 <= n_heads) m *= 2;
    const double e = h < m ? -8.0 * (h + 1) / m : -8.0 * (2 * (h - m) + 1) / (2 * m);
    return static_cast<float>(exp2(e));
}

// ---- launching

constexpr int kThreads = 256;

template <typename T>
void check_cuda(cudaError_t err, const char* what, const char* kernel) {
    MSLM_CHECK(err == cudaSuccess, "CUDA kernel {}<{}>: {}: {}", kernel, dtype_label<T>(), what,
               cudaGetErrorString(err));
}

// The current device's multiprocessor count (errors name `kernel`).
template <typename T>
int multiprocessors(const char* kernel) {
    int device = 0, sms = 0;
    check_cuda<T>(cudaGetDevice(&device), "cudaGetDevice", kernel);
    check_cuda<T>(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
                  "cudaDeviceGetAttribute", kernel);
    return sms;
}

// Enough blocks for `work` threads, capped at what the device keeps resident at once
// (2048 threads per SM on sm_80+): the grid-stride loops cover the rest.
template <typename T>
unsigned grid_size(int64_t work, const char* kernel) {
    const int64_t resident = int64_t(multiprocessors<T>(kernel)) * (2048 / kThreads);
    return unsigned(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, resident));
}

// Blocks of `threads` that kernel_fn keeps resident on one multiprocessor of the current device:
// its registers and shared memory decide, not only the thread count. Looked up once per (kernel,
// device, threads, shared bytes).
template <typename T, typename Fn>
int resident_blocks(Fn* kernel_fn, int threads, size_t smem, const char* kernel) {
    struct Key {
        const void* fn;
        int device, threads;
        size_t smem;
        int blocks;
    };
    static std::mutex mu;
    static std::vector<Key> seen;
    int device = 0;
    check_cuda<T>(cudaGetDevice(&device), "cudaGetDevice", kernel);
    const void* fn = reinterpret_cast<const void*>(kernel_fn);
    std::lock_guard<std::mutex> lock(mu);
    for (const Key& k : seen)
        if (k.fn == fn && k.device == device && k.threads == threads && k.smem == smem) return k.blocks;
    int blocks = 0;
    check_cuda<T>(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel_fn, threads, smem),
                  "cudaOccupancyMaxActiveBlocksPerMultiprocessor", kernel);
    blocks = std::max(blocks, 1);
    seen.push_back({fn, device, threads, smem, blocks});
    return blocks;
}

// grid_size for a grid-stride kernel_fn of kThreads threads: capped at the blocks the device keeps
// resident at once for this kernel. With the thread-count cap alone, a kernel whose registers allow
// fewer blocks an SM ran its grid in ~1.3–1.6 waves, the last blocks starting only when the first
// ones ended (AdamW at 40 registers 983 → 931 µs, the SSD state pass 56 → 49 µs with the cap alone;
// docs/PERFORMANCE.md).
template <typename T, typename Fn>
unsigned grid_size(Fn* kernel_fn, int64_t work, const char* kernel, size_t smem = 0) {
    const int64_t resident =
        int64_t(multiprocessors<T>(kernel)) * resident_blocks<T>(kernel_fn, kThreads, smem, kernel);
    return unsigned(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, resident));
}

// 2^x on the special-function unit, subnormal results flushed to zero (ex2.approx.ftz: relative
// error about 2^-22; 2^-inf = 0). exp2f / expf without fast math wrap the same instruction in a
// range test and extra multiplies to keep subnormal results, which no weight of the attention and
// SSD kernels needs.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// ---- bf16 values as their 16-bit patterns (the decode and quantized-GEMV kernels): decode,
// round-to-nearest-even encode, and the round trip.

__device__ __forceinline__ float bf(uint16_t v) {
    return __uint_as_float(uint32_t(v) << 16);
}
__device__ __forceinline__ uint16_t to_bf(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
__device__ __forceinline__ float round_bf(float v) {
    return bf(to_bf(v));
}

// ---- programmatic dependent launch (sm_90): a kernel launched with the attribute may start while
// its predecessor in the stream finishes. pdl_trigger lets the successor launch at once; pdl_wait
// returns once the predecessor has completed and its memory is visible, so a kernel may issue
// loads of constants (weights) before it and must read anything a kernel writes after it.
// Launched without the attribute, both are no-ops.

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// An ablation switch that is on unless the environment variable `name` is "0" (read at each call).
inline bool env_switch_on(const char* name) {
    const char* v = std::getenv(name);
    return v == nullptr || std::string_view(v) != "0";
}

// Whether the decode step's kernels launch with programmatic dependent launch: yes unless
// MSLM_DECODE_PDL=0 (read at each launch: a captured graph keeps what it captured).
inline bool pdl_enabled() {
    return env_switch_on("MSLM_DECODE_PDL");
}

// Whether the op kernels that begin with pdl_wait(); pdl_trigger(); (the forward kernels of a
// prefill: norms, conv, SSD, SwiGLU, RoPE, attention) launch with programmatic dependent launch:
// yes unless MSLM_OPS_PDL=0 (read at each launch).
inline bool ops_pdl_enabled() {
    return env_switch_on("MSLM_OPS_PDL");
}

// Launches kernel on stream, with the programmatic-dependent-launch attribute when `pdl`: it may
// start once its predecessor's blocks have all called pdl_trigger (or exited), and must pdl_wait
// before it reads what that predecessor writes — or writes what it reads. Returns the launch's error.
template <typename... Params, typename... Args>
cudaError_t launch_maybe_pdl(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream, Args&&... args) {
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
    config.attrs = &attribute;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}
// The decode step's kernels (pdl_enabled) and the op kernels above (ops_pdl_enabled).
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
    return launch_maybe_pdl(pdl_enabled(), kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}
template <typename... Params, typename... Args>
cudaError_t launch_ops_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                           Args&&... args) {
    return launch_maybe_pdl(ops_pdl_enabled(), kernel, grid, block, smem, stream,
                            std::forward<Args>(args)...);
}

// Launches kernel on stream as clusters of (1, cluster_y, 1) blocks (the split-K few-row products:
// grid.y = cluster_y splits of K), with programmatic dependent launch unless MSLM_OPS_PDL=0.
template <typename... Params, typename... Args>
cudaError_t launch_ops_cluster_y(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                 unsigned cluster_y, cudaStream_t stream, Args&&... args) {
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attributes[2] = {};
    attributes[0].id = cudaLaunchAttributeClusterDimension;
    attributes[0].val.clusterDim.x = 1;
    attributes[0].val.clusterDim.y = cluster_y;
    attributes[0].val.clusterDim.z = 1;
    attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[1].val.programmaticStreamSerializationAllowed = ops_pdl_enabled() ? 1 : 0;
    config.attrs = attributes;
    config.numAttrs = 2;
    return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// Catches bad launch configurations at once; faults inside a kernel surface at the next
// synchronising call.
template <typename T>
void check_launch(const char* kernel) {
    check_cuda<T>(cudaGetLastError(), "launch", kernel);
}


}  // namespace detail
}  // namespace mslm::ops::cuda
