// attention_wgmma.h: the causal forward and backward on wgmma and TMA, built for sm_90a only.
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/attention_wgmma.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/tensor_map.h"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"
#include "ops/cuda/wgmma_probe.h"

namespace mslm::ops::cuda {

namespace {

constexpr int kDh = 64;
constexpr float kLn2f = 0.6931471805599453f;

// bf16 pair at p (4-byte aligned) += (x, y): each rounded once from fp32 (old + value).
__device__ __forceinline__ void add_bf16x2(__nv_bfloat16* p, float x, float y) {
    auto* q = reinterpret_cast<__nv_bfloat162*>(p);
    const float2 old = __bfloat1622float2(*q);
    *q = __floats2bfloat162_rn(old.x + x, old.y + y);
}

// The same pair written (the old value not read).
__device__ __forceinline__ void store_bf16x2(__nv_bfloat16* p, float x, float y) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}

// The four 16-key steps' A fragments of a 64 × 64 accumulator tile (bf16): key block 2ks, 2ks + 1.
__device__ __forceinline__ void to_a_fragments(uint32_t (&a)[4][4], const float (&x)[32]) {
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        a[t / 2][2 * (t & 1)] = detail::pack_bf16x2(x[4 * t], x[4 * t + 1]);
        a[t / 2][2 * (t & 1) + 1] = detail::pack_bf16x2(x[4 * t + 2], x[4 * t + 3]);
    }
}

// The forward: grid (heads, query tiles heaviest first, batch); block: one producer warpgroup whose
// first thread streams K and V tiles of 128 keys by TMA into kStages buffers (full_k / full_v
// barriers count the bytes; empty counts the consumer warps done with a stage), and kCWG consumer
// warpgroups of 64 query rows each. A consumer issues S = Q·Kⱼᵀ (both from shared memory), then
// O += Pⱼ₋₁·Vⱼ₋₁ (P from registers, V MN-major), and runs tile j's softmax while the second product
// runs: O is rescaled and the new P packed once it is done. Warp w of a consumer holds rows 16w + g,
// 16w + g + 8 of its 64 (wgmma.cuh's accumulator layout), as the mma.sync kernel's softmax does.
// Head dim 128 (kDH): every tile as two 64-column halves, each a 128-byte swizzled tile of its own
// (TMA's swizzle spans 128 bytes of a row); S sums over both, O is two 64-column accumulators.
constexpr int kBK2 = 128;

template <int kCWG, int kStages, int kDH = 64>
struct Fwd {
    static constexpr int kBQ = 64 * kCWG, kThreads = 128 * (kCWG + 1), kHalves = kDH / 64;
    static constexpr int kQHalf = kBQ * 128, kQBytes = kQHalf * kHalves;            // Q: [half][row][64]
    static constexpr int kTileHalf = kBK2 * 128, kTileBytes = kTileHalf * kHalves;  // K, V likewise
    static constexpr size_t kSmem = size_t(kQBytes) + 2 * kStages * size_t(kTileBytes) + 1024 + 128;
    // Registers after the producer hands its own back: 128·24 + 128·kCWG·kRegs ≤ 65536.
    static constexpr int kRegs = kCWG == 2 ? 240 : 160;
};

// The softmax of one S tile (64 fp32 columns of rows row0, row0 + 8 a thread) in place: m, l advance,
// s becomes 2^(s·scale_log2 − m) and alpha the factor for O. kMask (tiles that cross the diagonal):
// column 8t + 2tq + (e & 1) of row row0 + 8·(e / 2) drops out past lim = row0 − j0 − 2tq, compared
// in 32 bits against compile-time column offsets (the 64-bit comparison cost ~5 instructions a score,
// and the compiler had predicated it into every tile).
template <bool kMask>
__device__ __forceinline__ void softmax_tile(float (&s)[64], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                             int lim, float scale_log2) {
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int t = 0; t < 16; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if (kMask && 8 * t + (e & 1) > lim + 8 * (e / 2)) s[4 * t + e] = -INFINITY;
            mx[e / 2] = fmaxf(mx[e / 2], s[4 * t + e]);
        }
    float m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float x = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
        const float m_new = fmaxf(m[r], x * scale_log2);
        m_use[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row that has seen nothing keeps 0
        alpha[r] = detail::fast_exp2(m[r] - m_use[r]);
        m[r] = m_new;
        l[r] *= alpha[r];
    }
#pragma unroll
    for (int t = 0; t < 16; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float p = detail::fast_exp2(fmaf(s[4 * t + e], scale_log2, -m_use[e / 2]));
            s[4 * t + e] = p;
            l[e / 2] += p;
        }
}

