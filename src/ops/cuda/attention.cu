// Attention on CUDA cores, FlashAttention-2 style: a block owns a tile of queries (forward, dq) or
// of keys (dk/dv), streams the other side through shared memory in tiles, and never forms a T × T
// matrix. Tiles are fp32 in shared memory (bf16 is decoded on load), rows padded by one float so
// that the column walks below hit 32 different banks. Head dims are zero-padded to DP ∈ {32, 64,
// 128}: zero channels add nothing to q·k and produce output channels that are never stored.
//
// bf16 with head dims 64 and 128 takes the tensor-core kernels instead (the section "tensor-core
// kernels" below; MSLM_ATTN_TC=0 keeps these): same tiles and loops, products on mma.sync.
//
// Thread layout of every fp32 tile kernel (128 threads): thread t owns the rows tr·RM .. tr·RM + RM − 1
// (tr = t / 16) and the columns tc, tc + 16, ... (tc = t % 16). The 16 threads of a row group
// are one half-warp, so row maxima and sums reduce with four xor-shuffles.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/attention_wgmma.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/reduce.cuh"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

constexpr int kTileThreads = 128;
constexpr int kRowGroups = kTileThreads / 16;  // 8 row groups of 16 threads
constexpr int kWarps = kTileThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Backward tiles: 64 queries × 32 keys (keeps dk and dv of a 32-key tile in registers).
constexpr int kBwdQ = 64, kBwdK = 32;

template <typename D>
struct AttnParams {
    const D* q;
    const D* k;
    const D* v;
    int64_t ld_q, ld_k, ld_v;
    int64_t T, Tk, q_offset, window;  // Tk = q_offset + T keys per sequence
    int64_t batch;
    int Hq, group, head_dim;
    float scale;
    float scale_log2;  // log2(e)·scale: the tensor-core kernels' scores are in log2 units
    bool alibi;
    bool vec;  // every row the tensor-core kernels stage is 16-byte aligned: cp.async
    // forward
    D* out;
    float* lse;
    // backward
    D* dq;
    D* dk;
    D* dv;
    const D* dout;
    const D* o;
    const float* lse_in;
    const float* delta;  // (B, Hq, T) D_i = dout_i · out_i, tensor-core backward only
    // Forward with the keys split (attention_forward_tc_kernel<…, kSplit = true>): a query tile of
    // n key tiles is ceil(n / split_tiles) items; grid.y = items (per sequence and head).
    int64_t split_tiles, items;
    float* part;  // (B, Hq, items, BQ, DH + 2): an item's unnormalised o, then its rows' m and l
    int* count;   // (B, Hq, query tiles): the items of a tile finished; zero between launches (the
                  // last item resets its tile's)
};

// Key tiles of BK that the query rows [i0, i0 + BQ) see (from the first any row sees to the one
// holding the last row's own key) and the first of them: the forward's range, on host and device.
struct KeyTiles {
    int64_t begin, n;
};
__host__ __device__ inline KeyTiles key_tiles(int64_t i0, int64_t BQ, int64_t BK, int64_t T, int64_t q_offset,
                                              int64_t window) {
    const int64_t pos_first = q_offset + i0, pos_last = q_offset + (i0 + BQ < T ? i0 + BQ : T) - 1;
    const int64_t first = window > 0 && pos_first - window + 1 > 0 ? pos_first - window + 1 : 0;
    const int64_t begin = first / BK * BK;
    return {begin, (pos_last - begin) / BK + 1};
}

__device__ __forceinline__ bool visible(int64_t i, int64_t j, int64_t window) {
    return j <= i && (window == 0 || i - j < window);
}

__device__ __forceinline__ float half_warp_max(float x) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
    return x;
}
__device__ __forceinline__ float half_warp_sum(float x) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
    return x;
}

// tile (R, DP + 1) = rows row0 .. row0 + R − 1 of one head (`head` points at row 0, row stride ld),
// zero for rows ≥ n_rows and channels ≥ head_dim.
template <int R, int DP, typename D>
__device__ void load_tile(float* tile, const D* head, int64_t ld, int64_t row0, int64_t n_rows,
                          int head_dim) {
    for (int idx = threadIdx.x; idx < R * DP; idx += kTileThreads) {
        const int r = idx / DP, d = idx % DP;
        float x = 0.0f;
        if (row0 + r < n_rows && d < head_dim) x = to_f32(head[(row0 + r) * ld + d]);
        tile[r * (DP + 1) + d] = x;
    }
}

// s (RM, CN) = A_rows · B_colsᵀ over DP channels, A and B tiles with row length DP + 1.
template <int RM, int CN, int DP>
__device__ __forceinline__ void tile_dot(float (&s)[RM][CN], const float* a, const float* b, int tr, int tc) {
    constexpr int LD = DP + 1;
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < CN; ++j) s[i][j] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < DP; ++d) {
        float ad[RM], bd[CN];
#pragma unroll
        for (int i = 0; i < RM; ++i) ad[i] = a[(tr * RM + i) * LD + d];
#pragma unroll
        for (int j = 0; j < CN; ++j) bd[j] = b[(tc + 16 * j) * LD + d];
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int j = 0; j < CN; ++j) s[i][j] = fmaf(ad[i], bd[j], s[i][j]);
    }
}

// ---- forward

template <int DP, int BQ, int BK>
constexpr size_t forward_smem() {
    return sizeof(float) * (size_t(BQ) * (DP + 1) + 2 * size_t(BK) * (DP + 1) + size_t(BQ) * (BK + 1));
}

// grid (query tiles, Hq, B). The last query tiles see the most keys and start first.
template <int DP, int BQ, int BK, typename D>
__global__ void __launch_bounds__(kTileThreads) attention_forward_kernel(AttnParams<D> a) {
    constexpr int RM = BQ / kRowGroups, CN = BK / 16, DN = DP / 16, LD = DP + 1, LP = BK + 1;
    extern __shared__ float smem[];
    float* sQ = smem;          // (BQ, LD)
    float* sK = sQ + BQ * LD;  // (BK, LD)
    float* sV = sK + BK * LD;  // (BK, LD)
    float* sP = sV + BK * LD;  // (BQ, LP) weights of the current key tile
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    const int64_t i0 = int64_t(gridDim.x - 1 - blockIdx.x) * BQ;
    const int h = blockIdx.y, hk = h / a.group, Dh = a.head_dim;
    const int64_t b = blockIdx.z;
    const float slope = a.alibi ? alibi_slope(h, a.Hq) : 0.0f;
    const D* kh = a.k + b * a.Tk * a.ld_k + hk * Dh;  // (Tk, Dh) row stride ld_k
    const D* vh = a.v + b * a.Tk * a.ld_v + hk * Dh;

    load_tile<BQ, DP>(sQ, a.q + b * a.T * a.ld_q + h * Dh, a.ld_q, i0, a.T, Dh);

    float acc[RM][DN], m[RM], l[RM];  // unnormalised outputs, running max and sum of each row
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int jd = 0; jd < DN; ++jd) acc[i][jd] = 0.0f;
    }

    // Key tiles from the one holding the first row's first visible key to the last row's own key.
    const int64_t pos_first = a.q_offset + i0, pos_last = a.q_offset + min(i0 + BQ, a.T) - 1;
    const int64_t j_begin = (a.window > 0 ? max(int64_t(0), pos_first - a.window + 1) : 0) / BK * BK;
    for (int64_t j0 = j_begin; j0 <= pos_last; j0 += BK) {
        __syncthreads();  // sQ written; the previous tile's sK, sV, sP consumed
        load_tile<BK, DP>(sK, kh, a.ld_k, j0, a.Tk, Dh);
        load_tile<BK, DP>(sV, vh, a.ld_v, j0, a.Tk, Dh);
        __syncthreads();

        float s[RM][CN];
        tile_dot<RM, CN, DP>(s, sQ, sK, tr, tc);
#pragma unroll
        for (int i = 0; i < RM; ++i) {
            const int r = tr * RM + i;
            const int64_t pos_i = a.q_offset + i0 + r;
            const bool row_ok = i0 + r < a.T;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < CN; ++j) {
                const int64_t pos_j = j0 + tc + 16 * j;
                s[i][j] = row_ok && visible(pos_i, pos_j, a.window)
                              ? a.scale * s[i][j] - slope * static_cast<float>(pos_i - pos_j)
                              : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = half_warp_max(mx);
            const float m_new = fmaxf(m[i], mx);
            // A row that has seen nothing yet keeps acc = l = 0: subtract 0 instead of −inf.
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;
            const float alpha = expf(m[i] - m_use);
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < CN; ++j) {
                const float p = expf(s[i][j] - m_use);
                sP[r * LP + tc + 16 * j] = p;
                sum += p;
            }
            sum = half_warp_sum(sum);
            l[i] = l[i] * alpha + sum;
            m[i] = m_new;
#pragma unroll
            for (int jd = 0; jd < DN; ++jd) acc[i][jd] *= alpha;
        }
        __syncwarp();  // a row group reads only the sP rows its own half-warp wrote

        // acc (RM, DN) += p (RM, BK) · v_tile (BK, DN)
#pragma unroll 4
        for (int c = 0; c < BK; ++c) {
            float pc[RM], vd[DN];
#pragma unroll
            for (int i = 0; i < RM; ++i) pc[i] = sP[(tr * RM + i) * LP + c];
#pragma unroll
            for (int jd = 0; jd < DN; ++jd) vd[jd] = sV[c * LD + tc + 16 * jd];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int jd = 0; jd < DN; ++jd) acc[i][jd] = fmaf(pc[i], vd[jd], acc[i][jd]);
        }
    }

    // Every valid row sees at least itself, so l ≥ 1 and m is finite.
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int64_t row = i0 + tr * RM + i;
        if (row >= a.T) continue;
        const float inv = 1.0f / l[i];
        D* o = a.out + ((b * a.T + row) * a.Hq + h) * Dh;
#pragma unroll
        for (int jd = 0; jd < DN; ++jd) {
            const int d = tc + 16 * jd;
            if (d < Dh) o[d] = from_f32<D>(acc[i][jd] * inv);
        }
        if (tc == 0) a.lse[(b * a.Hq + h) * a.T + row] = m[i] + logf(l[i]);
    }
}

// ---- backward

// lse_i and D_i = dout_i · out_i (fp32, one warp per row) of query rows i0 .. i0 + kBwdQ − 1, zero
// beyond T.
template <typename D>
__device__ void load_row_stats(float* s_lse, float* s_delta, const AttnParams<D>& a, int64_t b, int h,
                               int64_t i0) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < kBwdQ; r += kWarps) {
        const int64_t i = i0 + r;
        float sum = 0.0f;
        if (i < a.T) {
            const int64_t at = ((b * a.T + i) * a.Hq + h) * a.head_dim;
            for (int d = lane; d < a.head_dim; d += 32) sum += to_f32(a.dout[at + d]) * to_f32(a.o[at + d]);
        }
        sum = warp_sum(sum);
        if (lane == 0) {
            s_delta[r] = sum;
            s_lse[r] = i < a.T ? a.lse_in[(b * a.Hq + h) * a.T + i] : 0.0f;
        }
    }
}

// From the tiles of queries i0 + (RM rows of this thread) and keys j0 + (CN columns): the weights
//   p = exp(scale · q·k − slope · (i − j) − lse_i)  (0 where masked) and ds = p · (dout·v − D_i).
template <int RM, int CN, int DP, typename D>
__device__ __forceinline__ void weights_and_ds(float (&p)[RM][CN], float (&ds)[RM][CN], const float* sQ,
                                               const float* sdO, const float* sK, const float* sV,
                                               const float* s_lse, const float* s_delta, int64_t i0,
                                               int64_t j0, float slope, const AttnParams<D>& a, int tr,
                                               int tc) {
    tile_dot<RM, CN, DP>(p, sQ, sK, tr, tc);
    tile_dot<RM, CN, DP>(ds, sdO, sV, tr, tc);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int r = tr * RM + i;
        const int64_t pos_i = i0 + r;
#pragma unroll
        for (int j = 0; j < CN; ++j) {
            const int64_t pos_j = j0 + tc + 16 * j;
            const bool vis = pos_i < a.T && visible(pos_i, pos_j, a.window);
            p[i][j] =
                vis ? expf(a.scale * p[i][j] - slope * static_cast<float>(pos_i - pos_j) - s_lse[r]) : 0.0f;
            ds[i][j] = p[i][j] * (ds[i][j] - s_delta[r]);
        }
    }
}

