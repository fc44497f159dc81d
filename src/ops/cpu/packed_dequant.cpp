// The kernels of ops::packed_linear_forward for the formats whose weights are dequantized to fp32 on
// the fly: W8A16 (int8 weights, per-row scale) and bitsandbytes' NF4 / FP4 (4-bit codes, a 16-entry
// code book, one scale per group of 16, 32 or 64 columns). Layouts in packed_linear.cpp.
//
// Decoding (M ≤ kDequantGemvMaxRows, in passes of < kPackedGemmMinRows rows of x, each pass a GEMV
// on its own): every weight row is streamed once a pass; each 32-column step decodes
// the row's 32 weights into fp32 vectors and FMAs them with the same columns of every row of x, which
// were copied into zero-padded scratch rows (so the loop over k has no tail: the padding weights are
// finite, the padding x zero). 4-bit codes are looked up in the code book held in registers:
//   AVX-512  the 16 bytes of a step widened to 16 int32 lanes (vpmovzxbd); vpermps on the code book
//            uses the low 4 bits of each lane, i.e. the low nibble (columns k..k+15); a shift by 4
//            gives the high nibble (columns k+16..k+31).
//   AVX2     vpermps looks up 8 entries; two lookups (code book entries 0-7 and 8-15) and a blend on
//            bit 3 of the nibble (moved to the sign bit by a shift, which vblendvps reads).
// Each looked-up code is multiplied by its group's scale before the FMA (with groups of 64 the
// AVX-512 path scales the 16-entry code book once per group instead: the same fp32 products), so
// every weight is exactly bitsandbytes' dequantized fp32 value code · absmax; W8A16 widens the int8
// weights exactly and multiplies the row's sum by its scale at the end. So the results differ from
// an fp32 product against the dequantized weights only by the order of the fp32 sums.
// Prefill (M > kDequantGemvMaxRows): where packed_gemm runs on AMX, the whole weight is dequantized
// by the same decoders and rounded to bf16 into a packed bf16 weight, and packed_gemm multiplies it
// (activations rounded to bf16 as well, fp32 accumulation: the bf16 format's prefill numerics, now
// on top of the dequantized weights; W8A16's int8 values are exact in bf16 and its row scale is
// applied after the product). Otherwise (or with MSLM_DEQUANT_PREFILL=fp32) panels of 128 weight
// rows are dequantized into fp32 scratch and multiplied with OpenBLAS, exact fp32 products as in
// decoding.
//
// Paths: AVX-512 (F/BW/VL), AVX2 + FMA, scalar (the reference). Each vector function carries its own
// target attribute and is chosen at run time; MSLM_PACKED_KERNEL=scalar|avx2|avx512 forces one, as
// for the bf16 / int8 kernels. Threading: parallel_for over blocks of output rows; one output is one
// fixed sequence of vector FMAs and one lane reduction, whatever the thread count.

// GCC 12's AVX-512 headers: see packed_gemv.cpp.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/allocator.h"
#include "core/error.h"
#include "core/gemm.h"
#include "core/thread_pool.h"
#include "ops/cpu/packed_kernels.h"