template <int kCWG, bool kPingpong, int kStages, int kDH>
__global__ void __launch_bounds__(Fwd<kCWG, kStages, kDH>::kThreads, 1)
    attention_forward_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q,
                                   const __grid_constant__ CUtensorMap tm_k,
                                   const __grid_constant__ CUtensorMap tm_v, __nv_bfloat16* __restrict__ out,
                                   float* __restrict__ lse, int64_t T, int Hq, int group, float scale_log2) {
    using C = Fwd<kCWG, kStages, kDH>;
    constexpr int kTileBytes = C::kTileBytes, kH = C::kHalves;
    extern __shared__ unsigned char fwd_raw[];
    char* sQ = reinterpret_cast<char*>(tma::smem_1024(fwd_raw));
    char* sK = sQ + C::kQBytes;
    char* sV = sK + kStages * kTileBytes;
    auto* bar_q = reinterpret_cast<uint64_t*>(sV + kStages * kTileBytes);
    uint64_t* full_k = bar_q + 1;
    uint64_t* full_v = full_k + kStages;
    uint64_t* empty = full_v + kStages;
    // The warpgroup index broadcast from lane 0: uniform in the compiler's eyes, so the products on
    // its branch are not taken for divergent ones.
    const int tid = threadIdx.x, wg = __shfl_sync(0xffffffffu, tid / 128, 0);
    const int h = blockIdx.x, hk = h / group, b = int(blockIdx.z);
    const int64_t n_qt = (T + C::kBQ - 1) / C::kBQ, i0 = (n_qt - 1 - blockIdx.y) * C::kBQ;
    const int n_tiles = int((min(i0 + C::kBQ, T) - 1) / kBK2 + 1);
    if (tid == 0) {
        tma::mbar_init(bar_q, 1);
        for (int st = 0; st < kStages; ++st) {
            tma::mbar_init(&full_k[st], 1);
            tma::mbar_init(&full_v[st], 1);
            tma::mbar_init(&empty[st], 4 * kCWG);
        }
        tma::mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) {  // the producer
        tma::regs_dealloc<24>();
        if (tid == 0) {
            tma::mbar_arrive_expect(bar_q, C::kQBytes);
            for (int hf = 0; hf < kH; ++hf)
                tma::load_4d(sQ + hf * C::kQHalf, &tm_q, bar_q, 64 * hf, h, int(i0), b);
            for (int j = 0; j < n_tiles; ++j) {
                const int st = j % kStages;
                if (j >= kStages) tma::mbar_wait(&empty[st], (j / kStages - 1) & 1);
                tma::mbar_arrive_expect(&full_k[st], kTileBytes);
                for (int hf = 0; hf < kH; ++hf)
                    tma::load_4d(sK + st * kTileBytes + hf * C::kTileHalf, &tm_k, &full_k[st], 64 * hf, hk,
                                 j * kBK2, b);
                tma::mbar_arrive_expect(&full_v[st], kTileBytes);
                for (int hf = 0; hf < kH; ++hf)
                    tma::load_4d(sV + st * kTileBytes + hf * C::kTileHalf, &tm_v, &full_v[st], 64 * hf, hk,
                                 j * kBK2, b);
            }
        }
        return;
    }

    tma::regs_alloc<C::kRegs>();
    const int cw = wg - 1, warp = (tid / 32) % 4, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int64_t wg_first = i0 + 64 * cw, row0 = wg_first + 16 * warp + g;
    // The tiles holding a key some row of this warpgroup sees (the causal bound); the rest it only
    // waits for and hands back, so the stages' phases stay in step.
    const int n_mine = wg_first < T ? min(n_tiles, int((wg_first + 63) / kBK2) + 1) : 0;
    const char* q_rows = sQ + 8192 * cw;
    auto release = [&](int st) {
        if (lane == 0) tma::mbar_arrive(&empty[st]);
    };
    // Whether tile j crosses this warp's diagonal (broadcast from lane 0: a branch uniform in the
    // compiler's eyes).
    auto masked = [&](int j) {
        return __shfl_sync(0xffffffffu, int(int64_t(j) * kBK2 + kBK2 - 1 > wg_first + 16 * warp), 0) != 0;
    };

    // kPingpong: the warpgroups issue their products in turn (a ring of named barriers 4 + cw), so
    // one's softmax runs while the next one's products do, over the tiles every warpgroup takes
    // (n_ring; the last one hands no turn on after its last, so the barriers end balanced).
    const int n_ring = i0 + C::kBQ <= T ? min(n_tiles, int((i0 + 63) / kBK2) + 1) : 0;
    if (kPingpong && cw == kCWG - 1 && n_ring > 0) tma::named_arrive(4, 256);

    float o[kH][32] = {}, s[64], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, alpha[2];
    uint32_t pa[8][4];
    tma::mbar_wait(bar_q, 0);
    for (int j = 0; j < n_mine; ++j) {
        const int st = j % kStages, pst = (j + kStages - 1) % kStages;
        const bool ring = kPingpong && j < n_ring;
        tma::mbar_wait(&full_k[st], (j / kStages) & 1);
        if (ring) tma::named_sync(4 + cw, 256);
        wgmma::fence();
#pragma unroll
        for (int hf = 0; hf < kH; ++hf)
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
                wgmma::m64n128k16_ss(s, wgmma::sw128_desc(q_rows + hf * C::kQHalf + 32 * ks),
                                     wgmma::sw128_desc(sK + st * kTileBytes + hf * C::kTileHalf + 32 * ks),
                                     hf > 0 || ks > 0);
        wgmma::commit();
        if (j > 0) {
            tma::mbar_wait(&full_v[pst], ((j - 1) / kStages) & 1);
#pragma unroll
            for (int hf = 0; hf < kH; ++hf)
#pragma unroll
                for (int ks = 0; ks < 8; ++ks)
                    wgmma::m64n64k16_rs<true>(
                        o[hf], pa[ks],
                        wgmma::sw128_desc(sV + pst * kTileBytes + hf * C::kTileHalf + 2048 * ks), true);
            wgmma::commit();
            if (ring && !(cw == kCWG - 1 && j == n_ring - 1)) tma::named_arrive(4 + (cw + 1) % kCWG, 256);
            wgmma::wait<1>();
        } else {
            if (ring && !(cw == kCWG - 1 && j == n_ring - 1)) tma::named_arrive(4 + (cw + 1) % kCWG, 256);
            wgmma::wait<0>();
        }
        if (masked(j))
            softmax_tile<true>(s, m, l, alpha, int(row0 - int64_t(j) * kBK2) - 2 * tq, scale_log2);
        else
            softmax_tile<false>(s, m, l, alpha, 0, scale_log2);
        wgmma::wait<0>();
        if (j > 0) release(pst);
#pragma unroll
        for (int hf = 0; hf < kH; ++hf)
#pragma unroll
            for (int t = 0; t < 8; ++t)
#pragma unroll
                for (int e = 0; e < 4; ++e) o[hf][4 * t + e] *= alpha[e / 2];
#pragma unroll
        for (int t = 0; t < 16; ++t) {
            pa[t / 2][2 * (t & 1)] = detail::pack_bf16x2(s[4 * t], s[4 * t + 1]);
            pa[t / 2][2 * (t & 1) + 1] = detail::pack_bf16x2(s[4 * t + 2], s[4 * t + 3]);
        }
    }
    if (n_mine > 0) {  // the last tile's P·V
        const int pst = (n_mine - 1) % kStages;
        tma::mbar_wait(&full_v[pst], ((n_mine - 1) / kStages) & 1);
        wgmma::fence();
#pragma unroll
        for (int hf = 0; hf < kH; ++hf)
#pragma unroll
            for (int ks = 0; ks < 8; ++ks)
                wgmma::m64n64k16_rs<true>(
                    o[hf], pa[ks], wgmma::sw128_desc(sV + pst * kTileBytes + hf * C::kTileHalf + 2048 * ks),
                    true);
        wgmma::commit();
        wgmma::wait<0>();
        release(pst);
    }
    for (int j = n_mine; j < n_tiles; ++j) {
        const int st = j % kStages;
        tma::mbar_wait(&full_k[st], (j / kStages) & 1);
        tma::mbar_wait(&full_v[st], (j / kStages) & 1);
        release(st);
    }

    // Every valid row sees at least itself (weight 2^0 = 1), so l ≥ 1 and m is finite.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const int64_t row = row0 + 8 * r;
        if (row >= T) continue;
        const float inv = 1.0f / lr;
        __nv_bfloat16* orow = out + ((int64_t(b) * T + row) * Hq + h) * kDH;
#pragma unroll
        for (int hf = 0; hf < kH; ++hf)
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int c = 64 * hf + 8 * t + 2 * tq;
                *reinterpret_cast<__nv_bfloat162*>(orow + c) =
                    __floats2bfloat162_rn(o[hf][4 * t + 2 * r] * inv, o[hf][4 * t + 2 * r + 1] * inv);
            }
        if (tq == 0) lse[(int64_t(b) * Hq + h) * T + row] = m[r] * kLn2f + logf(lr);
    }
}

