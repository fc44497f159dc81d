// Quantization-aware training: fake quantization of linear weights in the forward pass, with the
// straight-through estimator in the backward (nn/linear.h, WeightFakeQuant). Each type rounds a
// weight exactly as the real quantizer later stores it, so the weights training sees are, bit for
// bit, those a quantized model dequantizes to:
//   int8  per output row, symmetric absmax, round half to even: `mamba-slm quantize --type int8`
//         (bitsandbytes' Int8Params: the weight cast to fp16, then int8_quantize_rows).
//   int4  groups of `group` consecutive weights along each row (a partial last group when `in` is
//         not a multiple), symmetric: s = absmax / 7, q = round_half_even(w / s) in −7..7 (−8 is
//         never produced: |w| <= absmax puts |w / s| <= 7), w' = q · s. A zero group stays zero.
//   nf4   bitsandbytes' NF4 with blocksize 64 over the flattened weight (quant/bnb.h), as
//         `mamba-slm quantize --type nf4` stores it.
// All three scale by the absmax of their row / group / block, so no weight is ever clipped: the
// STE gradient dL/dW = dL/dW' needs no clipping mask.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nn/linear.h"
#include "nn/parameters.h"

namespace mslm::quant {

enum class QatType { Int8, Int4, NF4 };

// Default int4 group: 32, llama.cpp's Q4_0 block. It divides the width of every preset (64 and up)
// and costs one fp16 scale per 32 weights (0.5 bit per weight, against 0.125 for GPTQ's usual 128);
// the small models this trains have rows of 64..1024, where a group of 128 would often be the whole
// row and one outlier would set the step of all of it.
constexpr int64_t kInt4DefaultGroup = 32;
constexpr int64_t kQatNf4Blocksize = 64;

const char* qat_type_name(QatType t);       // "int8", "int4", "nf4"
QatType parse_qat_type(const std::string& s);  // throws naming the accepted values
void check_int4_group(int64_t group);        // a power of two in [8, 4096]

// int4 groupwise symmetric (above): codes (rows, cols) in −7..7, one scale per group of each row.
struct Int4Groups {
    std::vector<int8_t> q;     // (rows, cols)
    std::vector<float> scale;  // (rows, ceil(cols / group)) absmax / 7
};
Int4Groups int4_quantize_groups(std::span<const float> x, int64_t rows, int64_t cols, int64_t group);
void int4_dequantize_groups(const Int4Groups& q, int64_t rows, int64_t cols, int64_t group, std::span<float> out);

// out (rows, cols) = dequantize(quantize(w)) with the real quantizers. group: int4 only.
void fake_quantize(std::span<const float> w, int64_t rows, int64_t cols, QatType type, int64_t group,
                   std::span<float> out);

// The weights QAT fake-quantizes: those `mamba-slm quantize` quantizes, i.e. marked by mark_linear,
// not the (tied) embedding, and not skipped by kBnbDefaultSkip (lm_head, dt_proj).
template <typename T>
std::vector<size_t> qat_weights(const Parameters<T>& params);

// Fake quantizer of type `type` on every qat_weights of params (detached when destroyed). A double
// model goes through float: the quantizers are fp32 (the tests' finite differences use it).
template <typename T>
class FakeQuantizer final : public WeightFakeQuant<T> {
public:
    FakeQuantizer(Parameters<T>& params, QatType type, int64_t group = kInt4DefaultGroup);
    ~FakeQuantizer() override;
    FakeQuantizer(const FakeQuantizer&) = delete;
    FakeQuantizer& operator=(const FakeQuantizer&) = delete;

    const T* apply(const T* w, int64_t out, int64_t in) override;
    size_t weights() const { return weights_.size(); }  // how many weights it is attached to

private:
    Parameters<T>* params_;
    QatType type_;
    int64_t group_;
    std::vector<size_t> weights_;
    std::vector<float> in_, out_;  // scratch, sized to the largest weight
    std::vector<T> result_;        // double only
};

// Post-training fake quantization of a loaded model (eval --fake-quant): every qat_weights value
// replaced by its quantize -> dequantize. Returns how many weights it changed.
size_t fake_quantize_model_weights(Parameters<float>& params, QatType type, int64_t group = kInt4DefaultGroup);

}  // namespace mslm::quant
