#include "quant/qlora.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <span>
#include <type_traits>

#include "core/allocator.h"
#include "core/dtype.h"
#include "core/error.h"
#include "quant/bnb_model.h"
#include "quant/fake_quant.h"

namespace mslm::quant {

Bnb4Type parse_base_quant(const std::string& s) {
    if (s == "nf4") return Bnb4Type::NF4;
    if (s == "fp4") return Bnb4Type::FP4;
    fail("base quantization \"{}\" is not one of nf4, fp4", s);
}

std::string describe(const QloraOptions& o) {
    return fmt::format("{}{}", o.type == Bnb4Type::NF4 ? "nf4" : "fp4",
                       o.double_quant ? " + double quant" : "");
}

size_t peak_rss_bytes() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<size_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

// One per weight: Linear's products ask it for the matrix to use.
template <typename T>
class QloraBase<T>::Hook final : public WeightFakeQuant<T> {
public:
    Hook(QloraBase& owner, const Weight& w) : owner_(owner), w_(w) {}
    const T* apply(const T*, int64_t out, int64_t in) override {
        MSLM_CHECK(out == w_.out && in == w_.in, "QLoRA base: a ({}, {}) product on the ({}, {}) weight {}",
                   out, in, w_.out, w_.in, owner_.params_.specs()[w_.param].name);
        return owner_.apply(w_);
    }

private:
    QloraBase& owner_;
    const Weight& w_;
};

template <typename T>
QloraBase<T>::QloraBase(Parameters<T>& params, const QloraOptions& opts,
                        std::map<size_t, std::vector<Bnb4Piece>> stored)
    : params_(params), opts_(opts) {
    check_bnb4_blocksize(opts.blocksize);
    const std::vector<size_t> targets = qat_weights(params);
    const std::set<size_t> target_set(targets.begin(), targets.end());
    for (const auto& [param, pieces] : stored)
        MSLM_CHECK(target_set.count(param),
                   "QLoRA base: parameter {} is not a linear weight the base quantizes",
                   params.specs()[param].name);
    weights_.reserve(targets.size());  // the hooks keep references into weights_
    size_t largest = 0;
    for (size_t i : targets) {
        const ParamSpec& s = params.specs()[i];
        Weight w;
        w.param = i;
        w.out = s.shape[0];
        w.in = s.shape[1];
        auto it = stored.find(i);
        if (it != stored.end()) {
            w.pieces = std::move(it->second);
            std::sort(w.pieces.begin(), w.pieces.end(),
                      [](const Bnb4Piece& a, const Bnb4Piece& b) { return a.row_begin < b.row_begin; });
            int64_t next = 0;
            for (const Bnb4Piece& p : w.pieces) {
                MSLM_CHECK(
                    p.row_begin == next && p.t.n == p.rows * w.in,
                    "QLoRA base: {}: the stored pieces do not tile its ({}, {}) rows (a piece of {} values "
                    "at row {})",
                    s.name, w.out, w.in, p.t.n, p.row_begin);
                next += p.rows;
            }
            MSLM_CHECK(next == w.out, "QLoRA base: {}: the stored pieces cover {} of its {} rows", s.name,
                       next, w.out);
        } else {
            std::vector<float> v(static_cast<size_t>(s.numel));
            for (int64_t k = 0; k < s.numel; ++k)
                v[static_cast<size_t>(k)] = static_cast<float>(params.value(i)[k]);
            w.pieces.push_back(
                {0, w.out, bnb4_tensor_quantize(v, opts.type, opts.blocksize, opts.double_quant)});
        }
        largest = std::max(largest, static_cast<size_t>(s.numel));
        weights_.push_back(std::move(w));
    }
    scratch_.resize(largest);
    if constexpr (!std::is_same_v<T, float>) widened_.resize(largest);
    for (Weight& w : weights_) {
        params.release_values(w.param);
        w.hook = std::make_unique<Hook>(*this, w);
        params.set_fake_quant(w.param, w.hook.get());
    }
}

template <typename T>
QloraBase<T>::~QloraBase() {
    for (const Weight& w : weights_) params_.set_fake_quant(w.param, nullptr);
}

template <typename T>
void QloraBase<T>::dequantize(size_t param, float* out) const {
    auto it =
        std::find_if(weights_.begin(), weights_.end(), [&](const Weight& w) { return w.param == param; });
    MSLM_CHECK(it != weights_.end(), "QLoRA base: parameter {} is not held in 4 bits",
               params_.specs()[param].name);
    for (const Bnb4Piece& p : it->pieces)
        bnb4_tensor_dequantize(p.t, std::span<float>(out + p.row_begin * it->in, static_cast<size_t>(p.t.n)));
}

template <typename T>
const std::vector<Bnb4Piece>* QloraBase<T>::pieces(size_t param) const {
    for (const Weight& w : weights_)
        if (w.param == param) return &w.pieces;
    return nullptr;
}

template <typename T>
const T* QloraBase<T>::apply(const Weight& w) {
    dequantize(w.param, scratch_.data());
    if constexpr (std::is_same_v<T, float>) {
        return scratch_.data();
    } else {
        std::copy(scratch_.begin(), scratch_.begin() + w.out * w.in, widened_.begin());
        return widened_.data();
    }
}

template <typename T>
int64_t QloraBase<T>::numel() const {
    int64_t n = 0;
    for (const Weight& w : weights_) n += w.out * w.in;
    return n;
}

template <typename T>
size_t QloraBase<T>::bytes() const {
    size_t n = 0;
    for (const Weight& w : weights_)
        for (const Bnb4Piece& p : w.pieces) n += p.t.bytes();
    return n;
}

template <typename T>
std::string QloraBase<T>::summary() const {
    const double mib = 1024.0 * 1024.0, n = static_cast<double>(numel());
    return fmt::format(
        "{} linear weights ({:.2f}M parameters) in {}: {:.2f} MiB, {:.3f} bits per parameter "
        "(fp32: {:.2f} MiB)",
        weights(), n / 1e6, describe(opts_), static_cast<double>(bytes()) / mib,
        n > 0 ? 8.0 * static_cast<double>(bytes()) / n : 0.0, 4.0 * n / mib);
}

namespace {

// A float tensor of the file in fp32, into `buf` (reused for every tensor of a load: a fresh buffer
// per tensor, freed between the 4-bit tensors that stay, would fragment the heap by about the size of
// the model's fp32 weights).
void read_f32(const SafetensorsFile& file, const std::string& key, std::vector<float>& buf) {
    const SafetensorsEntry& e = file.entry(key);
    int64_t n = 1;
    for (int64_t d : e.shape) n *= d;
    buf.resize(static_cast<size_t>(n));
    const uint8_t* src = file.bytes(key).data();
    if (e.dtype == DType::F32) {
        std::memcpy(buf.data(), src, sizeof(float) * buf.size());  // the file's bytes may be unaligned
    } else if (e.dtype == DType::BF16 || e.dtype == DType::F16) {
        for (size_t i = 0; i < buf.size(); ++i) {
            uint16_t h = 0;
            std::memcpy(&h, src + 2 * i, sizeof(h));
            buf[i] = e.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        }
    } else {
        const Tensor t = file.get_f32(key);  // F64, or a dtype get_f32 refuses naming the tensor
        std::copy(t.data<float>(), t.data<float>() + t.numel(), buf.begin());
    }
}

}  // namespace

template <typename T>
QloraLoaded<T> load_qlora_base(const std::string& dir, const QloraOptions& opts, LoadedModelInfo* info) {
    check_bnb4_blocksize(opts.blocksize);
    std::set<size_t> targets;
    {
        const HybridLM<T> layout(load_any_config(dir), /*allocate=*/false);
        for (size_t i : qat_weights(layout.params())) targets.insert(i);
    }
    std::map<size_t, std::vector<Bnb4Piece>> stored;
    std::vector<float> buf;
    auto take = [&](size_t param, int64_t row_begin, const SafetensorsFile& file, const std::string& key,
                    const Shape& file_shape, std::vector<std::string>* used) {
        if (!targets.count(param)) return false;
        const size_t first_key = used->size();
        Bnb4Piece piece;
        piece.row_begin = row_begin;
        piece.rows = file_shape[0];
        if (bnb4_is_stored(file, key)) {
            Shape shape;
            piece.t = bnb4_read(file, key, &shape, used);
            MSLM_CHECK(shape == file_shape, "{}: tensor '{}' has shape {}, the config needs {}", file.name(),
                       key, shape_str(shape), shape_str(file_shape));
            MSLM_CHECK(piece.t.type == opts.type,
                       "{}: tensor '{}' is stored as {}; a QLoRA base on it must be {} too (lora.base_quant)",
                       file.name(), key, piece.t.type == Bnb4Type::NF4 ? "nf4" : "fp4",
                       piece.t.type == Bnb4Type::NF4 ? "nf4" : "fp4");
            piece.t.set_double_quant(opts.double_quant);
        } else {
            Shape shape;
            if (bnb_is_quantized(file, key)) {  // int8
                const Tensor t = bnb_dequantize(file, key, used);
                shape = t.shape();
                buf.assign(t.data<float>(), t.data<float>() + t.numel());
            } else {
                shape = file.entry(key).shape;
                read_f32(file, key, buf);
                used->push_back(key);
            }
            MSLM_CHECK(shape == file_shape, "{}: tensor '{}' has shape {}, the config needs {}", file.name(),
                       key, shape_str(shape), shape_str(file_shape));
            piece.t = bnb4_tensor_quantize(buf, opts.type, opts.blocksize, opts.double_quant);
        }
        // Read once: the file's pages of it need not stay in this process (they stay in the page cache).
        for (size_t k = first_key; k < used->size(); ++k) {
            const std::span<const uint8_t> b = file.bytes((*used)[k]);
            release_pages(b.data(), b.size());
        }
        stored[param].push_back(std::move(piece));
        return true;
    };
    QloraLoaded<T> out;
    out.model = load_model<T>(dir, info, ops::WeightFormat::F32, take);
    out.base = std::make_unique<QloraBase<T>>(out.model->params(), opts, std::move(stored));
    return out;
}

template class QloraBase<float>;
template class QloraBase<double>;
template QloraLoaded<float> load_qlora_base<float>(const std::string&, const QloraOptions&, LoadedModelInfo*);
template QloraLoaded<double> load_qlora_base<double>(const std::string&, const QloraOptions&,
                                                     LoadedModelInfo*);

}  // namespace mslm::quant