// The backward: grid (kv heads, 128-key blocks, batch); block: one producer warpgroup whose first warp
// streams, for every query head of the group and 64-query tile from the block's first key on, the
// tile's Q and dO rows by TMA and its lse·log2 e and D = rowsum(dO ∘ O) into kStages buffers, and two
// consumer warpgroups of 64 keys each. A consumer computes Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (shared memory
// operands), pᵀ = 2^(s·scale·log2 e − lse·log2 e) (0 past the diagonal), dSᵀ = pᵀ ∘ (dPᵀ − D), then
// dV += Pᵀ·dO and dK += dSᵀ·Q (from registers, MN-major tiles), and stores dSᵀ in bf16 to shared
// memory; the two warpgroups take turns computing the tile's dQ = dS·K over all 128 keys (both
// operands MN-major from shared memory) and adding scale·dQ to an fp32 accumulator in global memory
// by one bulk reduction. dk += scale·dK, dv += dV at the end; a second kernel adds the accumulator to
// dq. kDqWg (the default; MSLM_ATTN_WGMMA_DQWG=0 takes the form above): a fourth warpgroup computes
// every tile's dQ instead (as FlashAttention-3 does), from the two dSᵀ buffers through full / empty
// barriers, with its own two dQ staging buffers; the consumers then neither wait for each other every
// tile nor take dQ turns, and drop dQ's 32 accumulator registers (the register file split 24 / 208 /
// 208 / 72). H200: backward 0.538 → 0.526 ms at T = 2048, 1.462 → 1.415 at 8192 (16,384 tokens).
// Head dim 128 (kDH): as the forward, every K, V, Q and dO tile is two 64-column halves, each a
// 128-byte swizzled tile of its own; Sᵀ and dPᵀ sum over both halves, dK and dV are two 64-column
// accumulators each, and dQ is taken a half at a time (the dS tile is shared by both halves'
// products), each half through its own staging buffer and bulk reduction. The consumers hold 128
// accumulator registers for dK and dV: without the dQ warpgroup (24 / 240 / 240) ptxas fits them
// (16 bytes of spill loads); with it, the split 24 / 208 / 208 / 64 (the dQ warpgroup spills below 64,
// so the consumers cannot have more) spills 612 bytes and serializes the products (ptxas C7512), so
// head dim 128 always takes the consumers' dQ turns (MSLM_ATTN_WGMMA_DQWG applies to head dim 64).
// H200, 16,384 tokens, 12 heads: backward 2.046 → 0.742 ms at T = 2048 and 6.770 → 2.235 at 8192
// against the mma.sync kernels.
constexpr int kBwdKeys = 128, kBwdQ = 64;

template <int kBwdStages, bool kDqWg = false, int kDH = 64>
struct Bwd {
    static constexpr int kHalves = kDH / 64;
    static constexpr int kThreads = kDqWg ? 512 : 384, kRegs = kDqWg ? 208 : 240, kDqRegs = 72;
    static constexpr int kTile = 16384 * kHalves,
                         kQT = 8192 * kHalves;  // K or V (128 keys); Q or dO (64 rows)
    static constexpr int kK = 0, kV = kTile, kQ = 2 * kTile, kdO = kQ + kBwdStages * kQT,
                         kdS = kdO + kBwdStages * kQT, kdQ = kdS + 2 * 16384, kRows = kdQ + 2 * 16384,
                         kBars = kRows + kBwdStages * 512;
    static constexpr size_t kSmem = size_t(kBars) + 128 + 1024;
    static_assert(kDH == 64 || (kDH == 128 && !kDqWg), "head dim 64, or 128 without the dQ warpgroup");
    static_assert(kSmem <= 232448, "over the 227 KiB of dynamic shared memory a block");
    static_assert(24 + 2 * kRegs + (kDqWg ? kDqRegs : 0) <= 512,
                  "the register file's 65,536 over 128-thread groups");
};

