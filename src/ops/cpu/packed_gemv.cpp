// The decoding kernels behind ops::packed_linear_forward: y (M, out) = x (M, in) · Wᵀ + b for
// M < kPackedGemmMinRows. Batch-1 decoding is a stream of the weights, so the kernels are built
// around reading each weight row once per call: a block of R rows is loaded, used against all M
// rows of x (which stay in L1), and the rows two blocks ahead are prefetched (as in core/gemm.cpp's
// few_rows: without the prefetch a GEMV is latency-bound at about half the read bandwidth).
// Each call first copies x into scratch rows padded with zeros to ld, so the loops over k run
// without tails: the weights are zero there too.
//
//   BF16  weights widened to fp32 by interleaving them with zeros (see widen_order_*), multiplied
//         with fp32 FMAs into one vector accumulator per (row of x, row of W), the lanes of four
//         accumulators summed together at the end.
//   INT8  each row of x quantized once per call, bit-identical to detail::quantize_rows_int8; then
//         exact int32 dot products. AVX-512 VNNI's vpdpbusd multiplies u8 by s8, so x is stored as
//         q + 128 and 128 · row_sum[n] is subtracted afterwards. AVX2 has no such instruction:
//         vpmaddubsw(|q|, sign(w, q)) forms the products q·w as u8 × s8 pairs (at most
//         2 · 127 · 127 = 32258, so the int16 pair sums never saturate) and vpmaddwd with ones
//         widens them to int32.
//
// Paths: AVX-512 (F/BW/VL; int8 also VNNI), AVX2 + FMA, and scalar (the reference). Each vector
// kernel carries its own target attribute and is picked at run time, so a baseline x86-64 build
// (MSLM_NATIVE=OFF) still has them; per-file -m flags would let the compiler emit AVX-512 copies of
// inline std:: functions that the linker may then pick for the whole program.
// MSLM_PACKED_KERNEL=scalar|avx2|avx512 (read once) forces a path.
//
// Threading: the output rows are split over parallel_for in whole blocks. An output element is one
// accumulator's sum over k in a fixed order, and its lanes are summed the same way whichever slot of
// a block holds it, so results depend neither on the thread count nor on the number of rows of x
// (a sequence decodes to the same bits alone or in a batch, on a given path).

// GCC 12's AVX-512 headers initialise their "undefined" vectors from themselves, which
// -W(maybe-)uninitialized reports wherever such an intrinsic is inlined (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/packed_kernels.h"

