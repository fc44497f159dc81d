// Every product and quotient below is one IEEE fp32 operation as in the PyTorch reference; no
// fused multiply-add may replace a pair of them (-march=native enables FMA), hence the pragmas.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "quant/bnb.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace mslm::quant {

namespace {

constexpr std::array<float, 16> kNf4 = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};

// get_4bit_type("fp4") divides by the largest magnitude (12) in fp32.
std::array<float, 16> make_fp4() {
    // Code 8 is +0: bitsandbytes' list spells it `-0`, a Python int, which is plain zero (the
    // quant_map transformers saves holds +0.0 there).
    const float raw[16] = {0, 0.0625f, 8, 12, 4, 6, 2, 3, 0, -0.0625f, -8, -12, -4, -6, -2, -3};
    std::array<float, 16> c{};
    for (int i = 0; i < 16; ++i) c[static_cast<size_t>(i)] = raw[i] / 12.0f;
    return c;
}

// Nearest-value search as the reference does it: torch.bucketize(s, midpoints, right=False) over
// the sorted code, i.e. the index of the first midpoint m with s <= m. A value exactly on a
// midpoint therefore goes to the lower of its two neighbours (towards -1); NaN goes past every
// midpoint, to the largest value.
// The 4-bit codes' 15 midpoints are counted instead (the predicate is monotone over the sorted
// midpoints, so the count of those with !(s <= m) is the partition point): branch-free and
// vectorisable, where the binary search's branches mispredict — 2.4× faster packing of a model.
template <size_t N>
int bucketize(float s, const std::array<float, N>& mid) {
    if constexpr (N <= 16) {
        int n = 0;
        for (size_t i = 0; i < N; ++i) n += !(s <= mid[i]);
        return n;
    } else {
        return static_cast<int>(
            std::partition_point(mid.begin(), mid.end(), [s](float m) { return !(s <= m); }) - mid.begin());
    }
}

template <size_t N>
std::array<float, N - 1> midpoints(const std::array<float, N>& sorted) {
    std::array<float, N - 1> m{};
    for (size_t i = 0; i + 1 < N; ++i) m[i] = (sorted[i] + sorted[i + 1]) / 2.0f;
    return m;
}

// The 4-bit code sorted ascending (sorted[i] = code[order[i]]) and its midpoints. FP4 holds zero
// twice (code 0, and code 8 whose sign bit is set); torch.argsort put code 0 first, so 0 (and -0,
// since -0 <= 0) quantizes to code 0 and (0, 0.0026] to code 8. NF4 is sorted already (order =
// identity).
struct Sorted4 {
    std::array<int, 16> order{};
    std::array<float, 15> mid{};
};

const Sorted4& sorted4(Bnb4Type type) {
    static const Sorted4 nf4 = [] {
        Sorted4 s;
        for (int i = 0; i < 16; ++i) s.order[static_cast<size_t>(i)] = i;
        s.mid = midpoints(kNf4);
        return s;
    }();
    static const Sorted4 fp4 = [] {
        Sorted4 s;
        s.order = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};
        std::array<float, 16> v{};
        for (size_t i = 0; i < 16; ++i) v[i] = bnb4_code(Bnb4Type::FP4)[static_cast<size_t>(s.order[i])];
        s.mid = midpoints(v);
        return s;
    }();
    return type == Bnb4Type::NF4 ? nf4 : fp4;
}

// torch.max(abs): NaN wins.
float block_absmax(std::span<const float> x) {
    float m = 0;
    for (float v : x) {
        const float a = std::fabs(v);
        if (std::isnan(a)) return a;
        m = std::max(m, a);
    }
    return m;
}

float clamp_unit(float v) { return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v); }  // NaN stays NaN

