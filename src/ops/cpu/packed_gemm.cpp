// Prefill kernels behind ops::packed_linear_forward (M >= kPackedGemmMinRows rows of x): bf16 × bf16
// and int8 × int8 products on AMX tiles, and a fallback for CPUs without them.
//
// AMX computes yᵀ = W · xᵀ. W is the A operand, loaded straight from the packed layout: a tile is 16
// rows of W × 64 bytes (32 bf16 or 64 int8 of k), rows ld · elem bytes apart. x is converted once
// per call into the VNNI layout of the B operand, B'[k/2][m][k%2] (bf16) or B'[k/4][m][k%4] (int8),
// stored panel by panel: the 16 tokens of one tile's columns are contiguous over all of k, so a B
// tile is 1 KiB at stride 64 bytes (one global B'[k/v][m][k%v] would put a tile's rows M·4 bytes
// apart, 2 KiB at M = 512, in the same few L1 sets). Tokens are padded with zeros to a multiple of
// 16, k to ld, like W.
//
// Blocking: 2 × 2 C tiles (32 rows of W × 32 tokens) from 2 A tiles and 2 B tiles, the K loop
// innermost. Each thread takes a contiguous range of 32-row blocks of W and walks it in groups of
// about 1 MiB of W, each group against one token block after another: W is read from memory once,
// the group and the token panels stay in L2, and consecutive blocks write adjacent columns of y.
// C tiles are transposed (16 × 16, AVX-512) into rows of y with the bias added. Each C element is
// one tile element's accumulation over k in order, whichever block or thread holds it, so results
// do not depend on the thread count.
//
// Numerics:
//   BF16  x rounded to bf16 (nearest even, as ops::float_to_bf16); products exact, fp32
//         accumulation (TDPBF16PS treats bf16 denormals as zero); y = acc + b.
//   INT8  x quantized by quantize_rows_int8; exact int32 accumulation (TDPBSSD);
//         y = (s_w[n] · s_x[m]) · float(acc) + b[n], each operation rounded as in
//         packed_linear_reference, so the two agree bit for bit.
// The fallback keeps these numerics: bf16 through fp32 mslm::gemm (OpenBLAS) on x rounded to bf16
// and W widened panel by panel (another fp32 summation order than the tiles'), int8 through exact
// int32 dot products (AVX-512 VNNI where the CPU has it, plain loops otherwise).
//
// Path: AMX when the CPU has AMX-TILE, AMX-BF16, AMX-INT8 and AVX-512F/BW/VL and the kernel grants the
// tile data state (arch_prctl). MSLM_PACKED_GEMM=amx|fallback forces one (read once; amx on a
// machine without it is an error); fallback-portable is the fallback without AVX-512 VNNI. The
// AMX and AVX-512 code is compiled through target attributes and only called after a run-time
// check, so a build without -march=native carries it too.
#if defined(__x86_64__)
#include <cpuid.h>
// GCC 12's AVX-512 headers initialise their "undefined" vectors from themselves, which
// -W(maybe-)uninitialized reports wherever such an intrinsic is inlined (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <sys/syscall.h>
#include <unistd.h>
#define MSLM_PACKED_GEMM_X86 1
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "core/gemm.h"
#include "core/thread_pool.h"
#include "ops/cpu/packed_kernels.h"