namespace mslm::ops::detail {

namespace {

constexpr int kMaxRows = static_cast<int>(kPackedGemmMinRows) - 1;  // rows of x a GEMV takes

// A parallel task streams at least this many weight bytes (about 3 µs at 20 GB/s): smaller products
// run inline on the caller, where waking the pool would cost more than it saves.
constexpr int64_t kMinTaskBytes = 64 << 10;

// vpdpbusd sums (q + 128) · w into int32 lanes: no partial sum exceeds in · 255 · 127 in magnitude,
// which fits an int32 up to this many columns (far above any model's hidden size).
constexpr int64_t kMaxInt8In = INT32_MAX / (255 * 127);

using Path = PackedPath;
constexpr Path kPaths[] = {Path::Scalar, Path::Avx2, Path::Avx512};

const char* path_name(Path p) {
    switch (p) {
        case Path::Scalar:
            return "scalar";
        case Path::Avx2:
            return "avx2";
        case Path::Avx512:
            return "avx512";
    }
    return "?";
}

bool cpu_supports(Path p) {
    switch (p) {
        case Path::Scalar:
            return true;
        case Path::Avx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case Path::Avx512:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl");
    }
    return false;
}

Path parse_path(const std::string& name, const char* source) {
    for (Path p : kPaths) {
        if (name != path_name(p)) continue;
        MSLM_CHECK(cpu_supports(p), "{}={}: this CPU lacks {}", source, name,
                   p == Path::Avx2 ? "AVX2 / FMA" : "AVX-512 (F, BW, VL)");
        return p;
    }
    fail("{}={}: expected scalar, avx2 or avx512", source, name);
}

// MSLM_PACKED_KERNEL when set, else the widest path the CPU has; read once.
Path configured_path() {
    static const Path path = [] {
        const char* env = std::getenv("MSLM_PACKED_KERNEL");
        if (env != nullptr && *env != '\0') return parse_path(env, "MSLM_PACKED_KERNEL");
        return cpu_supports(Path::Avx512) ? Path::Avx512
               : cpu_supports(Path::Avx2) ? Path::Avx2
                                          : Path::Scalar;
    }();
    return path;
}

std::atomic<int> g_forced{-1};  // force_packed_gemv_kernel's choice; -1: configured_path()

Path bf16_path() {
    const int forced = g_forced.load(std::memory_order_relaxed);
    return forced >= 0 ? static_cast<Path>(forced) : configured_path();
}

// The int8 kernel on AVX-512 needs VNNI as well; without it (Skylake-X) int8 runs on AVX2.
Path int8_path() {
    const Path p = bf16_path();
    return p == Path::Avx512 && !__builtin_cpu_supports("avx512vnni") ? Path::Avx2 : p;
}

// One product as the kernels see it. Both formats read x from scratch rows ld apart that the call
// prepares once: bf16 x_f32, fp32 in widening order (widen_order_*); int8 x_q, the quantized rows
// (as q + 128 on AVX-512), and on AVX2 x_abs, their absolute values.
struct Operands {
    float* y;
    const float* b;
    int64_t M, out, ld, out_padded;
    int64_t k_end;  // columns the kernel runs over: in rounded up to its step, within ld
    const uint16_t* w_bf16;
    const int8_t* w_int8;
    const float* w_scale;
    const int32_t* row_sum;
    const float* x_f32;
    const uint8_t* x_q;
    const uint8_t* x_abs;
    const float* x_scale;
};

// First row to prefetch for the block at row n: two blocks ahead, or the block's own rows at the end.
inline int64_t prefetch_row(const Operands& o, int64_t n, int R) {
    return n + 3 * R <= o.out_padded ? n + 2 * R : n;
}

// Rows [n, n + R) of y (those below out) from a bf16 block's sums (M, R).
inline void store_bf16(const Operands& o, int64_t n, int R, const float* sums) {
    for (int64_t m = 0; m < o.M; ++m)
        for (int r = 0; r < R && n + r < o.out; ++r)
            o.y[m * o.out + n + r] = sums[m * R + r] + (o.b ? o.b[n + r] : 0.0f);
}

// The last step of an int8 product, for rows [n, n + R) of a block: y = s_w · s_x · acc + b, with
// acc (M, R) the exact dot products, rounded as the reference rounds it (dequantize_int8: the product,
// then the sum, never one FMA); so the results equal packed_linear_reference bit for bit.
inline void store_int8(const Operands& o, int64_t n, int R, const int32_t* acc) {
    for (int64_t m = 0; m < o.M; ++m)
        for (int r = 0; r < R && n + r < o.out; ++r) {
            o.y[m * o.out + n + r] =
                dequantize_int8(o.w_scale[n + r], o.x_scale[m], acc[m * R + r], o.b ? o.b[n + r] : 0.0f);
        }
}

// bf16 weights are widened by interleaving them with zeros (vpunpcklwd / vpunpckhwd: a bf16 is the
// high half of its fp32), one instruction per vector where a zero-extend and a shift take two. The
// interleave works within 128-bit lanes, so a 64-byte line of 32 weights widens to columns
//   lo: 0-3, 8-11, 16-19, 24-27   and   hi: 4-7, 12-15, 20-23, 28-31,
// and x is stored in that order, each block of 32 columns as its 16 lo columns then its 16 hi ones.
// (AVX2 widens a line as two halves of 16 weights, whose lo and hi halves are the same columns in
// the same order, so both paths share the layout.)

// ---- AVX-512 -------------------------------------------------------------------------------------

// Weight rows per block: M·R accumulators, R raw and R widened weight vectors, x and zero fit the
// 32 registers. A power of two, so that blocks tile out_padded.
constexpr int block_rows_avx512(int M) {
    return M <= 4 ? 4 : M <= 12 ? 2 : 1;
}

// The lane sums of 4 vectors: [Σa, Σb, Σc, Σd], in 14 instructions where four separate reductions
// take 32.
[[gnu::target("avx512f,avx512bw,avx512vl")]] inline __m128 sum_lanes4(__m512 a, __m512 b, __m512 c,
                                                                      __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));
    // [a, b, c, d] as four lanes each
    const __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));
    const __m512 t = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4e));
    const __m512 u = _mm512_add_ps(t, _mm512_permute_ps(t, 0xb1));
    return _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), u));
}

