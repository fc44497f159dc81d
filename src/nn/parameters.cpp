#include "nn/parameters.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/error.h"

namespace mslm {

template <typename T>
size_t Parameters<T>::add(const std::string& name, const Shape& shape, bool decay) {
    MSLM_CHECK(!values_, "parameter {} registered after allocation", name);
    MSLM_CHECK(!contains(name), "parameter {} registered twice", name);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    // Keep each parameter 64-byte aligned so kernels can use aligned vector loads on it.
    constexpr int64_t kAlign = static_cast<int64_t>(kCpuAlignment / sizeof(T));
    int64_t offset = (total_ + kAlign - 1) / kAlign * kAlign;
    specs_.push_back({name, shape, decay, static_cast<size_t>(offset), n});
    total_ = offset + n;
    return specs_.size() - 1;
}

template <typename T>
void Parameters<T>::allocate() {
    values_ = make_aligned<T>(static_cast<size_t>(total_));
    grads_ = make_aligned<T>(static_cast<size_t>(total_));
    std::memset(values_.get(), 0, sizeof(T) * static_cast<size_t>(total_));
    zero_grad();
}

template <typename T>
void Parameters<T>::zero_grad() {
    if (grads_) std::memset(grads_.get(), 0, sizeof(T) * static_cast<size_t>(total_));
}

template <typename T>
void Parameters<T>::freeze_grads() {
    MSLM_CHECK(values_, "freeze_grads before allocate()");
    grads_.reset();
}

template <typename T>
void Parameters<T>::thaw_grads() {
    MSLM_CHECK(values_, "thaw_grads before allocate()");
    if (grads_) return;
    grads_ = make_aligned<T>(static_cast<size_t>(total_));
    zero_grad();
}

template <typename T>
bool Parameters<T>::is_linear(size_t i) const {
    return std::find(linear_.begin(), linear_.end(), i) != linear_.end();
}

template <typename T>
void Parameters<T>::set_adapter(size_t weight, LinearAdapter<T>* adapter) {
    MSLM_CHECK(is_linear(weight), "set_adapter: parameter {} is not the weight of a Linear",
               weight < specs_.size() ? specs_[weight].name : std::to_string(weight));
    if (adapters_.size() < specs_.size()) adapters_.resize(specs_.size(), nullptr);
    adapters_[weight] = adapter;
}

template <typename T>
void Parameters<T>::set_fake_quant(size_t weight, WeightFakeQuant<T>* quantizer) {
    MSLM_CHECK(is_linear(weight), "set_fake_quant: parameter {} is not the weight of a Linear",
               weight < specs_.size() ? specs_[weight].name : std::to_string(weight));
    if (fake_quant_.size() < specs_.size()) fake_quant_.resize(specs_.size(), nullptr);
    fake_quant_[weight] = quantizer;
}

template <typename T>
bool Parameters<T>::contains(const std::string& name) const {
    for (const auto& s : specs_)
        if (s.name == name) return true;
    return false;
}

template <typename T>
size_t Parameters<T>::find(const std::string& name) const {
    for (size_t i = 0; i < specs_.size(); ++i)
        if (specs_[i].name == name) return i;
    fail("the model has no parameter named {}", name);
}

template <typename T>
int64_t Parameters<T>::total_unique() const {
    int64_t n = 0;
    for (const auto& s : specs_) n += s.numel;
    return n;
}

template <typename T>
void Parameters<T>::mark_linear(size_t i) {
    MSLM_CHECK(i < specs_.size() && specs_[i].shape.size() == 2, "mark_linear: parameter {} is not a matrix",
               i);
    for (size_t j : linear_)
        if (j == i) return;
    linear_.push_back(i);
}

template <typename T>
void Parameters<T>::pack_linear_weights(ops::WeightFormat format) {
    packed_.clear();
    format_ = ops::WeightFormat::F32;
    if (format == ops::WeightFormat::F32) return;
    if constexpr (!std::is_same_v<T, float>) {
        fail("{} weights need a float32 model", ops::weight_format_name(format));
    } else {
        MSLM_CHECK(values_, "pack_linear_weights before allocate()");
        packed_.resize(specs_.size());
        for (size_t i : linear_) {
            const ParamSpec& s = specs_[i];
            packed_[i] = std::make_unique<ops::PackedWeight>(
                ops::pack_weight(value(i), s.shape[0], s.shape[1], format));
        }
        format_ = format;
    }
}

template <typename T>
size_t Parameters<T>::packed_bytes() const {
    size_t n = 0;
    for (const auto& p : packed_)
        if (p) n += p->bytes();
    return n;
}

template <typename T>
int64_t Parameters<T>::packed_numel() const {
    int64_t n = 0;
    for (const auto& p : packed_)
        if (p) n += p->out * p->in;
    return n;
}

template class Parameters<float>;
template class Parameters<double>;

}  // namespace mslm