namespace mslm::ops::detail {

namespace {

int64_t round_up(int64_t v, int64_t m) {
    return (v + m - 1) / m * m;
}
int64_t ceil_div(int64_t v, int64_t m) {
    return (v + m - 1) / m;
}

// ---------------------------------------------------------------------------------------------
// Which path

#ifdef MSLM_PACKED_GEMM_X86
bool cpu_has_amx() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const unsigned amx_bf16 = 1u << 22, amx_tile = 1u << 24, amx_int8 = 1u << 25;
    return (edx & amx_bf16) && (edx & amx_tile) && (edx & amx_int8);
}

// Linux keeps the 8 KiB tile data out of a thread's saved state until the process asks for it.
bool request_tile_permission() {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

bool amx_usable() {
    static std::once_flag once;
    static bool usable = false;
    std::call_once(once, [] {
        usable = cpu_has_amx() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && request_tile_permission();
    });
    return usable;
}
#else
bool amx_usable() {
    return false;
}
#endif

// Fallback: the best kernels without AMX; FallbackPortable: the same without AVX-512 VNNI (plain
// loops for int8), so that tests cover the code older CPUs run.
enum class Path { Amx, Fallback, FallbackPortable };
struct PathChoice {
    Path path;
    const char* why;
};

// request: "amx", "fallback", "fallback-portable" or empty (the CPU decides); source names it in
// messages.
PathChoice choose_path(const char* request, const char* source) {
    const std::string r = request ? request : "";
    if (r.empty()) return amx_usable() ? PathChoice{Path::Amx, ""} : PathChoice{Path::Fallback, "no AMX"};
    if (r == "fallback") return {Path::Fallback, "forced"};
    if (r == "fallback-portable") return {Path::FallbackPortable, "forced"};
    MSLM_CHECK(r == "amx", "{}={}: expected amx, fallback or fallback-portable", source, r);
    MSLM_CHECK(amx_usable(),
               "{}=amx: this CPU or kernel does not offer AMX tiles (AMX-TILE, AMX-BF16, AMX-INT8 with "
               "AVX-512F/BW/VL, and arch_prctl(ARCH_REQ_XCOMP_PERM))",
               source);
    return {Path::Amx, ""};
}

PathChoice env_path() {
    static const PathChoice choice = choose_path(std::getenv("MSLM_PACKED_GEMM"), "MSLM_PACKED_GEMM");
    return choice;
}

// Set by packed_gemm_force_path (tests); otherwise the environment decides.
std::atomic<int> g_forced{-1};

PathChoice current_path() {
    const int f = g_forced.load(std::memory_order_relaxed);
    if (f >= 0) return {static_cast<Path>(f), f == static_cast<int>(Path::Amx) ? "" : "forced"};
    return env_path();
}

// ---------------------------------------------------------------------------------------------
// Scratch buffers: grown on demand, reused across calls (no allocation per product once warm).

struct Scratch {
    std::unique_ptr<void, decltype(&std::free)> p{nullptr, &std::free};
    size_t bytes = 0;
    void* get(size_t n) {
        if (n > bytes) {
            n = static_cast<size_t>(round_up(static_cast<int64_t>(n), 4096));
            p.reset(std::aligned_alloc(64, n));
            MSLM_CHECK(p != nullptr, "packed_gemm: out of memory ({} bytes of scratch)", n);
            bytes = n;
        }
        return p.get();
    }
};

constexpr int64_t kTile = 16;  // rows of a tile: rows of W in an A tile, tokens in a B tile

#ifdef MSLM_PACKED_GEMM_X86
// ---------------------------------------------------------------------------------------------
// AMX. GCC 12's tile intrinsics declare no memory operands for tileloadd (and only 8 bytes of the
// configuration for ldtilecfg), so the compiler may move them across the stores that fill the
// buffers; these wrappers clobber memory instead. Tiles: C 0-3 (C[a·2 + b] = A[a] · B[b]), A 4-5,
// B 6-7, all 16 rows × 64 bytes.

#define MSLM_TILE_LOAD(t, base, stride) \
    asm volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"(static_cast<long>(stride)) : "memory")
#define MSLM_TILE_STORE(t, base, stride) \
    asm volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"(static_cast<long>(stride)) : "memory")
#define MSLM_TILE_ZERO(t) asm volatile("tilezero %%tmm" #t ::)
#define MSLM_TILE_DP(op, c, a, b) asm volatile(op " %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) void tiles_configure() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = kTile;
    }
    asm volatile("ldtilecfg %0" ::"m"(cfg) : "memory");
}

__attribute__((target("amx-tile"))) void tiles_release() {
    asm volatile("tilerelease" ::: "memory");
}