[[gnu::target("avx512f,avx512bw,avx512vl")]] inline __m128i sum_lanes4(__m512i a, __m512i b, __m512i c,
                                                                       __m512i d) {
    const __m512i ab = _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x44), _mm512_shuffle_i32x4(a, b, 0xee));
    const __m512i cd = _mm512_add_epi32(_mm512_shuffle_i32x4(c, d, 0x44), _mm512_shuffle_i32x4(c, d, 0xee));
    const __m512i s =
        _mm512_add_epi32(_mm512_shuffle_i32x4(ab, cd, 0x88), _mm512_shuffle_i32x4(ab, cd, 0xdd));
    const __m512i t = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_BADC));
    const __m512i u = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_CDAB));
    return _mm512_castsi512_si128(
        _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), u));
}

// sums[i] = the lane sum of acc[i] for i < N; sums holds N rounded up to 4.
template <int N, typename Vec, typename Scalar>
[[gnu::target("avx512f,avx512bw,avx512vl")]] inline void sum_lanes_avx512(const Vec* acc, Scalar* sums) {
    const Vec zero{};
#pragma GCC unroll 4
    for (int i = 0; i < N; i += 4) {
        const auto s = sum_lanes4(acc[i], i + 1 < N ? acc[i + 1] : zero, i + 2 < N ? acc[i + 2] : zero,
                                  i + 3 < N ? acc[i + 3] : zero);
        std::memcpy(sums + i, &s, sizeof(s));
    }
}

template <int M>
struct Bf16Avx512 {
    static constexpr int R = block_rows_avx512(M);

    // Rows [n, n + R) of y for the M rows of x.
    [[gnu::target("avx512f,avx512bw,avx512vl")]] static void block(const Operands& o, int64_t n) {
        const uint16_t* w = o.w_bf16 + n * o.ld;
        const uint16_t* ahead = o.w_bf16 + prefetch_row(o, n, R) * o.ld;
        const __m512i zero = _mm512_setzero_si512();
        __m512 acc[M * R];  // (m, r)
#pragma GCC unroll 64
        for (int i = 0; i < M * R; ++i) acc[i] = _mm512_setzero_ps();
        for (int64_t k = 0; k < o.k_end; k += 32) {  // one 64-byte line of each weight row
            __m512i raw[R];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                raw[r] = _mm512_load_si512(w + r * o.ld + k);
                _mm_prefetch(reinterpret_cast<const char*>(ahead + r * o.ld + k), _MM_HINT_T0);
            }
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                __m512 wv[R];
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r)
                    wv[r] = _mm512_castsi512_ps(h == 0 ? _mm512_unpacklo_epi16(zero, raw[r])
                                                       : _mm512_unpackhi_epi16(zero, raw[r]));
#pragma GCC unroll 16
                for (int m = 0; m < M; ++m) {
                    const __m512 xv = _mm512_load_ps(o.x_f32 + m * o.ld + k + 16 * h);
#pragma GCC unroll 4
                    for (int r = 0; r < R; ++r) acc[m * R + r] = _mm512_fmadd_ps(xv, wv[r], acc[m * R + r]);
                }
            }
        }
        float sums[(M * R + 3) / 4 * 4];
        sum_lanes_avx512<M * R>(acc, sums);
        store_bf16(o, n, R, sums);
    }

    [[gnu::target("avx512f,avx512bw,avx512vl")]] static void rows(const Operands& o, int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; n += R) block(o, n);
    }
};

template <int M>
struct Int8Avx512 {
    static constexpr int R = block_rows_avx512(M);

