// Device helpers that turn the GPU layout of ops/cuda/quant_gemv.h back into fp32 weights: shared by
// the quantized GEMV (ops/cuda/quant_gemv.cu) and the decode step's fused GEMV
// (model/cuda_decoder_kernels.cu). Include from .cu files only.
//
// A lane reads 16 bytes of a weight row at a time: 32 4-bit codes or 16 int8 values, that is SEGS = 4
// or 2 segments of 8 columns. The matching x values sit in shared memory as 16-byte segments of 8
// bf16 columns; segment s is stored at swizzle<SEGS>(s) so that the 8 lanes of a quarter-warp, each
// reading its q-th segment, hit 8 different 16-byte bank groups (stored in order, lanes 0, 2, 4, 6
// would share one: 4-way conflicts).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "ops/cuda/quant_gemv.h"

namespace mslm::ops::cuda::quant_detail {

__device__ __forceinline__ float bf_lo(uint32_t w) {
    return __uint_as_float(w << 16);
}
__device__ __forceinline__ float bf_hi(uint32_t w) {
    return __uint_as_float(w & 0xffff0000u);
}

// A 16-byte weight load that is read once: kept out of L1.
__device__ __forceinline__ uint4 load_stream(const uint8_t* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}
// load_stream with an L2 eviction policy (ops::cuda::detail::l2_evict_first, mma.cuh); mma.cuh's
// ldg_stream is the L1-allocating form for bf16 rows.
__device__ __forceinline__ uint4 load_stream(const uint8_t* p, uint64_t policy) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p), "l"(policy));
    return v;
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;  // i is a compile-time constant
}

template <int SEGS>
__host__ __device__ __forceinline__ int64_t swizzle(int64_t s) {
    return s ^ ((s >> 3) & (SEGS - 1));
}

// A block's absmax in fp32: stored, or bitsandbytes' double quantization (code · nested absmax,
// then + offset, each rounded as bitsandbytes does: no fused multiply-add). ncode: the 256-entry
// dynamic map (shared or global memory).
template <bool DQ>
__device__ __forceinline__ float block_absmax(const QuantWeight& W, const float* ncode, int64_t row, int64_t b) {
    const int64_t i = row * W.row_blocks + b;
    if constexpr (DQ) {
        return __fadd_rn(__fmul_rn(ncode[__ldg(W.absmax_q + i)], __ldg(W.nested_absmax + (i >> 8))), W.offset);
    } else {
        return __ldg(W.scale + i);
    }
}

// The fp32 value of byte i of four int8 values: 2^23 + (q + 128) built by a byte permute, minus
// 2^23 + 128 (exact), instead of a quarter-rate int-to-float conversion.
__device__ __forceinline__ float int8_value(uint32_t biased, int i) {
    return __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7440u | unsigned(i))) - 8388736.0f;
}

// The 8 weights of 16-byte segment q of a load: 4-bit — byte i of the segment's word holds columns
// 2i (high nibble) and 2i + 1 (low), and the nibbles times 4 are byte offsets into the code book
// (16 fp32 words in shared memory: 16 banks, so no two lanes ever conflict); int8 — bytes 8q .. 8q + 7.
template <bool FOUR>
__device__ __forceinline__ void decode8(float (&wv)[8], const uint4& w, int q, const char* code_base) {
    if constexpr (FOUR) {
        const uint32_t word = word_of(w, q);
        const uint32_t hi4 = (word >> 2) & 0x3c3c3c3cu, lo4 = (word << 2) & 0x3c3c3c3cu;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            wv[2 * i] = *reinterpret_cast<const float*>(code_base + __byte_perm(hi4, 0, 0x4440 | i));
            wv[2 * i + 1] = *reinterpret_cast<const float*>(code_base + __byte_perm(lo4, 0, 0x4440 | i));
        }
    } else {
        (void)code_base;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint32_t biased = word_of(w, 2 * q + h) ^ 0x80808080u;
#pragma unroll
            for (int i = 0; i < 4; ++i) wv[4 * h + i] = int8_value(biased, i);
        }
    }
}