// The fp32 dQ accumulator's block of (batch, head, 64-query tile): 64 rows of 64, row r's column c
// at r·64 + (c ^ 8·(r % 8)) (the swizzle keeps the warp's stores from sharing banks).
__host__ __device__ constexpr int dq_slot(int r, int c) {
    return r * 64 + (c ^ ((r & 7) << 3));
}

// A tile's dQ = dS·K over the block's 128 keys (dSᵀ and K both MN-major, 128-byte swizzled in
// shared memory), issued and waited for by the calling warpgroup.
__device__ __forceinline__ void dq_tile_product(float (&dq)[32], const char* sdS, const char* sK) {
#pragma unroll
    for (int ks = 0; ks < 8; ++ks)
        wgmma::m64n64k16_ss<true, true>(dq, wgmma::sw128_desc(sdS + 2048 * ks), wgmma::sw128_desc(sK + 2048 * ks),
                                        ks > 0);
    wgmma::commit();
    wgmma::wait<0>();
}

// A warpgroup's 64 × 64 dQ accumulator tile (wgmma's fragment layout: warp w's rows 16·w + g and
// + 8, columns 8·t + 2·tq and + 1), times scale, into the fp32 staging tile sdQ at dq_slot order.
__device__ __forceinline__ void stage_scaled_dq(float* sdQ, const float (&dq)[32], int warp, int g, int tq,
                                                float scale) {
#pragma unroll
    for (int t = 0; t < 8; ++t)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = 16 * warp + g + 8 * half;
            *reinterpret_cast<float2*>(sdQ + dq_slot(row, 8 * t + 2 * tq)) =
                make_float2(scale * dq[4 * t + 2 * half], scale * dq[4 * t + 2 * half + 1]);
        }
}