    [[gnu::target("avx512f,avx512bw,avx512vl,avx512vnni")]] static void block(const Operands& o, int64_t n) {
        const int8_t* w = o.w_int8 + n * o.ld;
        const int8_t* ahead = o.w_int8 + prefetch_row(o, n, R) * o.ld;
        __m512i acc[M * R];
#pragma GCC unroll 64
        for (int i = 0; i < M * R; ++i) acc[i] = _mm512_setzero_si512();
        for (int64_t k = 0; k < o.k_end; k += 64) {  // x_q is q + 128 up to ld, the weights zero from in
            __m512i wv[R];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                wv[r] = _mm512_load_si512(w + r * o.ld + k);
                _mm_prefetch(reinterpret_cast<const char*>(ahead + r * o.ld + k), _MM_HINT_T0);
            }
#pragma GCC unroll 16
            for (int m = 0; m < M; ++m) {
                const __m512i xv = _mm512_load_si512(o.x_q + m * o.ld + k);
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) acc[m * R + r] = _mm512_dpbusd_epi32(acc[m * R + r], xv, wv[r]);
            }
        }
        int32_t sums[(M * R + 3) / 4 * 4];
        sum_lanes_avx512<M * R>(acc, sums);
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) sums[m * R + r] -= 128 * o.row_sum[n + r];
        store_int8(o, n, R, sums);
    }

    [[gnu::target("avx512f,avx512bw,avx512vl,avx512vnni")]] static void rows(const Operands& o, int64_t n0,
                                                                             int64_t n1) {
        for (int64_t n = n0; n < n1; n += R) block(o, n);
    }
};

// Lanes [0, left) of 16 set, left >= 1.
[[gnu::target("avx512f,avx512bw,avx512vl")]] inline __mmask16 tail_mask_avx512(int64_t left) {
    return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

// x_f32 (M, ld) = x in widening order, zero from in to ld.
[[gnu::target("avx512f,avx512bw,avx512vl")]] void widen_order_avx512(float* x_f32, const float* x, int64_t M,
                                                                     int64_t in, int64_t ld) {
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    const __m512i hi = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * in;
        float* out = x_f32 + m * ld;
        for (int64_t k = 0; k < ld; k += 32) {
            const __m512 a =
                k < in ? _mm512_maskz_loadu_ps(tail_mask_avx512(in - k), xr + k) : _mm512_setzero_ps();
            const __m512 b = k + 16 < in ? _mm512_maskz_loadu_ps(tail_mask_avx512(in - k - 16), xr + k + 16)
                                         : _mm512_setzero_ps();
            _mm512_store_ps(out + k, _mm512_permutex2var_ps(a, lo, b));
            _mm512_store_ps(out + k + 16, _mm512_permutex2var_ps(a, hi, b));
        }
    }
}

// x_q (M, ld) = quantize_rows_int8(x) + 128 as bytes (0x80 in the padding), x_scale (M).
[[gnu::target("avx512f,avx512bw,avx512vl")]] void quantize_avx512(uint8_t* x_q, float* x_scale,
                                                                  const float* x, int64_t M, int64_t in,
                                                                  int64_t ld) {
    const int64_t in_vec = (in + 15) / 16 * 16;
    for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * in;
        uint8_t* qr = x_q + m * ld;
        __m512 vmax = _mm512_setzero_ps();
        for (int64_t k = 0; k < in; k += 16)
            vmax =
                _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask_avx512(in - k), xr + k)));
        const float amax = _mm512_reduce_max_ps(vmax);
        x_scale[m] = amax / 127.0f;
        if (amax == 0) {
            std::memset(qr, 0x80, static_cast<size_t>(ld));
            continue;
        }
        const __m512 inv = _mm512_set1_ps(127.0f / amax);
        for (int64_t k = 0; k < in; k += 16) {
            // Round half to even (the default MXCSR mode, as std::nearbyint), then clamp to ±127.
            const __m512 v = _mm512_maskz_loadu_ps(tail_mask_avx512(in - k), xr + k);
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
            q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
            const __m128i bytes =
                _mm_xor_si128(_mm512_cvtepi32_epi8(q), _mm_set1_epi8(static_cast<char>(0x80)));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + k), bytes);
        }
        std::memset(qr + in_vec, 0x80, static_cast<size_t>(ld - in_vec));
    }
}

// ---- AVX2 ----------------------------------------------------------------------------------------

// M·R accumulators, R weight vectors, x and zero in the 16 registers (from 7 rows of x on, the
// compiler reads x as a memory operand of the FMA).
constexpr int block_rows_avx2(int M) {
    return M <= 2 ? 4 : M <= 5 ? 2 : 1;
}