template <int DP>
constexpr size_t backward_dkdv_smem() {
    return sizeof(float) * (2 * size_t(kBwdK) * (DP + 1) + 2 * size_t(kBwdQ) * (DP + 1) +
                            2 * size_t(kBwdQ) * (kBwdK + 1) + 2 * kBwdQ);
}

// grid (key tiles, Hkv, B). A block owns dk and dv of kBwdK keys of one KV head and walks, head
// by head of the group and tile by tile, the queries that can see them:
//   dv_j += Σ_i p_ij dout_i,  dk_j += scale · Σ_i ds_ij q_i.
template <int DP, typename D>
__global__ void __launch_bounds__(kTileThreads) attention_backward_dkdv_kernel(AttnParams<D> a) {
    constexpr int BQ = kBwdQ, BK = kBwdK, RM = BQ / kRowGroups, CN = BK / 16, KR = BK / kRowGroups,
                  DN = DP / 16, LD = DP + 1, LP = BK + 1;
    extern __shared__ float smem[];
    float* sK = smem;           // (BK, LD)
    float* sV = sK + BK * LD;   // (BK, LD)
    float* sQ = sV + BK * LD;   // (BQ, LD)
    float* sdO = sQ + BQ * LD;  // (BQ, LD)
    float* sP = sdO + BQ * LD;  // (BQ, LP)
    float* sdS = sP + BQ * LP;  // (BQ, LP)
    float* s_lse = sdS + BQ * LP;
    float* s_delta = s_lse + BQ;
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    const int64_t j0 = int64_t(blockIdx.x) * BK;
    const int hk = blockIdx.y, Dh = a.head_dim;
    const int64_t b = blockIdx.z;
    const int64_t ld_o = int64_t(a.Hq) * Dh;

    load_tile<BK, DP>(sK, a.k + b * a.T * a.ld_k + hk * Dh, a.ld_k, j0, a.T, Dh);
    load_tile<BK, DP>(sV, a.v + b * a.T * a.ld_v + hk * Dh, a.ld_v, j0, a.T, Dh);

    float dk[KR][DN], dv[KR][DN];  // rows j0 + tr·KR + i, channels tc + 16·jd
#pragma unroll
    for (int i = 0; i < KR; ++i)
#pragma unroll
        for (int jd = 0; jd < DN; ++jd) dk[i][jd] = dv[i][jd] = 0.0f;

    // Queries that see a key of the tile: from its first key to its last key + window − 1.
    const int64_t i_end = a.window > 0 ? min(a.T, j0 + BK - 1 + a.window) : a.T;
    for (int g = 0; g < a.group; ++g) {
        const int h = hk * a.group + g;
        const float slope = a.alibi ? alibi_slope(h, a.Hq) : 0.0f;
        for (int64_t i0 = j0; i0 < i_end; i0 += BQ) {
            __syncthreads();  // the previous tiles are consumed
            load_tile<BQ, DP>(sQ, a.q + b * a.T * a.ld_q + h * Dh, a.ld_q, i0, a.T, Dh);
            load_tile<BQ, DP>(sdO, a.dout + b * a.T * ld_o + h * Dh, ld_o, i0, a.T, Dh);
            load_row_stats(s_lse, s_delta, a, b, h, i0);
            __syncthreads();

            float p[RM][CN], ds[RM][CN];
            weights_and_ds<RM, CN, DP>(p, ds, sQ, sdO, sK, sV, s_lse, s_delta, i0, j0, slope, a, tr, tc);
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int j = 0; j < CN; ++j) {
                    sP[(tr * RM + i) * LP + tc + 16 * j] = p[i][j];
                    sdS[(tr * RM + i) * LP + tc + 16 * j] = ds[i][j];
                }
            __syncthreads();

            // dv (KR, DN) += pᵀ · dout_tile;  dk (KR, DN) += dsᵀ · q_tile
#pragma unroll 2
            for (int r = 0; r < BQ; ++r) {
                float pr[KR], dsr[KR], od[DN], qd[DN];
#pragma unroll
                for (int i = 0; i < KR; ++i) {
                    pr[i] = sP[r * LP + tr * KR + i];
                    dsr[i] = sdS[r * LP + tr * KR + i];
                }
#pragma unroll
                for (int jd = 0; jd < DN; ++jd) {
                    od[jd] = sdO[r * LD + tc + 16 * jd];
                    qd[jd] = sQ[r * LD + tc + 16 * jd];
                }
#pragma unroll
                for (int i = 0; i < KR; ++i)
#pragma unroll
                    for (int jd = 0; jd < DN; ++jd) {
                        dv[i][jd] = fmaf(pr[i], od[jd], dv[i][jd]);
                        dk[i][jd] = fmaf(dsr[i], qd[jd], dk[i][jd]);
                    }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < KR; ++i) {
        const int64_t j = j0 + tr * KR + i;
        if (j >= a.T) continue;
#pragma unroll
        for (int jd = 0; jd < DN; ++jd) {
            const int d = tc + 16 * jd;
            if (d >= Dh) continue;
            if (a.dk) {
                D* x = a.dk + (b * a.T + j) * a.ld_k + hk * Dh + d;
                *x = from_f32<D>(to_f32(*x) + a.scale * dk[i][jd]);
            }
            if (a.dv) {
                D* x = a.dv + (b * a.T + j) * a.ld_v + hk * Dh + d;
                *x = from_f32<D>(to_f32(*x) + dv[i][jd]);
            }
        }
    }
}

template <int DP>
constexpr size_t backward_dq_smem() {
    return sizeof(float) * (2 * size_t(kBwdQ) * (DP + 1) + 2 * size_t(kBwdK) * (DP + 1) +
                            size_t(kBwdQ) * (kBwdK + 1) + 2 * kBwdQ);
}

// grid (query tiles, Hq, B): dq_i += scale · Σ_j ds_ij k_j over the visible key tiles, recomputing
// p and ds as the dk/dv kernel does (the price of not accumulating dq with atomics).
template <int DP, typename D>
__global__ void __launch_bounds__(kTileThreads) attention_backward_dq_kernel(AttnParams<D> a) {
    constexpr int BQ = kBwdQ, BK = kBwdK, RM = BQ / kRowGroups, CN = BK / 16, DN = DP / 16, LD = DP + 1,
                  LP = BK + 1;
    extern __shared__ float smem[];
    float* sQ = smem;           // (BQ, LD)
    float* sdO = sQ + BQ * LD;  // (BQ, LD)
    float* sK = sdO + BQ * LD;  // (BK, LD)
    float* sV = sK + BK * LD;   // (BK, LD)
    float* sdS = sV + BK * LD;  // (BQ, LP)
    float* s_lse = sdS + BQ * LP;
    float* s_delta = s_lse + BQ;
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    const int64_t i0 = int64_t(gridDim.x - 1 - blockIdx.x) * BQ;
    const int h = blockIdx.y, hk = h / a.group, Dh = a.head_dim;
    const int64_t b = blockIdx.z;
    const float slope = a.alibi ? alibi_slope(h, a.Hq) : 0.0f;
    const int64_t ld_o = int64_t(a.Hq) * Dh;
    const D* kh = a.k + b * a.T * a.ld_k + hk * Dh;
    const D* vh = a.v + b * a.T * a.ld_v + hk * Dh;

    load_tile<BQ, DP>(sQ, a.q + b * a.T * a.ld_q + h * Dh, a.ld_q, i0, a.T, Dh);
    load_tile<BQ, DP>(sdO, a.dout + b * a.T * ld_o + h * Dh, ld_o, i0, a.T, Dh);
    load_row_stats(s_lse, s_delta, a, b, h, i0);

    float dq[RM][DN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int jd = 0; jd < DN; ++jd) dq[i][jd] = 0.0f;

    const int64_t j_begin = (a.window > 0 ? max(int64_t(0), i0 - a.window + 1) : 0) / BK * BK;
    const int64_t j_last = min(i0 + BQ, a.T) - 1;
    for (int64_t j0 = j_begin; j0 <= j_last; j0 += BK) {
        __syncthreads();  // sQ, sdO and the row stats written; the previous sK, sV, sdS consumed
        load_tile<BK, DP>(sK, kh, a.ld_k, j0, a.T, Dh);
        load_tile<BK, DP>(sV, vh, a.ld_v, j0, a.T, Dh);
        __syncthreads();

        float p[RM][CN], ds[RM][CN];
        weights_and_ds<RM, CN, DP>(p, ds, sQ, sdO, sK, sV, s_lse, s_delta, i0, j0, slope, a, tr, tc);
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int j = 0; j < CN; ++j) sdS[(tr * RM + i) * LP + tc + 16 * j] = ds[i][j];
        __syncwarp();  // a row group reads only the sdS rows its own half-warp wrote

        // dq (RM, DN) += ds (RM, BK) · k_tile (BK, DN)
#pragma unroll 4
        for (int c = 0; c < BK; ++c) {
            float dsc[RM], kd[DN];
#pragma unroll
            for (int i = 0; i < RM; ++i) dsc[i] = sdS[(tr * RM + i) * LP + c];
#pragma unroll
            for (int jd = 0; jd < DN; ++jd) kd[jd] = sK[c * LD + tc + 16 * jd];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int jd = 0; jd < DN; ++jd) dq[i][jd] = fmaf(dsc[i], kd[jd], dq[i][jd]);
        }
    }

#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int64_t row = i0 + tr * RM + i;
        if (row >= a.T) continue;
#pragma unroll
        for (int jd = 0; jd < DN; ++jd) {
            const int d = tc + 16 * jd;
            if (d >= Dh) continue;
            D* x = a.dq + (b * a.T + row) * a.ld_q + h * Dh + d;
            *x = from_f32<D>(to_f32(*x) + a.scale * dq[i][jd]);
        }
    }
}

// ---- tensor-core kernels (bf16 storage, head dims 64 and 128)
//
// The fp32 kernels above with every product on mma.sync (mma.cuh; fragment layouts there): a warp
// owns 16 rows of the block's tile (32, as two m16 tiles sharing every B fragment, in the forward)
// and keeps its accumulators in C fragments, so the softmax and the masks work on registers and the
// weights go back into the next product as A fragments without a trip through shared memory (the C
// fragment of two adjacent n8 tiles is, packed to bf16 pairs, the A fragment of one k16 step).
// Scores are in log2 units: s2 = log2(e)·s, so every weight is one ex2. The per-element work is
// kept to what the tile needs: a warp skips tiles none of its rows sees, and only tiles that cross
// its diagonal, window edge or the sequence's end evaluate the mask (a separate instantiation of
// the tile's code, on 32-bit position offsets); ALiBi is a template parameter. (Measured on the
// H200: 18 instructions per mma before, ~4 after; docs/PERFORMANCE.md.) Rounding beyond the fp32 kernels: the weights p (forward P·V, backward
// Pᵀ·dO) and ds (ds·K, dsᵀ·Q) are rounded once to bf16 for their products; the row sums, the
// softmax statistics and D stay fp32.
//
// Shared tiles are bf16 rows of DH + 8 elements (DH·2 + 16 bytes): the 8 row addresses of one
// ldmatrix phase then step by 36 (DH 64) or 68 (DH 128) words, 4 banks apart mod 32, so each
// phase reads 8 distinct 16-byte bank groups. Rows are staged with cp.async (16-byte chunks, double
// buffered) when every source row is 16-byte aligned, else with plain loads; rows past the end of
// the sequence are zeros, so that they add nothing (their scores are masked, and 0·v = 0).

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

template <int DH>
constexpr int kTcLd = DH + 8;

// rows row0 .. row0 + R − 1 of one head (`head` points at row 0, row stride ld) → tile (R, DH + 8),
// zeros for rows ≥ n_rows. vec: 16-byte cp.async (the caller commits and waits), else plain loads.
template <int R, int DH>
__device__ __forceinline__ void tc_stage(__nv_bfloat16* tile, const __nv_bfloat16* head, int64_t ld,
                                         int64_t row0, int64_t n_rows, bool vec) {
    constexpr int kChunks = DH / 8;  // 16-byte chunks per row
    for (int e = threadIdx.x; e < R * kChunks; e += kTileThreads) {
        const int r = e / kChunks, c = e % kChunks;
        __nv_bfloat16* dst = tile + r * kTcLd<DH> + c * 8;
        const int64_t row = row0 + r;
        if (row < n_rows && vec) {
            cp_async_16(dst, head + row * ld + c * 8);
        } else {
            Pack<__nv_bfloat16, 8> p;
#pragma unroll
            for (int k = 0; k < 8; ++k)
                p.v[k] = row < n_rows ? head[row * ld + c * 8 + k] : __float2bfloat16(0.0f);
            store<8>(dst, p);
        }
    }
}

