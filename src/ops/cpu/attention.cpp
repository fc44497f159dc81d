// CPU reference for causal attention (flash-attention tiling with an online softmax), ALiBi
// slopes and rotary position embeddings.
//
// Keys are taken in tiles of kKeyTile rows and queries in tiles of query_tile(Dh) rows. Each tile
// product (scores q·kᵀ, p·v and the backward's four) is one small GEMM read straight from the
// strided q/k/v rows; the softmax, masks and ALiBi are row loops over a score tile of at most
// 64 × 64, so no T × T matrix is ever formed. Every task owns the rows it writes and accumulates
// them in a fixed order, so apart from summation inside OpenBLAS the results do not depend on the
// thread count.
#include "ops/attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "core/thread_pool.h"
#include "ops/cpu/vec_array.h"

namespace mslm::ops {
namespace {

constexpr int64_t kKeyTile = 64;
constexpr int64_t kMaxQueryTile = 64;

// OpenBLAS runs a GEMM on its own threads once M·N·K exceeds 65536 · GEMM_MULTITHREAD_THRESHOLD
// (4 unless built otherwise). Called from inside our pool that oversubscribes every core: with
// Dh = 128 on two cores it was measured 10–20× slower than single-threaded tiles. Every tile
// product here is (query rows) × kKeyTile × Dh, so the query tile keeps that at or below 2^18.
int64_t query_tile(int64_t head_dim) {
    return std::clamp<int64_t>((int64_t(1) << 18) / (kKeyTile * head_dim), 1, kMaxQueryTile);
}

// First key visible to query i; the last is i itself.
int64_t first_visible(int64_t i, int64_t window) {
    return window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
}

template <typename T>
void check_attention(const AttentionDims& d, int64_t ld_q, int64_t ld_k, int64_t ld_v,
                     const AttentionOptions<T>& opt) {
    MSLM_CHECK(d.batch >= 0 && d.seqlen >= 0 && d.head_dim > 0 && d.n_heads > 0 && d.n_kv_heads > 0,
               "attention: bad dims (B={}, T={}, Hq={}, Hkv={}, Dh={})", d.batch, d.seqlen, d.n_heads,
               d.n_kv_heads, d.head_dim);
    MSLM_CHECK(d.n_heads % d.n_kv_heads == 0, "attention: {} query heads are not a multiple of {} kv heads",
               d.n_heads, d.n_kv_heads);
    MSLM_CHECK(ld_q >= d.n_heads * d.head_dim && ld_k >= d.n_kv_heads * d.head_dim &&
                   ld_v >= d.n_kv_heads * d.head_dim,
               "attention: row strides (q {}, k {}, v {}) are shorter than a row", ld_q, ld_k, ld_v);
    MSLM_CHECK(std::max({ld_q, ld_k, ld_v, d.n_heads * d.head_dim}) <= INT_MAX,
               "attention: row strides (q {}, k {}, v {}) exceed the GEMM's int range", ld_q, ld_k, ld_v);
    MSLM_CHECK(opt.window >= 0, "attention: window {} is negative", opt.window);
    MSLM_CHECK(opt.q_offset >= 0, "attention: q_offset {} is negative", opt.q_offset);
}

// Slope of each query head, zero without ALiBi.
template <typename T>
std::vector<T> head_slopes(int64_t n_heads, bool alibi) {
    std::vector<T> slopes(static_cast<size_t>(n_heads), T(0));
    if (alibi) {
        std::vector<double> s = alibi_slopes(n_heads);
        std::transform(s.begin(), s.end(), slopes.begin(), [](double x) { return static_cast<T>(x); });
    }
    return slopes;
}

// Keys of the tile [j0, j0 + n) that query i sees, as [jb, je) relative to j0; empty when jb ≥ je.
struct RowRange {
    int64_t jb, je;
};
RowRange visible_in_tile(int64_t i, int64_t j0, int64_t n, int64_t window) {
    return {std::max(j0, first_visible(i, window)) - j0, std::min(j0 + n, i + 1) - j0};
}

// The largest of x[0, n), n ≥ 1, and the sum of x[0, n) in kLanes interleaved partial sums added
// in a fixed order: plain loops the compiler vectorises (a single running max or sum is a chain
// of dependent operations, which with the scalar exp was most of the forward at head_dim 16).
// max is exact, so its grouping cannot change the result.
constexpr int kLanes = 16;

template <typename T>
T max_of(const T* x, int64_t n) {
    T part[kLanes];
    std::fill(part, part + kLanes, x[0]);
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
        for (int l = 0; l < kLanes; ++l) part[l] = std::max(part[l], x[j + l]);
    for (; j < n; ++j) part[0] = std::max(part[0], x[j]);
    return *std::max_element(part, part + kLanes);
}

template <typename T>
T sum_of(const T* x, int64_t n) {
    T part[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
        for (int l = 0; l < kLanes; ++l) part[l] += x[j + l];
    for (; j < n; ++j) part[0] += x[j];
    T sum = 0;
    for (T v : part) sum += v;
    return sum;
}

int to_int(int64_t x) {
    return static_cast<int>(x);
}

}  // namespace

std::vector<double> alibi_slopes(int64_t n_heads) {
    MSLM_CHECK(n_heads >= 0, "alibi_slopes: {} heads", n_heads);
    std::vector<double> slopes;
    if (n_heads == 0) return slopes;
    int64_t m = 1;
    while (m * 2 <= n_heads) m *= 2;
    for (int64_t i = 0; i < m; ++i) slopes.push_back(std::exp2(-8.0 * static_cast<double>(i + 1) / m));
    // Beyond the power of two: every other slope of the 2m-head sequence, starting with the first.
    for (int64_t i = 0; m + i < n_heads; ++i)
        slopes.push_back(std::exp2(-8.0 * static_cast<double>(2 * i + 1) / (2 * m)));
    return slopes;
}

template <typename T>
void attention_forward(T* out, T* lse, const T* q, int64_t ld_q, const T* k, int64_t ld_k, const T* v,
                       int64_t ld_v, const AttentionDims& dims, const AttentionOptions<T>& opt) {
    check_attention(dims, ld_q, ld_k, ld_v, opt);
    const int64_t B = dims.batch, Tn = dims.seqlen, Hq = dims.n_heads, Dh = dims.head_dim;
    const int64_t group = Hq / dims.n_kv_heads;
    const int64_t off = opt.q_offset, Tk = off + Tn;  // query row r is key position off + r
    const int64_t tq = query_tile(Dh);
    const int64_t n_blocks = (Tn + tq - 1) / tq;
    const std::vector<T> slopes = head_slopes<T>(Hq, opt.alibi);
    const T neg_inf = -std::numeric_limits<T>::infinity();

    parallel_for(B * Hq * n_blocks, [&](int64_t begin, int64_t end) {
        std::vector<T> p(static_cast<size_t>(tq * kKeyTile));  // (bq, n) scores, then weights
        std::vector<T> acc(static_cast<size_t>(tq * Dh));      // (bq, Dh) unnormalised outputs
        std::vector<T> row_max(static_cast<size_t>(tq)), row_sum(static_cast<size_t>(tq));
        for (int64_t task = begin; task < end; ++task) {
            const int64_t qb = task % n_blocks, h = (task / n_blocks) % Hq, b = task / (n_blocks * Hq);
            const int64_t i0 = qb * tq, bq = std::min(tq, Tn - i0);
            const T* q_blk = q + (b * Tn + i0) * ld_q + h * Dh;  // (bq, Dh) with row stride ld_q
            const T* kh = k + b * Tk * ld_k + (h / group) * Dh;  // (Tk, Dh) with row stride ld_k
            const T* vh = v + b * Tk * ld_v + (h / group) * Dh;
            std::fill(acc.begin(), acc.end(), T(0));
            std::fill(row_max.begin(), row_max.end(), neg_inf);
            std::fill(row_sum.begin(), row_sum.end(), T(0));

            // Key tiles from the one holding the block's first visible key to the diagonal tile.
            for (int64_t j0 = first_visible(off + i0, opt.window) / kKeyTile * kKeyTile; j0 < off + i0 + bq;
                 j0 += kKeyTile) {
                const int64_t n = std::min(kKeyTile, Tk - j0);
                // p (bq, n) = scale · q_blk · k_tileᵀ
                gemm(false, true, to_int(bq), to_int(n), to_int(Dh), opt.scale, q_blk, to_int(ld_q),
                     kh + j0 * ld_k, to_int(ld_k), T(0), p.data(), to_int(n));
                for (int64_t r = 0; r < bq; ++r) {
                    const int64_t i = off + i0 + r;
                    const auto [jb, je] = visible_in_tile(i, j0, n, opt.window);
                    T* pr = p.data() + r * n;
                    if (jb >= je) {  // nothing of this tile is visible: weight 0, the row's state stays
                        std::fill(pr, pr + n, T(0));
                        continue;
                    }
                    if (slopes[h] != T(0))
                        for (int64_t j = jb; j < je; ++j) pr[j] -= slopes[h] * static_cast<T>(i - j0 - j);
                    const T m_old = row_max[r];
                    const T m_new = std::max(m_old, max_of(pr + jb, je - jb));
                    // exp(−inf) = 0 on a row's first visible tile, where acc and the sum are still 0.
                    const T alpha = std::exp(m_old - m_new);
                    T* a = acc.data() + r * Dh;
                    for (int64_t d = 0; d < Dh; ++d) a[d] *= alpha;
                    std::fill(pr, pr + jb, T(0));
                    for (int64_t j = jb; j < je; ++j) pr[j] -= m_new;
                    if constexpr (std::is_same_v<T, float>)  // within 1 ulp of std::exp
                        vec_array::exp_nonpositive(pr + jb, pr + jb, je - jb);
                    else
                        for (int64_t j = jb; j < je; ++j) pr[j] = std::exp(pr[j]);
                    const T sum = sum_of(pr + jb, je - jb);
                    std::fill(pr + je, pr + n, T(0));
                    row_sum[r] = row_sum[r] * alpha + sum;
                    row_max[r] = m_new;
                }
                // acc (bq, Dh) += p (bq, n) · v_tile (n, Dh)
                gemm(false, false, to_int(bq), to_int(Dh), to_int(n), T(1), p.data(), to_int(n),
                     vh + j0 * ld_v, to_int(ld_v), T(1), acc.data(), to_int(Dh));
            }
            // Every row sees at least itself, so its sum is ≥ 1 and its max finite.
            for (int64_t r = 0; r < bq; ++r) {
                const T inv = T(1) / row_sum[r];
                const T* a = acc.data() + r * Dh;
                T* o = out + ((b * Tn + i0 + r) * Hq + h) * Dh;
                for (int64_t d = 0; d < Dh; ++d) o[d] = a[d] * inv;
                lse[(b * Hq + h) * Tn + i0 + r] = row_max[r] + std::log(row_sum[r]);
            }
        }
    });
}

// One task per (batch, kv head): it owns dk and dv of that head and dq of every query head in its
// group, so the GQA reduction into dk/dv needs no atomics and always runs in the same order.
// For each key tile it walks the query blocks that can see the tile, recomputing
//   p_ij = exp(s_ij − lse_i),  dp_ij = dout_i · v_j,  ds_ij = p_ij (dp_ij − D_i),  D_i = dout_i · out_i
// and accumulates dv_j += Σ_i p_ij dout_i, dk_j += scale Σ_i ds_ij q_i, dq_i += scale Σ_j ds_ij k_j.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q,
                        int64_t ld_q, const T* k, int64_t ld_k, const T* v, int64_t ld_v,
                        const AttentionDims& dims, const AttentionOptions<T>& opt) {
    check_attention(dims, ld_q, ld_k, ld_v, opt);
    MSLM_CHECK(opt.q_offset == 0, "attention_backward: q_offset {} (a prefix of keys) is forward-only",
               opt.q_offset);
    const int64_t B = dims.batch, Tn = dims.seqlen, Hq = dims.n_heads, Hkv = dims.n_kv_heads,
                  Dh = dims.head_dim;
    const int64_t group = Hq / Hkv, ld_o = Hq * Dh;
    const std::vector<T> slopes = head_slopes<T>(Hq, opt.alibi);
    const int64_t tq = query_tile(Dh);
    if (!opt.accumulate) {  // the slices written: zeroed, then accumulated into as below
        const auto zero = [&](T* p, int64_t ld, int64_t heads) {
            if (p)
                for (int64_t r = 0; r < B * Tn; ++r) std::fill_n(p + r * ld, heads * Dh, T(0));
        };
        zero(dq, ld_q, Hq);
        zero(dk, ld_k, Hkv);
        zero(dv, ld_v, Hkv);
    }

    parallel_for(B * Hkv, [&](int64_t begin, int64_t end) {
        const size_t score_tile = static_cast<size_t>(tq * kKeyTile),
                     kv_tile = static_cast<size_t>(kKeyTile * Dh);
        std::vector<T> p(score_tile), ds(score_tile);           // (bq, n)
        std::vector<T> dk_tile(kv_tile), dv_tile(kv_tile);      // (n, Dh)
        std::vector<T> delta(static_cast<size_t>(group * Tn));  // (group, T): D_i per query head
        for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / Hkv, hk = task % Hkv;
            for (int64_t g = 0; g < group; ++g) {
                for (int64_t i = 0; i < Tn; ++i) {
                    const int64_t row = ((b * Tn + i) * Hq + hk * group + g) * Dh;
                    T sum = 0;
                    for (int64_t d = 0; d < Dh; ++d) sum += dout[row + d] * out[row + d];
                    delta[g * Tn + i] = sum;
                }
            }

            for (int64_t j0 = 0; j0 < Tn; j0 += kKeyTile) {
                const int64_t n = std::min(kKeyTile, Tn - j0);
                const T* k_tile = k + (b * Tn + j0) * ld_k + hk * Dh;  // (n, Dh) with row stride ld_k
                const T* v_tile = v + (b * Tn + j0) * ld_v + hk * Dh;
                std::fill(dk_tile.begin(), dk_tile.end(), T(0));
                std::fill(dv_tile.begin(), dv_tile.end(), T(0));
                // Queries that see some key of the tile: from its first key to its last key + window − 1.
                const int64_t i_end = opt.window > 0 ? std::min(Tn, j0 + n - 1 + opt.window) : Tn;
                for (int64_t g = 0; g < group; ++g) {
                    const int64_t h = hk * group + g;
                    for (int64_t i0 = j0; i0 < i_end; i0 += tq) {
                        const int64_t bq = std::min(tq, i_end - i0);
                        const T* q_blk = q + (b * Tn + i0) * ld_q + h * Dh;      // (bq, Dh), row stride ld_q
                        const T* do_blk = dout + ((b * Tn + i0) * Hq + h) * Dh;  // (bq, Dh), row stride Hq·Dh
                        // p (bq, n) = scale · q_blk · k_tileᵀ; ds (bq, n) = do_blk · v_tileᵀ
                        gemm(false, true, to_int(bq), to_int(n), to_int(Dh), opt.scale, q_blk, to_int(ld_q),
                             k_tile, to_int(ld_k), T(0), p.data(), to_int(n));
                        gemm(false, true, to_int(bq), to_int(n), to_int(Dh), T(1), do_blk, to_int(ld_o),
                             v_tile, to_int(ld_v), T(0), ds.data(), to_int(n));
                        for (int64_t r = 0; r < bq; ++r) {
                            const int64_t i = i0 + r;
                            const auto [jb, je] = visible_in_tile(i, j0, n, opt.window);  // jb < je here
                            const T lse_i = lse[(b * Hq + h) * Tn + i], delta_i = delta[g * Tn + i];
                            T* pr = p.data() + r * n;
                            T* dsr = ds.data() + r * n;
                            std::fill(pr, pr + jb, T(0));
                            std::fill(dsr, dsr + jb, T(0));
                            for (int64_t j = jb; j < je; ++j) {
                                pr[j] = std::exp(pr[j] - slopes[h] * static_cast<T>(i - j0 - j) - lse_i);
                                dsr[j] = pr[j] * (dsr[j] - delta_i);
                            }
                            std::fill(pr + je, pr + n, T(0));
                            std::fill(dsr + je, dsr + n, T(0));
                        }
                        // dv_tile += pᵀ · do_blk;  dk_tile += dsᵀ · q_blk;  dq_blk += scale · ds · k_tile
                        if (dv)
                            gemm(true, false, to_int(n), to_int(Dh), to_int(bq), T(1), p.data(), to_int(n),
                                 do_blk, to_int(ld_o), T(1), dv_tile.data(), to_int(Dh));
                        if (dk)
                            gemm(true, false, to_int(n), to_int(Dh), to_int(bq), T(1), ds.data(), to_int(n),
                                 q_blk, to_int(ld_q), T(1), dk_tile.data(), to_int(Dh));
                        if (dq)
                            gemm(false, false, to_int(bq), to_int(Dh), to_int(n), opt.scale, ds.data(),
                                 to_int(n), k_tile, to_int(ld_k), T(1), dq + (b * Tn + i0) * ld_q + h * Dh,
                                 to_int(ld_q));
                    }
                }
                for (int64_t j = 0; j < n; ++j) {
                    const int64_t row = b * Tn + j0 + j;
                    if (dk)
                        for (int64_t d = 0; d < Dh; ++d)
                            dk[row * ld_k + hk * Dh + d] += opt.scale * dk_tile[j * Dh + d];
                    if (dv)
                        for (int64_t d = 0; d < Dh; ++d) dv[row * ld_v + hk * Dh + d] += dv_tile[j * Dh + d];
                }
            }
        }
    });
}