[[gnu::target("avx2,fma")]] inline __m128 sum_lanes4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

[[gnu::target("avx2,fma")]] inline __m128i sum_lanes4(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

template <int N, typename Vec, typename Scalar>
[[gnu::target("avx2,fma")]] inline void sum_lanes_avx2(const Vec* acc, Scalar* sums) {
    const Vec zero{};
#pragma GCC unroll 4
    for (int i = 0; i < N; i += 4) {
        const auto s = sum_lanes4(acc[i], i + 1 < N ? acc[i + 1] : zero, i + 2 < N ? acc[i + 2] : zero,
                                  i + 3 < N ? acc[i + 3] : zero);
        std::memcpy(sums + i, &s, sizeof(s));
    }
}

template <int M>
struct Bf16Avx2 {
    static constexpr int R = block_rows_avx2(M);

    [[gnu::target("avx2,fma")]] static void block(const Operands& o, int64_t n) {
        const uint16_t* w = o.w_bf16 + n * o.ld;
        const uint16_t* ahead = o.w_bf16 + prefetch_row(o, n, R) * o.ld;
        const __m256i zero = _mm256_setzero_si256();
        __m256 acc[M * R];
#pragma GCC unroll 64
        for (int i = 0; i < M * R; ++i) acc[i] = _mm256_setzero_ps();
        for (int64_t k = 0; k < o.k_end; k += 32) {
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r)
                _mm_prefetch(reinterpret_cast<const char*>(ahead + r * o.ld + k), _MM_HINT_T0);
                // Quarter q: the lo (q even) or hi columns of the line's half q / 2, at x offset 8·(q/2) +
                // 16·(q%2).
#pragma GCC unroll 4
            for (int q = 0; q < 4; ++q) {
                __m256 wv[R];
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) {
                    const __m256i raw =
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(w + r * o.ld + k + 16 * (q / 2)));
                    wv[r] = _mm256_castsi256_ps(q % 2 == 0 ? _mm256_unpacklo_epi16(zero, raw)
                                                           : _mm256_unpackhi_epi16(zero, raw));
                }
#pragma GCC unroll 16
                for (int m = 0; m < M; ++m) {
                    const __m256 xv = _mm256_load_ps(o.x_f32 + m * o.ld + k + 8 * (q / 2) + 16 * (q % 2));
#pragma GCC unroll 4
                    for (int r = 0; r < R; ++r) acc[m * R + r] = _mm256_fmadd_ps(xv, wv[r], acc[m * R + r]);
                }
            }
        }
        float sums[(M * R + 3) / 4 * 4];
        sum_lanes_avx2<M * R>(acc, sums);
        store_bf16(o, n, R, sums);
    }

    [[gnu::target("avx2,fma")]] static void rows(const Operands& o, int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; n += R) block(o, n);
    }
};

template <int M>
struct Int8Avx2 {
    static constexpr int R = block_rows_avx2(M);

    [[gnu::target("avx2,fma")]] static void block(const Operands& o, int64_t n) {
        const int8_t* w = o.w_int8 + n * o.ld;
        const int8_t* ahead = o.w_int8 + prefetch_row(o, n, R) * o.ld;
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i acc[M * R];
#pragma GCC unroll 64
        for (int i = 0; i < M * R; ++i) acc[i] = _mm256_setzero_si256();
        for (int64_t k = 0; k < o.k_end; k += 64) {  // x_q is zero from in to ld
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r)
                _mm_prefetch(reinterpret_cast<const char*>(ahead + r * o.ld + k), _MM_HINT_T0);
#pragma GCC unroll 2
            for (int h = 0; h < 64; h += 32) {
                __m256i wv[R];
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r)
                    wv[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + r * o.ld + k + h));
#pragma GCC unroll 16
                for (int m = 0; m < M; ++m) {
                    const __m256i xq =
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(o.x_q + m * o.ld + k + h));
                    const __m256i xa =
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(o.x_abs + m * o.ld + k + h));
#pragma GCC unroll 4
                    for (int r = 0; r < R; ++r) {
                        const __m256i pairs = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wv[r], xq));
                        acc[m * R + r] = _mm256_add_epi32(acc[m * R + r], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
        }
        int32_t sums[(M * R + 3) / 4 * 4];
        sum_lanes_avx2<M * R>(acc, sums);
        store_int8(o, n, R, sums);
    }

    [[gnu::target("avx2,fma")]] static void rows(const Operands& o, int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; n += R) block(o, n);
    }
};

