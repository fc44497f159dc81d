// Products with few rows — out (M, O) = x (M, I) · W (O, I)ᵀ for M ≤ 64 — as a stream of W through
// tensor cores (skinny_gemm.h). For the decode step's few-column products cuBLASLt took 5.4–7.0 µs
// for the 3 MB of a 2048 × 768 weight at 1–64 rows on the H200 (bench_cuda_skinny_gemm), the time of
// a few blocks streaming long rows, not of the bytes. Here a block owns 64 output columns and a slice
// of I; the slices of one column tile form a thread-block cluster (split K over up to 8 blocks, so
// that even O = 768 fills ~100 SMs) and are summed through distributed shared memory in rank order —
// deterministic, no workspace, no second kernel.
//
// Block: 4 warps, warp w the output columns 16w .. 16w + 15 (two n8 tiles) of every m16 row tile
// (MT = ⌈M/16⌉ of them, a template parameter). Each 64-deep k step stages x (16·MT × 64) and W
// (64 × 64) by 16-byte cp.async into a 4-slot ring (three steps in flight while one is multiplied);
// fragments by ldmatrix, mma.m16n8k16 bf16 with fp32 accumulation.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/skinny_gemm.h"

namespace mslm::ops::cuda {

namespace {

using namespace detail;
namespace cg = cooperative_groups;

constexpr int kSkO = 64;      // output columns a block
constexpr int kSkK = 64;      // k a step
constexpr int kSkLd = 72;     // shared row pitch (bf16): 144 bytes, ldmatrix rows in distinct bank quads
constexpr int kSkStages = 4;  // ring slots
constexpr int kSkThreads = 128;
constexpr int kSkMaxSplit = 8;  // the portable cluster size
constexpr int kSkRedLd = kSkO + 4;

template <int MT>
struct SkinnySmem {
    __nv_bfloat16 x[kSkStages][16 * MT][kSkLd];
    __nv_bfloat16 w[kSkStages][kSkO][kSkLd];
};
// After the k loop the ring holds the block's fp32 partial sums, (16·MT) × kSkRedLd floats.
static_assert(sizeof(float) * 16 * kSkRedLd <= sizeof(SkinnySmem<1>), "the partial sums fit in the ring");

// kEarlyW: W is constant while the kernel may be pre-launched (the caller's promise), so the first
// kSkStages − 1 steps' W pieces are issued before the programmatic-dependent wait, beside the previous
// kernel; x (and out) only after it.
template <int MT, SkinnyOut kOut, bool kEarlyW>
__global__ void __launch_bounds__(kSkThreads)
    skinny_gemm_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ W, void* out,
                       int M, int I, int O, int k_steps) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    __trap();  // clusters need sm_90 (skinny_gemm_supported refuses other devices)
#else
    extern __shared__ __align__(16) unsigned char smem_raw[];
    SkinnySmem<MT>& sm = *reinterpret_cast<SkinnySmem<MT>*>(smem_raw);
    cg::cluster_group cluster = cg::this_cluster();
    const int S = int(cluster.num_blocks()), rank = int(cluster.block_rank());
    const int o0 = int(blockIdx.x) * kSkO;
    const int ks0 = int(int64_t(k_steps) * rank / S), n_ks = int(int64_t(k_steps) * (rank + 1) / S) - ks0;
    const int warp = threadIdx.x / 32;

    // k step ks0 + j into slot: 16-byte pieces (I is a multiple of 8, so a piece is wholly in or
    // out of the matrix), zeros outside.
    auto stage_x = [&](int j, int slot) {
        const int k0 = (ks0 + j) * kSkK;
        for (int e = threadIdx.x; e < 16 * MT * (kSkK / 8); e += kSkThreads) {
            const int r = e / (kSkK / 8), c = e % (kSkK / 8) * 8;
            __nv_bfloat16* d = &sm.x[slot][r][c];
            if (r < M && k0 + c < I)
                cp_async_16(d, x + int64_t(r) * I + k0 + c);
            else
                *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
        }
    };
    auto stage_w = [&](int j, int slot) {
        const int k0 = (ks0 + j) * kSkK;
        for (int e = threadIdx.x; e < kSkO * (kSkK / 8); e += kSkThreads) {
            const int r = e / (kSkK / 8), c = e % (kSkK / 8) * 8;
            __nv_bfloat16* d = &sm.w[slot][r][c];
            if (o0 + r < O && k0 + c < I)
                cp_async_16(d, W + int64_t(o0 + r) * I + k0 + c);
            else
                *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
        }
    };