// The reference's blockwise scaling: a full block multiplies by 1/max(absmax, 1e-38) and stores
// absmax unclamped (0 for an all-zero block); the last partial block divides by max(absmax, 1e-38)
// and stores that clamped value. Calls emit(i, s) with s in [-1, 1] (or NaN) — for the full blocks
// from the thread pool, a block's indices from one task (so emit must not share state across
// blocks: the 4-bit codes of a block fill whole bytes, its blocksize being even).
template <typename Emit>
std::vector<float> scale_blocks(std::span<const float> x, int64_t blocksize, Emit emit) {
    const int64_t n = static_cast<int64_t>(x.size());
    const int64_t full = n / blocksize;
    std::vector<float> absmax(static_cast<size_t>((n + blocksize - 1) / blocksize));
    parallel_for(
        full,
        [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
                const std::span<const float> blk =
                    x.subspan(static_cast<size_t>(b * blocksize), static_cast<size_t>(blocksize));
                const float am = block_absmax(blk);
                absmax[static_cast<size_t>(b)] = am;
                const float c = am < 1e-38f ? 1e-38f : am;
                const float inv = 1.0f / c;
                for (int64_t i = 0; i < blocksize; ++i)
                    emit(b * blocksize + i, clamp_unit(blk[static_cast<size_t>(i)] * inv));
            }
        },
        std::max<int64_t>(1, 16384 / blocksize));
    if (n > full * blocksize) {
        const std::span<const float> blk = x.subspan(static_cast<size_t>(full * blocksize));
        float am = block_absmax(blk);
        am = am < 1e-38f ? 1e-38f : am;
        absmax[static_cast<size_t>(full)] = am;
        for (size_t i = 0; i < blk.size(); ++i) emit(full * blocksize + static_cast<int64_t>(i), clamp_unit(blk[i] / am));
    }
    return absmax;
}

// torch's CPU float sum of a contiguous vector (aten/src/ATen/native/cpu/SumKernel.cpp,
// cascade_sum), which bitsandbytes' `absmax.mean()` runs as sum(...).div_(n): eight-lane vector
// accumulators (torch registers this kernel at AVX2 width, also on AVX-512 CPUs), four of them
// interleaved (ILP), each a four-level cascade that flushes a level every 2^4 (or more) additions;
// then the scalar tail and the lanes, in that order, into one float. Verified against torch 2.x
// for 1..120000 values. torch splits inputs of more than 32768 values over its threads, and CUDA
// reduces in another order, so there its mean can differ from this one by an ulp.
template <int W>
using Lanes = std::array<float, W>;

template <int W>
void add_lanes(Lanes<W>& a, const Lanes<W>& b) {
    for (int l = 0; l < W; ++l) a[static_cast<size_t>(l)] += b[static_cast<size_t>(l)];
}

// multi_row_sum: `size` steps, each adding kRows vectors load(i, k) into kRows cascades.
template <int W, int kRows, typename Load>
std::array<Lanes<W>, kRows> cascade_rows(Load load, int64_t size) {
    constexpr int kLevels = 4;
    const int64_t ceil_log2 = size <= 2 ? 1 : 64 - __builtin_clzll(static_cast<uint64_t>(size - 1));
    const int64_t level_power = std::max<int64_t>(4, ceil_log2 / kLevels);
    const int64_t level_step = int64_t{1} << level_power, level_mask = level_step - 1;
    std::array<std::array<Lanes<W>, kRows>, kLevels> acc{};
    int64_t i = 0;
    while (i + level_step <= size) {
        for (int64_t j = 0; j < level_step; ++j, ++i)
            for (int k = 0; k < kRows; ++k) add_lanes<W>(acc[0][static_cast<size_t>(k)], load(i, k));
        for (int j = 1; j < kLevels; ++j) {
            for (int k = 0; k < kRows; ++k) {
                add_lanes<W>(acc[static_cast<size_t>(j)][static_cast<size_t>(k)], acc[static_cast<size_t>(j - 1)][static_cast<size_t>(k)]);
                acc[static_cast<size_t>(j - 1)][static_cast<size_t>(k)] = Lanes<W>{};
            }
            if ((i & (level_mask << (j * level_power))) != 0) break;
        }
    }
    for (; i < size; ++i)
        for (int k = 0; k < kRows; ++k) add_lanes<W>(acc[0][static_cast<size_t>(k)], load(i, k));
    for (int j = 1; j < kLevels; ++j)
        for (int k = 0; k < kRows; ++k) add_lanes<W>(acc[0][static_cast<size_t>(k)], acc[static_cast<size_t>(j)][static_cast<size_t>(k)]);
    return acc[0];
}