// C (NA·16 rows of W × NB·16 tokens) = Σ_k A · B over `steps` k-steps of 64 bytes, stored to c
// (4 tiles of 16 × 16, tile a·2 + b at c + (a·2 + b)·256). a: W rows, a_stride bytes apart;
// b0/b1: the token panels.
template <bool kInt8, int NA, int NB>
__attribute__((target("amx-tile,amx-bf16,amx-int8"))) void tile_block(const uint8_t* a, int64_t a_stride,
                                                                      const uint8_t* b0, const uint8_t* b1,
                                                                      int64_t steps, void* c) {
    MSLM_TILE_ZERO(0);
    if constexpr (NB == 2) MSLM_TILE_ZERO(1);
    if constexpr (NA == 2) MSLM_TILE_ZERO(2);
    if constexpr (NA == 2 && NB == 2) MSLM_TILE_ZERO(3);
    const uint8_t* a1 = a + kTile * a_stride;
    for (int64_t s = 0; s < steps; ++s) {
        MSLM_TILE_LOAD(4, a + s * 64, a_stride);
        MSLM_TILE_LOAD(6, b0 + s * 1024, 64);
        if constexpr (NB == 2) MSLM_TILE_LOAD(7, b1 + s * 1024, 64);
        if constexpr (NA == 2) MSLM_TILE_LOAD(5, a1 + s * 64, a_stride);
        if constexpr (kInt8) {
            MSLM_TILE_DP("tdpbssd", 0, 4, 6);
            if constexpr (NB == 2) MSLM_TILE_DP("tdpbssd", 1, 4, 7);
            if constexpr (NA == 2) MSLM_TILE_DP("tdpbssd", 2, 5, 6);
            if constexpr (NA == 2 && NB == 2) MSLM_TILE_DP("tdpbssd", 3, 5, 7);
        } else {
            MSLM_TILE_DP("tdpbf16ps", 0, 4, 6);
            if constexpr (NB == 2) MSLM_TILE_DP("tdpbf16ps", 1, 4, 7);
            if constexpr (NA == 2) MSLM_TILE_DP("tdpbf16ps", 2, 5, 6);
            if constexpr (NA == 2 && NB == 2) MSLM_TILE_DP("tdpbf16ps", 3, 5, 7);
        }
    }
    auto* cb = static_cast<uint8_t*>(c);
    MSLM_TILE_STORE(0, cb, 64);
    if constexpr (NB == 2) MSLM_TILE_STORE(1, cb + 1024, 64);
    if constexpr (NA == 2) MSLM_TILE_STORE(2, cb + 2048, 64);
    if constexpr (NA == 2 && NB == 2) MSLM_TILE_STORE(3, cb + 3072, 64);
}

#undef MSLM_TILE_LOAD
#undef MSLM_TILE_STORE
#undef MSLM_TILE_ZERO
#undef MSLM_TILE_DP

struct AmxProduct {
    float* y;
    const PackedWeight* W;
    const float* b;
    int64_t M;
    const uint8_t* B;  // token panels, panel_bytes apart
    const float* sx;   // int8: per-token scales
    int64_t w_stride, steps, panel_bytes;
    int64_t token_blocks, token_chunks;  // blocks of 32 tokens, split into this many chunks per row block
};

// out (16, 16) = srcᵀ (rows `stride` bytes apart), 32-bit elements, moved and never converted: 4 × 4
// transposes inside each 128-bit lane (unpacks of 32-bit then of 64-bit pairs), then a 4 × 4
// transpose of the lanes. Written with vector shuffles rather than the _mm512 intrinsics, whose
// _mm512_undefined operands GCC 12 flags as uninitialised under -Werror.
typedef int32_t V16 __attribute__((vector_size(64)));