// acc[m] (16 × 8·NT) += A[m] (16 × DH) · B (8·NT × DH)ᵀ for the MT m16 tiles of a warp: B is rows
// 0 .. 8·NT − 1 of a (·, DH + 8) tile (S = Q·Kᵀ, dP = dO·Vᵀ), each of its fragments loaded once for
// all MT tiles (MT = 2 halves the shared-memory reads per product). A comes from the fragments `a`.
template <int MT, int NT, int DH>
__device__ __forceinline__ void tc_mma_abt(float (&acc)[MT][NT][4], const uint32_t (&a)[MT][DH / 16][4],
                                           const __nv_bfloat16* tile_b) {
    static_assert(NT % 2 == 0, "n8 tiles go in pairs");
    const int lane = threadIdx.x % 32;
    const __nv_bfloat16* p = tile_b + (lane % 8 + 8 * (lane / 16)) * kTcLd<DH> + 8 * (lane / 8 % 2);
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk)
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, p + np * 16 * kTcLd<DH> + kk * 16);
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                mma_m16n8k16_bf16(acc[m][2 * np], a[m][kk], b0);
                mma_m16n8k16_bf16(acc[m][2 * np + 1], a[m][kk], b1);
            }
        }
}

// As tc_mma_abt, with A read from rows r0 .. r0 + 16·MT − 1 of tile_a one k16 step at a time (fewer
// live registers than holding all of A).
template <int MT, int NT, int DH>
__device__ __forceinline__ void tc_mma_abt_smem(float (&acc)[MT][NT][4], const __nv_bfloat16* tile_a, int r0,
                                                const __nv_bfloat16* tile_b) {
    static_assert(NT % 2 == 0, "n8 tiles go in pairs");
    const int lane = threadIdx.x % 32;
    const __nv_bfloat16* pa = tile_a + (r0 + lane % 8 + 8 * (lane / 8 % 2)) * kTcLd<DH> + 8 * (lane / 16);
    const __nv_bfloat16* pb = tile_b + (lane % 8 + 8 * (lane / 16)) * kTcLd<DH> + 8 * (lane / 8 % 2);
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) ldmatrix_x4(a[m], pa + m * 16 * kTcLd<DH> + kk * 16);
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, pb + np * 16 * kTcLd<DH> + kk * 16);
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                mma_m16n8k16_bf16(acc[m][2 * np], a[m], b0);
                mma_m16n8k16_bf16(acc[m][2 * np + 1], a[m], b1);
            }
        }
    }
}

// The A fragments of rows r0 .. r0 + 16·MT − 1 of a (·, DH + 8) tile, all DH columns.
template <int MT, int DH>
__device__ __forceinline__ void tc_load_a(uint32_t (&a)[MT][DH / 16][4], const __nv_bfloat16* tile, int r0) {
    const int lane = threadIdx.x % 32;
    const __nv_bfloat16* p = tile + (r0 + lane % 8 + 8 * (lane / 8 % 2)) * kTcLd<DH> + 8 * (lane / 16);
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int kk = 0; kk < DH / 16; ++kk) ldmatrix_x4(a[m][kk], p + m * 16 * kTcLd<DH> + kk * 16);
}

// acc[m] (16 × DH) += bf16(W[m]) (16 × 8·NT) · B (8·NT × DH): W is the fp32 C fragments of a previous
// product (w[m][t] = columns 8t .. 8t + 7 of m16 tile m), rounded once to bf16 here; B is rows
// 0 .. 8·NT − 1 of a (·, DH + 8) tile stored [k][n] (P·V, Pᵀ·dO, dS·K, dSᵀ·Q), read with
// ldmatrix.trans once for all MT tiles.
template <int MT, int NT, int DH>
__device__ __forceinline__ void tc_mma_wb(float (&acc)[MT][DH / 8][4], const float (&w)[MT][NT][4],
                                          const __nv_bfloat16* tile_b) {
    static_assert(NT % 2 == 0, "k16 steps take two n8 tiles of W");
    const int lane = threadIdx.x % 32;
    const __nv_bfloat16* p = tile_b + (lane % 8 + 8 * (lane / 8 % 2)) * kTcLd<DH> + 8 * (lane / 16);
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
        // A rows grp, grp + 8 and k pairs 2q, 2q + 1 (n8 tile 2kk) and 2q + 8, 2q + 9 (tile 2kk + 1).
        uint32_t a[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            a[m][0] = pack_bf16x2(w[m][2 * kk][0], w[m][2 * kk][1]);
            a[m][1] = pack_bf16x2(w[m][2 * kk][2], w[m][2 * kk][3]);
            a[m][2] = pack_bf16x2(w[m][2 * kk + 1][0], w[m][2 * kk + 1][1]);
            a[m][3] = pack_bf16x2(w[m][2 * kk + 1][2], w[m][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < DH / 16; ++dp) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, p + kk * 16 * kTcLd<DH> + dp * 16);
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                mma_m16n8k16_bf16(acc[m][2 * dp], a[m], b0);
                mma_m16n8k16_bf16(acc[m][2 * dp + 1], a[m], b1);
            }
        }
    }
}

// Zeroes a warp's C fragments (tile-major).
template <int A, int B>
__device__ __forceinline__ void tc_zero(float (&x)[A][B][4]) {
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
        for (int b = 0; b < B; ++b) x[a][b][0] = x[a][b][1] = x[a][b][2] = x[a][b][3] = 0.0f;
}

// log2(e)·slope of query head h (0 without ALiBi).
__device__ __forceinline__ float alibi_slope_log2(bool alibi, int h, int n_heads) {
    return alibi ? static_cast<float>(static_cast<double>(alibi_slope(h, n_heads)) * 1.4426950408889634)
                 : 0.0f;
}

// Where fragment element e of n8 tile t of this lane sits in a warp's 16 × 8·NT C tile.
__device__ __forceinline__ int frag_row(int e) {
    return threadIdx.x % 32 / 4 + 8 * (e / 2);
}
__device__ __forceinline__ int frag_col(int t, int e) {
    return 8 * t + 2 * (threadIdx.x % 4) + e % 2;
}

// Offsets between a row's and a column's positions (at most the tile sizes plus the window, and
// positions are below 2^30: the launchers check) and the window as 32-bit ints for the masks.
__device__ __forceinline__ int offset32(int64_t d) {
    return static_cast<int>(d);
}
__device__ __forceinline__ int window32(int64_t window) {
    return window > 0 && window < (int64_t(1) << 30) ? static_cast<int>(window) : INT_MAX;
}

// Two fp32 values rounded to bf16 and stored at p (element p[0] the first), as one 4-byte store
// when `pair` (p 4-byte aligned).
__device__ __forceinline__ void store_bf16_pair(__nv_bfloat16* p, float x0, float x1, bool pair) {
    if (pair) {
        *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(x0, x1);
    } else {
        p[0] = __float2bfloat16_rn(x0);
        p[1] = __float2bfloat16_rn(x1);
    }
}
// p[0..1] += (x0, x1), each rounded once to bf16.
__device__ __forceinline__ void add_bf16_pair(__nv_bfloat16* p, float x0, float x1, bool pair) {
    if (pair) {
        const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(p);
        *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(__low2float(v) + x0, __high2float(v) + x1);
    } else {
        p[0] = __float2bfloat16_rn(to_f32(p[0]) + x0);
        p[1] = __float2bfloat16_rn(to_f32(p[1]) + x1);
    }
}

__device__ __forceinline__ bool aligned4(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 3) == 0;
}

// The sum over a quad of lanes (4·grp … 4·grp + 3): a C fragment row's values spread over it.
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(kFullMask, x, 1);
    return x + __shfl_xor_sync(kFullMask, x, 2);
}

// Items a split query tile has at most: their weights, (items, BQ) floats, fit in the forward
// kernel's shared memory.
constexpr int64_t kMaxKeySplits = 32;

// The end of a split forward item (attention_forward_tc_kernel<…, kSplit>): writes the item's
// unnormalised o (this lane's fragments) and its rows' m (log2 units) and l to a.part; the query
// tile's last item to finish weighs every item of the tile, in item order, by 2^(m_s − M) / L (M
// the rows' largest m, L = Σ 2^(m_s − M)·l_s) and writes out and lse. wgt: the kernel's shared memory,
// free once its key loop has ended on a barrier.
template <int DH, int MT>
__device__ void forward_split_finish(const AttnParams<__nv_bfloat16>& a, const float (&o)[MT][DH / 8][4],
                                     const float (&m)[MT][2], const float (&l)[MT][2], int64_t b, int h,
                                     int64_t qt, int64_t i0, int64_t split, int64_t n_split, int64_t n_qtiles,
                                     float* wgt) {
    constexpr int WR = 16 * MT, BQ = WR * kWarps, DT = DH / 8, PS = BQ * (DH + 2);
    const int warp = threadIdx.x / 32;
    float* base = a.part + ((b * a.Hq + h) * a.items + blockIdx.y - split) * PS;  // the tile's item 0
    float* mine = base + split * PS;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float lr = quad_sum(l[mt][r]);
            const int rr = WR * warp + 16 * mt + frag_row(2 * r);
#pragma unroll
            for (int t = 0; t < DT; ++t)
                *reinterpret_cast<float2*>(mine + rr * DH + frag_col(t, 0)) =
                    make_float2(o[mt][t][2 * r], o[mt][t][2 * r + 1]);
            if (threadIdx.x % 4 == 0) {
                mine[BQ * DH + rr] = m[mt][r];
                mine[BQ * DH + BQ + rr] = lr;
            }
        }
    __shared__ int last;
    __threadfence();
    __syncthreads();
    int* count = a.count + (b * a.Hq + h) * n_qtiles + qt;
    if (threadIdx.x == 0) last = atomicAdd(count, 1) == n_split - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (threadIdx.x == 0) *count = 0;  // every item of the tile has counted: ready for the next launch
    for (int rr = threadIdx.x; rr < BQ; rr += kTileThreads) {
        float mx = -INFINITY;
        for (int64_t s = 0; s < n_split; ++s) mx = fmaxf(mx, __ldcg(base + s * PS + BQ * DH + rr));
        const float m_use = mx == -INFINITY ? 0.0f : mx;  // no row of a valid query is empty
        float sum = 0.0f;
        for (int64_t s = 0; s < n_split; ++s) {
            const float w = fast_exp2(__ldcg(base + s * PS + BQ * DH + rr) - m_use);
            wgt[s * BQ + rr] = w;
            sum = fmaf(w, __ldcg(base + s * PS + BQ * DH + BQ + rr), sum);
        }
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int64_t s = 0; s < n_split; ++s) wgt[s * BQ + rr] *= inv;
        if (i0 + rr < a.T) a.lse[(b * a.Hq + h) * a.T + i0 + rr] = mx * kLn2 + logf(sum);
    }
    __syncthreads();
    // o as float4 columns: kPer a thread, every item's loads of a thread issued together.
    constexpr int kPer = BQ * DH / 4 / kTileThreads;
    static_assert(BQ * DH % (4 * kTileThreads) == 0, "whole float4 columns a thread");
    float4 acc[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) acc[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int64_t s = 0; s < n_split; ++s) {
        const float4* ps = reinterpret_cast<const float4*>(base + s * PS);
        float4 v[kPer];
#pragma unroll
        for (int u = 0; u < kPer; ++u) v[u] = __ldcg(ps + threadIdx.x + u * kTileThreads);
#pragma unroll
        for (int u = 0; u < kPer; ++u) {
            const float w = wgt[s * BQ + (int(threadIdx.x) + u * kTileThreads) * 4 / DH];
            acc[u].x = fmaf(w, v[u].x, acc[u].x);
            acc[u].y = fmaf(w, v[u].y, acc[u].y);
            acc[u].z = fmaf(w, v[u].z, acc[u].z);
            acc[u].w = fmaf(w, v[u].w, acc[u].w);
        }
    }
    const bool pair = aligned4(a.out);
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
        const int f = (int(threadIdx.x) + u * kTileThreads) * 4, rr = f / DH, d = f % DH;
        if (i0 + rr >= a.T) continue;
        __nv_bfloat16* out = a.out + ((b * a.T + i0 + rr) * a.Hq + h) * DH + d;
        store_bf16_pair(out, acc[u].x, acc[u].y, pair);
        store_bf16_pair(out + 2, acc[u].z, acc[u].w, pair);
    }
}