// The decode kernel walks the visible keys of each (query, kv head) twice: scores for every query
// head of the group (each cached key read once for the group), then the softmax-weighted sum of
// the values. Exact two-pass softmax: the workspace holds a whole row, so no online rescaling.
template <typename T>
void attention_decode(T* out, T* scores, const T* q, int64_t ld_q, const T* k_cache, const T* v_cache,
                      const int64_t* slots, const int64_t* pos, const AttentionDims& dims,
                      const AttentionOptions<T>& opt) {
    check_attention(dims, ld_q, dims.n_kv_heads * dims.head_dim, dims.n_kv_heads * dims.head_dim, opt);
    const int64_t k = dims.batch, L = dims.seqlen, Hq = dims.n_heads, Hkv = dims.n_kv_heads,
                  Dh = dims.head_dim;
    const int64_t group = Hq / Hkv, ld_kv = Hkv * Dh;
    MSLM_CHECK(L > 0, "attention_decode: empty cache");
    const std::vector<T> slopes = head_slopes<T>(Hq, opt.alibi);
    parallel_for(k * Hkv, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
            const int64_t i = task / Hkv, hk = task % Hkv, p = pos[i];
            const int64_t first = std::max<int64_t>(first_visible(p, opt.window), p - L + 1);
            const int64_t n = p - first + 1;
            const T* kc = k_cache + slots[i] * L * ld_kv + hk * Dh;  // (L, Dh) with row stride ld_kv
            const T* vc = v_cache + slots[i] * L * ld_kv + hk * Dh;
            const T* qg = q + i * ld_q + hk * group * Dh;  // (group, Dh)
            T* sg = scores + (i * Hq + hk * group) * L;    // (group, L): column j is position first + j
            for (int64_t j = 0; j < n; ++j) {
                const T* kr = kc + (first + j) % L * ld_kv;
                for (int64_t g = 0; g < group; ++g) {
                    const T* qh = qg + g * Dh;
                    T dot = 0;
                    for (int64_t d = 0; d < Dh; ++d) dot += qh[d] * kr[d];
                    sg[g * L + j] = opt.scale * dot - slopes[hk * group + g] * static_cast<T>(n - 1 - j);
                }
            }
            for (int64_t g = 0; g < group; ++g) {
                T* sr = sg + g * L;
                const T m = *std::max_element(sr, sr + n);
                T sum = 0;
                for (int64_t j = 0; j < n; ++j) {
                    sr[j] = std::exp(sr[j] - m);
                    sum += sr[j];
                }
                const T inv = T(1) / sum;
                for (int64_t j = 0; j < n; ++j) sr[j] *= inv;
                std::fill_n(out + (i * Hq + hk * group + g) * Dh, Dh, T(0));
            }
            for (int64_t j = 0; j < n; ++j) {
                const T* vr = vc + (first + j) % L * ld_kv;
                for (int64_t g = 0; g < group; ++g) {
                    const T w = sg[g * L + j];
                    T* o = out + (i * Hq + hk * group + g) * Dh;
                    for (int64_t d = 0; d < Dh; ++d) o[d] += w * vr[d];
                }
            }
        }
    });
}