// decode8 for 4-bit codes with the code book at shared-memory address `book` (32-bit, from
// __cvta_generic_to_shared, 256-byte aligned): one byte permute builds each value's full address —
// the nibble times 4 as the low byte, the book's upper three bytes above it — then one `ld.shared`.
__device__ __forceinline__ void decode8_shared(float (&wv)[8], uint32_t word, uint32_t book) {
    const uint32_t hi4 = (word >> 2) & 0x3c3c3c3cu, lo4 = (word << 2) & 0x3c3c3c3cu;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        asm("ld.shared.f32 %0, [%1];" : "=f"(wv[2 * i]) : "r"(__byte_perm(hi4, book, 0x7650u | unsigned(i))));
        asm("ld.shared.f32 %0, [%1];" : "=f"(wv[2 * i + 1]) : "r"(__byte_perm(lo4, book, 0x7650u | unsigned(i))));
    }
}

// Four fp32 values at shared-memory address `at` (16-byte aligned).
__device__ __forceinline__ float4 load_shared4(uint32_t at) {
    float4 v;
    asm("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(at));
    return v;
}

// The 8 bf16 x values of one staged segment, in fp32.
__device__ __forceinline__ void load_x(float (&xf)[8], const uint16_t* p) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    xf[0] = bf_lo(v.x), xf[1] = bf_hi(v.x), xf[2] = bf_lo(v.y), xf[3] = bf_hi(v.y);
    xf[4] = bf_lo(v.z), xf[5] = bf_hi(v.z), xf[6] = bf_lo(v.w), xf[7] = bf_hi(v.w);
}

__device__ __forceinline__ float dot8(const float (&w)[8], const float (&x)[8]) {
    float p = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) p = fmaf(w[e], x[e], p);
    return p;
}

// ---- 4-bit codes as fp16 pairs, for tensor-core products (decode_gemv's batch-1 path)
//
// The code book rounded to fp16 (nearest even: each code moves by ≤ 2^-11 of itself; bitsandbytes'
// own 4-bit GEMV rounds the dequantized weight to the compute dtype, bf16's 2^-9). The 8 codes of
// a word (byte i: code 2i in the high nibble, 2i + 1 in the low) become 4 fp16 pairs, p[i] = (code
// 2i, code 2i + 1) with the first in the low half, by a table in shared memory: entry e (a byte of
// codes: e >> 4 the first column's, e & 15 the second's) is the pair (code[e >> 4], code[e & 15]),
// kPairBookCopies copies interleaved (entry e of copy c at word e · kPairBookCopies + c) so that the
// lanes, reading with c = lane % kPairBookCopies, spread over more banks. book_lane: the table's
// shared-memory address plus 4 · (lane % kPairBookCopies). One shared load per 2 codes, its address
// from two full-rate logic ops. (Byte permutes from a register code book — 21 instructions per 8
// codes — measured the same speed: docs/PERFORMANCE.md.)
constexpr int kPairBookCopies = 8;
constexpr size_t kPairBookBytes = 256 * kPairBookCopies * sizeof(uint32_t);
__device__ __forceinline__ uint32_t pair_book_entry(const float (&code)[16], int e) {
    return uint32_t(__half_as_ushort(__float2half_rn(code[e >> 4]))) |
           uint32_t(__half_as_ushort(__float2half_rn(code[e & 15]))) << 16;
}
__device__ __forceinline__ uint32_t lds32(uint32_t at) {
    uint32_t v;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(at));
    return v;
}
__device__ __forceinline__ void decode8_table(uint32_t (&p)[4], uint32_t w, uint32_t book_lane) {
    static_assert(kPairBookCopies == 8, "the shifts below place a byte at 32 bytes an entry");
    p[0] = lds32(book_lane + ((w << 5) & 0x1fe0u));
    p[1] = lds32(book_lane + ((w >> 3) & 0x1fe0u));
    p[2] = lds32(book_lane + ((w >> 11) & 0x1fe0u));
    p[3] = lds32(book_lane + ((w >> 19) & 0x1fe0u));
}