namespace mslm::ops::detail {

namespace {

using Path = PackedPath;

std::atomic<int> g_forced{-1};

Path current_path() {
    const int forced = g_forced.load(std::memory_order_relaxed);
    return forced >= 0 ? static_cast<Path>(forced) : configured_packed_path();
}

constexpr int kMaxRows = static_cast<int>(kPackedGemmMinRows) - 1;
constexpr int64_t kMinTaskBytes = 64 << 10;  // as packed_gemv.cpp: smaller products run inline
constexpr int64_t kRowsPerBlock = 4;         // output rows a task item covers

// One product as the kernels see it.
struct Operands {
    const PackedWeight* W;
    float* y;
    const float* b;
    const float* x;  // (M, ld) zero-padded copy of x
    int64_t M;
    int64_t k_end;         // in rounded up to 32
    int64_t row_bytes;     // bytes of one packed weight row (ld / 2 for 4-bit, ld for W8A16)
    int64_t scale_stride;  // 4-bit: scales a row (ld / group)
    int group_shift;       // 4-bit: log2(group)
};

Operands make_operands(const PackedWeight& W, float* y, const float* b, const float* x, int64_t M) {
    Operands o{&W, y, b, x, M, (W.in + 31) / 32 * 32, W.ld, 0, 0};
    if (is_4bit_format(W.format)) {
        o.row_bytes = W.ld / 2;
        o.scale_stride = W.ld / W.group;
        o.group_shift = __builtin_ctzll(static_cast<unsigned long long>(W.group));
    }
    return o;
}

// The weight bytes this far ahead of the ones being decoded are prefetched (the rows are contiguous;
// without it a GEMV is latency bound at about half the read bandwidth, as packed_gemv.cpp notes).
// About as far as packed_gemv.cpp's two blocks of rows ahead.
constexpr int64_t kAheadBytes = 8192;

// Row n's values multiply the sum by this (W8A16: the row scale; 4-bit: 1, the scales are per group).
inline float post_scale(const PackedWeight& W, int64_t n) {
    return W.format == WeightFormat::W8A16 ? W.scale.get()[n] : 1.0f;
}

inline void store(const Operands& o, int64_t n, int64_t m, float sum) {
    o.y[m * o.W->out + n] = post_scale(*o.W, n) * sum + (o.b ? o.b[n] : 0.0f);
}

// ---- AVX-512 -------------------------------------------------------------------------------------

struct Avx512 {
    // Weights [k, k + 32) of a row as two fp32 vectors (columns k..k+15, k+16..k+31). `row` is the
    // row's packed bytes, `s` its scales (4-bit).
    template <bool k4>
    [[gnu::target("avx512f,avx512bw,avx512vl")]] static inline void decode(const uint8_t* row, const float* s,
                                                                           int shift, int64_t k, __m512 lut,
                                                                           __m512& w0, __m512& w1) {
        if constexpr (!k4) {
            const uint8_t* p = row + k;
            w0 =
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p))));
            w1 = _mm512_cvtepi32_ps(
                _mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p + 16))));
        } else {
            const __m512i v =
                _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(row + k / 2)));
            w0 = _mm512_mul_ps(_mm512_permutexvar_ps(v, lut), _mm512_set1_ps(s[k >> shift]));
            w1 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut),
                               _mm512_set1_ps(s[(k + 16) >> shift]));
        }
    }

    // y rows [n0, n1) for x rows [m0, m0 + M).
    template <bool k4, int M>
    [[gnu::target("avx512f,avx512bw,avx512vl")]] static void rows(const Operands& o, int64_t n0, int64_t n1,
                                                                  int64_t m0) {
        const PackedWeight& W = *o.W;
        const __m512 lut = _mm512_loadu_ps(W.code);
        const uint8_t* base = static_cast<const uint8_t*>(W.data.get());
        const uint8_t* end = base + W.out_padded * o.row_bytes - 64;
        for (int64_t n = n0; n < n1; ++n) {
            const uint8_t* row = base + n * o.row_bytes;
            const float* s = k4 ? W.scale.get() + n * o.scale_stride : nullptr;
            __m512 acc0[M], acc1[M];
            for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
            if (k4 && o.group_shift == 6) {
                // Groups of 64: the code book is scaled once per group (code · scale per entry, the
                // same fp32 products as scaling each looked-up code), then 64 lookups; runs up to
                // ld, where the padding codes are the zero code and the padding x zero.
                for (int64_t k = 0; k < W.ld; k += 64) {
                    const uint8_t* pf = row + k / 2;
                    pf = end - pf > kAheadBytes ? pf + kAheadBytes : end;
                    if (k % 128 == 0) _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
                    const __m512 lut_s = _mm512_mul_ps(lut, _mm512_set1_ps(s[k >> 6]));
                    const __m512i va =
                        _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(row + k / 2)));
                    const __m512i vb = _mm512_cvtepu8_epi32(
                        _mm_load_si128(reinterpret_cast<const __m128i*>(row + k / 2 + 16)));
                    const __m512 w0 = _mm512_permutexvar_ps(va, lut_s);
                    const __m512 w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(va, 4), lut_s);
                    const __m512 w2 = _mm512_permutexvar_ps(vb, lut_s);
                    const __m512 w3 = _mm512_permutexvar_ps(_mm512_srli_epi32(vb, 4), lut_s);
#pragma GCC unroll 4
                    for (int m = 0; m < M; ++m) {
                        const float* xr = o.x + (m0 + m) * W.ld + k;
                        acc0[m] = _mm512_fmadd_ps(_mm512_load_ps(xr), w0, acc0[m]);
                        acc1[m] = _mm512_fmadd_ps(_mm512_load_ps(xr + 16), w1, acc1[m]);
                        acc0[m] = _mm512_fmadd_ps(_mm512_load_ps(xr + 32), w2, acc0[m]);
                        acc1[m] = _mm512_fmadd_ps(_mm512_load_ps(xr + 48), w3, acc1[m]);
                    }
                }
                for (int m = 0; m < M; ++m)
                    store(o, n, m0 + m, _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m])));
                continue;
            }
            for (int64_t k = 0; k < o.k_end; k += 32) {
                if (k % (k4 ? 128 : 64) == 0) {  // one 64-byte line ahead
                    const uint8_t* pf = row + (k4 ? k / 2 : k);
                    pf = end - pf > kAheadBytes ? pf + kAheadBytes : end;
                    _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
                }
                __m512 w0, w1;
                decode<k4>(row, s, o.group_shift, k, lut, w0, w1);
#pragma GCC unroll 4
                for (int m = 0; m < M; ++m) {
                    const float* xr = o.x + (m0 + m) * W.ld + k;
                    acc0[m] = _mm512_fmadd_ps(_mm512_load_ps(xr), w0, acc0[m]);
                    acc1[m] = _mm512_fmadd_ps(_mm512_load_ps(xr + 16), w1, acc1[m]);
                }
            }
            for (int m = 0; m < M; ++m)
                store(o, n, m0 + m, _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m])));
        }
    }

    template <bool k4>
    [[gnu::target("avx512f,avx512bw,avx512vl")]] static void decode_row(float* dst, const Operands& o,
                                                                        int64_t n) {
        const PackedWeight& W = *o.W;
        const __m512 lut = _mm512_loadu_ps(W.code);
        const uint8_t* row = static_cast<const uint8_t*>(W.data.get()) + n * o.row_bytes;
        const float* s = k4 ? W.scale.get() + n * o.scale_stride : nullptr;
        for (int64_t k = 0; k < o.k_end; k += 32) {
            __m512 w0, w1;
            decode<k4>(row, s, o.group_shift, k, lut, w0, w1);
            _mm512_storeu_ps(dst + k, w0);
            _mm512_storeu_ps(dst + k + 16, w1);
        }
    }
};