namespace {

// Rotates rows [0, N) of x in place; row r sits at position pos_of(r).
template <typename T, typename PosOf>
void rope_rows(T* x, int64_t ld, int64_t N, int64_t H, int64_t Dh, int64_t rotary_dim, double theta,
               bool inverse, PosOf&& pos_of) {
    MSLM_CHECK(rotary_dim >= 0 && rotary_dim % 2 == 0 && rotary_dim <= Dh,
               "rope: rotary_dim {} must be even and at most head_dim {}", rotary_dim, Dh);
    MSLM_CHECK(ld >= H * Dh, "rope: row stride {} is shorter than a row of {} heads × {}", ld, H, Dh);
    const int64_t half = rotary_dim / 2;
    if (half == 0) return;
    constexpr int64_t kMaxHalf = 512;  // head_dim ≤ 1024: stack buffers, no allocation per call
    MSLM_CHECK(half <= kMaxHalf, "rope: rotary_dim {} above {}", rotary_dim, 2 * kMaxHalf);
    double inv_freq[kMaxHalf];
    for (int64_t i = 0; i < half; ++i)
        inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
    const double sign = inverse ? -1.0 : 1.0;

    // Angles reach pos radians (inv_freq_0 = 1); in double their rounding stays far below fp32
    // resolution even at positions of 10^5.
    parallel_for(
        N,
        [&](int64_t begin, int64_t end) {
            T c[kMaxHalf], sn[kMaxHalf];
            for (int64_t row = begin; row < end; ++row) {
                const double pos = static_cast<double>(pos_of(row));
                for (int64_t i = 0; i < half; ++i) {
                    const double angle = pos * inv_freq[i];
                    c[i] = static_cast<T>(std::cos(angle));
                    sn[i] = static_cast<T>(sign * std::sin(angle));
                }
                for (int64_t h = 0; h < H; ++h) {
                    T* xh = x + row * ld + h * Dh;
                    for (int64_t i = 0; i < half; ++i) {
                        const T x0 = xh[i], x1 = xh[i + half];
                        xh[i] = x0 * c[i] - x1 * sn[i];
                        xh[i + half] = x1 * c[i] + x0 * sn[i];
                    }
                }
            }
        },
        16);
}

}  // namespace