template <int DH, int MT, int BK>
constexpr size_t forward_tc_smem() {
    return sizeof(__nv_bfloat16) * size_t(16 * MT * kWarps + 4 * BK) * kTcLd<DH>;
}

// grid (query tiles, Hq, B), 4 warps; warp w owns the 16·MT query rows i0 + 16·MT·w + [0, 16·MT) as
// MT m16 tiles, lane 4·grp + q the rows 16m + grp and 16m + grp + 8 of them (C fragments). Key
// tiles of BK, K and V double-buffered, from the first tile any row of the block sees to the one
// holding its last row's own key. A warp skips a key tile none of its rows sees (past the diagonal,
// or before every row's window); only the tiles that cross the warp's diagonal or window edge
// evaluate the mask, on 32-bit position offsets. Without kGeneral (no ALiBi, scale > 0) the row
// maxima are taken on the raw products and scaled once, and each weight costs one FFMA and one EX2;
// with it, the scores go to log2 units first. kQSmem: Q's fragments are read from shared memory
// at every key tile instead of held in registers (head dim 128 at MT = 2).
//
// kSplit: each block is one item of a query tile's key range (grid.y enumerates the items, query
// tiles heaviest first): the tile's n key tiles split into c = ceil(n / split_tiles) consecutive runs,
// as even as integer division makes them. An item of a split tile writes its unnormalised o and its
// rows' m and l to a.part; the tile's last item to finish (a counter per tile) combines the tile's
// items in item order — the same bits whichever finishes last.
template <int DH, int MT, int BK, bool kQSmem, bool kGeneral, bool kSplit>
__global__ void __launch_bounds__(kTileThreads) attention_forward_tc_kernel(AttnParams<__nv_bfloat16> a) {
    pdl_wait();  // launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    constexpr int WR = 16 * MT, BQ = WR * kWarps, LD = kTcLd<DH>, NT = BK / 8, DT = DH / 8;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    auto* sQ = reinterpret_cast<__nv_bfloat16*>(tc_smem);  // (BQ, LD), then K[2], V[2] (BK, LD)
    auto sK = [&](int st) { return sQ + (BQ + st * BK) * LD; };
    auto sV = [&](int st) { return sQ + (BQ + (2 + st) * BK) * LD; };
    const int warp = threadIdx.x / 32;
    // Grid (heads, query tiles or items, batch), heads fastest: the blocks of the longest (last) query
    // tiles of every head start first, so the short ones fill the tail.
    const int64_t n_qtiles = (a.T + BQ - 1) / BQ;
    int64_t qt = n_qtiles - 1 - blockIdx.y, split = 0, n_split = 1;
    if constexpr (kSplit) {
        int64_t rem = blockIdx.y;
        for (qt = n_qtiles - 1; qt > 0; --qt) {
            const int64_t c =
                (key_tiles(qt * BQ, BQ, BK, a.T, a.q_offset, a.window).n + a.split_tiles - 1) / a.split_tiles;
            if (rem < c) break;
            rem -= c;
        }
        split = rem;
    }
    const int64_t i0 = qt * BQ;
    const int h = blockIdx.x, hk = h / a.group;
    const int64_t b = blockIdx.z;
    const float slope2 = kGeneral ? alibi_slope_log2(a.alibi, h, a.Hq) : 0.0f;
    const __nv_bfloat16* kh = a.k + b * a.Tk * a.ld_k + hk * DH;
    const __nv_bfloat16* vh = a.v + b * a.Tk * a.ld_v + hk * DH;

    const int64_t pos_first = a.q_offset + i0, pos_last = a.q_offset + min(i0 + BQ, a.T) - 1;
    const KeyTiles kt = key_tiles(i0, BQ, BK, a.T, a.q_offset, a.window);
    int64_t j_begin = kt.begin, n_tiles = kt.n;
    if constexpr (kSplit) {
        n_split = (kt.n + a.split_tiles - 1) / a.split_tiles;
        const int64_t t0 = split * kt.n / n_split, t1 = (split + 1) * kt.n / n_split;
        j_begin += t0 * BK;
        n_tiles = t1 - t0;
    }
    // Positions of the warp's first and last rows (past pos_last for rows beyond the sequence).
    const int64_t w_first = pos_first + WR * warp, w_last = w_first + WR - 1;
    const int wl = window32(a.window);

    tc_stage<BQ, DH>(sQ, a.q + b * a.T * a.ld_q + h * DH, a.ld_q, i0, a.T, a.vec);
    tc_stage<BK, DH>(sK(0), kh, a.ld_k, j_begin, a.Tk, a.vec);
    tc_stage<BK, DH>(sV(0), vh, a.ld_v, j_begin, a.Tk, a.vec);
    cp_async_commit();

    uint32_t qf[MT][DH / 16][4];
    float o[MT][DT][4], m[MT][2], l[MT][2];  // l: this lane's columns only
    tc_zero(o);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }

    for (int64_t it = 0; it < n_tiles; ++it) {
        const int64_t j0 = j_begin + it * BK;
        const int st = static_cast<int>(it & 1);
        if (it + 1 < n_tiles) {  // the other buffer was consumed before the barrier ending it − 1
            tc_stage<BK, DH>(sK(st ^ 1), kh, a.ld_k, j0 + BK, a.Tk, a.vec);
            tc_stage<BK, DH>(sV(st ^ 1), vh, a.ld_v, j0 + BK, a.Tk, a.vec);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (!kQSmem && it == 0) tc_load_a<MT, DH>(qf, sQ, WR * warp);

        // The tile's work as a template on whether it evaluates the mask, so that the two versions
        // stay separate code (merged, the compiler computes both and selects per element).
        auto tile = [&](auto masked_c) {
            constexpr bool kMasked = decltype(masked_c)::value;
            float s[MT][NT][4];
            tc_zero(s);
            if constexpr (kQSmem) {
                tc_mma_abt_smem<MT, NT, DH>(s, sQ, WR * warp, sK(st));
            } else {
                tc_mma_abt<MT, NT, DH>(s, qf, sK(st));
            }

            float mx[MT][2];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) mx[mt][0] = mx[mt][1] = -INFINITY;
            constexpr bool kLog2Units = kGeneral || kMasked;
            if constexpr (kLog2Units) {
                // s2 = log2(e)·(scale·q·k − slope·(i − j)), −inf where masked; the position offset of
                // row r of the warp and column c is dlt + r − c.
                const int dlt = offset32(w_first - j0);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int t = 0; t < NT; ++t)
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const int d = dlt + 16 * mt + frag_row(e) - frag_col(t, e);
                            float x = s[mt][t][e] * a.scale_log2;
                            if (kGeneral) x -= slope2 * static_cast<float>(d);
                            if (kMasked && !(d >= 0 && d < wl)) x = -INFINITY;
                            s[mt][t][e] = x;
                            mx[mt][e / 2] = fmaxf(mx[mt][e / 2], x);
                        }
            } else {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int t = 0; t < NT; ++t)
#pragma unroll
                        for (int e = 0; e < 4; ++e) mx[mt][e / 2] = fmaxf(mx[mt][e / 2], s[mt][t][e]);
            }
            // weight = 2^(k_exp·s − m): raw products are scaled inside the FFMA.
            const float k_exp = kLog2Units ? 1.0f : a.scale_log2;
            float alpha[MT][2], m_use[MT][2];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float x = fmaxf(mx[mt][r], __shfl_xor_sync(kFullMask, mx[mt][r], 1));
                    x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 2)) * k_exp;  // k_exp > 0; −inf stays
                    const float m_new = fmaxf(m[mt][r], x);
                    // A row that has seen nothing yet keeps o = l = 0: subtract 0 instead of −inf.
                    m_use[mt][r] = m_new == -INFINITY ? 0.0f : m_new;
                    alpha[mt][r] = fast_exp2(m[mt][r] - m_use[mt][r]);
                    m[mt][r] = m_new;
                    l[mt][r] *= alpha[mt][r];
                }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float p = fast_exp2(fmaf(s[mt][t][e], k_exp, -m_use[mt][e / 2]));
                        s[mt][t][e] = p;
                        l[mt][e / 2] += p;
                    }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int t = 0; t < DT; ++t)
#pragma unroll
                    for (int e = 0; e < 4; ++e) o[mt][t][e] *= alpha[mt][e / 2];
            tc_mma_wb<MT, NT, DH>(o, s, sV(st));
        };
        const bool sees =
            w_first <= pos_last && j0 <= w_last && (a.window == 0 || w_first - (j0 + BK - 1) < a.window);
        if (sees) {
            if (j0 + BK - 1 > w_first || (a.window > 0 && w_last - j0 >= a.window)) {
                tile(std::true_type{});
            } else {
                tile(std::false_type{});
            }
        }
        __syncthreads();  // sK(st), sV(st) consumed before the next iteration stages into them
    }

    if constexpr (kSplit) {
        if (n_split > 1) {
            forward_split_finish<DH, MT>(a, o, m, l, b, h, qt, i0, split, n_split, n_qtiles,
                                         reinterpret_cast<float*>(tc_smem));
            return;
        }
    }
    // Every valid row sees at least itself (weight 2^0 = 1), so l ≥ 1 and m is finite.
    const bool pair = aligned4(a.out);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float lr = quad_sum(l[mt][r]);
            const int64_t row = i0 + WR * warp + 16 * mt + frag_row(2 * r);
            if (row >= a.T) continue;
            const float inv = 1.0f / lr;
            __nv_bfloat16* out = a.out + ((b * a.T + row) * a.Hq + h) * DH;
#pragma unroll
            for (int t = 0; t < DT; ++t)
                store_bf16_pair(out + frag_col(t, 0), o[mt][t][2 * r] * inv, o[mt][t][2 * r + 1] * inv, pair);
            if (threadIdx.x % 4 == 0) a.lse[(b * a.Hq + h) * a.T + row] = m[mt][r] * kLn2 + logf(lr);
        }
}

// delta (B, Hq, T) = D_i = dout_i · out_i in fp32. vec (both 16-byte aligned, head_dim / 8 dividing
// 32): head_dim / 8 threads a row, 16-byte loads (H200, 16384 tokens × 12 heads × 64: 57.6 µs with a
// warp a row and 2-byte loads, the bound ~15); otherwise a warp a row.
__global__ void __launch_bounds__(kThreads)
    attention_delta_kernel(AttnParams<__nv_bfloat16> a, float* delta, bool vec) {
    const int64_t rows = a.batch * a.T * a.Hq;
    const int lane = threadIdx.x % 32;
    // r = (b·T + i)·Hq + h
    auto store = [&](int64_t r, float sum) {
        const int64_t h = r % a.Hq, bi = r / a.Hq, i = bi % a.T, bb = bi / a.T;
        delta[(bb * a.Hq + h) * a.T + i] = sum;
    };
    if (vec) {
        const int per_row = a.head_dim / 8;
        const int64_t total = rows * per_row, stride = int64_t(gridDim.x) * kThreads;
        // Whole warps step together (the row's lanes reduce by shuffles); a row's lanes never straddle.
        for (int64_t base = int64_t(blockIdx.x) * kThreads + threadIdx.x - lane; base < total;
             base += stride) {
            const int64_t i = base + lane;
            float sum = 0.0f;
            if (i < total) {
                const int64_t off = i / per_row * a.head_dim + i % per_row * 8;
                const uint4 x = *reinterpret_cast<const uint4*>(a.dout + off);
                const uint4 y = *reinterpret_cast<const uint4*>(a.o + off);
                const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    sum += __uint_as_float(xs[k] << 16) * __uint_as_float(ys[k] << 16);
                    sum += __uint_as_float(xs[k] & 0xffff0000u) * __uint_as_float(ys[k] & 0xffff0000u);
                }
            }
            for (int w = per_row / 2; w > 0; w /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, w);
            if (i < total && lane % per_row == 0) store(i / per_row, sum);
        }
        return;
    }
    const int64_t warps = int64_t(gridDim.x) * (kThreads / 32);
    for (int64_t r = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; r < rows; r += warps) {
        const __nv_bfloat16 *dout = a.dout + r * a.head_dim, *o = a.o + r * a.head_dim;
        float sum = 0.0f;
        for (int d = lane; d < a.head_dim; d += 32) sum += to_f32(dout[d]) * to_f32(o[d]);
        sum = warp_sum(sum);
        if (lane == 0) store(r, sum);
    }
}