__attribute__((target("avx512f"), always_inline)) inline void transpose16(V16* out, const void* src,
                                                                          int64_t stride = 64) {
    V16 r[16], t[16];
    for (int i = 0; i < 16; ++i)
        std::memcpy(&r[i], static_cast<const uint8_t*>(src) + i * stride, sizeof(V16));
    for (int i = 0; i < 16; i += 2) {
        t[i] =
            __builtin_shufflevector(r[i], r[i + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
        t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30,
                                           15, 31);
    }
    // r[g + j], 128-bit lane L: column 4L + j of rows g .. g + 3
    for (int g = 0; g < 16; g += 4) {
        for (int h = 0; h < 2; ++h) {
            r[g + 2 * h] = __builtin_shufflevector(t[g + h], t[g + h + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9,
                                                   24, 25, 12, 13, 28, 29);
            r[g + 2 * h + 1] = __builtin_shufflevector(t[g + h], t[g + h + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10,
                                                       11, 26, 27, 14, 15, 30, 31);
        }
    }
    for (int j = 0; j < 4; ++j) {
        // lanes (0, 1) and (2, 3) of rows 0-7 and of rows 8-15
        const V16 u0 =
            __builtin_shufflevector(r[j], r[4 + j], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        const V16 u1 = __builtin_shufflevector(r[j], r[4 + j], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27,
                                               28, 29, 30, 31);
        const V16 u2 = __builtin_shufflevector(r[8 + j], r[12 + j], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19,
                                               20, 21, 22, 23);
        const V16 u3 = __builtin_shufflevector(r[8 + j], r[12 + j], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26,
                                               27, 28, 29, 30, 31);
        out[j] = __builtin_shufflevector(u0, u2, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
        out[4 + j] =
            __builtin_shufflevector(u0, u2, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
        out[8 + j] =
            __builtin_shufflevector(u1, u3, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
        out[12 + j] =
            __builtin_shufflevector(u1, u3, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    }
}

// ---------------------------------------------------------------------------------------------
// B operand: x (M, in) → panels of 16 tokens in the VNNI layout, padded with zero tokens. In 32-bit
// units (a bf16 pair or an int8 quad), k-step s of a panel is the 16 × 16 transpose of bytes
// [64 s, 64 s + 64) of its 16 token rows (converted to bf16 or quantized, zero-padded to ld): row r
// of the B tile holds unit r of each token.

__attribute__((target("avx512f"))) void panel_from_rows(uint8_t* panel, const uint8_t* rows,
                                                        int64_t row_bytes) {
    for (int64_t s = 0; s < row_bytes / 64; ++s) {
        V16 t[16];
        transpose16(t, rows + s * 64, row_bytes);
        std::memcpy(panel + s * 1024, t, sizeof(t));
    }
}

// rows: scratch for 16 rows of ld bf16.
__attribute__((target("avx512f"))) void pack_panel_bf16(uint8_t* panel, uint16_t* rows, const float* x,
                                                        int64_t n_rows, int64_t in, int64_t ld) {
    for (int64_t t = 0; t < kTile; ++t) {
        uint16_t* r = rows + t * ld;
        const int64_t n = t < n_rows ? in : 0;
        for (int64_t c = 0; c < n; ++c) r[c] = to_bf16(x[t * in + c]);
        std::memset(r + n, 0, static_cast<size_t>(ld - n) * sizeof(uint16_t));
    }
    panel_from_rows(panel, reinterpret_cast<const uint8_t*>(rows), ld * 2);
}

// quantize_rows_int8 on 16-float vectors, bit for bit: the absmax is exact whatever the grouping,
// the product x · (127 / amax) is the same single rounding, and the conversion rounds half to even
// (the default MXCSR mode) as std::nearbyint does. The scalar loop cost as much as the AMX product
// itself on tiny's 64-wide rows.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void quantize_rows_avx512(int8_t* q, float* scale,
                                                                               const float* x, int64_t M,
                                                                               int64_t in, int64_t ld) {
    const int64_t in_vec = round_up(in, 16);
    auto mask = [in](int64_t k) {
        return static_cast<__mmask16>(in - k >= 16 ? 0xffff : (1u << (in - k)) - 1);
    };
    for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * in;
        int8_t* qr = q + m * ld;
        __m512 vmax = _mm512_setzero_ps();
        for (int64_t k = 0; k < in; k += 16)
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(mask(k), xr + k)));
        const float amax = _mm512_reduce_max_ps(vmax);
        scale[m] = amax / 127.0f;
        if (amax == 0) {
            std::memset(qr, 0, static_cast<size_t>(ld));
            continue;
        }
        const __m512 inv = _mm512_set1_ps(127.0f / amax);
        for (int64_t k = 0; k < in; k += 16) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask(k), xr + k), inv));
            v = _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + k), _mm512_cvtepi32_epi8(v));
        }
        std::memset(qr + in_vec, 0, static_cast<size_t>(ld - in_vec));
    }
}

// rows: scratch for 16 rows of ld int8; sx gets the n_rows tokens' scales.
__attribute__((target("avx512f"))) void pack_panel_int8(uint8_t* panel, int8_t* rows, float* sx,
                                                        const float* x, int64_t n_rows, int64_t in,
                                                        int64_t ld) {
    quantize_rows_avx512(rows, sx, x, n_rows, in, ld);
    std::memset(rows + n_rows * ld, 0, static_cast<size_t>((kTile - n_rows) * ld));
    panel_from_rows(panel, reinterpret_cast<const uint8_t*>(rows), ld);
}

// B: ceil(M / 16) panels of 16·ld·elem bytes; sx (int8): the M token scales.
// serial: on the calling thread only.
template <bool kInt8>
void pack_x(uint8_t* B, float* sx, const float* x, int64_t M, int64_t in, int64_t ld, bool serial) {
    const int64_t panel_bytes = kTile * ld * (kInt8 ? 1 : 2), panels = ceil_div(M, kTile);
    parallel_for(
        panels,
        [&](int64_t p0, int64_t p1) {
            thread_local Scratch rows_scratch;
            void* rows = rows_scratch.get(static_cast<size_t>(panel_bytes));
            for (int64_t p = p0; p < p1; ++p) {
                const int64_t m0 = p * kTile, n_rows = std::min(kTile, M - m0);
                if constexpr (kInt8)
                    pack_panel_int8(B + p * panel_bytes, static_cast<int8_t*>(rows), sx + m0, x + m0 * in,
                                    n_rows, in, ld);
                else
                    pack_panel_bf16(B + p * panel_bytes, static_cast<uint16_t*>(rows), x + m0 * in, n_rows,
                                    in, ld);
            }
        },
        serial ? panels : 1);
}