template <int kBwdStages, bool kDqWg, int kDH>
__global__ void __launch_bounds__(Bwd<kBwdStages, kDqWg, kDH>::kThreads, 1)
    attention_backward_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q,
                                    const __grid_constant__ CUtensorMap tm_k,
                                    const __grid_constant__ CUtensorMap tm_v,
                                    const __grid_constant__ CUtensorMap tm_do, __nv_bfloat16* __restrict__ dk,
                                    __nv_bfloat16* __restrict__ dv, float* __restrict__ dq_acc,
                                    const float* __restrict__ lse, const float* __restrict__ delta,
                                    int64_t ld_k, int64_t ld_v, int64_t T, int Hq, int group, float scale,
                                    float scale_log2, bool accumulate) {
    using L = Bwd<kBwdStages, kDqWg, kDH>;
    constexpr int kH = L::kHalves;
    extern __shared__ unsigned char bwd_raw[];
    char* base = reinterpret_cast<char*>(tma::smem_1024(bwd_raw));
    char* sK = base + L::kK;
    char* sV = base + L::kV;
    auto* rows = reinterpret_cast<float*>(base + L::kRows);  // [stage]: 64 lse·log2 e, then 64 D
    auto* bar_kv = reinterpret_cast<uint64_t*>(base + L::kBars);
    uint64_t* full = bar_kv + 1;
    uint64_t* empty = full + kBwdStages;
    uint64_t* ds_full = empty + kBwdStages;  // kDqWg: dSᵀ buffer b stored by both consumers
    uint64_t* ds_empty = ds_full + 2;        // kDqWg: dSᵀ buffer b read by the dQ warpgroup's products
    const int tid = threadIdx.x, wg = __shfl_sync(0xffffffffu, tid / 128, 0), lane = tid % 32;
    const int hk = blockIdx.x, b = int(blockIdx.z);
    const int64_t j0 = int64_t(blockIdx.y) * kBwdKeys, n_qt = (T - j0 + kBwdQ - 1) / kBwdQ,
                  n_iter = group * n_qt;
    const int64_t n_qt_all = (T + kBwdQ - 1) / kBwdQ;
    if (tid == 0) {
        tma::mbar_init(bar_kv, 1);
        for (int st = 0; st < kBwdStages; ++st) {
            tma::mbar_init(&full[st], 32);
            tma::mbar_init(&empty[st], 8);
        }
        for (int bf = 0; bf < 2; ++bf) {
            tma::mbar_init(&ds_full[bf], 256);
            tma::mbar_init(&ds_empty[bf], 4);
        }
        tma::mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) {  // the producer's first warp
        tma::regs_dealloc<24>();
        if (tid < 32) {
            if (lane == 0) {
                tma::mbar_arrive_expect(bar_kv, 2 * L::kTile);
                for (int hf = 0; hf < kH; ++hf) {
                    tma::load_4d(sK + 16384 * hf, &tm_k, bar_kv, 64 * hf, hk, int(j0), b);
                    tma::load_4d(sV + 16384 * hf, &tm_v, bar_kv, 64 * hf, hk, int(j0), b);
                }
            }
            for (int64_t it = 0; it < n_iter; ++it) {
                const int st = int(it % kBwdStages);
                if (it >= kBwdStages) tma::mbar_wait(&empty[st], uint32_t((it / kBwdStages - 1) & 1));
                const int h = hk * group + int(it / n_qt);
                const int64_t i0 = j0 + it % n_qt * kBwdQ;
                float* r = rows + st * 128;
                for (int c = lane; c < kBwdQ; c += 32) {
                    const int64_t i = i0 + c;
                    r[c] = i < T ? lse[(int64_t(b) * Hq + h) * T + i] * 1.4426950408889634f : 0.0f;
                    r[64 + c] = i < T ? delta[(int64_t(b) * Hq + h) * T + i] : 0.0f;
                }
                if (lane == 0) {
                    tma::mbar_arrive_expect(&full[st], 2 * L::kQT);
                    for (int hf = 0; hf < kH; ++hf) {
                        tma::load_4d(base + L::kQ + st * L::kQT + 8192 * hf, &tm_q, &full[st], 64 * hf, h,
                                     int(i0), b);
                        tma::load_4d(base + L::kdO + st * L::kQT + 8192 * hf, &tm_do, &full[st], 64 * hf, h,
                                     int(i0), b);
                    }
                } else {
                    tma::mbar_arrive(&full[st]);
                }
            }
        }
        return;
    }

    if (kDqWg && wg == 3) {
        // The dQ warpgroup: per tile, once both consumers stored dSᵀ, dQ = dS·K over all 128 keys (both
        // operands MN-major from shared memory), the dSᵀ buffer handed back, scale·dQ through one of
        // two staging buffers onto the fp32 accumulator by one bulk reduction (head dim 64 only: Bwd).
        tma::regs_dealloc<L::kDqRegs>();
        const int dw = (tid / 32) % 4, g = lane / 4, tq = lane % 4;
        tma::mbar_wait(bar_kv, 0);
        for (int64_t it = 0; it < n_iter; ++it) {
            const int bf = int(it & 1);
            const int h = hk * group + int(it / n_qt);
            const int64_t qt = j0 / kBwdQ + it % n_qt;
            const char* sdS = base + L::kdS + bf * 16384;
            float dq[32];
            tma::mbar_wait(&ds_full[bf], uint32_t((it / 2) & 1));
            wgmma::fence();
            dq_tile_product(dq, sdS, sK);
            if (lane == 0) tma::mbar_arrive(&ds_empty[bf]);
            auto* sdQ = reinterpret_cast<float*>(base + L::kdQ + bf * 16384);
            if (tid % 128 == 0) tma::bulk_wait_read_pending<1>();  // this buffer's reduction, two tiles back
            tma::named_sync(2, 128);
            stage_scaled_dq(sdQ, dq, dw, g, tq, scale);
            wgmma::fence_proxy_async();
            tma::named_sync(2, 128);
            if (tid % 128 == 0) {
                tma::reduce_add_f32(dq_acc + ((int64_t(b) * Hq + h) * n_qt_all + qt) * 4096, sdQ, 16384);
                tma::bulk_commit();
            }
        }
        if (tid % 128 == 0) tma::bulk_wait();
        return;
    }

    tma::regs_alloc<L::kRegs>();
    const int cw = wg - 1, warp = (tid / 32) % 4, g = lane / 4, tq = lane % 4;
    const int64_t key[2] = {j0 + 64 * cw + 16 * warp + g, j0 + 64 * cw + 16 * warp + g + 8};
    float dk_acc[kH][32] = {}, dv_acc[kH][32] = {}, s[32], dp[32];
    tma::mbar_wait(bar_kv, 0);
    for (int64_t it = 0; it < n_iter; ++it) {
        const int st = int(it % kBwdStages);
        const int h = hk * group + int(it / n_qt);
        const int64_t qt = j0 / kBwdQ + it % n_qt, i0 = qt * kBwdQ;
        const char* sQ = base + L::kQ + st * L::kQT;
        const char* sdO = base + L::kdO + st * L::kQT;
        char* sdS = base + L::kdS + int(it & 1) * 16384;
        tma::mbar_wait(&full[st], uint32_t((it / kBwdStages) & 1));
        wgmma::fence();
#pragma unroll
        for (int hf = 0; hf < kH; ++hf)
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                wgmma::m64n64k16_ss<false>(s, wgmma::sw128_desc(sK + 16384 * hf + 8192 * cw + 32 * ks),
                                           wgmma::sw128_desc(sQ + 8192 * hf + 32 * ks), hf > 0 || ks > 0);
                wgmma::m64n64k16_ss<false>(dp, wgmma::sw128_desc(sV + 16384 * hf + 8192 * cw + 32 * ks),
                                           wgmma::sw128_desc(sdO + 8192 * hf + 32 * ks), hf > 0 || ks > 0);
            }
        wgmma::commit();
        wgmma::wait<0>();
        const float* r = rows + st * 128;
        // Query column 8t + 2tq + (e & 1) of key row key[e / 2] counts when the query is at or past
        // the key and before T: compared in 32 bits against compile-time offsets, and only in tiles
        // that cross this warp's diagonal or T (broadcast from lane 0: a uniform branch).
        const bool edge = __shfl_sync(0xffffffffu, int(i0 < key[0] - g + 15 || i0 + kBwdQ > T), 0) != 0;
        const int lo = int(key[0] - i0) - 2 * tq, hi = int(min(T - i0, int64_t(kBwdQ))) - 2 * tq;
        auto grads = [&](auto mask_c) {
            constexpr bool kMask = decltype(mask_c)::value;
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const float2 l2 = *reinterpret_cast<const float2*>(r + 8 * t + 2 * tq);
                const float2 dd = *reinterpret_cast<const float2*>(r + 64 + 8 * t + 2 * tq);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = 8 * t + (e & 1);
                    float p = detail::fast_exp2(fmaf(s[4 * t + e], scale_log2, -((e & 1) ? l2.y : l2.x)));
                    if (kMask && !(c >= lo + 8 * (e / 2) && c < hi)) p = 0.0f;
                    s[4 * t + e] = p;
                    dp[4 * t + e] = p * (dp[4 * t + e] - ((e & 1) ? dd.y : dd.x));
                }
            }
        };
        if (edge)
            grads(std::true_type{});
        else
            grads(std::false_type{});
        uint32_t pa[4][4], da[4][4];
        to_a_fragments(pa, s);
        to_a_fragments(da, dp);
        // kDqWg: the dQ warpgroup's products have read this buffer's previous tile (two back).
        if (kDqWg && it >= 2) tma::mbar_wait(&ds_empty[it & 1], uint32_t((it / 2 - 1) & 1));
            // dSᵀ to shared memory: key row 64·cw + 16·warp + g (+ 8), query columns 8t + 2tq.