// Blocks of the backward kernels resident per multiprocessor, which caps their registers (at head
// dim 64: 168 a thread for 3 blocks, where they would take 172-184 and fit 2).
template <int DH>
constexpr int kBwdTcBlocks = DH == 64 ? 3 : 2;

template <int DH, int BK, int BQ>
constexpr size_t backward_dkdv_tc_smem() {
    return sizeof(__nv_bfloat16) * size_t(2 * BK + 4 * BQ) * kTcLd<DH> + sizeof(float) * 4 * BQ;
}

// grid (key tiles, Hkv, B), 4 warps; warp w owns keys j0 + 16w .. j0 + 16w + 15 and works in the
// transposed frame (rows keys, columns queries), so that every product keeps its operands in
// registers: Sᵀ = K·Qᵀ, Pᵀ = exp2(s2ᵀ − lse2), dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − D), then
// dV += bf16(Pᵀ)·dO and dK += bf16(dSᵀ)·Q. The query tiles of every head of the group stream
// through double-buffered shared memory (Q, dO, lse2 and D), in the fixed order head, tile. A warp
// skips a query tile that sees none of its keys; the mask (32-bit offsets) runs only on tiles that
// cross the warp's diagonal, window edge or the end of the sequence.
template <int DH, int BK, int BQ, bool kAlibi>
__global__ void __launch_bounds__(kTileThreads, kBwdTcBlocks<DH>)
    attention_backward_dkdv_tc_kernel(AttnParams<__nv_bfloat16> a) {
    static_assert(BK == 16 * kWarps, "a warp owns 16 keys");
    constexpr int LD = kTcLd<DH>, NT = BQ / 8, DT = DH / 8;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    auto* sK = reinterpret_cast<__nv_bfloat16*>(tc_smem);  // (BK, LD), then V (BK, LD), Q[2], dO[2] (BQ, LD)
    __nv_bfloat16* sV = sK + BK * LD;
    auto sQ = [&](int st) { return sV + (BK + st * BQ) * LD; };
    auto sdO = [&](int st) { return sV + (BK + (2 + st) * BQ) * LD; };
    auto* s_lse2 = reinterpret_cast<float*>(sV + (BK + 4 * BQ) * LD);  // [2][BQ]: lse·log2(e)
    float* s_delta = s_lse2 + 2 * BQ;                                  // [2][BQ]: D
    const int warp = threadIdx.x / 32;
    // Grid (kv heads, key tiles, batch), heads fastest: the first key tiles (seen by the most
    // queries) of every head start first.
    const int64_t j0 = int64_t(blockIdx.y) * BK;
    const int hk = blockIdx.x;
    const int64_t b = blockIdx.z;
    const int64_t ld_o = int64_t(a.Hq) * DH;
    const int64_t wj = j0 + 16 * warp;  // the warp's first key
    const int wl = window32(a.window);

    // Queries that see a key of the tile: from its first key (a multiple of BQ) to its last key +
    // window − 1.
    const int64_t i_end = a.window > 0 ? min(a.T, j0 + BK - 1 + a.window) : a.T;
    const int64_t n_qt = (i_end - j0 + BQ - 1) / BQ, n_iter = a.group * n_qt;
    auto stage = [&](int64_t it, int st) {
        const int h = hk * a.group + static_cast<int>(it / n_qt);
        const int64_t i0 = j0 + it % n_qt * BQ;
        tc_stage<BQ, DH>(sQ(st), a.q + b * a.T * a.ld_q + h * DH, a.ld_q, i0, a.T, a.vec);
        tc_stage<BQ, DH>(sdO(st), a.dout + b * a.T * ld_o + h * DH, ld_o, i0, a.T, a.vec);
        for (int r = threadIdx.x; r < BQ; r += kTileThreads) {
            const int64_t i = i0 + r;
            s_lse2[st * BQ + r] = i < a.T ? a.lse_in[(b * a.Hq + h) * a.T + i] * kLog2e : 0.0f;
            s_delta[st * BQ + r] = i < a.T ? a.delta[(b * a.Hq + h) * a.T + i] : 0.0f;
        }
    };
    tc_stage<BK, DH>(sK, a.k + b * a.T * a.ld_k + hk * DH, a.ld_k, j0, a.T, a.vec);
    tc_stage<BK, DH>(sV, a.v + b * a.T * a.ld_v + hk * DH, a.ld_v, j0, a.T, a.vec);
    stage(0, 0);
    cp_async_commit();

    float dk[1][DT][4], dv[1][DT][4];  // rows: keys j0 + 16w + grp (+ 8); columns: channels
    tc_zero(dk);
    tc_zero(dv);

    for (int64_t it = 0; it < n_iter; ++it) {
        const int st = static_cast<int>(it & 1);
        if (it + 1 < n_iter) {
            stage(it + 1, st ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int h = hk * a.group + static_cast<int>(it / n_qt);
        const int64_t i0 = j0 + it % n_qt * BQ;

        // As in the forward, the tile's work is a template on whether it evaluates the mask.
        auto tile = [&](auto masked_c) {
            constexpr bool kMasked = decltype(masked_c)::value;
            float p[1][NT][4], ds[1][NT][4];
            tc_zero(p);
            tc_zero(ds);
            tc_mma_abt_smem<1, NT, DH>(p, sK, 16 * warp, sQ(st));    // Sᵀ
            tc_mma_abt_smem<1, NT, DH>(ds, sV, 16 * warp, sdO(st));  // dPᵀ
            // i − j = dlt + c − r for key row r of the warp and query column c.
            const int dlt = offset32(i0 - wj), n_valid = static_cast<int>(min(int64_t(BQ), a.T - i0));
            const float slope2 = kAlibi ? alibi_slope_log2(true, h, a.Hq) : 0.0f;
            const float* lse2 = s_lse2 + st * BQ;
            const float* dlta = s_delta + st * BQ;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                const int c0 = frag_col(t, 0);
                const float2 lse_pair = *reinterpret_cast<const float2*>(lse2 + c0);
                const float2 d_pair = *reinterpret_cast<const float2*>(dlta + c0);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = c0 + e % 2, d = dlt + c - frag_row(e);
                    float x = fmaf(p[0][t][e], a.scale_log2, -(e % 2 ? lse_pair.y : lse_pair.x));
                    if (kAlibi) x -= slope2 * static_cast<float>(d);
                    float pv = fast_exp2(x);
                    if (kMasked && !(d >= 0 && d < wl && c < n_valid)) pv = 0.0f;
                    p[0][t][e] = pv;
                    ds[0][t][e] = pv * (ds[0][t][e] - (e % 2 ? d_pair.y : d_pair.x));
                }
            }
            tc_mma_wb<1, NT, DH>(dv, p, sdO(st));
            tc_mma_wb<1, NT, DH>(dk, ds, sQ(st));
        };
        // Some query of the tile (inside the sequence) sees some key of the warp.
        if (wj < a.T && i0 + BQ - 1 >= wj && (a.window == 0 || i0 - (wj + 15) < a.window)) {
            if (i0 < wj + 15 || i0 + BQ > a.T || (a.window > 0 && i0 + BQ - 1 - wj >= a.window)) {
                tile(std::true_type{});
            } else {
                tile(std::false_type{});
            }
        }
        __syncthreads();  // sQ(st), sdO(st) and the row stats consumed before they are staged again
    }

    const bool pair_k = aligned4(a.dk) && a.ld_k % 2 == 0, pair_v = aligned4(a.dv) && a.ld_v % 2 == 0;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t j = wj + frag_row(2 * r);
        if (j >= a.T) continue;
#pragma unroll
        for (int t = 0; t < DT; ++t) {
            const int d = frag_col(t, 0);
            if (a.dk)
                add_bf16_pair(a.dk + (b * a.T + j) * a.ld_k + hk * DH + d, a.scale * dk[0][t][2 * r],
                              a.scale * dk[0][t][2 * r + 1], pair_k);
            if (a.dv)
                add_bf16_pair(a.dv + (b * a.T + j) * a.ld_v + hk * DH + d, dv[0][t][2 * r],
                              dv[0][t][2 * r + 1], pair_v);
        }
    }
}

template <int DH, int BQ, int BK>
constexpr size_t backward_dq_tc_smem() {
    return sizeof(__nv_bfloat16) * size_t(2 * BQ + 4 * BK) * kTcLd<DH>;
}

// grid (query tiles, Hq, B), 4 warps of 16 query rows: S = Q·Kᵀ and dP = dO·Vᵀ with Q and dO
// fragments held in registers, P = exp2(s2 − lse2), dS = P ∘ (dP − D), dQ += bf16(dS)·K over the
// visible key tiles (K and V double-buffered); p and ds are recomputed as in the dK/dV kernel, with
// the same warp skips and masks.
template <int DH, int BQ, int BK, bool kAlibi>
__global__ void __launch_bounds__(kTileThreads, kBwdTcBlocks<DH>)
    attention_backward_dq_tc_kernel(AttnParams<__nv_bfloat16> a) {
    static_assert(BQ == 16 * kWarps, "a warp owns 16 query rows");
    constexpr int LD = kTcLd<DH>, NT = BK / 8, DT = DH / 8;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    auto* sQ = reinterpret_cast<__nv_bfloat16*>(tc_smem);  // (BQ, LD), then dO (BQ, LD), K[2], V[2] (BK, LD)
    __nv_bfloat16* sdO = sQ + BQ * LD;
    auto sK = [&](int st) { return sdO + (BQ + st * BK) * LD; };
    auto sV = [&](int st) { return sdO + (BQ + (2 + st) * BK) * LD; };
    const int warp = threadIdx.x / 32;
    const int64_t i0 = int64_t(gridDim.y - 1 - blockIdx.y) * BQ;  // grid (heads, query tiles, batch)
    const int h = blockIdx.x, hk = h / a.group;
    const int64_t b = blockIdx.z;
    const float slope2 = kAlibi ? alibi_slope_log2(true, h, a.Hq) : 0.0f;
    const int64_t ld_o = int64_t(a.Hq) * DH;
    const __nv_bfloat16* kh = a.k + b * a.T * a.ld_k + hk * DH;
    const __nv_bfloat16* vh = a.v + b * a.T * a.ld_v + hk * DH;
    const int64_t wi = i0 + 16 * warp;  // the warp's first query
    const int wl = window32(a.window);
    const int n_rows = static_cast<int>(min(int64_t(16), a.T - wi));  // ≤ 0: the warp has no rows

    const int64_t j_begin = (a.window > 0 ? max(int64_t(0), i0 - a.window + 1) : 0) / BK * BK;
    const int64_t n_tiles = (min(i0 + BQ, a.T) - 1 - j_begin) / BK + 1;

    tc_stage<BQ, DH>(sQ, a.q + b * a.T * a.ld_q + h * DH, a.ld_q, i0, a.T, a.vec);
    tc_stage<BQ, DH>(sdO, a.dout + b * a.T * ld_o + h * DH, ld_o, i0, a.T, a.vec);
    tc_stage<BK, DH>(sK(0), kh, a.ld_k, j_begin, a.T, a.vec);
    tc_stage<BK, DH>(sV(0), vh, a.ld_v, j_begin, a.T, a.vec);
    cp_async_commit();

    float lse2[2], delta[2];  // rows grp, grp + 8 of the warp
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t i = wi + frag_row(2 * r);
        lse2[r] = i < a.T ? a.lse_in[(b * a.Hq + h) * a.T + i] * kLog2e : 0.0f;
        delta[r] = i < a.T ? a.delta[(b * a.Hq + h) * a.T + i] : 0.0f;
    }
    uint32_t qf[1][DH / 16][4], dof[1][DH / 16][4];
    float dq[1][DT][4];
    tc_zero(dq);

    for (int64_t it = 0; it < n_tiles; ++it) {
        const int64_t j0 = j_begin + it * BK;
        const int st = static_cast<int>(it & 1);
        if (it + 1 < n_tiles) {
            tc_stage<BK, DH>(sK(st ^ 1), kh, a.ld_k, j0 + BK, a.T, a.vec);
            tc_stage<BK, DH>(sV(st ^ 1), vh, a.ld_v, j0 + BK, a.T, a.vec);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (it == 0) {
            tc_load_a<1, DH>(qf, sQ, 16 * warp);
            tc_load_a<1, DH>(dof, sdO, 16 * warp);
        }

        auto tile = [&](auto masked_c) {
            constexpr bool kMasked = decltype(masked_c)::value;
            float p[1][NT][4], ds[1][NT][4];
            tc_zero(p);
            tc_zero(ds);
            tc_mma_abt<1, NT, DH>(p, qf, sK(st));
            tc_mma_abt<1, NT, DH>(ds, dof, sV(st));
            const int dlt = offset32(wi - j0);  // i − j = dlt + r − c
#pragma unroll
            for (int t = 0; t < NT; ++t)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int rr = frag_row(e), d = dlt + rr - frag_col(t, e);
                    float x = fmaf(p[0][t][e], a.scale_log2, -lse2[e / 2]);
                    if (kAlibi) x -= slope2 * static_cast<float>(d);
                    float pv = fast_exp2(x);
                    if (kMasked && !(d >= 0 && d < wl && rr < n_rows)) pv = 0.0f;
                    ds[0][t][e] = pv * (ds[0][t][e] - delta[e / 2]);
                }
            tc_mma_wb<1, NT, DH>(dq, ds, sK(st));
        };
        if (n_rows > 0 && j0 <= wi + 15 && (a.window == 0 || wi - (j0 + BK - 1) < a.window)) {
            if (j0 + BK - 1 > wi || n_rows < 16 || (a.window > 0 && wi + 15 - j0 >= a.window)) {
                tile(std::true_type{});
            } else {
                tile(std::false_type{});
            }
        }
        __syncthreads();  // sK(st), sV(st) consumed before the next iteration stages into them
    }

    const bool pair = aligned4(a.dq) && a.ld_q % 2 == 0;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t row = wi + frag_row(2 * r);
        if (row >= a.T) continue;