    // The first kSkStages − 1 steps, a commit group each (empty groups keep the count uniform); with
    // kEarlyW their W pieces go before the wait and join step 0's group.
    if constexpr (kEarlyW) {
#pragma unroll
        for (int j = 0; j < kSkStages - 1; ++j)
            if (j < n_ks) stage_w(j, j);
    }
    pdl_wait();  // x (and, for kOut == Bf16Add, out) may come from the previous kernel
    pdl_trigger();
#pragma unroll
    for (int j = 0; j < kSkStages - 1; ++j) {
        if (j < n_ks) {
            stage_x(j, j);
            if constexpr (!kEarlyW) stage_w(j, j);
        }
        cp_async_commit();
    }
    float acc[MT][2][4] = {};
    for (int j = 0; j < n_ks; ++j) {
        cp_async_wait<kSkStages - 2>();
        __syncthreads();  // step j's slot is filled; every warp is done with step j − 1's
        const int jn = j + kSkStages - 1;
        if (jn < n_ks) {
            stage_x(jn, jn % kSkStages);
            stage_w(jn, jn % kSkStages);
        }
        cp_async_commit();
        const int slot = j % kSkStages;
#pragma unroll
        for (int kk = 0; kk < kSkK; kk += 16) {
            uint32_t bq[4];
            ldb_nk(bq, &sm.w[slot][0][0], kSkLd, 16 * warp, kk);
            const uint32_t b0[2] = {bq[0], bq[1]}, b1[2] = {bq[2], bq[3]};
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                uint32_t af[4];
                lda_mk(af, &sm.x[slot][0][0], kSkLd, 16 * mt, kk);
                mma_m16n8k16_bf16(acc[mt][0], af, b0);
                mma_m16n8k16_bf16(acc[mt][1], af, b1);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the ring is free for the partial sums

    // acc[mt][nt][r]: row 16·mt + grp + 8·(r / 2), column 16·warp + 8·nt + 2·quad + r % 2.
    float* red = reinterpret_cast<float*>(smem_raw);
    const int grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int row = 16 * mt + grp + 8 * hf, col = 16 * warp + 8 * nt + 2 * quad;
                *reinterpret_cast<float2*>(&red[row * kSkRedLd + col]) =
                    make_float2(acc[mt][nt][2 * hf], acc[mt][nt][2 * hf + 1]);
            }
    cluster.sync();  // every block's partial sums are visible to the cluster

    // Rank r finishes rows [M·r/S, M·(r+1)/S) of the tile, 4 columns a thread at a time: the ranks'
    // partial sums (all S loads issued before any is added) added in rank order, then the one
    // rounding (and the add of the old value) of the output.
    const int r0 = M * rank / S, r1 = M * (rank + 1) / S;
    for (int e = threadIdx.x; e < (r1 - r0) * (kSkO / 4); e += kSkThreads) {
        const int row = r0 + e / (kSkO / 4), col = e % (kSkO / 4) * 4, o = o0 + col;
        if (o >= O) continue;
        float4 p[kSkMaxSplit];
#pragma unroll
        for (int q = 0; q < kSkMaxSplit; ++q)
            if (q < S)
                p[q] =
                    *reinterpret_cast<const float4*>(cluster.map_shared_rank(red, q) + row * kSkRedLd + col);
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int q = 0; q < kSkMaxSplit; ++q)
            if (q < S) v[0] += p[q].x, v[1] += p[q].y, v[2] += p[q].z, v[3] += p[q].w;
        const int64_t at = int64_t(row) * O + o;
        const int n = min(4, O - o);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (i >= n) break;
            if constexpr (kOut == SkinnyOut::F32) {
                static_cast<float*>(out)[at + i] = v[i];
            } else if constexpr (kOut == SkinnyOut::Bf16) {
                static_cast<__nv_bfloat16*>(out)[at + i] = __float2bfloat16_rn(v[i]);
            } else {
                __nv_bfloat16* ptr = static_cast<__nv_bfloat16*>(out) + at + i;
                *ptr = __float2bfloat16_rn(__bfloat162float(*ptr) + v[i]);
            }
        }
    }
    cluster.sync();  // no block leaves while another still reads its partial sums
#endif
}

// Per device, cached: its multiprocessor count, or 0 where it has no clusters (compute capability
// below 9.0).
int cluster_sms(int device) {
    static std::atomic<int> cache[64] = {};  // 0: not asked yet; −1: no clusters
    if (device < 0 || device >= 64) return 0;
    int v = cache[device].load(std::memory_order_relaxed);
    if (v == 0) {
        int major = 0, n = 0;
        const bool ok =
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
            cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) == cudaSuccess;
        v = ok && major >= 9 && n > 0 ? n : -1;
        cache[device].store(v, std::memory_order_relaxed);
    }
    return v > 0 ? v : 0;
}