#pragma unroll
        for (int t = 0; t < 8; ++t)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = 64 * cw + 16 * warp + g + 8 * half;
                *reinterpret_cast<uint32_t*>(sdS + wgmma::sw128_offset(row, 8 * t + 2 * tq)) =
                    da[t / 2][2 * (t & 1) + half];
            }
        wgmma::fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
#pragma unroll
            for (int hf = 0; hf < kH; ++hf) {
                wgmma::m64n64k16_rs<true>(dv_acc[hf], pa[ks], wgmma::sw128_desc(sdO + 8192 * hf + 2048 * ks),
                                          true);
                wgmma::m64n64k16_rs<true>(dk_acc[hf], da[ks], wgmma::sw128_desc(sQ + 8192 * hf + 2048 * ks),
                                          true);
            }
        wgmma::commit();
        wgmma::fence_proxy_async();  // this thread's dSᵀ, read next by the tensor cores
        if constexpr (kDqWg) {
            tma::mbar_arrive(&ds_full[it & 1]);  // this thread's dSᵀ stored (and fenced for the products)
            wgmma::wait<0>();
        } else {
            float dq[32];
            float* acc_blk = dq_acc + ((int64_t(b) * Hq + h) * n_qt_all + qt) * (64 * kDH);
            // scale·dQ (half hf) from this warpgroup's accumulators onto the fp32 accumulator, through
            // its buffer.
            auto reduce_dq = [&](int hf) {
                auto* sdQ = reinterpret_cast<float*>(base + L::kdQ + cw * 16384);
                if (tid % 128 == 0) tma::bulk_wait_read();  // this buffer's previous reduction has read it
                tma::named_sync(2 + cw, 128);
                stage_scaled_dq(sdQ, dq, warp, g, tq, scale);
                wgmma::fence_proxy_async();
                tma::named_sync(2 + cw, 128);
                if (tid % 128 == 0) {
                    tma::reduce_add_f32(acc_blk + 4096 * hf, sdQ, 16384);
                    tma::bulk_commit();
                }
            };
            {
                tma::named_sync(1, 256);  // both warpgroups' dSᵀ stored
                if (int(it & 1) == cw) {  // this warpgroup's turn: the tile's dQ over all 128 keys
#pragma unroll
                    for (int hf = 0; hf < kH; ++hf) {
                        dq_tile_product(dq, sdS, sK + 16384 * hf);
                        reduce_dq(hf);
                    }
                } else {
                    wgmma::wait<0>();
                }
            }
        }
        if (lane == 0) tma::mbar_arrive(&empty[st]);
    }
    if (tid % 128 == 0) tma::bulk_wait();
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        if (key[rr] >= T) continue;
        __nv_bfloat16* ok = dk ? dk + (int64_t(b) * T + key[rr]) * ld_k + int64_t(hk) * kDH : nullptr;
        __nv_bfloat16* ov = dv ? dv + (int64_t(b) * T + key[rr]) * ld_v + int64_t(hk) * kDH : nullptr;
#pragma unroll
        for (int hf = 0; hf < kH; ++hf)
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int c = 64 * hf + 8 * t + 2 * tq;
                const float k0 = scale * dk_acc[hf][4 * t + 2 * rr],
                            k1 = scale * dk_acc[hf][4 * t + 2 * rr + 1], v0 = dv_acc[hf][4 * t + 2 * rr],
                            v1 = dv_acc[hf][4 * t + 2 * rr + 1];
                if (ok) accumulate ? add_bf16x2(ok + c, k0, k1) : store_bf16x2(ok + c, k0, k1);
                if (ov) accumulate ? add_bf16x2(ov + c, v0, v1) : store_bf16x2(ov + c, v0, v1);
            }
    }
}

// dq (rows of stride ld_q, head h at kDH·h, 16-byte aligned) += the accumulator (= with accumulate
// false, dq not read), each value rounded once; 8 values a thread, 16-byte loads and stores (a pair a thread
// took 41 µs at 16384 tokens × 12 heads on the H200). The accumulator's block of (batch, head, query
// tile) holds its 64-column halves one after the other, each in dq_slot order.
template <int kDH>
__global__ void attention_dq_add_kernel(__nv_bfloat16* __restrict__ dq, const float* __restrict__ dq_acc,
                                        int64_t ld_q, int64_t T, int Hq, int64_t B, bool accumulate) {
    constexpr int kOcts = kDH / 8;
    const int64_t n_qt = (T + kBwdQ - 1) / kBwdQ, octs = B * T * Hq * kOcts;
    for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < octs;
         p += int64_t(gridDim.x) * blockDim.x) {
        const int c = int(p % kOcts) * 8;
        const int64_t rest = p / kOcts, h = rest % Hq, bi = rest / Hq, i = bi % T, bb = bi / T;
        const float* src = dq_acc + ((bb * Hq + h) * n_qt + i / kBwdQ) * (64 * kDH) + 4096 * (c / 64) +
                           dq_slot(int(i % kBwdQ), c % 64);
        const float4 x0 = *reinterpret_cast<const float4*>(src),
                     x1 = *reinterpret_cast<const float4*>(src + 4);
        auto* dst = reinterpret_cast<uint4*>(dq + bi * ld_q + h * kDH + c);
        const uint4 d = accumulate ? *dst : make_uint4(0, 0, 0, 0);
        const float add[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
        uint32_t w[4] = {d.x, d.y, d.z, d.w};
#pragma unroll
        for (int k = 0; k < 4; ++k)
            w[k] = detail::pack_bf16x2(__uint_as_float(w[k] << 16) + add[2 * k],
                                       __uint_as_float(w[k] & 0xffff0000u) + add[2 * k + 1]);
        *dst = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

bool aligned16(const void* p, int64_t ld) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld * 2) % 16 == 0;
}

}  // namespace