#pragma unroll
        for (int t = 0; t < DT; ++t)
            add_bf16_pair(a.dq + (b * a.T + row) * a.ld_q + h * DH + frag_col(t, 0),
                          a.scale * dq[0][t][2 * r], a.scale * dq[0][t][2 * r + 1], pair);
    }
}

// ---- decode

// grid (Hq, queries). Warp w takes the visible keys w, w + 4, ... with an online softmax, lanes
// splitting the channels (one warp-wide dot product per key); the four partial softmaxes are
// merged at the end. Cached keys are read once per query head (not once per group): decode is
// one query per sequence, so this stays a read of the cache per head.
template <int DP, typename D>
__global__ void __launch_bounds__(kTileThreads)
    attention_decode_kernel(D* out, const D* q, int64_t ld_q, const D* k_cache, const D* v_cache,
                            const int64_t* slots, const int64_t* pos, int64_t L, int Hq, int Hkv, int Dh,
                            float scale, int64_t window, bool alibi) {
    constexpr int DL = DP / 32;
    __shared__ float s_m[kWarps], s_l[kWarps], s_acc[kWarps][DP];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int h = blockIdx.x, hk = h / (Hq / Hkv);
    const int64_t i = blockIdx.y, p = pos[i];
    const int64_t first = max(max(int64_t(0), p - L + 1), window > 0 ? p - window + 1 : int64_t(0));
    const int64_t n = p - first + 1;
    const float slope = alibi ? alibi_slope(h, Hq) : 0.0f;
    const int64_t ld_kv = int64_t(Hkv) * Dh;
    const D* kc = k_cache + slots[i] * L * ld_kv + hk * Dh;  // (L, Dh) row stride ld_kv
    const D* vc = v_cache + slots[i] * L * ld_kv + hk * Dh;

    float qv[DL], acc[DL];
#pragma unroll
    for (int e = 0; e < DL; ++e) {
        const int d = lane + 32 * e;
        qv[e] = d < Dh ? to_f32(q[i * ld_q + int64_t(h) * Dh + d]) : 0.0f;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int64_t jj = warp; jj < n; jj += kWarps) {
        const int64_t pj = first + jj;
        const D* kr = kc + (pj % L) * ld_kv;
        const D* vr = vc + (pj % L) * ld_kv;
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < DL; ++e) {
            const int d = lane + 32 * e;
            if (d < Dh) dot = fmaf(qv[e], to_f32(kr[d]), dot);
        }
        dot = warp_sum(dot);
        const float s = scale * dot - slope * static_cast<float>(p - pj);
        const float m_new = fmaxf(m, s);
        const float alpha = expf(m - m_new), w = expf(s - m_new);  // alpha = 0 on the first key
        l = l * alpha + w;
#pragma unroll
        for (int e = 0; e < DL; ++e) {
            const int d = lane + 32 * e;
            acc[e] = acc[e] * alpha + (d < Dh ? w * to_f32(vr[d]) : 0.0f);
        }
        m = m_new;
    }
    stash_warp(s_m, s_l, s_acc, m, l, acc);

    // Warp 0 has the first key (n ≥ 1 for pos ≥ 0), so mx is finite; warps without keys weigh 0.
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w]);
    float weight[kWarps], total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        weight[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - mx);
        total += weight[w] * s_l[w];
    }
    const float inv = 1.0f / total;
    for (int d = threadIdx.x; d < Dh; d += kTileThreads) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) o += weight[w] * s_acc[w][d];
        out[(i * Hq + h) * Dh + d] = from_f32<D>(o * inv);
    }
}

// ---- rope

// Heads a RoPE thread rotates: their pairs are all loaded before any is stored (one memory latency
// a thread, not one a head: the stores could alias later loads for all the compiler knows).
constexpr int kRopeHeads = 8;

// One thread per (row, group of kRopeHeads heads, pair i): the angle is computed in double, as the
// CPU does (once per group); the rotation is fp32.
template <typename D>
__global__ void rope_kernel(D* x, int64_t ld, int64_t N, int64_t Tn, int H, int Dh, int rotary_dim,
                            double theta, int64_t pos0, const int64_t* pos, bool inverse) {
    pdl_wait();  // launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    const int half = rotary_dim / 2, groups = (H + kRopeHeads - 1) / kRopeHeads;
    const int64_t work = N * groups * half;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t w = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; w < work; w += stride) {
        const int64_t rg = w / half;
        const int i = static_cast<int>(w - rg * half);
        const int64_t row = rg / groups;
        const int h0 = static_cast<int>(rg - row * groups) * kRopeHeads;
        const double position = static_cast<double>(pos ? pos[row] : pos0 + row % Tn);
        const double angle = position * pow(theta, -2.0 * i / rotary_dim);
        double sn, cs;
        sincos(angle, &sn, &cs);
        const float c = static_cast<float>(cs), s = static_cast<float>(inverse ? -sn : sn);
        D* xr = x + row * ld + i;
        float x0[kRopeHeads], x1[kRopeHeads];
#pragma unroll
        for (int j = 0; j < kRopeHeads; ++j) {
            if (h0 + j >= H) break;
            const D* xh = xr + int64_t(h0 + j) * Dh;
            x0[j] = to_f32(xh[0]);
            x1[j] = to_f32(xh[half]);
        }
#pragma unroll
        for (int j = 0; j < kRopeHeads; ++j) {
            if (h0 + j >= H) break;
            D* xh = xr + int64_t(h0 + j) * Dh;
            xh[0] = from_f32<D>(x0[j] * c - x1[j] * s);
            xh[half] = from_f32<D>(x1[j] * c + x0[j] * s);
        }
    }
}

// ---- host side

template <typename T>
void check_attention(const char* kernel, const AttentionDims& d, int64_t ld_q, int64_t ld_k, int64_t ld_v,
                     const AttentionOptions& opt) {
    MSLM_CHECK(d.batch >= 0 && d.seqlen >= 0 && d.head_dim > 0 && d.n_heads > 0 && d.n_kv_heads > 0,
               "CUDA kernel {}<{}>: bad dims (B={}, T={}, Hq={}, Hkv={}, Dh={})", kernel, dtype_label<T>(),
               d.batch, d.seqlen, d.n_heads, d.n_kv_heads, d.head_dim);
    MSLM_CHECK(d.n_heads % d.n_kv_heads == 0,
               "CUDA kernel {}<{}>: {} query heads are not a multiple of {} kv heads", kernel,
               dtype_label<T>(), d.n_heads, d.n_kv_heads);
    MSLM_CHECK(d.head_dim <= kAttentionMaxHeadDim, "CUDA kernel {}<{}>: head_dim {} above {}", kernel,
               dtype_label<T>(), d.head_dim, kAttentionMaxHeadDim);
    MSLM_CHECK(ld_q >= d.n_heads * d.head_dim && ld_k >= d.n_kv_heads * d.head_dim &&
                   ld_v >= d.n_kv_heads * d.head_dim,
               "CUDA kernel {}<{}>: row strides (q {}, k {}, v {}) are shorter than a row", kernel,
               dtype_label<T>(), ld_q, ld_k, ld_v);
    // Grid limits: heads and batch go to grid.y and grid.z.
    MSLM_CHECK(d.n_heads <= 65535 && d.batch <= 65535, "CUDA kernel {}<{}>: {} heads or batch {} above 65535",
               kernel, dtype_label<T>(), d.n_heads, d.batch);
    MSLM_CHECK(opt.window >= 0, "CUDA kernel {}<{}>: window {} is negative", kernel, dtype_label<T>(),
               opt.window);
    MSLM_CHECK(opt.q_offset >= 0, "CUDA kernel {}<{}>: q_offset {} is negative", kernel, dtype_label<T>(),
               opt.q_offset);
}

// Calls f with std::integral_constant<int, DP>, the padded head dim.
template <typename F>
void with_padded_head_dim(int64_t head_dim, F&& f) {
    if (head_dim <= 32) {
        f(std::integral_constant<int, 32>{});
    } else if (head_dim <= 64) {
        f(std::integral_constant<int, 64>{});
    } else {
        f(std::integral_constant<int, 128>{});
    }
}

// pdl: launched with programmatic dependent launch (kernels that begin with pdl_wait()).
template <typename T, typename D>
void launch_tiles(const char* kernel, void (*fn)(AttnParams<D>), dim3 grid, size_t smem, cudaStream_t stream,
                  const AttnParams<D>& a, bool pdl = false) {
    check_cuda<T>(
        cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "cudaFuncSetAttribute", kernel);
    check_cuda<T>(launch_maybe_pdl(pdl && ops_pdl_enabled(), fn, grid, dim3(kTileThreads), smem, stream, a),
                  "launch", kernel);
}

template <typename T>
AttnParams<device_t<T>> params(const T* q, int64_t ld_q, const T* k, int64_t ld_k, const T* v, int64_t ld_v,
                               const AttentionDims& dims, const AttentionOptions& opt) {
    using D = device_t<T>;
    AttnParams<D> a{};
    a.q = reinterpret_cast<const D*>(q);
    a.k = reinterpret_cast<const D*>(k);
    a.v = reinterpret_cast<const D*>(v);
    a.ld_q = ld_q;
    a.ld_k = ld_k;
    a.ld_v = ld_v;
    a.T = dims.seqlen;
    a.Tk = opt.q_offset + dims.seqlen;
    a.q_offset = opt.q_offset;
    a.window = opt.window;
    a.Hq = static_cast<int>(dims.n_heads);
    a.group = static_cast<int>(dims.n_heads / dims.n_kv_heads);
    a.head_dim = static_cast<int>(dims.head_dim);
    a.batch = dims.batch;
    a.scale = opt.scale;
    a.scale_log2 = static_cast<float>(static_cast<double>(opt.scale) * 1.4426950408889634);
    a.alibi = opt.alibi;
    a.vec = aligned16(q) && aligned16(k) && aligned16(v) && ld_q % 8 == 0 && ld_k % 8 == 0 && ld_v % 8 == 0;
    return a;
}

template <typename T>
void check_rope(const char* kernel, int64_t ld, int64_t N, int64_t H, int64_t Dh, int64_t rotary_dim) {
    MSLM_CHECK(N >= 0 && H >= 0 && Dh >= 0, "CUDA kernel {}<{}>: negative shape (N={}, H={}, Dh={})", kernel,
               dtype_label<T>(), N, H, Dh);
    MSLM_CHECK(rotary_dim >= 0 && rotary_dim % 2 == 0 && rotary_dim <= Dh,
               "CUDA kernel {}<{}>: rotary_dim {} must be even and at most head_dim {}", kernel,
               dtype_label<T>(), rotary_dim, Dh);
    MSLM_CHECK(ld >= H * Dh, "CUDA kernel {}<{}>: row stride {} is shorter than a row of {} heads × {}",
               kernel, dtype_label<T>(), ld, H, Dh);
    MSLM_CHECK(H <= INT_MAX && Dh <= INT_MAX, "CUDA kernel {}<{}>: {} heads × {} too large", kernel,
               dtype_label<T>(), H, Dh);
}

