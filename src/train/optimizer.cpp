#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"

namespace mslm {

namespace {

// Large enough that a chunk amortises the pool's dispatch, small enough to spread a big matrix
// over all threads.
constexpr int64_t kChunk = 1 << 15;

bool same_layout(const std::vector<ParamSpec>& a, const std::vector<ParamSpec>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (a[i].name != b[i].name || a[i].offset != b[i].offset || a[i].numel != b[i].numel) return false;
    return true;
}

}  // namespace

std::vector<ParamChunk> param_chunks(const std::vector<ParamSpec>& specs) {
    std::vector<ParamChunk> chunks;
    for (size_t i = 0; i < specs.size(); ++i) {
        const int64_t begin = static_cast<int64_t>(specs[i].offset), end = begin + specs[i].numel;
        for (int64_t b = begin; b < end; b += kChunk) chunks.push_back({i, b, std::min(end, b + kChunk)});
    }
    return chunks;
}

template <typename T>
AdamW<T>::AdamW(const Parameters<T>& params, AdamWOptions options)
    : options_(options), specs_(params.specs()), total_(params.total()), chunks_(param_chunks(specs_)) {
    const AdamWOptions& o = options_;
    MSLM_CHECK(o.beta1 >= 0 && o.beta1 < 1, "AdamW: beta1 must be in [0, 1), got {}", o.beta1);
    MSLM_CHECK(o.beta2 >= 0 && o.beta2 < 1, "AdamW: beta2 must be in [0, 1), got {}", o.beta2);
    MSLM_CHECK(o.eps > 0, "AdamW: eps must be positive, got {}", o.eps);
    MSLM_CHECK(o.weight_decay >= 0, "AdamW: weight_decay must be non-negative, got {}", o.weight_decay);
    MSLM_CHECK(o.lr >= 0, "AdamW: lr must be non-negative, got {}", o.lr);
    m_.assign(static_cast<size_t>(total_), T(0));
    v_.assign(static_cast<size_t>(total_), T(0));
}

template <typename T>
void AdamW<T>::step(Parameters<T>& params, T lr) {
    MSLM_CHECK(same_layout(params.specs(), specs_) && params.total() == total_,
               "AdamW: the parameters are not the ones the optimizer was built for");
    MSLM_CHECK(std::isfinite(static_cast<double>(lr)) && lr >= 0, "AdamW: learning rate {} is invalid",
               static_cast<double>(lr));
    ++step_;
    const double lr_d = static_cast<double>(lr);
    const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(step_));
    const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(step_));
    const T decay = static_cast<T>(1.0 - lr_d * options_.weight_decay);
    const T one_minus_b1 = static_cast<T>(1.0 - options_.beta1);
    const T b2 = static_cast<T>(options_.beta2), one_minus_b2 = static_cast<T>(1.0 - options_.beta2);
    const T step_size = static_cast<T>(lr_d / bc1);
    const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
    const T eps = static_cast<T>(options_.eps);
    T* p = params.values();
    const T* g = params.grads();
    T* m = m_.data();
    T* v = v_.data();
    parallel_for(static_cast<int64_t>(chunks_.size()), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            const ParamChunk& ch = chunks_[static_cast<size_t>(c)];
            const bool use_decay = specs_[ch.param].decay && options_.weight_decay != 0;
            for (int64_t i = ch.begin; i < ch.end; ++i) {
                if (use_decay) p[i] *= decay;
                m[i] += one_minus_b1 * (g[i] - m[i]);
                v[i] = v[i] * b2 + one_minus_b2 * g[i] * g[i];
                const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;
                p[i] -= step_size * (m[i] / denom);
            }
        }
    });
}