// ---- 4-bit codes and x as int8, for dp4a products (decode_gemv's batch-1 path, DP)
//
// The code book times 127 rounded to integers: each weight moves by ≤ 0.5/127 of its block's
// absmax (bitsandbytes' NF4 steps are ≥ 0.08 of it). Byte c of the four words is code c's value.
// x is quantized per 32 columns (one 16-byte load of codes) the same way: q = rn(x · (127 / m)),
// m the group's largest magnitude, and the product scaled back by m / 127² (see x_group_scale).
__host__ __device__ inline int code_i8(float c) {
    return int(rintf(c * 127.0f));  // nearest, ties to even
}
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
// The 8 codes of a word (byte i: column 2i in the high nibble, 2i + 1 in the low) as int8 values,
// v0 = columns (1, 0, 3, 2) and v1 = (5, 4, 7, 6), byte 0 first — the nibbles' own order, so each
// nibble serves as a byte-permute selector: its low 3 bits pick the entry among the book's low
// (entries 0..7) or high (8..15) 8 bytes, and a third permute takes the half its bit 3 names (in a
// selector, bit 3 would replicate the sign instead). x is staged in the same column order.
__device__ __forceinline__ void decode8_i8(uint32_t& v0, uint32_t& v1, uint32_t w,
                                           const uint32_t (&book)[4]) {
    const uint32_t idx = w & 0x77777777u;
    const uint32_t half = ((w >> 1) & 0x44444444u) | 0x32103210u;  // byte k: k (low half) or k + 4 (high)
    v0 = prmt(prmt(book[0], book[1], idx), prmt(book[2], book[3], idx), half);
    const uint32_t idx_hi = idx >> 16, half_hi = half >> 16;
    v1 = prmt(prmt(book[0], book[1], idx_hi), prmt(book[2], book[3], idx_hi), half_hi);
}
// x value v of a group whose 127 / m is inv, as int8 (inv = 0 for an all-zero group).
__device__ __forceinline__ uint32_t x_i8(float v, float inv) {
    return uint32_t(__float2int_rn(__fmul_rn(v, inv))) & 0xffu;
}
// 127 / m for a group with largest magnitude m (0 when m is 0), rounded to nearest.
__device__ __forceinline__ float x_group_inv(float m) {
    return m > 0.0f ? __fdiv_rn(127.0f, m) : 0.0f;
}
// The int8 values b[0..7] of 8 consecutive columns as the two words decode8_i8's v0, v1 meet: columns
// (1, 0, 3, 2) and (5, 4, 7, 6), byte 0 first.
__device__ __forceinline__ uint2 pack_segment_i8(const uint32_t (&b)[8]) {
    return make_uint2(b[1] | b[0] << 8 | b[3] << 16 | b[2] << 24, b[5] | b[4] << 8 | b[7] << 16 | b[6] << 24);
}
// Where segment j (columns 8j .. 8j + 7: code word j of a 16-byte load) of x group g sits among the
// group's 32 bytes: half j / 2 — the two halves swapped in groups with bit 2 of g set, so that the 8
// lanes of a quarter-warp reading consecutive groups hit 8 bank groups — then pair j % 2 of the half.
__host__ __device__ inline uint32_t x_segment_at(int64_t g, int j) {
    return uint32_t((((j >> 1) ^ int((g >> 2) & 1)) * 16) + (j & 1) * 8);
}
// The book of decode8_i8 from the fp32 code book: byte c of the words is code_i8(code[c]).
__device__ __forceinline__ void int8_book(uint32_t (&book)[4], const float (&code)[16]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint32_t w = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) w |= uint32_t(code_i8(code[4 * i + j]) & 0xff) << (8 * j);
        book[i] = w;
    }
}
// The 32 codes of a 16-byte load as int8 (decode8_i8 per word: v[2q], v[2q + 1] from word q).
__device__ __forceinline__ void decode32_i8(uint32_t (&v)[8], const uint4& w, const uint32_t (&book)[4]) {
#pragma unroll
    for (int q = 0; q < 4; ++q) decode8_i8(v[2 * q], v[2 * q + 1], word_of(w, q), book);
}
// Σ over the 32 columns of decoded codes v and a group of x (xa: its first 16 bytes in order, xb: the
// second; 8 words as pack_segment_i8 wrote them), by dp4a: exact.
__device__ __forceinline__ int dot32_i8(const uint32_t (&v)[8], const uint4& xa, const uint4& xb) {
    const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
    int sum = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum = __dp4a(int(v[i]), int(xw[i]), sum);
    return sum;
}
// The scale of a quantized group of x with largest magnitude m: m / 127², so that Σ q · code_i8 ·
// scale is the product with both factors back at their size.
__host__ __device__ inline float x_group_scale(float m) {
    return m / 16129.0f;
}
__device__ __forceinline__ uint2 lds64(uint32_t at) {
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(at));
    return v;
}
__device__ __forceinline__ uint4 lds128(uint32_t at) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(at));
    return v;
}

}  // namespace mslm::ops::cuda::quant_detail