// Lanes [0, left) of 8 set, left >= 1.
[[gnu::target("avx2,fma")]] inline __m256i tail_mask_avx2(int64_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(left, 8))),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// x_f32 (M, ld) = x in widening order, zero from in to ld.
[[gnu::target("avx2,fma")]] void widen_order_avx2(float* x_f32, const float* x, int64_t M, int64_t in,
                                                  int64_t ld) {
    for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * in;
        float* out = x_f32 + m * ld;
        for (int64_t k = 0; k < ld; k += 32) {
            __m256 a[4];
            for (int j = 0; j < 4; ++j)
                a[j] = k + 8 * j < in ? _mm256_maskload_ps(xr + k + 8 * j, tail_mask_avx2(in - k - 8 * j))
                                      : _mm256_setzero_ps();
            _mm256_store_ps(out + k, _mm256_permute2f128_ps(a[0], a[1], 0x20));
            _mm256_store_ps(out + k + 8, _mm256_permute2f128_ps(a[2], a[3], 0x20));
            _mm256_store_ps(out + k + 16, _mm256_permute2f128_ps(a[0], a[1], 0x31));
            _mm256_store_ps(out + k + 24, _mm256_permute2f128_ps(a[2], a[3], 0x31));
        }
    }
}

// x_q (M, ld) = quantize_rows_int8(x) (zero padded), x_abs its absolute values, x_scale (M).
[[gnu::target("avx2,fma")]] void quantize_avx2(uint8_t* x_q, uint8_t* x_abs, float* x_scale, const float* x,
                                               int64_t M, int64_t in, int64_t ld) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const int64_t in_vec = (in + 31) / 32 * 32;
    for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * in;
        uint8_t* qr = x_q + m * ld;
        uint8_t* ar = x_abs + m * ld;
        __m256 vmax = _mm256_setzero_ps();
        for (int64_t k = 0; k < in; k += 8)
            vmax = _mm256_max_ps(
                vmax, _mm256_andnot_ps(sign_bit, _mm256_maskload_ps(xr + k, tail_mask_avx2(in - k))));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        x_scale[m] = amax / 127.0f;
        if (amax == 0) {
            std::memset(qr, 0, static_cast<size_t>(ld));
            std::memset(ar, 0, static_cast<size_t>(ld));
            continue;
        }
        const __m256 inv = _mm256_set1_ps(127.0f / amax);
        for (int64_t k = 0; k < in; k += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; ++j) {
                const __m256 v = k + 8 * j < in
                                     ? _mm256_maskload_ps(xr + k + 8 * j, tail_mask_avx2(in - k - 8 * j))
                                     : _mm256_setzero_ps();
                q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));  // round half to even, as std::nearbyint
            }
            // Saturating packs interleave the 128-bit lanes; the permute puts the 32 bytes in order.
            const __m256i packed =
                _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            __m256i bytes = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            bytes = _mm256_max_epi8(bytes, _mm256_set1_epi8(-127));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + k), bytes);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(ar + k), _mm256_abs_epi8(bytes));
        }
        std::memset(qr + in_vec, 0, static_cast<size_t>(ld - in_vec));
        std::memset(ar + in_vec, 0, static_cast<size_t>(ld - in_vec));
    }
}

// ---- dispatch ------------------------------------------------------------------------------------

struct Kernel {
    void (*rows)(const Operands&, int64_t n0, int64_t n1);  // y rows [n0, n1), n0 a multiple of R
    int R;
};

template <template <int> typename K, size_t... I>
constexpr std::array<Kernel, kMaxRows> kernel_table(std::index_sequence<I...>) {
    return {Kernel{&K<I + 1>::rows, K<I + 1>::R}...};
}

template <template <int> typename K>
constexpr std::array<Kernel, kMaxRows> kKernels = kernel_table<K>(std::make_index_sequence<kMaxRows>{});