// ---- AVX2 ----------------------------------------------------------------------------------------

struct Avx2 {
    // Code book entries [8·idx3 ...]: vpermps on each half, the nibble's bit 3 (at bit 3 + shift of
    // each lane, moved to the sign bit) picks the half.
    [[gnu::target("avx2,fma")]] static inline __m256 lookup(__m256i idx, __m256i sel, __m256 lo, __m256 hi) {
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                                _mm256_castsi256_ps(sel));
    }

    // Weights [k, k + 32) of a row as four fp32 vectors of 8 columns each, in column order.
    template <bool k4>
    [[gnu::target("avx2,fma")]] static inline void decode(const uint8_t* row, const float* s, int shift,
                                                          int64_t k, __m256 lo, __m256 hi, __m256* w) {
        if constexpr (!k4) {
            const uint8_t* p = row + k;
#pragma GCC unroll 4
            for (int q = 0; q < 4; ++q)
                w[q] = _mm256_cvtepi32_ps(
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * q))));
        } else {
            const uint8_t* p = row + k / 2;
            const __m256 s0 = _mm256_set1_ps(s[k >> shift]), s1 = _mm256_set1_ps(s[(k + 16) >> shift]);
#pragma GCC unroll 2
            for (int j = 0; j < 2; ++j) {  // bytes 8j..8j+7: columns 8j.. (low nibble) and 16+8j.. (high)
                const __m256i v =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * j)));
                w[j] = _mm256_mul_ps(lookup(v, _mm256_slli_epi32(v, 28), lo, hi), s0);
                w[2 + j] =
                    _mm256_mul_ps(lookup(_mm256_srli_epi32(v, 4), _mm256_slli_epi32(v, 24), lo, hi), s1);
            }
        }
    }

    template <bool k4, int M>
    [[gnu::target("avx2,fma")]] static void rows(const Operands& o, int64_t n0, int64_t n1, int64_t m0) {
        const PackedWeight& W = *o.W;
        const __m256 lo = _mm256_loadu_ps(W.code), hi = _mm256_loadu_ps(W.code + 8);
        const uint8_t* base = static_cast<const uint8_t*>(W.data.get());
        const uint8_t* end = base + W.out_padded * o.row_bytes - 64;
        for (int64_t n = n0; n < n1; ++n) {
            const uint8_t* row = base + n * o.row_bytes;
            const float* s = k4 ? W.scale.get() + n * o.scale_stride : nullptr;
            __m256 acc0[M], acc1[M];
            for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm256_setzero_ps();
            for (int64_t k = 0; k < o.k_end; k += 32) {
                if (k % (k4 ? 128 : 64) == 0) {
                    const uint8_t* pf = row + (k4 ? k / 2 : k);
                    pf = end - pf > kAheadBytes ? pf + kAheadBytes : end;
                    _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
                }
                __m256 w[4];
                decode<k4>(row, s, o.group_shift, k, lo, hi, w);
#pragma GCC unroll 4
                for (int m = 0; m < M; ++m) {
                    const float* xr = o.x + (m0 + m) * W.ld + k;
                    acc0[m] = _mm256_fmadd_ps(_mm256_load_ps(xr), w[0], acc0[m]);
                    acc1[m] = _mm256_fmadd_ps(_mm256_load_ps(xr + 8), w[1], acc1[m]);
                    acc0[m] = _mm256_fmadd_ps(_mm256_load_ps(xr + 16), w[2], acc0[m]);
                    acc1[m] = _mm256_fmadd_ps(_mm256_load_ps(xr + 24), w[3], acc1[m]);
                }
            }
            for (int m = 0; m < M; ++m) {
                const __m256 a = _mm256_add_ps(acc0[m], acc1[m]);
                __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                h = _mm_add_ss(h, _mm_movehdup_ps(h));
                store(o, n, m0 + m, _mm_cvtss_f32(h));
            }
        }
    }

    template <bool k4>
    [[gnu::target("avx2,fma")]] static void decode_row(float* dst, const Operands& o, int64_t n) {
        const PackedWeight& W = *o.W;
        const __m256 lo = _mm256_loadu_ps(W.code), hi = _mm256_loadu_ps(W.code + 8);
        const uint8_t* row = static_cast<const uint8_t*>(W.data.get()) + n * o.row_bytes;
        const float* s = k4 ? W.scale.get() + n * o.scale_stride : nullptr;
        for (int64_t k = 0; k < o.k_end; k += 32) {
            __m256 w[4];
            decode<k4>(row, s, o.group_shift, k, lo, hi, w);
            for (int q = 0; q < 4; ++q) _mm256_storeu_ps(dst + k + 8 * q, w[q]);
        }
    }
};