// Writes the 32 floats (v0, v1) at p in whole 64-byte lines, the first and the last only in part
// (masked stores), so that no store straddles two lines: rows of y are `out` floats apart, so most
// start inside a line, and straddling stores cost ~15% of the whole product at out = 3352 in a
// microbenchmark. The block to the right writes the rest of the shared lines next, while they are
// still in L1.
__attribute__((target("avx512f"), always_inline)) inline void store_32(float* p, __m512 v0, __m512 v1) {
    const auto addr = reinterpret_cast<uintptr_t>(p);
    const unsigned o = static_cast<unsigned>(addr % 64) / 4;  // floats into its line
    if (o == 0) {
        _mm512_store_ps(p, v0);
        _mm512_store_ps(p + 16, v1);
        return;
    }
    const V16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const auto idx = reinterpret_cast<__m512i>(lane + static_cast<int32_t>(16 - o));  // (a, b)[k + 16 - o]
    auto* line = reinterpret_cast<float*>(addr - o * 4);
    _mm512_mask_store_ps(line, static_cast<__mmask16>(0xffffu << o), _mm512_permutex2var_ps(v0, idx, v0));
    _mm512_store_ps(line + 16, _mm512_permutex2var_ps(v0, idx, v1));
    _mm512_mask_store_ps(line + 32, static_cast<__mmask16>((1u << o) - 1),
                         _mm512_permutex2var_ps(v1, idx, v1));
}

// Writes the C tiles of one block (rows n0 .. n0 + 31 of W × tokens m0 .. m0 + 31, `cols` and
// `tokens` of them real) into y (M, out), transposed, with the bias added (and the int8 scales
// applied).
template <bool kInt8>
__attribute__((target("avx512f"), always_inline)) inline void store_block(const AmxProduct& p,
                                                                          const int32_t* c, int64_t m0,
                                                                          int64_t tokens, int64_t n0,
                                                                          int64_t cols) {
    const int64_t out = p.W->out;
    __m512 bias[2] = {}, scale[2] = {};
    if (p.b) std::memcpy(bias, p.b + n0, static_cast<size_t>(cols) * sizeof(float));
    if constexpr (kInt8)  // the scales are padded to out_padded, a multiple of 16
        std::memcpy(scale, p.W->scale.get() + n0, static_cast<size_t>(cols > kTile ? 2 : 1) * sizeof(__m512));
    for (int64_t ib = 0; ib * kTile < tokens; ++ib) {
        V16 rows[2][16];  // rows[a][t]: tile (a, ib) transposed, token t's 16 outputs
        transpose16(rows[0], c + ib * 256);
        if (cols > kTile) transpose16(rows[1], c + (2 + ib) * 256);
        for (int64_t t = 0; t < std::min(kTile, tokens - ib * kTile); ++t) {
            const int64_t m = m0 + ib * kTile + t;
            __m512 v[2] = {};
            for (int a = 0; a < (cols > kTile ? 2 : 1); ++a) {
                if constexpr (kInt8) {  // as dequantize_int8 (packed_kernels.h), on vectors
                    __m512 prod = scale[a] * p.sx[m] * __builtin_convertvector(rows[a][t], __m512);
                    asm("" : "+v"(prod));
                    v[a] = prod + bias[a];
                } else {
                    v[a] = reinterpret_cast<__m512>(rows[a][t]) + bias[a];
                }
            }
            float* yr = p.y + m * out + n0;
            if (cols == 2 * kTile) {
                store_32(yr, v[0], v[1]);
            } else {
                _mm512_mask_storeu_ps(yr, static_cast<__mmask16>((1u << std::min<int64_t>(cols, kTile)) - 1),
                                      v[0]);
                if (cols > kTile)
                    _mm512_mask_storeu_ps(yr + kTile, static_cast<__mmask16>((1u << (cols - kTile)) - 1),
                                          v[1]);
            }
        }
    }
}

