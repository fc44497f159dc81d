#include "nn/parameters.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/bnb.h"

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
    // Zero pages on demand: a value slot that is never written (a released weight) costs no memory.
    values_ = make_zeroed<T>(static_cast<size_t>(total_));
    grads_ = make_zeroed<T>(static_cast<size_t>(total_));
    released_.assign(specs_.size(), false);
}

template <typename T>
void Parameters<T>::release_values(size_t i) {
    MSLM_CHECK(values_ && i < specs_.size(), "release_values: parameter {} of {} before allocate()", i,
               specs_.size());
    T* v = value(i);
    const size_t bytes = sizeof(T) * static_cast<size_t>(specs_[i].numel);
    // The whole pages go back to the OS and read as zero; the partial pages at the ends, which the
    // neighbouring parameters share, are zeroed here so that the whole slot reads zero.
    release_pages(v, bytes);
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = reinterpret_cast<uintptr_t>(v), end = begin + bytes;
    const uintptr_t inner_begin = std::min(end, (begin + page - 1) / page * page);
    const uintptr_t inner_end = std::max(inner_begin, end / page * page);
    std::memset(v, 0, inner_begin - begin);
    std::memset(reinterpret_cast<void*>(inner_end), 0, end - inner_end);
    released_[i] = true;
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
    grads_ = make_zeroed<T>(static_cast<size_t>(total_));
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
    if (loaded_packed_ > 0) {
        MSLM_CHECK(
            format == format_,
            "{} linear weights were loaded packed as {} from a bitsandbytes file and have no fp32 values "
            "to repack as {}: load the model with that dtype instead",
            loaded_packed_, ops::weight_format_name(format_), ops::weight_format_name(format));
        return;
    }
    for (size_t i : linear_)
        MSLM_CHECK(!released(i),
                   "{}: its fp32 values were released after packing as {} (inference only); load the model "
                   "again to pack it as {}",
                   specs_[i].name, ops::weight_format_name(format_), ops::weight_format_name(format));
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
            if (ops::is_4bit_format(format)) {
                // bitsandbytes' quantizer (blocksize 64), each row in blocks of its own: the same blocks
                // as bitsandbytes' flattened ones whenever the row length is a multiple of 64.
                const int64_t out = s.shape[0], in = s.shape[1];
                const int64_t row_blocks =
                    (in + quant::kBnbDefaultBlocksize - 1) / quant::kBnbDefaultBlocksize;
                const auto type =
                    format == ops::WeightFormat::NF4 ? quant::Bnb4Type::NF4 : quant::Bnb4Type::FP4;
                std::vector<uint8_t> codes(static_cast<size_t>((out * in + 1) / 2));
                std::vector<float> absmax(static_cast<size_t>(out * row_blocks));
                // Rows in pairs on the thread pool: a pair's codes start and end on a whole byte of
                // the flattened array even for an odd row length, so no byte is written by two tasks.
                parallel_for((out + 1) / 2, [&](int64_t p0, int64_t p1) {
                    for (int64_t r = 2 * p0; r < std::min(out, 2 * p1); ++r) {
                        const quant::Bnb4Quantized q = quant::bnb4_quantize(
                            std::span<const float>(value(i) + r * in, static_cast<size_t>(in)), type);
                        std::copy(q.absmax.begin(), q.absmax.end(), absmax.begin() + r * row_blocks);
                        for (int64_t c = 0; c < in; ++c) {  // element r·in + c of the flattened codes
                            const int v = c % 2 == 0 ? q.packed[c / 2] >> 4 : q.packed[c / 2] & 15;
                            const int64_t f = r * in + c;
                            codes[f / 2] = static_cast<uint8_t>(f % 2 == 0 ? (codes[f / 2] & 0x0f) | v << 4
                                                                           : (codes[f / 2] & 0xf0) | v);
                        }
                    }
                });
                auto p = std::make_unique<ops::PackedWeight>();
                MSLM_CHECK(
                    ops::pack_weight_4bit(*p, codes.data(), absmax.data(), quant::bnb4_code(type).data(), out,
                                          in, quant::kBnbDefaultBlocksize, true, format),
                    "{}: cannot pack as {}", s.name, ops::weight_format_name(format));
                packed_[i] = std::move(p);
                continue;
            }
            packed_[i] = std::make_unique<ops::PackedWeight>(
                ops::pack_weight(value(i), s.shape[0], s.shape[1], format));
        }
        format_ = format;
    }
}

template <typename T>
void Parameters<T>::set_loaded_packed(size_t i, ops::PackedWeight p) {
    if constexpr (!std::is_same_v<T, float>) {
        fail("{}: packed weights need a float32 model", specs_[i].name);
    } else {
        MSLM_CHECK(is_linear(i), "{} is not a linear weight: it cannot be packed", specs_[i].name);
        MSLM_CHECK(loaded_packed_ == 0 || p.format == format_, "{}: packed as {}, other weights as {}",
                   specs_[i].name, ops::weight_format_name(p.format), ops::weight_format_name(format_));
        packed_.resize(specs_.size());
        packed_[i] = std::make_unique<ops::PackedWeight>(std::move(p));
        format_ = packed_[i]->format;
        ++loaded_packed_;
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