int current_device() {
    int device = 0;
    return cudaGetDevice(&device) == cudaSuccess ? device : -1;
}

template <int MT, SkinnyOut kOut, bool kEarlyW>
cudaError_t launch(void* out, const uint16_t* x, const uint16_t* W, int M, int I, int O, int splits,
                   cudaStream_t stream) {
    auto kernel = skinny_gemm_kernel<MT, kOut, kEarlyW>;
    const int smem = int(sizeof(SkinnySmem<MT>));
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    return launch_ops_cluster_y(
        kernel, dim3(unsigned((O + kSkO - 1) / kSkO), unsigned(splits)), dim3(kSkThreads), size_t(smem),
        unsigned(splits), stream, reinterpret_cast<const __nv_bfloat16*>(x),
        reinterpret_cast<const __nv_bfloat16*>(W), out, M, I, O, (I + kSkK - 1) / kSkK);
}

template <SkinnyOut kOut, bool kEarlyW>
cudaError_t launch_rows(void* out, const uint16_t* x, const uint16_t* W, int M, int I, int O, int splits,
                        cudaStream_t stream) {
    switch ((M + 15) / 16) {
        case 1:
            return launch<1, kOut, kEarlyW>(out, x, W, M, I, O, splits, stream);
        case 2:
            return launch<2, kOut, kEarlyW>(out, x, W, M, I, O, splits, stream);
        case 3:
            return launch<3, kOut, kEarlyW>(out, x, W, M, I, O, splits, stream);
        default:
            return launch<4, kOut, kEarlyW>(out, x, W, M, I, O, splits, stream);
    }
}

template <SkinnyOut kOut>
cudaError_t launch_kind(void* out, const uint16_t* x, const uint16_t* W, int M, int I, int O, int splits,
                        bool w_constant, cudaStream_t stream) {
    return w_constant ? launch_rows<kOut, true>(out, x, W, M, I, O, splits, stream)
                      : launch_rows<kOut, false>(out, x, W, M, I, O, splits, stream);
}

bool skinny_gemm_enabled() {
    return env_switch_on("MSLM_SKINNY_GEMM");
}

}  // namespace

int skinny_gemm_splits(int64_t I, int64_t O, int sms) {
    const int64_t o_tiles = (O + kSkO - 1) / kSkO, k_steps = (I + kSkK - 1) / kSkK;
    int splits = 1;
    while (splits < kSkMaxSplit && o_tiles * splits < 2 * int64_t(sms) && 4 * splits <= k_steps) splits *= 2;
    return splits;
}

bool skinny_gemm_preferred(int64_t M, int64_t I, int64_t O) {
    const char* v = std::getenv("MSLM_SKINNY_GEMM");
    if (v != nullptr && std::string_view(v) == "all") return true;
    return (M <= 16 && O <= 1280) || (M <= 32 && O <= 768 && I >= 1536);
}

bool skinny_gemm_supported(const void* out, const uint16_t* x, const uint16_t* W, int64_t M, int64_t I,
                           int64_t O) {
    auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    return M >= 1 && M <= kSkinnyMaxRows && I >= 8 && I % 8 == 0 && I <= INT_MAX - kSkK && O >= 1 &&
           O <= INT_MAX - kSkO && aligned16(x) && aligned16(W) && out != nullptr &&
           cluster_sms(current_device()) > 0;
}

bool skinny_gemm(SkinnyOut kind, void* out, const uint16_t* x, const uint16_t* W, int64_t M, int64_t I,
                 int64_t O, void* stream, bool w_constant) {
    if (!skinny_gemm_enabled() || !skinny_gemm_supported(out, x, W, M, I, O)) return false;
    const int splits = skinny_gemm_splits(I, O, cluster_sms(current_device()));
    auto s = static_cast<cudaStream_t>(stream);
    const int m = int(M), i = int(I), o = int(O);
    cudaError_t err = cudaSuccess;
    switch (kind) {
        case SkinnyOut::Bf16:
            err = launch_kind<SkinnyOut::Bf16>(out, x, W, m, i, o, splits, w_constant, s);
            break;
        case SkinnyOut::Bf16Add:
            err = launch_kind<SkinnyOut::Bf16Add>(out, x, W, m, i, o, splits, w_constant, s);
            break;
        case SkinnyOut::F32:
            err = launch_kind<SkinnyOut::F32>(out, x, W, m, i, o, splits, w_constant, s);
            break;
    }
    check_cuda<uint16_t>(err, "launch", "skinny_gemm");
    check_launch<uint16_t>("skinny_gemm");
    return true;
}

}  // namespace mslm::ops::cuda