template <typename T>
void rope_apply(T* x, int64_t ld, int64_t B, int64_t Tn, int64_t H, int64_t Dh, int64_t rotary_dim,
                double theta, int64_t pos0, bool inverse) {
    rope_rows(x, ld, B * Tn, H, Dh, rotary_dim, theta, inverse, [&](int64_t row) { return pos0 + row % Tn; });
}

template <typename T>
void rope_apply_at(T* x, int64_t ld, int64_t N, int64_t H, int64_t Dh, int64_t rotary_dim, double theta,
                   const int64_t* pos, bool inverse) {
    rope_rows(x, ld, N, H, Dh, rotary_dim, theta, inverse, [&](int64_t row) { return pos[row]; });
}

#define MSLM_INSTANTIATE(T)                                                                                 \
    template void attention_forward<T>(T*, T*, const T*, int64_t, const T*, int64_t, const T*, int64_t,     \
                                       const AttentionDims&, const AttentionOptions<T>&);                   \
    template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, int64_t,        \
                                        const T*, int64_t, const T*, int64_t, const AttentionDims&,         \
                                        const AttentionOptions<T>&);                                        \
    template void attention_decode<T>(T*, T*, const T*, int64_t, const T*, const T*, const int64_t*,        \
                                      const int64_t*, const AttentionDims&, const AttentionOptions<T>&);    \
    template void rope_apply<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double, int64_t,  \
                                bool);                                                                      \
    template void rope_apply_at<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, double, const int64_t*, \
                                   bool);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(double)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops
