// The SSD backward's head kernel on Hopper's warpgroup products (sm_90a): the function of
// ssd_backward_head_tc_kernel<T, kRegM = true, kZ = false> (ssd.cu), whose mma.sync products are latency-
// bound at 12 warps an SM (docs/PERFORMANCE.md). Per (b, chunk, head) and s tile, for each 64-wide p
// tile, one warpgroup keeps the 64 × 64 fp32 accumulator of dX̃:
//   V steps (the n tiles): acc += B_s·dSᵀ, A = B's rows s and B = dS split into hi + lo, both from
//   128-byte swizzled shared tiles (K-major); then the row sums q and acc *= decay_s;
//   M steps (the t tiles ≥ s's): acc += Mᵀ·dY, Mᵀ's fragments formed and split in registers as the
//   mma.sync kernel forms them (one 16-deep slice at a time, each slice's two products issued as soon
//   as it is split, the next slice formed while they run), dY's rows t from a swizzled tile (MN-major);
//   then dx and the per-token sums, as the mma.sync kernel.
// The operands are the same split values; the products accumulate in the tensor cores' order, so the
// bits differ from the mma.sync kernel's within the tolerance both hold against the reference.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ops/cuda/ssd_common.cuh"
#include "ops/cuda/wgmma.cuh"

namespace mslm::ops::cuda::ssd_detail {

namespace {

// dst (64 × 64 bf16, 128-byte swizzled rows, 1024-byte aligned) = src[r·ld + c] for r < rows and c <
// cols, else 0. vec: src and ld·2 bytes 16-byte aligned and cols a multiple of 8 or ≥ 64 (16-byte
// cp.async pieces, wholly in or out); otherwise element by element. 128 threads.
__device__ __forceinline__ void stage_sw128(unsigned char* dst, const __nv_bfloat16* src, int64_t ld,
                                            int rows, int cols, bool vec) {
    if (vec) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = int(threadIdx.x) + 128 * i, r = e / 8, c = e % 8 * 8;
            unsigned char* d = dst + wgmma::sw128_offset(r, c);
            if (r < rows && c < cols)
                cp_async_16(d, src + r * ld + c);
            else
                *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
        }
    } else {
        for (int e = threadIdx.x; e < kSt * kSt; e += 128) {
            const int r = e / kSt, c = e % kSt;
            *reinterpret_cast<__nv_bfloat16*>(dst + wgmma::sw128_offset(r, c)) =
                r < rows && c < cols ? src[r * ld + c] : __float2bfloat16_rn(0.0f);
        }
    }
}

struct HeadWgSmem {
    unsigned char
        h[2][8192];  // swizzled bf16: B rows s [s][n] (a V step's A) | dY rows t [t][p] (an M step's B)
    unsigned char hi[8192];  // swizzled: dS split [p][n] (a V step's B)
    unsigned char lo[8192];
    float f[kSt][kF32Ld];           // dS [p][n] as copied
    __nv_bfloat16 xs[kSt][kStLd];   // x rows s, the p tile (the epilogue's sums)
    __nv_bfloat16 dys[kSt][kStLd];  // dY rows s
    double cum_t[2][kSt];           // the M step's cum at its t rows (by step parity)
    double cum_s[kSt];
    float dt_s[kSt];
};
constexpr size_t kHeadWgSmemBytes = sizeof(HeadWgSmem) + 1024;  // + the alignment of the swizzled tiles

__global__ void __launch_bounds__(128, 3)
    ssd_backward_head_wgmma_kernel(Args<__nv_bfloat16> a, const __nv_bfloat16* dy, const float* CB,
                                   const float* dS_all, __nv_bfloat16* dx, float* tok) {
    using T = __nv_bfloat16;
    extern __shared__ unsigned char dyn_raw[];
    const auto raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(dyn_raw));
    HeadWgSmem& sm = *reinterpret_cast<HeadWgSmem*>(dyn_raw + ((1024 - (raw_addr & 1023)) & 1023));
    const int64_t bch = blockIdx.x, h = bch % a.H, c = bch / a.H % a.n_chunks, b = bch / (a.H * a.n_chunks);
    const Chunk ch = chunk_of(a, b, c);
    const int64_t L = ch.L, s0 = int64_t(blockIdx.y) * kSt;
    if (s0 >= L) return;
    const int rows_s = int(min(L - s0, int64_t(kSt)));
    const int64_t g = h / a.heads_per_group, bh = b * a.H + h, ld_y = a.H * a.P;
    const double* cum = a.cum + bh * a.seqlen + ch.t0;
    const float* dtv = a.dtv + bh * a.seqlen + ch.t0;
    const float* cb = CB + ((b * a.n_chunks + c) * a.G + g) * a.Q * a.Q;
    const float* dS = dS_all + bch * a.P * a.N;  // (P, N)
    const T* xg = a.x + ch.row0 * a.ld_x + h * a.P;
    const T* dYg = dy + (ch.row0 * a.H + h) * a.P;  // row stride H·P
    const T* Bg = a.Bm + ch.row0 * a.ld_B + g * a.N;
    const bool vec_x = aligned16(a.x) && a.ld_x % 8 == 0 && a.P % 8 == 0;
    const bool vec_y = aligned16(dy) && a.P % 8 == 0;
    const bool vec_b = aligned16(a.Bm) && a.ld_B % 8 == 0 && a.N % 8 == 0;
    const bool vec_st = aligned16(dS_all) && a.N % 4 == 0;
    const int warp = threadIdx.x / 32, grp = threadIdx.x % 32 / 4, quad = threadIdx.x % 4;
    for (int r = threadIdx.x; r < kSt; r += 128) {
        sm.cum_s[r] = r < rows_s ? cum[s0 + r] : 0.0;
        sm.dt_s[r] = r < rows_s ? dtv[s0 + r] : 0.0f;
    }
    // (visible after the first step's barrier)
    const int n_v = int(mma_tiles(a.N)), n_t = int(mma_tiles(L) - blockIdx.y), n_it = n_v + n_t;

    const HeadLanes ln;
    auto acc_ref = [](float(&acc)[32]) { return [&acc](int j, int i) -> float& { return acc[4 * j + i]; }; };
    // This thread's C·Bᵀ values for the M step of t tile j (counted from the s tile), slice by slice in
    // Mᵀ's A-fragment layout, as the mma.sync kernel's kRegM.
    const int sl_lo = 16 * warp + grp;
    float2 cbv[4][4];
    auto load_cb_slice = [&](int j, int kk) {
        head_load_cb_slice(cbv[kk], cb, a.Q, L, s0, s0 + int64_t(j) * kSt, kk, sl_lo, quad);
    };

    float tk[4][2] = {};  // ⟨x, dX̃⟩, q, (unused), ⟨dY, x⟩ for rows 16w + grp + 8·hf
    for (int64_t p0 = 0; p0 < a.P; p0 += kSt) {
        const int cols_p = int(a.P - p0), rows_p = int(min(a.P - p0, int64_t(kSt)));
        // Step it's copies: the V step of n tile it (it < n_v), else the M step of t tile it − n_v.
        auto stage = [&](int it) {
            const int buf = it & 1;
            if (it < n_v) {
                const int64_t n0 = int64_t(it) * kSt;
                stage_sw128(sm.h[buf], Bg + s0 * a.ld_B + n0, a.ld_B, rows_s, int(a.N - n0), vec_b);
                stage_f32_tile<kSt, kSt, kF32Ld, 128>(&sm.f[0][0], dS + p0 * a.N + n0, a.N, rows_p,
                                                      int(a.N - n0), vec_st);
            } else {
                const int64_t t0 = s0 + int64_t(it - n_v) * kSt;
                const int rows_t = int(min(L - t0, int64_t(kSt)));
                stage_sw128(sm.h[buf], dYg + t0 * ld_y + p0, ld_y, rows_t, cols_p, vec_y);
                for (int r = threadIdx.x; r < kSt; r += 128) {
                    if (r < rows_t)
                        cp_async_8(&sm.cum_t[buf][r], cum + t0 + r);
                    else
                        sm.cum_t[buf][r] = 0.0;
                }
            }
            cp_async_commit();
        };
        // A V step's dS tile into hi / lo (swizzled), 4 consecutive n a piece, 8 pieces a thread.
        auto split_state = [&]() {
#pragma unroll 2
            for (int i = 0; i < kSt * kSt / 4 / 128; ++i) {
                const int e = int(threadIdx.x) + i * 128, r = e / (kSt / 4), col = e % (kSt / 4) * 4;
                const float4 v = *reinterpret_cast<const float4*>(&sm.f[r][col]);
                uint2 hv, lv;
                hv.x = split_pair_hi(v.x, v.y, lv.x);
                hv.y = split_pair_hi(v.z, v.w, lv.y);
                *reinterpret_cast<uint2*>(sm.hi + wgmma::sw128_offset(r, col)) = hv;
                *reinterpret_cast<uint2*>(sm.lo + wgmma::sw128_offset(r, col)) = lv;
            }
        };

        stage_bf16_tile<kSt, kSt, kStLd, 128>(&sm.xs[0][0], xg + s0 * a.ld_x + p0, a.ld_x, rows_s, cols_p,
                                              vec_x);
        stage_bf16_tile<kSt, kSt, kStLd, 128>(&sm.dys[0][0], dYg + s0 * ld_y + p0, ld_y, rows_s, cols_p,
                                              vec_y);
        stage(0);  // (commits xs and dys with step 0's copies)
        float acc[32];
#pragma unroll
        for (int i = 0; i < 32; ++i) acc[i] = 0.0f;
        for (int it = 0; it < n_it; ++it) {
            const int buf = it & 1;
            cp_async_wait<0>();
            wgmma::fence_proxy_async();  // this thread's copies and stores, for the products' reads
            __syncthreads();
            if (it < n_v) {
                split_state();
                wgmma::fence_proxy_async();
                __syncthreads();
            }
            if (it + 1 < n_it) stage(it + 1);
            if (it == n_v) {
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) load_cb_slice(0, kk);
            }
            if (it < n_v) {
                wgmma::fence();
#pragma unroll
                for (int ks = 0; ks < 4; ++ks) {
                    const uint64_t da = wgmma::sw128_desc(sm.h[buf] + 32 * ks);
                    wgmma::m64n64k16_ss<false>(acc, da, wgmma::sw128_desc(sm.lo + 32 * ks), true);
                    wgmma::m64n64k16_ss<false>(acc, da, wgmma::sw128_desc(sm.hi + 32 * ks), true);
                }
                wgmma::commit();
                wgmma::wait<0>();
            } else {
                const int j = it - n_v;
                const double* cum_t = sm.cum_t[buf];
                const int64_t t0 = s0 + int64_t(j) * kSt;
                uint32_t ah[4][4], al[4][4];
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    head_m_slice(ah[kk], al[kk], cbv[kk], L, s0, t0, kk, sl_lo, quad, cum_t, sm.cum_s);
                    if (j + 1 < n_t) load_cb_slice(j + 1, kk);  // the next M step's values of this slice
                    wgmma::fence();
                    const uint64_t db = wgmma::sw128_desc(sm.h[buf] + 2048 * kk);
                    wgmma::m64n64k16_rs<true>(acc, al[kk], db, true);
                    wgmma::m64n64k16_rs<true>(acc, ah[kk], db, true);
                }
                wgmma::commit();
                wgmma::wait<0>();
            }
            if (it == n_v - 1)  // acc = V: the row sums q, then acc *= decay
                head_after_v(acc_ref(acc), tk[1], sm.xs, sm.cum_s, sm.dt_s, cum[L - 1], rows_s, ln);
        }
        // acc = dX̃
        head_dx(a, acc_ref(acc), dx ? dx + (ch.row0 + s0) * a.ld_x + h * a.P + p0 : nullptr,
                a.D ? to_f32(a.D[h]) : 0.0f, sm.xs, sm.dys, sm.dt_s, rows_s, cols_p, tk[0], tk[3], ln);
        __syncthreads();  // xs, dys and the step buffers are restaged for the next p tile
    }
    head_store_tok(tok, a.batch * a.n_chunks * a.H * a.Q, bch * a.Q + s0, tk, false, rows_s, ln);
}

}  // namespace

cudaError_t launch_backward_head_wgmma(const Args<__nv_bfloat16>& a, const __nv_bfloat16* dy, const float* CB,
                                       const float* dS_all, __nv_bfloat16* dx, float* tok, dim3 grid,
                                       cudaStream_t stream) {
    static const cudaError_t attr = cudaFuncSetAttribute(
        ssd_backward_head_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kHeadWgSmemBytes));
    if (attr != cudaSuccess) return attr;
    ssd_backward_head_wgmma_kernel<<<grid, 128, kHeadWgSmemBytes, stream>>>(a, dy, CB, dS_all, dx, tok);
    return cudaGetLastError();
}

}  // namespace mslm::ops::cuda::ssd_detail