// One block: C = rows n0 .. n0 + 31 of W × tokens m0 .. m0 + 31 (fewer at the ends), into y.
template <bool kInt8>
__attribute__((target("amx-tile,amx-bf16,amx-int8,avx512f"), always_inline)) inline void amx_block(
    const AmxProduct& p, int32_t* c, int64_t rb, int64_t tb) {
    const int64_t n0 = rb * 2 * kTile, cols = std::min(2 * kTile, p.W->out - n0);
    const int64_t m0 = tb * 2 * kTile, tokens = std::min(2 * kTile, p.M - m0);
    const uint8_t* a = static_cast<const uint8_t*>(p.W->data.get()) + n0 * p.w_stride;
    const uint8_t* b0 = p.B + (m0 / kTile) * p.panel_bytes;
    const uint8_t* b1 = b0 + p.panel_bytes;
    if (cols > kTile && tokens > kTile)
        tile_block<kInt8, 2, 2>(a, p.w_stride, b0, b1, p.steps, c);
    else if (cols > kTile)
        tile_block<kInt8, 2, 1>(a, p.w_stride, b0, b1, p.steps, c);
    else if (tokens > kTile)
        tile_block<kInt8, 1, 2>(a, p.w_stride, b0, b1, p.steps, c);
    else
        tile_block<kInt8, 1, 1>(a, p.w_stride, b0, b1, p.steps, c);
    store_block<kInt8>(p, c, m0, tokens, n0, cols);
}

// Items [item0, item1): row blocks of 32 rows of W, each against a chunk of the token blocks.
// With one chunk (every token block), the row blocks go in groups whose rows of W fit in L2
// (kGroupBytes), each group against one token block after another: W is read from memory once,
// the token panels stay in L2, and consecutive blocks write adjacent columns of y.
template <bool kInt8>
__attribute__((target("amx-tile,amx-bf16,amx-int8,avx512f"))) void amx_items(const AmxProduct& p,
                                                                             int64_t item0, int64_t item1) {
    constexpr int64_t kGroupBytes = 1 << 20;
    alignas(64) int32_t c[4 * 256];  // 4 C tiles (fp32 or int32), tile a·2 + b
    tiles_configure();
    if (p.token_chunks == 1) {
        const int64_t group = std::max<int64_t>(1, kGroupBytes / (2 * kTile * p.w_stride));
        for (int64_t g0 = item0; g0 < item1; g0 += group)
            for (int64_t tb = 0; tb < p.token_blocks; ++tb)
                for (int64_t rb = g0; rb < std::min(item1, g0 + group); ++rb) amx_block<kInt8>(p, c, rb, tb);
    } else {
        for (int64_t item = item0; item < item1; ++item) {
            const int64_t rb = item / p.token_chunks, chunk = item % p.token_chunks;
            const int64_t tb0 = chunk * p.token_blocks / p.token_chunks;
            const int64_t tb1 = (chunk + 1) * p.token_blocks / p.token_chunks;
            for (int64_t tb = tb0; tb < tb1; ++tb) amx_block<kInt8>(p, c, rb, tb);
        }
    }
    tiles_release();
}

// Products of fewer multiply-adds (M · out · in) run on the calling thread alone. On the 2-vCPU
// development VM (two hyperthreads of one core, so one AMX unit) a second thread cost more in
// synchronisation than it saved up to about this size (bench_packed_gemm, M = 128: 2.3× slower on
// 2 threads than on 1 at 296 × 64 and 2.5× at 64 × 128, even at 512 × 64, ahead at 1024 × 64).
// Every y element is the same accumulation either way.
constexpr int64_t kSerialMacs = int64_t(1) << 22;

template <bool kInt8>
void amx_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M) {
    thread_local Scratch b_scratch, sx_scratch;
    const int64_t elem = kInt8 ? 1 : 2;
    AmxProduct p{};
    p.y = y;
    p.W = &W;
    p.b = b;
    p.M = M;
    p.w_stride = W.ld * elem;
    p.steps = p.w_stride / 64;
    p.panel_bytes = kTile * p.w_stride;
    auto* B = static_cast<uint8_t*>(b_scratch.get(static_cast<size_t>(ceil_div(M, kTile) * p.panel_bytes)));
    auto* sx = kInt8 ? static_cast<float*>(sx_scratch.get(static_cast<size_t>(M) * sizeof(float))) : nullptr;
    const bool serial = M * W.out * W.in < kSerialMacs;
    pack_x<kInt8>(B, sx, x, M, W.in, W.ld, serial);
    p.B = B;
    p.sx = sx;
    // Split over blocks of 32 rows of W; when there are few, over chunks of the tokens as well, so
    // that every thread has several items.
    const int64_t row_blocks = ceil_div(W.out, 2 * kTile);
    p.token_blocks = ceil_div(M, 2 * kTile);
    const int64_t want = 4 * static_cast<int64_t>(serial ? 1 : num_threads());
    p.token_chunks = row_blocks >= want ? 1 : std::min(p.token_blocks, ceil_div(want, row_blocks));
    const int64_t items = row_blocks * p.token_chunks;
    parallel_for(
        items, [&](int64_t i0, int64_t i1) { amx_items<kInt8>(p, i0, i1); }, serial ? items : 1);
}
#endif  // MSLM_PACKED_GEMM_X86