void decode_row_scalar(float* dst, const Operands& o, int64_t n) {
    for (int64_t k = 0; k < o.k_end; ++k) dst[k] = o.W->at(n, k);
}

// y rows [n0, n1) for every row of x, in chunks of at most 4 rows of x (accumulators in registers).
template <typename K, bool k4>
void gemv_rows(const Operands& o, int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < o.M; m0 += 4) {
        switch (std::min<int64_t>(4, o.M - m0)) {
            case 1:
                K::template rows<k4, 1>(o, n0, n1, m0);
                break;
            case 2:
                K::template rows<k4, 2>(o, n0, n1, m0);
                break;
            case 3:
                K::template rows<k4, 3>(o, n0, n1, m0);
                break;
            default:
                K::template rows<k4, 4>(o, n0, n1, m0);
        }
    }
}

// Per-thread scratch, 64-byte aligned, kept between calls.
float* scratch(size_t floats) {
    thread_local std::vector<float> buf;
    if (buf.size() < floats + 16) buf.resize(floats + 16);
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
    return buf.data() + ((64 - p % 64) % 64) / sizeof(float);
}

void gemm_panels(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M, Path path) {
    constexpr int64_t kPanel = 128;
    const Operands o = make_operands(W, y, b, x, M);
    const bool k4 = is_4bit_format(W.format);
    parallel_for((W.out + kPanel - 1) / kPanel, [&](int64_t p0, int64_t p1) {
        thread_local std::vector<float> wf;
        if (wf.size() < static_cast<size_t>(kPanel * W.ld)) wf.resize(static_cast<size_t>(kPanel * W.ld));
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t n0 = p * kPanel, rows = std::min(kPanel, W.out - n0);
            for (int64_t r = 0; r < rows; ++r) {
                float* dst = wf.data() + r * W.ld;
                if (path == Path::Avx512)
                    k4 ? Avx512::decode_row<true>(dst, o, n0 + r) : Avx512::decode_row<false>(dst, o, n0 + r);
                else if (path == Path::Avx2)
                    k4 ? Avx2::decode_row<true>(dst, o, n0 + r) : Avx2::decode_row<false>(dst, o, n0 + r);
                else
                    decode_row_scalar(dst, o, n0 + r);
            }
            gemm<float>(false, true, static_cast<int>(M), static_cast<int>(rows), static_cast<int>(W.in),
                        1.0f, x, static_cast<int>(W.in), wf.data(), static_cast<int>(W.ld), 0.0f, y + n0,
                        static_cast<int>(W.out));
            for (int64_t m = 0; m < M; ++m)
                for (int64_t r = 0; r < rows; ++r) {
                    float& v = y[m * W.out + n0 + r];
                    v = post_scale(W, n0 + r) * v + (b ? b[n0 + r] : 0.0f);
                }
        }
    });
}