// row_sum: `size` vectors load(i) summed four at a time.
template <int W, typename Load>
Lanes<W> cascade_sum(Load load, int64_t size) {
    constexpr int kIlp = 4;
    const int64_t steps = size / kIlp;
    std::array<Lanes<W>, kIlp> part = cascade_rows<W, kIlp>([&](int64_t i, int k) { return load(i * kIlp + k); }, steps);
    for (int64_t i = steps * kIlp; i < size; ++i) add_lanes<W>(part[0], load(i));
    for (int k = 1; k < kIlp; ++k) add_lanes<W>(part[0], part[static_cast<size_t>(k)]);
    return part[0];
}

float torch_cpu_sum(std::span<const float> x) {
    constexpr int W = 8;
    const auto n = static_cast<int64_t>(x.size());
    if (n < W) return 0.0f + cascade_sum<1>([&](int64_t i) { return Lanes<1>{x[static_cast<size_t>(i)]}; }, n)[0];
    const int64_t vecs = n / W;
    const Lanes<W> v = cascade_sum<W>(
        [&](int64_t i) {
            Lanes<W> r;
            std::copy_n(x.begin() + i * W, W, r.begin());
            return r;
        },
        vecs);
    float total = 0.0f;
    for (int64_t k = vecs * W; k < n; ++k) total += x[static_cast<size_t>(k)];
    for (int l = 0; l < W; ++l) total += v[static_cast<size_t>(l)];
    return total;
}

void check_8bit_blocksize(int64_t blocksize) {
    MSLM_CHECK(blocksize > 0, "blockwise quantization: blocksize must be positive, got {}", blocksize);
}

}  // namespace

const std::array<float, 16>& bnb4_code(Bnb4Type type) {
    static const std::array<float, 16> fp4 = make_fp4();
    return type == Bnb4Type::NF4 ? kNf4 : fp4;
}

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent i = 0..6,
// 2^i + 1 boundaries torch.linspace(0.1, 1) in fp32, their midpoints, times ±10^(i-6); then 0 and
// 1, sorted. torch.linspace (CPU) computes step = (end - start)/(steps - 1) in fp32 and fills the
// first half as start + step·k and the second as end - step·(steps - 1 - k), each a fused
// multiply-add in fp32 (one rounding: checked against torch 2.x for 2..129 points, where the
// unfused form differs by an ulp in up to a fifth of the entries); the Python scalar 10^(i-6)
// multiplies the fp32 tensor as an fp32 value.
const std::array<float, 256>& bnb_dynamic_map() {
    static const std::array<float, 256> map = [] {
        std::vector<float> data;
        for (int i = 0; i < 7; ++i) {
            const int64_t steps = (int64_t{1} << i) + 1;
            std::vector<float> bounds(static_cast<size_t>(steps));
            const float step = (1.0f - 0.1f) / static_cast<float>(steps - 1);
            for (int64_t k = 0; k < steps; ++k) {
                bounds[static_cast<size_t>(k)] = k < steps / 2
                                                     ? std::fma(step, static_cast<float>(k), 0.1f)
                                                     : std::fma(-step, static_cast<float>(steps - 1 - k), 1.0f);
            }
            const float scale = static_cast<float>(std::pow(10.0, i - 6));
            for (int64_t k = 0; k + 1 < steps; ++k) {
                const float mean = (bounds[static_cast<size_t>(k)] + bounds[static_cast<size_t>(k + 1)]) / 2.0f;
                data.push_back(scale * mean);
                data.push_back(-scale * mean);
            }
        }
        data.push_back(0.0f);
        data.push_back(1.0f);
        std::sort(data.begin(), data.end());
        std::array<float, 256> out{};
        std::copy(data.begin(), data.end(), out.begin());
        return out;
    }();
    return map;
}

void check_bnb4_blocksize(int64_t blocksize) {
    MSLM_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
               "4-bit quantization: blocksize {} is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096", blocksize);
}