// ---------------------------------------------------------------------------------------------
// Fallback.

// x rounded to bf16 and W widened to fp32, 128 rows at a time, through mslm::gemm (OpenBLAS sgemm,
// fp32 accumulation). The panels are fixed (not sized by the thread count), so each y element is
// the same sgemm call's whatever the pool's size.
void fallback_bf16(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M) {
    constexpr int64_t kPanel = 128;
    thread_local Scratch xr_scratch;
    auto* xr = static_cast<float*>(xr_scratch.get(static_cast<size_t>(M * W.in) * sizeof(float)));
    const int64_t in = W.in, out = W.out;
    parallel_for(
        M * in,
        [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) {
                const uint32_t u = static_cast<uint32_t>(to_bf16(x[i])) << 16;
                std::memcpy(xr + i, &u, 4);
            }
        },
        1 << 14);
    parallel_for(ceil_div(out, kPanel), [&](int64_t p0, int64_t p1) {
        thread_local Scratch wf_scratch;
        auto* wf = static_cast<float*>(wf_scratch.get(static_cast<size_t>(kPanel * in) * sizeof(float)));
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t n0 = p * kPanel, rows = std::min(kPanel, out - n0);
            for (int64_t r = 0; r < rows; ++r) {
                const uint16_t* wr = W.bf16() + (n0 + r) * W.ld;
                for (int64_t c = 0; c < in; ++c) {
                    const uint32_t u = static_cast<uint32_t>(wr[c]) << 16;
                    std::memcpy(wf + r * in + c, &u, 4);
                }
            }
            gemm<float>(false, true, static_cast<int>(M), static_cast<int>(rows), static_cast<int>(in), 1.0f,
                        xr, static_cast<int>(in), wf, static_cast<int>(in), 0.0f, y + n0,
                        static_cast<int>(out));
            for (int64_t m = 0; m < M; ++m) {
                float* yr = y + m * out + n0;
                for (int64_t r = 0; r < rows; ++r) yr[r] = yr[r] + (b ? b[n0 + r] : 0.0f);
            }
        }
    });
}

int32_t dot_int8(const int8_t* a, const int8_t* w, int64_t n) {
    int32_t s = 0;
    for (int64_t k = 0; k < n; ++k) s += static_cast<int32_t>(a[k]) * static_cast<int32_t>(w[k]);
    return s;
}

// acc[t·4 + r] = Σ_k q_t[k]·w_r[k] for 4 tokens × 4 rows of W, rows ld bytes apart (ld a multiple of
// 64), exact in int32. Plain loops the compiler vectorises.
void dot4x4_portable(int32_t* acc, const int8_t* q, const int8_t* w, const int32_t* row_sum, int64_t ld) {
    for (int t = 0; t < 4; ++t)
        for (int r = 0; r < 4; ++r) acc[t * 4 + r] = dot_int8(q + t * ld, w + r * ld, ld);
}

#ifdef MSLM_PACKED_GEMM_X86
bool cpu_has_avx512_vnni() {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

// The same with AVX-512 VNNI. VPDPBUSD multiplies unsigned by signed bytes (4 products summed into
// each int32 lane, without saturation), so the tokens go in as q + 128 (q ^ 0x80) and
// 128·Σ_k w_r[k], the packed row sum, comes off at the end: exact as well.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void dot4x4_vnni(int32_t* acc, const int8_t* q,
                                                                        const int8_t* w,
                                                                        const int32_t* row_sum, int64_t ld) {
    __m512i sum[4][4];
    for (auto& st : sum)
        for (auto& v : st) v = _mm512_setzero_si512();
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int64_t k = 0; k < ld; k += 64) {
        __m512i wv[4];
        for (int r = 0; r < 4; ++r) wv[r] = _mm512_loadu_si512(w + r * ld + k);
        for (int t = 0; t < 4; ++t) {
            const __m512i xv = _mm512_xor_si512(_mm512_loadu_si512(q + t * ld + k), flip);
            for (int r = 0; r < 4; ++r) sum[t][r] = _mm512_dpbusd_epi32(sum[t][r], xv, wv[r]);
        }
    }
    for (int t = 0; t < 4; ++t)
        for (int r = 0; r < 4; ++r) {
            V16 v = reinterpret_cast<V16>(sum[t][r]);
            v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
            v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
            v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
            v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
            acc[t * 4 + r] = v[0] - 128 * row_sum[r];
        }
}
#endif