// MSLM_DEQUANT_PREFILL=fp32 keeps 4-bit / W8A16 prefill on the fp32 panels even where AMX runs
// (read at every call: for ablations and the tests).
bool bf16_prefill_wanted() {
    const char* v = std::getenv("MSLM_DEQUANT_PREFILL");
    return (v == nullptr || std::strcmp(v, "fp32") != 0) && packed_gemm_uses_amx();
}

// The weight dequantized and rounded to bf16 in the packed bf16 layout (rows padded with zeros to
// ld, zero rows up to out_padded), multiplied on AMX by packed_gemm (with the bias), or for W8A16
// without it, then the row scale and the bias.
void bf16_prefill(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M, Path path) {
    PackedWeight wb;
    wb.format = WeightFormat::BF16;
    wb.out = W.out;
    wb.in = W.in;
    wb.ld = W.ld;
    wb.out_padded = W.out_padded;
    const size_t count = static_cast<size_t>(W.out_padded * W.ld);
    void* mem = aligned_malloc(count * sizeof(uint16_t));
    wb.data = std::shared_ptr<void>(mem, aligned_free);
    uint16_t* dst = static_cast<uint16_t*>(mem);
    std::memset(dst + W.out * W.ld, 0, static_cast<size_t>((W.out_padded - W.out) * W.ld) * sizeof(uint16_t));
    const Operands o = make_operands(W, y, b, x, M);
    const bool k4 = is_4bit_format(W.format);
    parallel_for(W.out, [&](int64_t r0, int64_t r1) {
        thread_local std::vector<float> row;
        if (row.size() < static_cast<size_t>(W.ld)) row.resize(static_cast<size_t>(W.ld));
        for (int64_t r = r0; r < r1; ++r) {
            if (path == Path::Avx512)
                k4 ? Avx512::decode_row<true>(row.data(), o, r) : Avx512::decode_row<false>(row.data(), o, r);
            else if (path == Path::Avx2)
                k4 ? Avx2::decode_row<true>(row.data(), o, r) : Avx2::decode_row<false>(row.data(), o, r);
            else
                decode_row_scalar(row.data(), o, r);
            uint16_t* d = dst + r * W.ld;
            for (int64_t c = 0; c < W.in; ++c) d[c] = to_bf16(row[static_cast<size_t>(c)]);
            std::memset(d + W.in, 0, static_cast<size_t>(W.ld - W.in) * sizeof(uint16_t));
        }
    });
    if (W.format != WeightFormat::W8A16) {  // the 4-bit values are whole: the bias is the GEMM's
        packed_gemm_forward(y, x, wb, b, M);
        return;
    }
    packed_gemm_forward(y, x, wb, nullptr, M);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < W.out; ++n) {
            float& v = y[m * W.out + n];
            v = post_scale(W, n) * v + (b ? b[n] : 0.0f);
        }
}

}  // namespace