bool attention_forward_wgmma_takes(int64_t head_dim, bool alibi, float scale, int64_t q_offset,
                                   int64_t window, const void* q, int64_t ld_q, const void* k, int64_t ld_k,
                                   const void* v, int64_t ld_v) {
    return (head_dim == 64 || head_dim == 128) && !alibi && scale > 0.0f && q_offset == 0 && window == 0 &&
           aligned16(q, ld_q) && aligned16(k, ld_k) && aligned16(v, ld_v) && wgmma_available();
}

bool attention_backward_wgmma_takes(int64_t head_dim, bool alibi, float scale, int64_t q_offset,
                                    int64_t window, const void* q, int64_t ld_q, const void* k, int64_t ld_k,
                                    const void* v, int64_t ld_v) {
    return attention_forward_wgmma_takes(head_dim, alibi, scale, q_offset, window, q, ld_q, k, ld_k, v, ld_v);
}

namespace {

// The (dh, heads, T, B) view of rows of `heads` dh-element heads, row stride ld elements, boxes of 64
// columns of one head's `rows` rows in the 128-byte swizzle; rows past T read as zeros.
CUtensorMap head_rows_map(const uint16_t* base, int64_t heads, int64_t T, int64_t B, int64_t ld, int rows,
                          int64_t dh = kDh) {
    CUtensorMap map;
    const cuuint64_t dims[4] = {cuuint64_t(dh), cuuint64_t(heads), cuuint64_t(T), cuuint64_t(B)};
    const cuuint64_t strides[3] = {cuuint64_t(dh * 2), cuuint64_t(ld * 2), cuuint64_t(T * ld * 2)};
    const cuuint32_t box[4] = {64, 1, cuuint32_t(rows), 1}, step[4] = {1, 1, 1, 1};
    const CUresult r =
        tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<uint16_t*>(base), dims,
                             strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    MSLM_CHECK(r == CUDA_SUCCESS, "attention_wgmma: cuTensorMapEncodeTiled failed ({})", int(r));
    return map;
}

template <int kCWG, bool kPingpong, int kStages, int kDH = 64>
void launch_forward(uint16_t* out, float* lse, const uint16_t* q, int64_t ld_q, const uint16_t* k,
                    int64_t ld_k, const uint16_t* v, int64_t ld_v, int64_t B, int64_t T, int64_t Hq,
                    int64_t Hkv, float scale, cudaStream_t stream) {
    using C = Fwd<kCWG, kStages, kDH>;
    const int64_t n_qt = (T + C::kBQ - 1) / C::kBQ;
    MSLM_CHECK(Hq <= 65535 && n_qt <= 65535 && B <= 65535 && T <= (int64_t(1) << 30),
               "attention_forward_wgmma: grid ({}, {}, {}) too large", Hq, n_qt, B);
    // Per call, as the other attention kernels do: the attribute belongs to the current device.
    const cudaError_t attr_err =
        cudaFuncSetAttribute(attention_forward_wgmma_kernel<kCWG, kPingpong, kStages, kDH>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmem));
    MSLM_CHECK(attr_err == cudaSuccess, "attention_forward_wgmma: cudaFuncSetAttribute: {}",
               cudaGetErrorString(attr_err));
    const CUtensorMap tq = head_rows_map(q, Hq, T, B, ld_q, C::kBQ, kDH),
                      tk = head_rows_map(k, Hkv, T, B, ld_k, kBK2, kDH),
                      tv = head_rows_map(v, Hkv, T, B, ld_v, kBK2, kDH);
    // Batch-major: a batch's blocks run together, so its K and V stay in L2 (the blocks of one query
    // tile over all batches first — the longest first everywhere — measured 0.142 → 0.144 ms at T =
    // 2048, and 0.219 → 0.243 at head dim 128).
    const dim3 grid(static_cast<unsigned>(Hq), static_cast<unsigned>(n_qt), static_cast<unsigned>(B));
    attention_forward_wgmma_kernel<kCWG, kPingpong, kStages, kDH>
        <<<grid, C::kThreads, C::kSmem, stream>>>(tq, tk, tv, reinterpret_cast<__nv_bfloat16*>(out), lse, T,
                                                  int(Hq), int(Hq / Hkv), scale * 1.4426950408889634f);
}

}  // namespace

void attention_forward_wgmma(uint16_t* out, float* lse, const uint16_t* q, int64_t ld_q, const uint16_t* k,
                             int64_t ld_k, const uint16_t* v, int64_t ld_v, int64_t B, int64_t T, int64_t Hq,
                             int64_t Hkv, int64_t head_dim, float scale, void* stream) {
    MSLM_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention_forward_wgmma: {} query heads over {} KV heads", Hq, Hkv);
    const char* wgs = std::getenv("MSLM_ATTN_WGMMA_WG");  // consumer warpgroups a block: 2 or 3 (default)
    const char* pp = std::getenv("MSLM_ATTN_WGMMA_PP");   // 0: the warpgroups issue their products freely
    const char* stages = std::getenv("MSLM_ATTN_WGMMA_STAGES");  // K/V tile buffers: 3 (default) or 2
    const bool two = wgs && std::string_view(wgs) == "2", ring = !(pp && std::string_view(pp) == "0"),
               two_stages = stages && std::string_view(stages) == "2";
    auto st = static_cast<cudaStream_t>(stream);
    auto go = [&](auto launch) { launch(out, lse, q, ld_q, k, ld_k, v, ld_v, B, T, Hq, Hkv, scale, st); };
    MSLM_CHECK(head_dim == 64 || head_dim == 128, "attention_forward_wgmma: head_dim {}", head_dim);
    if (head_dim == 128)  // two consumer warpgroups: O's 64 accumulators and S's 64 need their registers
        go(two_stages ? launch_forward<2, true, 2, 128> : launch_forward<2, true, 3, 128>);
    else if (two_stages)
        go(launch_forward<3, true, 2>);
    else if (two && ring)
        go(launch_forward<2, true, 3>);
    else if (two)
        go(launch_forward<2, false, 3>);
    else if (ring)
        go(launch_forward<3, true, 3>);
    else
        go(launch_forward<3, false, 3>);
    const cudaError_t err = cudaGetLastError();
    MSLM_CHECK(err == cudaSuccess, "attention_forward_wgmma: launch: {}", cudaGetErrorString(err));
}

