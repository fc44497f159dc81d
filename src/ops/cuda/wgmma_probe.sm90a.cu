// wgmma_probe.h: one 64 × 64 tile through ops/cuda/wgmma.cuh, built for sm_90a only.
#include <cuda_runtime.h>

#include <atomic>

#include "core/error.h"
#include "ops/cuda/wgmma.cuh"
#include "ops/cuda/wgmma_probe.h"

namespace mslm::ops::cuda {

namespace {

// One warpgroup. Each 64-deep step stages A's and B's 64 × 64 pieces into 128-byte swizzled tiles,
// then takes four 16-deep wgmma steps (A by descriptor, or its fragments loaded from the tile).
template <bool kBK, bool kARegs>
__global__ void __launch_bounds__(128)
    wgmma_tile_kernel(float* __restrict__ out, const uint16_t* __restrict__ A, const uint16_t* __restrict__ B,
                      int K) {
    __shared__ __align__(1024) uint16_t sa[64 * 64];
    __shared__ __align__(1024) uint16_t sb[64 * 64];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    // The first step overwrites the accumulators (scale-d 0); zeroed so that nothing reads an
    // indeterminate value.
    float d[32] = {};
    for (int k0 = 0; k0 < K; k0 += 64) {
        // 64 rows × 8 chunks of 16 bytes each tile; a K-major B row is an n, an MN-major one a k.
        for (int p = tid; p < 512; p += 128) {
            const int r = p / 8, c = p % 8;
            const uint4 va = *reinterpret_cast<const uint4*>(A + int64_t(r) * K + k0 + c * 8);
            const uint4 vb = kBK ? *reinterpret_cast<const uint4*>(B + int64_t(r) * K + k0 + c * 8)
                                 : *reinterpret_cast<const uint4*>(B + int64_t(k0 + r) * 64 + c * 8);
            *reinterpret_cast<uint4*>(reinterpret_cast<char*>(sa) + wgmma::sw128_offset(r, c * 8)) = va;
            *reinterpret_cast<uint4*>(reinterpret_cast<char*>(sb) + wgmma::sw128_offset(r, c * 8)) = vb;
        }
        wgmma::fence_proxy_async();
        __syncthreads();
        // A's fragments of the four k steps (kARegs), loaded before the fence that orders them.
        uint32_t a[4][4];
        if constexpr (kARegs) {
            const char* base = reinterpret_cast<const char*>(sa);
            const int r0 = 16 * warp + g;
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                const int c0 = 16 * s + 2 * t;
                a[s][0] = *reinterpret_cast<const uint32_t*>(base + wgmma::sw128_offset(r0, c0));
                a[s][1] = *reinterpret_cast<const uint32_t*>(base + wgmma::sw128_offset(r0 + 8, c0));
                a[s][2] = *reinterpret_cast<const uint32_t*>(base + wgmma::sw128_offset(r0, c0 + 8));
                a[s][3] = *reinterpret_cast<const uint32_t*>(base + wgmma::sw128_offset(r0 + 8, c0 + 8));
            }
        }
        wgmma::fence();
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            const bool acc = k0 > 0 || s > 0;
            const uint64_t db =
                wgmma::sw128_desc(reinterpret_cast<const char*>(sb) + (kBK ? 32 * s : 2048 * s));
            if constexpr (kARegs) {
                wgmma::m64n64k16_rs<!kBK>(d, a[s], db, acc);
            } else {
                const uint64_t da = wgmma::sw128_desc(reinterpret_cast<const char*>(sa) + 32 * s);
                wgmma::m64n64k16_ss<!kBK>(d, da, db, acc);
            }
        }
        wgmma::commit();
        wgmma::wait<0>();
        __syncthreads();  // the tiles are read before the next step overwrites them
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int r = 16 * warp + g, c = 8 * j + 2 * t;
        out[r * 64 + c] = d[4 * j];
        out[r * 64 + c + 1] = d[4 * j + 1];
        out[(r + 8) * 64 + c] = d[4 * j + 2];
        out[(r + 8) * 64 + c + 1] = d[4 * j + 3];
    }
}

void check(cudaError_t err, const char* what) {
    MSLM_CHECK(err == cudaSuccess, "wgmma_tile_product: {}: {}", what, cudaGetErrorString(err));
}

constexpr int kMaxDevices = 64;

}  // namespace

// The answer is kept per device (asked at every attention call): 0 not yet known, 1 yes, 2 no.
bool wgmma_available() {
    static std::atomic<int8_t> known[kMaxDevices] = {};
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    const bool cacheable = device >= 0 && device < kMaxDevices;
    if (cacheable) {
        if (const int8_t k = known[device].load(std::memory_order_relaxed); k != 0) return k == 1;
    }
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
        return false;
    cudaFuncAttributes attr{};
    const bool yes = major == 9 && minor == 0 &&
                     cudaFuncGetAttributes(&attr, wgmma_tile_kernel<true, false>) == cudaSuccess;
    if (cacheable) known[device].store(yes ? 1 : 2, std::memory_order_relaxed);
    return yes;
}

void wgmma_tile_product(float* out, const uint16_t* A, const uint16_t* B, int64_t K, bool b_kmajor,
                        bool a_registers, void* stream) {
    MSLM_CHECK(wgmma_available(), "wgmma_tile_product: needs a compute capability 9.0 GPU (sm_90a code)");
    MSLM_CHECK(K > 0 && K % 64 == 0 && K <= (int64_t(1) << 30),
               "wgmma_tile_product: K = {}, expected a positive multiple of 64", K);
    auto st = static_cast<cudaStream_t>(stream);
    const int k = int(K);
    if (b_kmajor && !a_registers) wgmma_tile_kernel<true, false><<<1, 128, 0, st>>>(out, A, B, k);
    if (b_kmajor && a_registers) wgmma_tile_kernel<true, true><<<1, 128, 0, st>>>(out, A, B, k);
    if (!b_kmajor && !a_registers) wgmma_tile_kernel<false, false><<<1, 128, 0, st>>>(out, A, B, k);
    if (!b_kmajor && a_registers) wgmma_tile_kernel<false, true><<<1, 128, 0, st>>>(out, A, B, k);
    check(cudaGetLastError(), "launch");
    check(cudaStreamSynchronize(st), "run");
}

}  // namespace mslm::ops::cuda
