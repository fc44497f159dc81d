// One IEEE fp32 operation per product and quotient, as the real quantizers (quant/bnb.cpp).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "quant/fake_quant.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/bnb.h"
#include "quant/bnb_model.h"

namespace mslm::quant {

const char* qat_type_name(QatType t) {
    switch (t) {
        case QatType::Int8: return "int8";
        case QatType::Int4: return "int4";
        case QatType::NF4: return "nf4";
    }
    return "?";
}

QatType parse_qat_type(const std::string& s) {
    if (s == "int8") return QatType::Int8;
    if (s == "int4") return QatType::Int4;
    if (s == "nf4") return QatType::NF4;
    fail("qat: unknown quantization type \"{}\" (expected int8, int4 or nf4)", s);
}

void check_int4_group(int64_t group) {
    MSLM_CHECK(group >= 8 && group <= 4096 && (group & (group - 1)) == 0,
               "qat_group: {} is not a power of two in [8, 4096]", group);
}

Int4Groups int4_quantize_groups(std::span<const float> x, int64_t rows, int64_t cols, int64_t group) {
    check_int4_group(group);
    MSLM_CHECK(rows >= 0 && cols > 0 && static_cast<int64_t>(x.size()) == rows * cols,
               "int4 quantize: {} values for ({}, {})", x.size(), rows, cols);
    const int64_t groups = (cols + group - 1) / group;
    Int4Groups out;
    out.q.assign(x.size(), 0);
    out.scale.assign(static_cast<size_t>(rows * groups), 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t c0 = g * group, c1 = std::min(cols, c0 + group);
            float am = 0.0f;
            for (int64_t c = c0; c < c1; ++c) am = std::max(am, std::fabs(x[static_cast<size_t>(r * cols + c)]));
            const float s = am / 7.0f;
            out.scale[static_cast<size_t>(r * groups + g)] = s;
            if (s == 0.0f || !std::isfinite(s)) continue;  // a zero group (or a non-finite one) stores 0
            for (int64_t c = c0; c < c1; ++c) {
                // nearbyint: half to even in the default rounding mode; |x / s| <= 7 since s = absmax / 7.
                const float v = std::nearbyint(x[static_cast<size_t>(r * cols + c)] / s);
                out.q[static_cast<size_t>(r * cols + c)] = static_cast<int8_t>(v);
            }
        }
    }
    return out;
}

void int4_dequantize_groups(const Int4Groups& q, int64_t rows, int64_t cols, int64_t group, std::span<float> out) {
    check_int4_group(group);
    const int64_t groups = (cols + group - 1) / group;
    MSLM_CHECK(static_cast<int64_t>(q.q.size()) == rows * cols && static_cast<int64_t>(out.size()) == rows * cols &&
                   static_cast<int64_t>(q.scale.size()) == rows * groups,
               "int4 dequantize: sizes do not match ({}, {}) in groups of {}", rows, cols, group);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
            const size_t i = static_cast<size_t>(r * cols + c);
            out[i] = static_cast<float>(q.q[i]) * q.scale[static_cast<size_t>(r * groups + c / group)];
        }
}

void fake_quantize(std::span<const float> w, int64_t rows, int64_t cols, QatType type, int64_t group,
                   std::span<float> out) {
    MSLM_CHECK(static_cast<int64_t>(w.size()) == rows * cols && out.size() == w.size(),
               "fake quantize: sizes do not match ({}, {})", rows, cols);
    switch (type) {
        case QatType::Int8: {
            // As `mamba-slm quantize --type int8` (bitsandbytes' Int8Params): through fp16 first.
            for (size_t i = 0; i < w.size(); ++i) out[i] = f16_to_f32(f32_to_f16(w[i]));
            const Int8Rows q = int8_quantize_rows(out, rows, cols);
            int8_dequantize_rows(q, rows, cols, out);
            return;
        }
        case QatType::Int4: {
            const Int4Groups q = int4_quantize_groups(w, rows, cols, group);
            int4_dequantize_groups(q, rows, cols, group, out);
            return;
        }
        case QatType::NF4: {
            const Bnb4Quantized q = bnb4_quantize(w, Bnb4Type::NF4, kQatNf4Blocksize);
            bnb4_dequantize(q.packed, q.absmax, Bnb4Type::NF4, kQatNf4Blocksize, out);
            return;
        }
    }
}

template <typename T>
std::vector<size_t> qat_weights(const Parameters<T>& params) {
    std::vector<size_t> out;
    for (size_t i = 0; i < params.specs().size(); ++i) {
        const std::string& name = params.specs()[i].name;
        if (!params.is_linear(i) || name == "embed.weight") continue;  // a tied head is the embedding
        const std::string module = name.substr(0, name.size() - std::string(".weight").size());
        if (!bnb_module_skipped(module, kBnbDefaultSkip)) out.push_back(i);
    }
    return out;
}

template <typename T>
FakeQuantizer<T>::FakeQuantizer(Parameters<T>& params, QatType type, int64_t group)
    : params_(&params), type_(type), group_(group), weights_(qat_weights(params)) {
    if (type == QatType::Int4) check_int4_group(group);
    size_t largest = 0;
    for (size_t i : weights_) {
        largest = std::max(largest, static_cast<size_t>(params.specs()[i].numel));
        params.set_fake_quant(i, this);
    }
    out_.resize(largest);
    if constexpr (!std::is_same_v<T, float>) {
        in_.resize(largest);
        result_.resize(largest);
    }
}

template <typename T>
FakeQuantizer<T>::~FakeQuantizer() {
    for (size_t i : weights_) params_->set_fake_quant(i, nullptr);
}

template <typename T>
const T* FakeQuantizer<T>::apply(const T* w, int64_t out, int64_t in) {
    const size_t n = static_cast<size_t>(out * in);
    MSLM_CHECK(n <= out_.size(), "fake quantize: a ({}, {}) weight is larger than any registered", out, in);
    if constexpr (std::is_same_v<T, float>) {
        fake_quantize({w, n}, out, in, type_, group_, {out_.data(), n});
        return out_.data();
    } else {
        for (size_t i = 0; i < n; ++i) in_[i] = static_cast<float>(w[i]);
        fake_quantize({in_.data(), n}, out, in, type_, group_, {out_.data(), n});
        for (size_t i = 0; i < n; ++i) result_[i] = static_cast<T>(out_[i]);
        return result_.data();
    }
}

size_t fake_quantize_model_weights(Parameters<float>& params, QatType type, int64_t group) {
    if (type == QatType::Int4) check_int4_group(group);
    const std::vector<size_t> weights = qat_weights(params);
    for (size_t i : weights) {
        const ParamSpec& s = params.specs()[i];
        const size_t n = static_cast<size_t>(s.numel);
        std::vector<float> q(n);
        fake_quantize({params.value(i), n}, s.shape[0], s.shape[1], type, group, q);
        std::copy(q.begin(), q.end(), params.value(i));
    }
    return weights.size();
}

template std::vector<size_t> qat_weights(const Parameters<float>&);
template std::vector<size_t> qat_weights(const Parameters<double>&);
template class FakeQuantizer<float>;
template class FakeQuantizer<double>;

}  // namespace mslm::quant