template <typename T>
std::vector<std::pair<std::string, Tensor>> AdamW<T>::state_tensors() const {
    std::vector<std::pair<std::string, Tensor>> out;
    out.reserve(2 * specs_.size() + 1);
    for (const char* which : {"m", "v"}) {
        const std::vector<T>& buf = which[0] == 'm' ? m_ : v_;
        for (const ParamSpec& s : specs_) {
            Tensor t = Tensor::empty(s.shape, dtype_of<T>());
            std::memcpy(t.raw(), buf.data() + s.offset, sizeof(T) * static_cast<size_t>(s.numel));
            out.emplace_back(fmt::format("adamw.{}.{}", which, s.name), std::move(t));
        }
    }
    out.emplace_back("adamw.step", Tensor::from_vector(std::vector<int64_t>{step_}, Shape{}));
    return out;
}

template <typename T>
void AdamW<T>::load_state(const std::function<Tensor(const std::string&)>& get) {
    auto fetch = [&](const std::string& name) {
        Tensor t = get(name);
        MSLM_CHECK(t.defined(), "optimizer state: {} is missing", name);
        return t;
    };
    std::vector<T> m(m_.size(), T(0)), v(v_.size(), T(0));
    for (const char* which : {"m", "v"}) {
        std::vector<T>& buf = which[0] == 'm' ? m : v;
        for (const ParamSpec& s : specs_) {
            const std::string name = fmt::format("adamw.{}.{}", which, s.name);
            Tensor t = fetch(name);
            MSLM_CHECK(t.shape() == s.shape, "optimizer state {}: shape {} in the checkpoint, {} in the model",
                       name, shape_str(t.shape()), shape_str(s.shape));
            MSLM_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64 || t.dtype() == DType::BF16 ||
                           t.dtype() == DType::F16,
                       "optimizer state {}: dtype {} is not a floating type", name, dtype_name(t.dtype()));
            Tensor c = t.to(Device::CPU).to(dtype_of<T>()).contiguous();
            std::memcpy(buf.data() + s.offset, c.raw(), sizeof(T) * static_cast<size_t>(s.numel));
        }
    }
    Tensor st = fetch("adamw.step");
    MSLM_CHECK(st.dtype() == DType::I64 && st.numel() == 1, "optimizer state adamw.step: expected one I64, got {} {}",
               dtype_name(st.dtype()), shape_str(st.shape()));
    const int64_t step = st.to(Device::CPU).contiguous().data<int64_t>()[0];
    MSLM_CHECK(step >= 0, "optimizer state adamw.step: {} is negative", step);
    m_ = std::move(m);
    v_ = std::move(v);
    step_ = step;
}

template <typename T>
double grad_norm(const Parameters<T>& params) {
    const std::vector<ParamChunk> chunks = param_chunks(params.specs());
    std::vector<double> partial(chunks.size(), 0.0);
    parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            const ParamChunk& ch = chunks[static_cast<size_t>(c)];
            const int64_t off = static_cast<int64_t>(params.specs()[ch.param].offset);
            const T* g = params.grad(ch.param) - off;  // indexed like the flat buffer
            double s = 0;
            for (int64_t i = ch.begin; i < ch.end; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
            partial[static_cast<size_t>(c)] = s;
        }
    });
    double total = 0;
    for (double s : partial) total += s;
    return std::sqrt(total);
}

template <typename T>
double clip_grad_norm(Parameters<T>& params, double max_norm) {
    MSLM_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got {}", max_norm);
    const double norm = grad_norm(params);
    if (!std::isfinite(norm)) return norm;
    const double coef = max_norm / (norm + 1e-6);
    if (coef >= 1.0) return norm;
    const T scale = static_cast<T>(coef);
    const std::vector<ParamChunk> chunks = param_chunks(params.specs());
    T* g = params.grads();
    parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            const ParamChunk& ch = chunks[static_cast<size_t>(c)];
            for (int64_t i = ch.begin; i < ch.end; ++i) g[i] *= scale;
        }
    });
    return norm;
}

template class AdamW<float>;
template class AdamW<double>;
template double clip_grad_norm<float>(Parameters<float>&, double);
template double clip_grad_norm<double>(Parameters<double>&, double);
template double grad_norm<float>(const Parameters<float>&);
template double grad_norm<double>(const Parameters<double>&);

}  // namespace mslm