// Exact int32 dot products, 4 tokens × 4 rows of W at a time (AVX-512 VNNI where the CPU has it and
// `portable` is false, plain loops otherwise), one panel of 16 rows of W against every token so
// that the panel stays in L1. Tokens are padded with zero rows to a multiple of 4 and W has zero
// rows up to out_padded, so every block is whole; outputs past M or out are dropped.
void fallback_int8(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M,
                   bool portable) {
    thread_local Scratch q_scratch, sx_scratch;
    const int64_t ld = W.ld, M4 = round_up(M, 4);
    auto* q = static_cast<int8_t*>(q_scratch.get(static_cast<size_t>(M4 * ld)));
    auto* sx = static_cast<float*>(sx_scratch.get(static_cast<size_t>(M) * sizeof(float)));
    parallel_for(
        M,
        [&](int64_t m0, int64_t m1) {
            quantize_rows_int8(q + m0 * ld, sx + m0, x + m0 * W.in, m1 - m0, W.in, ld);
        },
        kTile);
    std::memset(q + M * ld, 0, static_cast<size_t>((M4 - M) * ld));
    auto dot4x4 = dot4x4_portable;
#ifdef MSLM_PACKED_GEMM_X86
    if (!portable && cpu_has_avx512_vnni()) dot4x4 = dot4x4_vnni;
#endif
    parallel_for(ceil_div(W.out, kTile), [&](int64_t p0, int64_t p1) {
        int32_t acc[16];
        for (int64_t p = p0; p < p1; ++p) {
            for (int64_t m0 = 0; m0 < M; m0 += 4) {
                for (int64_t n0 = p * kTile; n0 < std::min((p + 1) * kTile, W.out); n0 += 4) {
                    dot4x4(acc, q + m0 * ld, W.int8() + n0 * ld, W.row_sum.get() + n0, ld);
                    for (int64_t t = 0; t < std::min<int64_t>(4, M - m0); ++t)
                        for (int64_t r = 0; r < std::min<int64_t>(4, W.out - n0); ++r) {
                            const int64_t m = m0 + t, n = n0 + r;
                            y[m * W.out + n] =
                                dequantize_int8(W.scale.get()[n], sx[m], acc[t * 4 + r], b ? b[n] : 0.0f);
                        }
                }
            }
        }
    });
}

}  // namespace

void packed_gemm_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M) {
    if (M <= 0) return;
    MSLM_CHECK(W.format == WeightFormat::BF16 || W.format == WeightFormat::Int8,
               "packed_gemm: format {} is not packed", weight_format_name(W.format));
    const bool int8 = W.format == WeightFormat::Int8;
    const Path path = current_path().path;
#ifdef MSLM_PACKED_GEMM_X86
    if (path == Path::Amx) {
        if (int8)
            amx_forward<true>(y, x, W, b, M);
        else
            amx_forward<false>(y, x, W, b, M);
        return;
    }
#endif
    if (int8)
        fallback_int8(y, x, W, b, M, path == Path::FallbackPortable);
    else
        fallback_bf16(y, x, W, b, M);
}

std::string packed_gemm_description() {
    const PathChoice c = current_path();
    if (c.path == Path::Amx) return "amx (bf16, int8)";
    bool vnni = false;
#ifdef MSLM_PACKED_GEMM_X86
    vnni = c.path == Path::Fallback && cpu_has_avx512_vnni();
#endif
    return fmt::format("fallback ({}): bf16 via fp32 OpenBLAS, int8 via {}", c.why,
                       vnni ? "AVX-512 VNNI" : "int32 loops");
}

// Test hook (declared in tests/unit/test_packed_gemm.cpp and bench/bench_packed_gemm.cpp): "amx",
// "fallback" or "fallback-portable" forces a path for the process, as MSLM_PACKED_GEMM does;
// nullptr returns to the environment's choice.
void packed_gemm_force_path(const char* name) {
    g_forced.store(name ? static_cast<int>(choose_path(name, "packed_gemm_force_path").path) : -1,
                   std::memory_order_relaxed);
}

bool packed_gemm_amx_available() {
    return amx_usable();
}

bool packed_gemm_uses_amx() {
#ifdef MSLM_PACKED_GEMM_X86
    return current_path().path == Path::Amx;
#else
    return false;
#endif
}

}  // namespace mslm::ops::detail