// Test hook (declared in tests/unit/test_packed_dequant.cpp): forces a path by name; "" returns to
// the configured choice.
void force_packed_dequant_kernel(const std::string& name) {
    g_forced.store(name.empty() ? -1 : static_cast<int>(parse_packed_path(name, "packed dequant kernel")),
                   std::memory_order_relaxed);
}

namespace {

// One GEMV pass: M ≤ kMaxRows rows of x against every weight row, each weight decoded once.
void gemv_pass(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M, Path path) {
    float* xs = scratch(static_cast<size_t>(M * W.ld));
    for (int64_t m = 0; m < M; ++m) {
        std::memcpy(xs + m * W.ld, x + m * W.in, static_cast<size_t>(W.in) * sizeof(float));
        std::memset(xs + m * W.ld + W.in, 0, static_cast<size_t>(W.ld - W.in) * sizeof(float));
    }
    const Operands o = make_operands(W, y, b, xs, M);
    static_assert(kMaxRows < 16);
    const bool k4 = is_4bit_format(W.format);
    const int64_t row_bytes = o.row_bytes;
    const int64_t blocks = (W.out + kRowsPerBlock - 1) / kRowsPerBlock;
    parallel_for(
        blocks,
        [&](int64_t b0, int64_t b1) {
            const int64_t n0 = b0 * kRowsPerBlock, n1 = std::min(W.out, b1 * kRowsPerBlock);
            if (path == Path::Avx512)
                k4 ? gemv_rows<Avx512, true>(o, n0, n1) : gemv_rows<Avx512, false>(o, n0, n1);
            else
                k4 ? gemv_rows<Avx2, true>(o, n0, n1) : gemv_rows<Avx2, false>(o, n0, n1);
        },
        std::max<int64_t>(1, kMinTaskBytes / (kRowsPerBlock * row_bytes)));
}

// The most rows of x that take GEMV passes (MSLM_DEQUANT_GEMV_MAX_ROWS overrides, read at every
// call: for the A/B runs and the tests; never below one pass, which the prefill paths start after).
int64_t dequant_gemv_max_rows() {
    const char* v = std::getenv("MSLM_DEQUANT_GEMV_MAX_ROWS");
    return std::max<int64_t>(v && *v ? std::atoll(v) : kDequantGemvMaxRows, kMaxRows);
}

}  // namespace

void packed_dequant_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M) {
    MSLM_CHECK(is_dequant_format(W.format), "packed dequant: format {} is not w8a16, nf4 or fp4",
               weight_format_name(W.format));
    if (M <= 0) return;
    const Path path = current_path();
    if (M > dequant_gemv_max_rows()) {
        if (bf16_prefill_wanted())
            bf16_prefill(y, x, W, b, M, path);
        else
            gemm_panels(y, x, W, b, M, path);
        return;
    }
    if (path == Path::Scalar) {
        packed_linear_reference(y, x, W, b, M, false);
        return;
    }
    // Batches past one pass's rows: equal passes of ≤ kMaxRows rows (each output's sum does not
    // depend on the other rows, so the values are those of one pass).
    const int64_t passes = (M + kMaxRows - 1) / kMaxRows, rows = (M + passes - 1) / passes;
    for (int64_t m0 = 0; m0 < M; m0 += rows) {
        const int64_t r = std::min(rows, M - m0);
        gemv_pass(y + m0 * W.out, x + m0 * W.in, W, b, r, path);
    }
}

std::string packed_dequant_description() {
    return packed_path_name(current_path());
}

}  // namespace mslm::ops::detail