template <typename T>
void launch_rope(const char* kernel, T* x, int64_t ld, int64_t N, int64_t Tn, int64_t H, int64_t Dh,
                 int64_t rotary_dim, double theta, int64_t pos0, const int64_t* pos, bool inverse,
                 void* stream) {
    using D = device_t<T>;
    const int64_t work = N * ((H + kRopeHeads - 1) / kRopeHeads) * (rotary_dim / 2);
    if (work == 0 || H == 0) return;
    check_cuda<T>(launch_ops_pdl(rope_kernel<D>, grid_size<T>(work, kernel), kThreads, 0,
                                 static_cast<cudaStream_t>(stream), reinterpret_cast<D*>(x), ld, N, Tn,
                                 static_cast<int>(H), static_cast<int>(Dh), static_cast<int>(rotary_dim),
                                 theta, pos0, pos, inverse),
                  "launch", kernel);
}

// The tensor-core kernels take bf16 with head dims 64 and 128, unless MSLM_ATTN_TC=0 (read at every
// call, for ablations); every other case runs the fp32 kernels.
template <typename T>
bool use_tensor_cores(int64_t head_dim) {
    if constexpr (!std::is_same_v<T, uint16_t>) {
        (void)head_dim;
        return false;
    } else {
        const char* v = std::getenv("MSLM_ATTN_TC");
        return (head_dim == 64 || head_dim == 128) && (v == nullptr || std::string_view(v) != "0");
    }
}

// Calls f with std::integral_constant<int, DH> for head dims 64 and 128.
template <typename F>
void with_tc_head_dim(int64_t head_dim, F&& f) {
    if (head_dim == 64) {
        f(std::integral_constant<int, 64>{});
    } else {
        f(std::integral_constant<int, 128>{});
    }
}

// The tensor-core kernels' masks work on 32-bit position offsets.
template <typename T, typename D>
void check_tc_positions(const char* kernel, const AttnParams<D>& a) {
    MSLM_CHECK(a.Tk < (int64_t(1) << 30),
               "CUDA kernel {}<{}>: {} key positions, above the 2^30 the tensor-core kernels take", kernel,
               dtype_label<T>(), a.Tk);
}

// Query rows a warp of the tensor-core forward owns, in m16 tiles: 2 (128 queries a block; each K and
// V fragment read from shared memory serves two tiles) at head dim 64, where a grid too small for
// the GPU splits its long query tiles' keys (forward_split) instead; at head dim 128, 2 when that
// grid still gives every SM two blocks (it keeps two resident), else 1 (64 queries a block: twice
// the blocks, and the longest block — the last query tile, which sees every key — half as long).
// MSLM_ATTN_FWD_ROWS=16 or 32 forces one or two tiles (the ablation, and the tests).
template <typename T>
int forward_rows_per_warp(const AttentionDims& d) {
    const char* v = std::getenv("MSLM_ATTN_FWD_ROWS");
    if (v != nullptr && std::string_view(v) == "16") return 1;
    if (v != nullptr && std::string_view(v) == "32") return 2;
    if (d.head_dim <= 64) return 2;
    const int64_t blocks = d.batch * d.n_heads * ((d.seqlen + 127) / 128);
    return blocks >= 2 * int64_t(multiprocessors<T>("attention_forward")) ? 2 : 1;
}

// The key split of a small forward grid (two m16 tiles a warp): tiles (key tiles an item at most)
// and items (per sequence and head; the query tiles when nothing splits). Items of at least 4 tiles,
// about two for every resident block slot (per_sm an SM), at most kMaxKeySplits a query tile — so a
// training grid (8 × 2048: a tile would need 50) does not split. MSLM_ATTN_SPLIT=0 turns it off;
// a number sets the tiles.
struct ForwardSplit {
    int64_t tiles, items;
};
template <typename T>
ForwardSplit forward_split(const AttnParams<device_t<T>>& a, const AttentionDims& d, int64_t BQ, int64_t BK,
                           int per_sm) {
    const int64_t n_qt = (d.seqlen + BQ - 1) / BQ;
    auto tiles_of = [&](int64_t q) { return key_tiles(q * BQ, BQ, BK, d.seqlen, a.q_offset, a.window).n; };
    int64_t work = 0, n_max = 0;
    for (int64_t q = 0; q < n_qt; ++q) {
        const int64_t n = tiles_of(q);
        work += n;
        n_max = std::max(n_max, n);
    }
    int64_t tiles = 0;
    const char* env = std::getenv("MSLM_ATTN_SPLIT");
    if (env != nullptr && *env != '\0') {
        tiles = std::strtoll(env, nullptr, 10);
        if (tiles <= 0) return {n_max, n_qt};
    } else {
        const int64_t slots = int64_t(per_sm) * multiprocessors<T>("attention_forward");
        tiles = std::max<int64_t>(4, (work * d.batch * d.n_heads + 2 * slots - 1) / (2 * slots));
    }
    tiles = std::max(tiles, (n_max + kMaxKeySplits - 1) / kMaxKeySplits);
    int64_t items = 0;
    for (int64_t q = 0; q < n_qt; ++q) items += (tiles_of(q) + tiles - 1) / tiles;
    return {tiles, items};
}

// Resident blocks an SM of a split forward kernel (asked of the runtime once per instantiation).
template <typename T, int DH, int MT, int BK, bool kQSmem>
int forward_split_blocks_per_sm() {
    static const int n = [] {
        auto fn = attention_forward_tc_kernel<DH, MT, BK, kQSmem, false, true>;
        constexpr size_t smem = forward_tc_smem<DH, MT, BK>();
        int blocks = 0;
        check_cuda<T>(
            cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
            "cudaFuncSetAttribute", "attention_forward_tc");
        check_cuda<T>(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, kTileThreads, smem),
                      "cudaOccupancyMaxActiveBlocksPerMultiprocessor", "attention_forward_tc");
        return std::max(blocks, 1);
    }();
    return n;
}

// A stream-ordered fp32 scratch buffer (cudaMallocAsync), freed in stream order when it goes out
// of scope: the kernels queued before the free still read it.
template <typename T>
class StreamScratch {
public:
    StreamScratch(size_t count, cudaStream_t stream, const char* kernel) : stream_(stream) {
        check_cuda<T>(cudaMallocAsync(reinterpret_cast<void**>(&p_), sizeof(float) * count, stream),
                      "cudaMallocAsync", kernel);
    }
    ~StreamScratch() { cudaFreeAsync(p_, stream_); }
    StreamScratch(const StreamScratch&) = delete;
    StreamScratch& operator=(const StreamScratch&) = delete;
    float* get() const { return p_; }

private:
    float* p_ = nullptr;
    cudaStream_t stream_;
};

// What a KeptScratch holds: each use its own buffer, so one use's writes never land on another's.
enum class Kept { SplitParts, SplitCounters, Delta, DqAccumulator };

// fp32 scratch kept per (device, stream, use) and grown in stream order (the old buffer freed with
// cudaFreeAsync behind the kernels queued before it), never freed: a cudaMallocAsync per call of the
// split forward's ~19 MB at one sequence cost ~100 µs, since the default pool hands its memory back
// at every synchronisation (measured: prefill ~985K tokens/s without the split, 915–937K with it
// allocating per call). While the stream is being captured into a graph, a StreamScratch of the
// call's own instead (a kept buffer grown inside a capture would belong to the graph).
template <typename T>
class KeptScratch {
public:
    KeptScratch(Kept use, size_t count, cudaStream_t stream, const char* kernel) {
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        check_cuda<T>(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing", kernel);
        if (capture != cudaStreamCaptureStatusNone) {
            own_.emplace(count, stream, kernel);
            p_ = own_->get();
            return;
        }
        int device = 0;
        check_cuda<T>(cudaGetDevice(&device), "cudaGetDevice", kernel);
        static std::mutex mutex;
        static auto* buffers = new std::map<std::tuple<int, cudaStream_t, Kept>, std::pair<float*, size_t>>;
        std::lock_guard<std::mutex> lock(mutex);
        auto& [p, size] = (*buffers)[{device, stream, use}];
        fresh_ = size < count;
        if (fresh_) {
            if (p) check_cuda<T>(cudaFreeAsync(p, stream), "cudaFreeAsync", kernel);
            p = nullptr;
            size = 0;
            check_cuda<T>(cudaMallocAsync(reinterpret_cast<void**>(&p), sizeof(float) * count, stream),
                          "cudaMallocAsync", kernel);
            size = count;
        }
        p_ = p;
    }
    float* get() const { return p_; }
    // Whether the memory is new to this use (just allocated, or the capture's own): not zeroed.
    bool fresh() const { return fresh_; }

private:
    float* p_ = nullptr;
    bool fresh_ = true;
    std::optional<StreamScratch<T>> own_;
};

}  // namespace

