// All parameters of a model in one allocation and all their gradients in another (llm.c style):
// modules register named tensors at construction, then `allocate()` lays them out back to back
// and modules read their pointers by index.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"
#include "ops/packed_linear.h"

namespace mslm {

template <typename T>
class LinearAdapter;  // nn/linear.h
template <typename T>
class WeightFakeQuant;  // nn/linear.h

struct ParamSpec {
    std::string name;  // native name, e.g. "layers.3.mixer.in_proj.weight"
    Shape shape;
    bool decay;        // AdamW weight decay applies (false for norms, biases, A_log, D, dt bias)
    size_t offset;     // in elements, into the value and gradient buffers
    int64_t numel;
};

template <typename T>
class Parameters {
public:
    // Registers a parameter; returns its index. Must come before allocate().
    size_t add(const std::string& name, const Shape& shape, bool decay);
    void allocate();  // values and gradients zero (pages backed by memory once written)

    T* value(size_t i) { return values_.get() + specs_[i].offset; }
    const T* value(size_t i) const { return values_.get() + specs_[i].offset; }
    // Null for every parameter once the gradients are released (freeze_grads).
    T* grad(size_t i) { return grads_ ? grads_.get() + specs_[i].offset : nullptr; }
    const T* grad(size_t i) const { return grads_ ? grads_.get() + specs_[i].offset : nullptr; }

    const std::vector<ParamSpec>& specs() const { return specs_; }
    size_t find(const std::string& name) const;  // throws naming the parameter when absent
    bool contains(const std::string& name) const;
    int64_t total() const { return total_; }  // buffer length, alignment padding included
    int64_t total_unique() const;             // sum of parameter sizes
    T* values() { return values_.get(); }
    T* grads() { return grads_.get(); }
    void zero_grad();
    // A frozen base (LoRA training): frees the gradient buffer; from then on grad() is null and every
    // backward skips the products and sums that would only produce these parameters' gradients.
    // thaw_grads() allocates them again (zero).
    void freeze_grads();
    void thaw_grads();
    bool frozen() const { return values_ && !grads_; }
    // Gives the memory of parameter i's fp32 values back to the OS (they read as zero afterwards): a
    // weight that lives in another form while the model runs (QLoRA's frozen 4-bit base,
    // quant/qlora.h). Nothing reads a released value but save and merge, which refuse it.
    void release_values(size_t i);
    bool released(size_t i) const { return i < released_.size() && released_[i]; }

    // Inference-only packed copies (bf16 / int8, ops/packed_linear.h) of the weights that feed
    // matrix products. Modules mark such weights at construction; `pack_linear_weights` makes the
    // copies once (after loading), and from then on forward passes read them instead of the fp32
    // values. The fp32 values stay (the embedding lookup of a tied head reads them; `unpack` goes
    // back). Training must not run on a packed model: Linear::backward refuses.
    void mark_linear(size_t i);
    bool is_linear(size_t i) const;
    void pack_linear_weights(ops::WeightFormat format);  // F32 = unpack
    const ops::PackedWeight* packed(size_t i) const {
        return i < packed_.size() && packed_[i] ? packed_[i].get() : nullptr;
    }
    ops::WeightFormat weight_format() const { return format_; }
    // A linear weight loaded already packed (a bitsandbytes 4-bit file, quant::bnb4_pack): its fp32
    // value is never filled (it stays zero). pack_linear_weights then accepts only this format, and
    // keeps the other linear weights (those the file stores unquantized) in fp32.
    void set_loaded_packed(size_t i, ops::PackedWeight p);
    int64_t loaded_packed() const { return loaded_packed_; }

    // Side paths on a weight marked by mark_linear (LoRA adapters): Linear::forward / backward of that
    // weight call it after the base product. Null detaches. The adapter must outlive its registration.
    void set_adapter(size_t weight, LinearAdapter<T>* adapter);
    LinearAdapter<T>* adapter(size_t weight) const { return weight < adapters_.size() ? adapters_[weight] : nullptr; }
    // Fake quantization of a weight marked by mark_linear (QAT, quant/fake_quant.h): Linear's forward
    // and backward use the quantizer's copy of it. Null detaches. It must outlive its registration.
    void set_fake_quant(size_t weight, WeightFakeQuant<T>* quantizer);
    WeightFakeQuant<T>* fake_quant(size_t weight) const {
        return weight < fake_quant_.size() ? fake_quant_[weight] : nullptr;
    }
    size_t packed_bytes() const;    // bytes of all packed copies
    int64_t packed_numel() const;   // parameters that have a packed copy

private:
    std::vector<ParamSpec> specs_;
    int64_t total_ = 0;
    AlignedBuffer<T> values_{nullptr, aligned_free};
    AlignedBuffer<T> grads_{nullptr, aligned_free};
    std::vector<size_t> linear_;  // indices marked by mark_linear
    std::vector<bool> released_;  // by parameter index (release_values)
    std::vector<std::unique_ptr<ops::PackedWeight>> packed_;
    ops::WeightFormat format_ = ops::WeightFormat::F32;
    int64_t loaded_packed_ = 0;
    std::vector<LinearAdapter<T>*> adapters_;  // by parameter index; empty until one is set
    std::vector<WeightFakeQuant<T>*> fake_quant_;  // by parameter index; empty until one is set
};

constexpr size_t kNoParam = static_cast<size_t>(-1);

}  // namespace mslm