// Per-thread scratch for the prepared rows of x (at most 15 · ld floats), 64-byte aligned; kept
// between calls so that decoding allocates only on its first step.
uint8_t* scratch(size_t bytes) {
    thread_local std::vector<uint8_t> buf;
    if (buf.size() < bytes + 63) buf.resize(bytes + 63);
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
    return buf.data() + ((64 - p % 64) % 64);
}

}  // namespace

// Test hook (declared in tests/unit/test_packed_gemv.cpp): forces a path by name as
// MSLM_PACKED_KERNEL does, refusing one the CPU lacks; "" returns to the configured choice.
void force_packed_gemv_kernel(const std::string& name) {
    g_forced.store(name.empty() ? -1 : static_cast<int>(parse_path(name, "packed GEMV kernel")),
                   std::memory_order_relaxed);
}

void packed_gemv_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M) {
    MSLM_CHECK(M >= 1 && M <= kMaxRows, "packed GEMV: {} rows of x (expected 1 to {})", M, kMaxRows);
    MSLM_CHECK(W.format == WeightFormat::BF16 || W.format == WeightFormat::Int8,
               "packed GEMV: format {} is not packed", weight_format_name(W.format));
    const bool int8 = W.format == WeightFormat::Int8;
    const Path path = int8 ? int8_path() : bf16_path();
    if (path == Path::Scalar) {
        packed_linear_reference(y, x, W, b, M, false);
        return;
    }
    Operands o{};
    o.y = y;
    o.b = b;
    o.M = M;
    o.out = W.out;
    o.ld = W.ld;
    o.out_padded = W.out_padded;
    float x_scale[kMaxRows];
    const size_t rows_bytes = static_cast<size_t>(M * W.ld);
    Kernel kernel;
    if (int8) {
        MSLM_CHECK(W.in <= kMaxInt8In, "packed GEMV: int8 rows of {} columns overflow int32 (at most {})",
                   W.in, kMaxInt8In);
        o.k_end = W.ld;
        o.w_int8 = W.int8();
        o.w_scale = W.scale.get();
        o.row_sum = W.row_sum.get();
        o.x_scale = x_scale;
        uint8_t* buf = scratch(2 * rows_bytes);
        o.x_q = buf;
        if (path == Path::Avx512) {
            quantize_avx512(buf, x_scale, x, M, W.in, W.ld);
            kernel = kKernels<Int8Avx512>[M - 1];
        } else {
            o.x_abs = buf + rows_bytes;
            quantize_avx2(buf, buf + rows_bytes, x_scale, x, M, W.in, W.ld);
            kernel = kKernels<Int8Avx2>[M - 1];
        }
    } else {
        o.k_end = (W.in + 31) / 32 * 32;
        o.w_bf16 = W.bf16();
        float* buf = reinterpret_cast<float*>(scratch(rows_bytes * sizeof(float)));
        o.x_f32 = buf;
        if (path == Path::Avx512) {
            widen_order_avx512(buf, x, M, W.in, W.ld);
            kernel = kKernels<Bf16Avx512>[M - 1];
        } else {
            widen_order_avx2(buf, x, M, W.in, W.ld);
            kernel = kKernels<Bf16Avx2>[M - 1];
        }
    }
    const int64_t block_bytes = kernel.R * W.ld * (int8 ? 1 : 2);
    const int64_t blocks = (W.out + kernel.R - 1) / kernel.R;
    parallel_for(
        blocks, [&](int64_t b0, int64_t b1) { kernel.rows(o, b0 * kernel.R, b1 * kernel.R); },
        std::max<int64_t>(1, kMinTaskBytes / block_bytes));
}

std::string packed_gemv_description() {
    const Path bf16 = bf16_path(), int8 = int8_path();
    return fmt::format("bf16 {} / int8 {}", path_name(bf16),
                       int8 == Path::Avx512 ? "avx512-vnni" : path_name(int8));
}

const char* packed_path_name(PackedPath p) {
    return path_name(p);
}
PackedPath parse_packed_path(const std::string& name, const char* source) {
    return parse_path(name, source);
}
PackedPath configured_packed_path() {
    return configured_path();
}

}  // namespace mslm::ops::detail