template <typename T>
void attention_forward(T* out, float* lse, const T* q, int64_t ld_q, const T* k, int64_t ld_k, const T* v,
                       int64_t ld_v, const AttentionDims& dims, const AttentionOptions& opt, void* stream) {
    const char* kernel = "attention_forward";
    check_attention<T>(kernel, dims, ld_q, ld_k, ld_v, opt);
    if (dims.batch == 0 || dims.seqlen == 0) return;
    using D = device_t<T>;
    AttnParams<D> a = params(q, ld_q, k, ld_k, v, ld_v, dims, opt);
    a.out = reinterpret_cast<D*>(out);
    a.lse = lse;
    auto s = static_cast<cudaStream_t>(stream);
    if constexpr (std::is_same_v<T, uint16_t>) {
#ifdef MSLM_HAVE_SM90A
        // The wgmma forward (attention_wgmma.h) where it takes the call (H200, head dim 64: 1.4× the
        // kernels below); MSLM_ATTN_WGMMA=0 keeps these.
        if (const char* env = std::getenv("MSLM_ATTN_WGMMA");
            !(env && std::string_view(env) == "0") && use_tensor_cores<T>(dims.head_dim) &&
            attention_forward_wgmma_takes(dims.head_dim, opt.alibi, opt.scale, opt.q_offset, opt.window, q,
                                          ld_q, k, ld_k, v, ld_v)) {
            attention_forward_wgmma(out, lse, q, ld_q, k, ld_k, v, ld_v, dims.batch, dims.seqlen,
                                    dims.n_heads, dims.n_kv_heads, dims.head_dim, opt.scale, stream);
            return;
        }
#endif
        if (use_tensor_cores<T>(dims.head_dim)) {
            check_tc_positions<T>(kernel, a);
            const bool general = opt.alibi || !(opt.scale > 0.0f);
            const int mt = forward_rows_per_warp<T>(dims);
            with_tc_head_dim(dims.head_dim, [&](auto dh) {
                constexpr int DH = decltype(dh)::value;
                auto go = [&](auto mt_c, auto bk_c, auto qsmem_c) {
                    constexpr int MT = decltype(mt_c)::value, BK = decltype(bk_c)::value,
                                  BQ = 16 * MT * kWarps;
                    constexpr bool kQSmem = decltype(qsmem_c)::value;
                    constexpr size_t smem = forward_tc_smem<DH, MT, BK>();
                    const int64_t n_qt = (dims.seqlen + BQ - 1) / BQ;
                    auto launch = [&](auto split_c, int64_t ny) {
                        constexpr bool kS = decltype(split_c)::value;
                        const dim3 grid(static_cast<unsigned>(dims.n_heads), static_cast<unsigned>(ny),
                                        static_cast<unsigned>(dims.batch));
                        if (general)
                            launch_tiles<T>("attention_forward_tc",
                                            attention_forward_tc_kernel<DH, MT, BK, kQSmem, true, kS>, grid,
                                            smem, s, a, true);
                        else
                            launch_tiles<T>("attention_forward_tc",
                                            attention_forward_tc_kernel<DH, MT, BK, kQSmem, false, kS>, grid,
                                            smem, s, a, true);
                    };
                    if constexpr (MT == 2) {
                        const ForwardSplit fs = forward_split<T>(
                            a, dims, BQ, BK, forward_split_blocks_per_sm<T, DH, MT, BK, kQSmem>());
                        if (fs.items > n_qt) {
                            const int64_t part = dims.batch * dims.n_heads * fs.items * BQ * (DH + 2),
                                          counters = dims.batch * dims.n_heads * n_qt;
                            KeptScratch<T> parts(Kept::SplitParts, static_cast<size_t>(part), s, kernel);
                            KeptScratch<T> count(Kept::SplitCounters, static_cast<size_t>(counters), s,
                                                 kernel);
                            a.split_tiles = fs.tiles;
                            a.items = fs.items;
                            a.part = parts.get();
                            a.count = reinterpret_cast<int*>(count.get());
                            // Only this code and the kernels touch the counters, and the kernels leave
                            // them at zero: new memory is zeroed once.
                            if (count.fresh())
                                check_cuda<T>(cudaMemsetAsync(a.count, 0, sizeof(int) * counters, s),
                                              "cudaMemsetAsync", kernel);
                            launch(std::true_type{}, fs.items);
                            return;
                        }
                    }
                    launch(std::false_type{}, n_qt);
                };
                using I1 = std::integral_constant<int, 1>;
                using I2 = std::integral_constant<int, 2>;
                using B32 = std::integral_constant<int, 32>;
                using B64 = std::integral_constant<int, 64>;
                if (mt == 1) {
                    go(I1{}, B64{}, std::false_type{});
                } else if constexpr (DH == 64) {
                    go(I2{}, B64{}, std::false_type{});
                } else {
                    go(I2{}, B32{}, std::true_type{});
                }
            });
            return;
        }
    }
    with_padded_head_dim(dims.head_dim, [&](auto dp) {
        constexpr int DP = decltype(dp)::value;
        constexpr int BQ = 64, BK = DP == 128 ? 32 : 64;  // DP = 128: fp32 tiles of 75 KB
        const dim3 grid(static_cast<unsigned>((dims.seqlen + BQ - 1) / BQ),
                        static_cast<unsigned>(dims.n_heads), static_cast<unsigned>(dims.batch));
        launch_tiles<T>(kernel, attention_forward_kernel<DP, BQ, BK, D>, grid, forward_smem<DP, BQ, BK>(), s,
                        a);
    });
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse, const T* q,
                        int64_t ld_q, const T* k, int64_t ld_k, const T* v, int64_t ld_v,
                        const AttentionDims& dims, const AttentionOptions& opt, void* stream) {
    const char* kernel = "attention_backward";
    check_attention<T>(kernel, dims, ld_q, ld_k, ld_v, opt);
    MSLM_CHECK(opt.q_offset == 0, "CUDA kernel {}<{}>: q_offset {} (a prefix of keys) is forward-only",
               kernel, dtype_label<T>(), opt.q_offset);
    if (dims.batch == 0 || dims.seqlen == 0) return;
    using D = device_t<T>;
    AttnParams<D> a = params(q, ld_q, k, ld_k, v, ld_v, dims, opt);
    a.dq = reinterpret_cast<D*>(dq);
    a.dk = reinterpret_cast<D*>(dk);
    a.dv = reinterpret_cast<D*>(dv);
    a.dout = reinterpret_cast<const D*>(dout);
    a.o = reinterpret_cast<const D*>(out);
    a.lse_in = lse;
    auto s = static_cast<cudaStream_t>(stream);
    // accumulate = false on the kernels that only add: the gradient slices zeroed first.
    auto clear = [&] {
        if (opt.accumulate) return;
        const auto zero = [&](T* p, int64_t ld, int64_t heads) {
            if (!p) return;
            const cudaError_t e =
                cudaMemset2DAsync(p, size_t(ld) * sizeof(T), 0, size_t(heads * dims.head_dim) * sizeof(T),
                                  size_t(dims.batch * dims.seqlen), s);
            MSLM_CHECK(e == cudaSuccess, "CUDA kernel {}: cudaMemset2DAsync: {}", kernel,
                       cudaGetErrorString(e));
        };
        zero(dq, ld_q, dims.n_heads);
        zero(dk, ld_k, dims.n_kv_heads);
        zero(dv, ld_v, dims.n_kv_heads);
    };
    if constexpr (std::is_same_v<T, uint16_t>) {
        if (use_tensor_cores<T>(dims.head_dim)) {
            a.vec = a.vec && aligned16(dout);
            check_tc_positions<T>(kernel, a);
            const int64_t rows = dims.batch * dims.seqlen * dims.n_heads;
            KeptScratch<T> delta(Kept::Delta, static_cast<size_t>(rows), s, "attention_backward_delta");
            a.delta = delta.get();
            const bool vec_delta =
                aligned16(dout) && aligned16(out) && dims.head_dim % 8 == 0 && 32 % (dims.head_dim / 8) == 0;
            attention_delta_kernel<<<grid_size<T>(rows * 32, "attention_backward_delta"), kThreads, 0, s>>>(
                a, delta.get(), vec_delta);
            check_launch<T>("attention_backward_delta");
#ifdef MSLM_HAVE_SM90A
            if (const char* env = std::getenv("MSLM_ATTN_WGMMA");
                // dk, dv take bf16 pairs (4-byte stores), dq rows of 8 (16-byte ones).
                !(env && std::string_view(env) == "0") && aligned16(dout) && (!dq || aligned16(dq)) &&
                (!dk || (reinterpret_cast<uintptr_t>(dk) % 4 == 0 && ld_k % 2 == 0)) &&
                (!dv || (reinterpret_cast<uintptr_t>(dv) % 4 == 0 && ld_v % 2 == 0)) &&
                attention_backward_wgmma_takes(dims.head_dim, opt.alibi, opt.scale, opt.q_offset, opt.window,
                                               q, ld_q, k, ld_k, v, ld_v)) {
                KeptScratch<T> acc(
                    Kept::DqAccumulator,
                    attention_backward_wgmma_scratch(dims.batch, dims.seqlen, dims.n_heads, dims.head_dim), s,
                    "attention_backward_wgmma");
                attention_backward_wgmma(dq, dk, dv, dout, lse, delta.get(), q, ld_q, k, ld_k, v, ld_v,
                                         dims.batch, dims.seqlen, dims.n_heads, dims.n_kv_heads,
                                         dims.head_dim, opt.scale, opt.accumulate, acc.get(), stream);
                return;
            }
#endif
            clear();
            // Tiles: 64 keys (dK/dV) or 64 queries (dQ) per block; the streamed side is 64 rows for
            // head dim 64 and 32 for 128, which keeps the fp32 accumulators and both score tiles of
            // a warp within the register file.
            with_tc_head_dim(dims.head_dim, [&](auto dh) {
                constexpr int DH = decltype(dh)::value, BN = 64, BS = DH == 64 ? 64 : 32;
                auto go = [&](auto alibi_c) {
                    constexpr bool kAlibi = decltype(alibi_c)::value;
                    if (dk || dv) {
                        const dim3 grid(static_cast<unsigned>(dims.n_kv_heads),
                                        static_cast<unsigned>((dims.seqlen + BN - 1) / BN),
                                        static_cast<unsigned>(dims.batch));
                        launch_tiles<T>("attention_backward_dkdv_tc",
                                        attention_backward_dkdv_tc_kernel<DH, BN, BS, kAlibi>, grid,
                                        backward_dkdv_tc_smem<DH, BN, BS>(), s, a);
                    }
                    if (dq) {
                        const dim3 grid(static_cast<unsigned>(dims.n_heads),
                                        static_cast<unsigned>((dims.seqlen + BN - 1) / BN),
                                        static_cast<unsigned>(dims.batch));
                        launch_tiles<T>("attention_backward_dq_tc",
                                        attention_backward_dq_tc_kernel<DH, BN, BS, kAlibi>, grid,
                                        backward_dq_tc_smem<DH, BN, BS>(), s, a);
                    }
                };
                if (opt.alibi)
                    go(std::true_type{});
                else
                    go(std::false_type{});
            });
            return;
        }
    }
    clear();
    with_padded_head_dim(dims.head_dim, [&](auto dp) {
        constexpr int DP = decltype(dp)::value;
        if (dk || dv) {
            const dim3 grid(static_cast<unsigned>((dims.seqlen + kBwdK - 1) / kBwdK),
                            static_cast<unsigned>(dims.n_kv_heads), static_cast<unsigned>(dims.batch));
            launch_tiles<T>("attention_backward_dkdv", attention_backward_dkdv_kernel<DP, D>, grid,
                            backward_dkdv_smem<DP>(), s, a);
        }
        if (dq) {
            const dim3 grid(static_cast<unsigned>((dims.seqlen + kBwdQ - 1) / kBwdQ),
                            static_cast<unsigned>(dims.n_heads), static_cast<unsigned>(dims.batch));
            launch_tiles<T>("attention_backward_dq", attention_backward_dq_kernel<DP, D>, grid,
                            backward_dq_smem<DP>(), s, a);
        }
    });
}

template <typename T>
void attention_decode(T* out, const T* q, int64_t ld_q, const T* k_cache, const T* v_cache,
                      const int64_t* slots, const int64_t* pos, const AttentionDims& dims,
                      const AttentionOptions& opt, void* stream) {
    const char* kernel = "attention_decode";
    const int64_t ld_kv = dims.n_kv_heads * dims.head_dim;
    check_attention<T>(kernel, dims, ld_q, ld_kv, ld_kv, opt);
    MSLM_CHECK(dims.seqlen > 0, "CUDA kernel {}<{}>: empty cache", kernel, dtype_label<T>());
    MSLM_CHECK(dims.batch <= 65535, "CUDA kernel {}<{}>: {} queries above 65535", kernel, dtype_label<T>(),
               dims.batch);
    if (dims.batch == 0) return;
    using D = device_t<T>;
    auto s = static_cast<cudaStream_t>(stream);
    const dim3 grid(static_cast<unsigned>(dims.n_heads), static_cast<unsigned>(dims.batch));
    with_padded_head_dim(dims.head_dim, [&](auto dp) {
        constexpr int DP = decltype(dp)::value;
        attention_decode_kernel<DP, D><<<grid, kTileThreads, 0, s>>>(
            reinterpret_cast<D*>(out), reinterpret_cast<const D*>(q), ld_q,
            reinterpret_cast<const D*>(k_cache), reinterpret_cast<const D*>(v_cache), slots, pos, dims.seqlen,
            static_cast<int>(dims.n_heads), static_cast<int>(dims.n_kv_heads),
            static_cast<int>(dims.head_dim), opt.scale, opt.window, opt.alibi);
    });
    check_launch<T>(kernel);
}

template <typename T>
void rope_apply(T* x, int64_t ld, int64_t B, int64_t Tn, int64_t H, int64_t Dh, int64_t rotary_dim,
                double theta, int64_t pos0, bool inverse, void* stream) {
    const char* kernel = "rope_apply";
    MSLM_CHECK(B >= 0 && Tn >= 0, "CUDA kernel {}<{}>: negative shape (B={}, T={})", kernel, dtype_label<T>(),
               B, Tn);
    check_rope<T>(kernel, ld, B * Tn, H, Dh, rotary_dim);
    launch_rope(kernel, x, ld, B * Tn, Tn, H, Dh, rotary_dim, theta, pos0, nullptr, inverse, stream);
}

template <typename T>
void rope_apply_at(T* x, int64_t ld, int64_t N, int64_t H, int64_t Dh, int64_t rotary_dim, double theta,
                   const int64_t* pos, bool inverse, void* stream) {
    const char* kernel = "rope_apply_at";
    check_rope<T>(kernel, ld, N, H, Dh, rotary_dim);
    launch_rope(kernel, x, ld, N, 1, H, Dh, rotary_dim, theta, 0, pos, inverse, stream);
}

#define MSLM_INSTANTIATE(T)                                                                                  \
    template void attention_forward<T>(T*, float*, const T*, int64_t, const T*, int64_t, const T*, int64_t,  \
                                       const AttentionDims&, const AttentionOptions&, void*);                \
    template void attention_backward<T>(T*, T*, T*, const T*, const T*, const float*, const T*, int64_t,     \
                                        const T*, int64_t, const T*, int64_t, const AttentionDims&,          \
                                        const AttentionOptions&, void*);                                     \
    template void attention_decode<T>(T*, const T*, int64_t, const T*, const T*, const int64_t*,             \
                                      const int64_t*, const AttentionDims&, const AttentionOptions&, void*); \
    template void rope_apply<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double, int64_t,   \
                                bool, void*);                                                                \
    template void rope_apply_at<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, double, const int64_t*,  \
                                   bool, void*);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