Bnb4Quantized bnb4_quantize(std::span<const float> x, Bnb4Type type, int64_t blocksize) {
    check_bnb4_blocksize(blocksize);
    const Sorted4& s = sorted4(type);
    Bnb4Quantized out;
    // An odd count pads with one 0.0 after scaling, so its low nibble is the code of 0.
    out.packed.assign((x.size() + 1) / 2, 0);
    const uint8_t zero_code = static_cast<uint8_t>(s.order[static_cast<size_t>(bucketize(0.0f, s.mid))]);
    if (x.size() % 2) out.packed.back() = zero_code;
    out.absmax = scale_blocks(x, blocksize, [&](int64_t i, float v) {
        const uint8_t q = static_cast<uint8_t>(s.order[static_cast<size_t>(bucketize(v, s.mid))]);
        uint8_t& byte = out.packed[static_cast<size_t>(i / 2)];
        byte = static_cast<uint8_t>(i % 2 ? (byte & 0xF0) | q : (byte & 0x0F) | (q << 4));
    });
    return out;
}

void bnb4_dequantize(std::span<const uint8_t> packed, std::span<const float> absmax, Bnb4Type type,
                     int64_t blocksize, std::span<float> out) {
    check_bnb4_blocksize(blocksize);
    const int64_t n = static_cast<int64_t>(out.size());
    MSLM_CHECK(static_cast<int64_t>(packed.size()) == (n + 1) / 2, "4-bit dequantize: {} bytes for {} values",
               packed.size(), n);
    MSLM_CHECK(static_cast<int64_t>(absmax.size()) == (n + blocksize - 1) / blocksize,
               "4-bit dequantize: {} absmax values for {} values in blocks of {}", absmax.size(), n, blocksize);
    const std::array<float, 16>& code = bnb4_code(type);
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t byte = packed[static_cast<size_t>(i / 2)];
        const int q = i % 2 ? byte & 0xF : byte >> 4;
        out[static_cast<size_t>(i)] = code[static_cast<size_t>(q)] * absmax[static_cast<size_t>(i / blocksize)];
    }
}

Blockwise8Quantized quantize_blockwise_8bit(std::span<const float> x, int64_t blocksize,
                                            const std::array<float, 256>& code) {
    check_8bit_blocksize(blocksize);
    const std::array<float, 255> mid = midpoints(code);
    Blockwise8Quantized out;
    out.q.resize(x.size());
    out.absmax = scale_blocks(x, blocksize, [&](int64_t i, float v) {
        out.q[static_cast<size_t>(i)] = static_cast<uint8_t>(bucketize(v, mid));
    });
    return out;
}

void dequantize_blockwise_8bit(std::span<const uint8_t> q, std::span<const float> absmax, int64_t blocksize,
                               std::span<float> out, const std::array<float, 256>& code) {
    check_8bit_blocksize(blocksize);
    MSLM_CHECK(q.size() == out.size(), "8-bit dequantize: {} codes for {} values", q.size(), out.size());
    MSLM_CHECK(static_cast<int64_t>(absmax.size()) == (static_cast<int64_t>(q.size()) + blocksize - 1) / blocksize,
               "8-bit dequantize: {} absmax values for {} values in blocks of {}", absmax.size(), q.size(), blocksize);
    for (size_t i = 0; i < q.size(); ++i) out[i] = code[q[i]] * absmax[i / static_cast<size_t>(blocksize)];
}

DoubleQuantized double_quantize_absmax(std::span<const float> absmax) {
    MSLM_CHECK(!absmax.empty(), "double quantization: no absmax values");
    DoubleQuantized d;
    d.offset = torch_cpu_sum(absmax) / static_cast<float>(absmax.size());  // torch: sum(...).div_(n)
    std::vector<float> centred(absmax.size());
    for (size_t i = 0; i < absmax.size(); ++i) centred[i] = absmax[i] - d.offset;
    Blockwise8Quantized q = quantize_blockwise_8bit(centred, kBnbNestedBlocksize);
    d.q = std::move(q.q);
    d.nested_absmax = std::move(q.absmax);
    return d;
}

std::vector<float> double_dequantize_absmax(const DoubleQuantized& d) {
    std::vector<float> absmax(d.q.size());
    dequantize_blockwise_8bit(d.q, d.nested_absmax, kBnbNestedBlocksize, absmax);
    for (float& a : absmax) a += d.offset;
    return absmax;
}