size_t attention_backward_wgmma_scratch(int64_t B, int64_t T, int64_t Hq, int64_t head_dim) {
    return size_t(B * Hq * ((T + kBwdQ - 1) / kBwdQ) * 64 * head_dim);
}

void attention_backward_wgmma(uint16_t* dq, uint16_t* dk, uint16_t* dv, const uint16_t* dout,
                              const float* lse, const float* delta, const uint16_t* q, int64_t ld_q,
                              const uint16_t* k, int64_t ld_k, const uint16_t* v, int64_t ld_v, int64_t B,
                              int64_t T, int64_t Hq, int64_t Hkv, int64_t head_dim, float scale,
                              bool accumulate, float* scratch, void* stream) {
    MSLM_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention_backward_wgmma: {} query heads over {} KV heads", Hq,
               Hkv);
    MSLM_CHECK(head_dim == 64 || head_dim == 128, "attention_backward_wgmma: head_dim {}", head_dim);
    const int64_t n_kb = (T + kBwdKeys - 1) / kBwdKeys;
    MSLM_CHECK(Hkv <= 65535 && n_kb <= 65535 && B <= 65535 && T <= (int64_t(1) << 30),
               "attention_backward_wgmma: grid ({}, {}, {}) too large", Hkv, n_kb, B);
    auto st = static_cast<cudaStream_t>(stream);
    const size_t acc = attention_backward_wgmma_scratch(B, T, Hq, head_dim);
    cudaError_t err = cudaMemsetAsync(scratch, 0, acc * sizeof(float), st);
    MSLM_CHECK(err == cudaSuccess, "attention_backward_wgmma: cudaMemsetAsync: {}", cudaGetErrorString(err));
    const int64_t ld_o = Hq * head_dim;
    const CUtensorMap tq = head_rows_map(q, Hq, T, B, ld_q, kBwdQ, head_dim),
                      tdo = head_rows_map(dout, Hq, T, B, ld_o, kBwdQ, head_dim),
                      tk = head_rows_map(k, Hkv, T, B, ld_k, kBwdKeys, head_dim),
                      tv = head_rows_map(v, Hkv, T, B, ld_v, kBwdKeys, head_dim);
    auto bf = [](uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); };
    // Batch-major, as the forward (key-block-major measured 0.444 → 0.482 ms at T = 2048).
    const dim3 grid(static_cast<unsigned>(Hkv), static_cast<unsigned>(n_kb), static_cast<unsigned>(B));
    auto go = [&](auto stages_c, auto dq_wg_c, auto dh_c) {
        constexpr int kS = decltype(stages_c)::value, kD = decltype(dh_c)::value;
        constexpr bool kW = decltype(dq_wg_c)::value;
        using BL = Bwd<kS, kW, kD>;
        const cudaError_t e =
            cudaFuncSetAttribute(attention_backward_wgmma_kernel<kS, kW, kD>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, int(BL::kSmem));
        MSLM_CHECK(e == cudaSuccess, "attention_backward_wgmma: cudaFuncSetAttribute: {}",
                   cudaGetErrorString(e));
        attention_backward_wgmma_kernel<kS, kW, kD><<<grid, BL::kThreads, BL::kSmem, st>>>(
            tq, tk, tv, tdo, bf(dk), bf(dv), scratch, lse, delta, ld_k, ld_v, T, int(Hq), int(Hq / Hkv),
            scale, scale * 1.4426950408889634f, accumulate);
    };
    const char* stages = std::getenv("MSLM_ATTN_WGMMA_STAGES");  // Q/dO tile buffers: 3 (default) or 2
    const char* dq_wg = std::getenv("MSLM_ATTN_WGMMA_DQWG");     // 0: the consumers take dQ turns
    const bool two = stages && std::string_view(stages) == "2",
               wg4 = !(dq_wg && std::string_view(dq_wg) == "0");
    using S2 = std::integral_constant<int, 2>;
    using S3 = std::integral_constant<int, 3>;
    using D64 = std::integral_constant<int, 64>;
    if (head_dim == 128)  // the consumers' dQ turns only (above)
        two ? go(S2{}, std::false_type{}, std::integral_constant<int, 128>{})
            : go(S3{}, std::false_type{}, std::integral_constant<int, 128>{});
    else if (two && wg4)
        go(S2{}, std::true_type{}, D64{});
    else if (two)
        go(S2{}, std::false_type{}, D64{});
    else if (wg4)
        go(S3{}, std::true_type{}, D64{});
    else
        go(S3{}, std::false_type{}, D64{});
    err = cudaGetLastError();
    MSLM_CHECK(err == cudaSuccess, "attention_backward_wgmma: launch: {}", cudaGetErrorString(err));
    if (dq) {
        const int64_t octs = B * T * Hq * (head_dim / 8);
        const int blocks = int(std::min<int64_t>((octs + 255) / 256, 132 * 16));
        if (head_dim == 128)
            attention_dq_add_kernel<128>
                <<<blocks, 256, 0, st>>>(bf(dq), scratch, ld_q, T, int(Hq), B, accumulate);
        else
            attention_dq_add_kernel<64>
                <<<blocks, 256, 0, st>>>(bf(dq), scratch, ld_q, T, int(Hq), B, accumulate);
        err = cudaGetLastError();
        MSLM_CHECK(err == cudaSuccess, "attention_backward_wgmma: dq launch: {}", cudaGetErrorString(err));
    }
}

}  // namespace mslm::ops::cuda