size_t Bnb4Tensor::bytes() const {
    if (!double_quant) return codes.size() + sizeof(float) * absmax.size();
    return codes.size() + nested.q.size() + sizeof(float) * (nested.nested_absmax.size() + 1);
}

void Bnb4Tensor::set_double_quant(bool on) {
    if (on == double_quant) return;
    if (on) {
        nested = double_quantize_absmax(absmax);
        absmax = {};
    } else {
        absmax = double_dequantize_absmax(nested);
        nested = {};
    }
    double_quant = on;
}

Bnb4Tensor bnb4_tensor_quantize(std::span<const float> x, Bnb4Type type, int64_t blocksize, bool double_quant) {
    Bnb4Quantized q = bnb4_quantize(x, type, blocksize);
    Bnb4Tensor t;
    t.type = type;
    t.blocksize = blocksize;
    t.n = static_cast<int64_t>(x.size());
    t.codes = std::move(q.packed);
    t.absmax = std::move(q.absmax);
    t.set_double_quant(double_quant);
    return t;
}

void bnb4_tensor_dequantize(const Bnb4Tensor& t, std::span<float> out) {
    MSLM_CHECK(static_cast<int64_t>(out.size()) == t.n, "4-bit dequantize: {} outputs for {} values", out.size(),
               t.n);
    if (t.double_quant)
        bnb4_dequantize(t.codes, double_dequantize_absmax(t.nested), t.type, t.blocksize, out);
    else
        bnb4_dequantize(t.codes, t.absmax, t.type, t.blocksize, out);
    if (t.dtype == "bfloat16") {
        for (float& v : out) v = bf16_to_f32(f32_to_bf16(v));
    } else if (t.dtype == "float16") {
        for (float& v : out) v = f16_to_f32(f32_to_f16(v));
    }
}

Int8Rows int8_quantize_rows(std::span<const float> x, int64_t rows, int64_t cols) {
    MSLM_CHECK(rows >= 0 && cols > 0 && static_cast<int64_t>(x.size()) == rows * cols,
               "int8 quantize: {} values for ({}, {})", x.size(), rows, cols);
    Int8Rows out;
    out.q.resize(x.size());
    out.absmax.resize(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
        const std::span<const float> row = x.subspan(static_cast<size_t>(r * cols), static_cast<size_t>(cols));
        const float am = block_absmax(row);
        out.absmax[static_cast<size_t>(r)] = am;
        if (am == 0.0f || std::isnan(am)) continue;  // q stays 0; absmax 0 or NaN says why
        // torch evaluates `127.0 / row_stats` as row_stats.reciprocal() * 127.0: two roundings.
        const float scale = (1.0f / am) * 127.0f;
        for (int64_t c = 0; c < cols; ++c) {
            // nearbyint rounds half to even in the default mode, as torch.round.
            // An infinite absmax gives scale 0 and inf·0 = NaN: that element stores 0.
            const float v = std::nearbyint(row[static_cast<size_t>(c)] * scale);
            out.q[static_cast<size_t>(r * cols + c)] = std::isnan(v) ? int8_t{0} : static_cast<int8_t>(v);
        }
    }
    return out;
}

// int8_vectorwise_dequant: q · absmax · (1/127 as bitsandbytes writes it).
void int8_dequantize_rows(const Int8Rows& q, int64_t rows, int64_t cols, std::span<float> out) {
    MSLM_CHECK(static_cast<int64_t>(q.q.size()) == rows * cols && static_cast<int64_t>(out.size()) == rows * cols &&
                   static_cast<int64_t>(q.absmax.size()) == rows,
               "int8 dequantize: sizes do not match ({}, {})", rows, cols);
    for (int64_t i = 0; i < rows * cols; ++i) {
        out[static_cast<size_t>(i)] =
            static_cast<float>(q.q[static_cast<size_t>(i)]) * q.absmax[static_cast<size_t>(i / cols)] *
            7.874015718698502e-3f;
    }
}

}  // namespace mslm::quant
