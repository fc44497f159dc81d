#include "lora/lora.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/gemm.h"
#include "core/rng.h"
#include "core/safetensors.h"

namespace mslm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kKeyPrefix = "base_model.model.";

// splitmix64: a counter-based hash for the dropout masks.
uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Element i of the dropout mask of (step, adapter, module): dropped with probability p.
uint64_t mask_seed(uint64_t step, size_t adapter, size_t target) {
    return mix(mix(mix(step) ^ adapter) ^ target);
}
bool is_dropped(uint64_t seed, int64_t i, double p) {
    return static_cast<double>(mix(seed ^ static_cast<uint64_t>(i)) >> 11) * 0x1.0p-53 < p;
}

int as_int(int64_t v, const char* what) {
    MSLM_CHECK(v >= 0 && v <= INT_MAX, "LoRA: {} = {} does not fit a BLAS int", what, v);
    return static_cast<int>(v);
}

std::string last_component(const std::string& path) {
    size_t dot = path.rfind('.');
    return dot == std::string::npos ? path : path.substr(dot + 1);
}

// PEFT refuses LoRA on out_proj for the model types mamba and mamba2 (tuners_utils.py:
// _check_lora_target_modules_mamba; their fused CUDA path reads the weight directly), so an
// adapter of ours that targets it could not be loaded by PEFT.
bool peft_refuses(HfArch arch, const std::string& module) {
    return (arch == HfArch::Mamba || arch == HfArch::Mamba2) && last_component(module) == "out_proj";
}

}  // namespace

HfArch lora_naming_arch(const ModelConfig& cfg, const std::string& format) {
    if (format != "mamba_slm" && !format.empty()) return hf_arch_from_model_type(format, "model config.json");
    bool attention = false;
    for (LayerKind k : cfg.layers) attention = attention || k == LayerKind::Attention;
    const bool pure = !attention && cfg.mlp.kind == MlpKind::None;
    if (cfg.mamba.version == 1) return pure ? HfArch::Mamba : HfArch::Jamba;
    return pure ? HfArch::Mamba2 : HfArch::Bamba;
}

template <typename T>
std::vector<LoraTarget> lora_targets(const HybridLM<T>& model, HfArch arch) {
    const Parameters<T>& params = model.params();
    std::vector<LoraTarget> out;
    const std::string suffix = ".weight";
    for (const HfTensorMap& m : hf_tensor_map(arch, model.config(), params.specs())) {
        if (m.hf_name.size() <= suffix.size() ||
            m.hf_name.compare(m.hf_name.size() - suffix.size(), suffix.size(), suffix) != 0)
            continue;
        if (m.native_name == "embed.weight" || m.native_name == "lm_head.weight")
            continue;  // not projections
        const size_t w = params.find(m.native_name);
        if (!params.is_linear(w)) continue;  // conv1d and norm weights
        const ParamSpec& s = params.specs()[w];
        out.push_back({m.hf_name.substr(0, m.hf_name.size() - suffix.size()), m.native_name, w, m.row_begin,
                       m.rows, s.shape[0], s.shape[1]});
    }
    return out;
}

// One per native weight with targets: Linear::forward / backward of that weight call it.
template <typename T>
class LoraModel<T>::Hook : public LinearAdapter<T> {
public:
    Hook(LoraModel& owner, std::vector<size_t> targets) : owner_(owner), targets_(std::move(targets)) {}
    void forward(T* y, const T* x, int64_t N) override { owner_.forward(targets_, y, x, N); }
    void backward(T* dx, const T* dy, const T* x, int64_t N) override {
        owner_.backward(targets_, dx, dy, x, N);
    }

private:
    LoraModel& owner_;
    std::vector<size_t> targets_;
};

template <typename T>
LoraModel<T>::LoraModel(HybridLM<T>& model, HfArch naming)
    : model_(model), naming_(naming), targets_(lora_targets(model, naming)) {
    std::map<size_t, std::vector<size_t>> by_weight;
    for (size_t t = 0; t < targets_.size(); ++t) by_weight[targets_[t].weight].push_back(t);
    for (auto& [w, ts] : by_weight) {
        MSLM_CHECK(model_.params().adapter(w) == nullptr, "LoRA: parameter {} already has an adapter hook",
                   model_.params().specs()[w].name);
        hooks_.push_back(std::make_unique<Hook>(*this, ts));
        model_.params().set_adapter(w, hooks_.back().get());
    }
}

template <typename T>
LoraModel<T>::~LoraModel() {
    std::set<size_t> weights;
    for (const LoraTarget& t : targets_) weights.insert(t.weight);
    for (size_t w : weights) model_.params().set_adapter(w, nullptr);
}

template <typename T>
std::vector<size_t> LoraModel<T>::matched_targets(const LoraConfig& cfg) const {
    std::vector<size_t> out;
    for (size_t t = 0; t < targets_.size(); ++t) {
        if (!cfg.matches(targets_[t].module)) continue;
        MSLM_CHECK(!peft_refuses(naming_, targets_[t].module),
                   "LoRA: target_modules \"{}\" selects {}, but PEFT refuses LoRA on out_proj of {} models; "
                   "leave out_proj out",
                   lora_targets_string(cfg), targets_[t].module, hf_model_type(naming_));
        out.push_back(t);
    }
    if (out.empty()) {
        std::set<std::string> names;
        for (const LoraTarget& t : targets_) names.insert(last_component(t.module));
        std::string list;
        for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
        fail("LoRA: target_modules \"{}\" matches no linear module of this model (its modules end in: {})",
             lora_targets_string(cfg), list);
    }
    return out;
}

template <typename T>
LoraConfig LoraModel<T>::resolved(LoraConfig cfg) const {
    if (!cfg.is_all_linear()) return cfg;
    std::set<std::string> names;
    for (const LoraTarget& t : targets_)
        if (!peft_refuses(naming_, t.module)) names.insert(last_component(t.module));
    cfg.target_regex.clear();
    cfg.target_names.assign(names.begin(), names.end());
    return cfg;
}

template <typename T>
void LoraModel<T>::require_unmerged(const char* what) const {
    MSLM_CHECK(!merged_, "LoRA: {} while the adapters are merged into the base weights; unmerge first", what);
}

template <typename T>
size_t LoraModel<T>::adapter_id(const std::string& name) const {
    return static_cast<size_t>(std::find(order_.begin(), order_.end(), name) - order_.begin());
}

template <typename T>
LoraAdapter<T>& LoraModel<T>::make_adapter(const std::string& name, const LoraConfig& cfg,
                                           const std::vector<size_t>& targets) {
    require_unmerged("adding an adapter");
    MSLM_CHECK(!name.empty(), "LoRA: an adapter needs a name");
    MSLM_CHECK(!has_adapter(name), "LoRA: an adapter named \"{}\" is already loaded", name);
    auto a = std::make_unique<LoraAdapter<T>>();
    a->name_ = name;
    a->cfg_ = cfg;
    for (size_t t : targets) {
        const LoraTarget& tg = targets_[t];
        // PEFT's weight decay applies to LoRA matrices (they are neither biases nor norms).
        size_t A = a->params_.add(tg.module + ".lora_A.weight", {cfg.r, tg.in}, true);
        size_t B = a->params_.add(tg.module + ".lora_B.weight", {tg.rows, cfg.r}, true);
        a->by_target_[t] = a->modules_.size();
        a->modules_.push_back({t, A, B});
    }
    a->params_.allocate();
    LoraAdapter<T>& ref = *a;
    adapters_[name] = std::move(a);
    order_.push_back(name);
    if (active_.empty()) active_ = {name};
    return ref;
}

template <typename T>
LoraAdapter<T>& LoraModel<T>::add_adapter(const std::string& name, const LoraConfig& given, uint64_t seed) {
    given.validate(true);
    LoraConfig cfg = resolved(given);
    LoraAdapter<T>& a = make_adapter(name, cfg, matched_targets(cfg));
    Rng rng(seed);
    for (const auto& m : a.modules_) {
        const LoraTarget& tg = targets_[m.target];
        T* A = a.params_.value(m.A);
        const int64_t n = cfg.r * tg.in;
        if (cfg.init == "gaussian") {
            for (int64_t i = 0; i < n; ++i)
                A[i] = static_cast<T>(rng.normal(0.0, 1.0 / static_cast<double>(cfg.r)));
        } else {
            // kaiming_uniform_(a = sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain·sqrt(3 / fan_in) =
            // 1/sqrt(in).
            const double bound = 1.0 / std::sqrt(static_cast<double>(tg.in));
            for (int64_t i = 0; i < n; ++i) A[i] = static_cast<T>(rng.uniform(-bound, bound));
        }
        // B stays zero (allocate() zeroes the values).
    }
    return a;
}

template <typename T>
LoraAdapter<T>& LoraModel<T>::adapter(const std::string& name) {
    auto it = adapters_.find(name);
    MSLM_CHECK(it != adapters_.end(), "LoRA: no adapter named \"{}\" is loaded", name);
    return *it->second;
}

template <typename T>
const LoraAdapter<T>& LoraModel<T>::adapter(const std::string& name) const {
    auto it = adapters_.find(name);
    MSLM_CHECK(it != adapters_.end(), "LoRA: no adapter named \"{}\" is loaded", name);
    return *it->second;
}

template <typename T>
std::vector<std::string> LoraModel<T>::adapter_names() const {
    return order_;
}

template <typename T>
void LoraModel<T>::delete_adapter(const std::string& name) {
    require_unmerged("deleting an adapter");
    adapter(name);  // throws when absent
    adapters_.erase(name);
    order_.erase(std::find(order_.begin(), order_.end(), name));
    active_.erase(std::remove(active_.begin(), active_.end(), name), active_.end());
}

template <typename T>
void LoraModel<T>::set_active(const std::vector<std::string>& names) {
    require_unmerged("changing the active adapters");
    for (const auto& n : names) adapter(n);
    active_ = names;
}

// ---------------------------------------------------------------------------------------------
// Forward and backward of the hooks

template <typename T>
const T* LoraModel<T>::dropped(const LoraAdapter<T>& a, size_t adapter_id, size_t target, const T* x,
                               int64_t N, std::vector<T>& scratch) const {
    const double p = a.cfg_.dropout;
    if (!training_ || p == 0) return x;
    const int64_t in = targets_[target].in;
    scratch.resize(static_cast<size_t>(N * in));
    const uint64_t seed = mask_seed(step_, adapter_id, target);
    const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
    for (int64_t i = 0; i < N * in; ++i) scratch[i] = is_dropped(seed, i, p) ? T(0) : x[i] * keep_scale;
    return scratch.data();
}

template <typename T>
void LoraModel<T>::forward(const std::vector<size_t>& targets, T* y, const T* x, int64_t N) {
    if (merged_) return;
    for (const std::string& name : active_) {
        const LoraAdapter<T>& a = *adapters_.at(name);
        const int r = as_int(a.cfg_.r, "r");
        const T s = static_cast<T>(a.scaling());
        for (size_t t : targets) {
            const auto* m = a.module_on(t);
            if (!m) continue;
            const LoraTarget& tg = targets_[t];
            const int n = as_int(N, "rows"), in = as_int(tg.in, "in"), rows = as_int(tg.rows, "rows");
            const T* xin = dropped(a, adapter_id(name), t, x, N, xd_);
            u_.resize(static_cast<size_t>(N * r));
            // u (N, r) = drop(x) (N, in) · Aᵀ;  y[:, rows] (N, rows) += s · u · Bᵀ
            gemm<T>(false, true, n, r, in, T(1), xin, in, a.params_.value(m->A), in, T(0), u_.data(), r);
            gemm<T>(false, true, n, rows, r, s, u_.data(), r, a.params_.value(m->B), r, T(1),
                    y + tg.row_begin, as_int(tg.out_rows, "out"));
        }
    }
}

template <typename T>
void LoraModel<T>::backward(const std::vector<size_t>& targets, T* dx, const T* dy, const T* x, int64_t N) {
    if (merged_) return;
    for (const std::string& name : active_) {
        LoraAdapter<T>& a = *adapters_.at(name);
        const bool train = a.trainable();
        if (!train && !dx) continue;
        const int r = as_int(a.cfg_.r, "r");
        const T s = static_cast<T>(a.scaling());
        for (size_t t : targets) {
            const auto* m = a.module_on(t);
            if (!m) continue;
            const LoraTarget& tg = targets_[t];
            const int n = as_int(N, "rows"), in = as_int(tg.in, "in"), rows = as_int(tg.rows, "rows");
            const int ld = as_int(tg.out_rows, "out");
            const T* g = dy + tg.row_begin;  // (N, rows) with row stride out_rows
            const T* A = a.params_.value(m->A);
            const T* B = a.params_.value(m->B);
            const T* xin = dropped(a, adapter_id(name), t, x, N, xd_);
            u_.resize(static_cast<size_t>(N * r));
            gu_.resize(static_cast<size_t>(N * r));
            // gu (N, r) = s · g · B: the gradient at u
            gemm<T>(false, false, n, r, rows, s, g, ld, B, r, T(0), gu_.data(), r);
            if (train) {
                gemm<T>(false, true, n, r, in, T(1), xin, in, A, in, T(0), u_.data(), r);  // u, recomputed
                // dB (rows, r) += s · gᵀ · u;  dA (r, in) += guᵀ · drop(x)
                gemm<T>(true, false, rows, r, n, s, g, ld, u_.data(), r, T(1), a.params_.grad(m->B), r);
                gemm<T>(true, false, r, in, n, T(1), gu_.data(), r, xin, in, T(1), a.params_.grad(m->A), in);
            }
            if (!dx) continue;
            if (xin == x) {
                gemm<T>(false, false, n, in, r, T(1), gu_.data(), r, A, in, T(1), dx, in);  // dx += gu · A
            } else {
                // Through the dropout: the forward's mask (the same hash) and 1 / (1 − p).
                tmp_.resize(static_cast<size_t>(N * in));
                gemm<T>(false, false, n, in, r, T(1), gu_.data(), r, A, in, T(0), tmp_.data(), in);
                const double p = a.cfg_.dropout;
                const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
                const uint64_t seed = mask_seed(step_, adapter_id(name), t);
                for (int64_t i = 0; i < N * in; ++i)
                    if (!is_dropped(seed, i, p)) dx[i] += tmp_[i] * keep_scale;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Merging and weighted combination

template <typename T>
void LoraModel<T>::apply_delta(const LoraAdapter<T>& a, T sign) {
    Parameters<T>& base = model_.params();
    const int r = as_int(a.cfg_.r, "r");
    const T s = static_cast<T>(a.scaling());
    for (const auto& m : a.modules_) {
        const LoraTarget& tg = targets_[m.target];
        const int rows = as_int(tg.rows, "rows"), in = as_int(tg.in, "in");
        MSLM_CHECK(!base.released(tg.weight),
                   "LoRA: cannot merge into {}: the base holds it in 4 bits (QLoRA); save the adapter and merge it "
                   "into the unquantized model (mamba-slm lora merge)",
                   tg.native);
        // PEFT's get_delta_weight: (B · A) · scaling in the weights' precision, then W ± delta.
        tmp_.resize(static_cast<size_t>(tg.rows * tg.in));
        gemm<T>(false, false, rows, in, r, T(1), a.params_.value(m.B), r, a.params_.value(m.A), in, T(0),
                tmp_.data(), in);
        T* W = base.value(tg.weight) + tg.row_begin * tg.in;
        for (int64_t i = 0; i < tg.rows * tg.in; ++i) W[i] += sign * (tmp_[i] * s);
    }
}

template <typename T>
void LoraModel<T>::merge() {
    MSLM_CHECK(!merged_, "LoRA: the adapters are already merged");
    MSLM_CHECK(model_.params().weight_format() == ops::WeightFormat::F32,
               "LoRA: merge into a model packed for inference; merge before packing");
    for (const auto& name : active_) apply_delta(*adapters_.at(name), T(1));
    merged_ = true;
}

template <typename T>
void LoraModel<T>::unmerge() {
    MSLM_CHECK(merged_, "LoRA: nothing is merged");
    // Reverse order, so that a sequence of merges is undone as a stack.
    for (auto it = active_.rbegin(); it != active_.rend(); ++it) apply_delta(*adapters_.at(*it), T(-1));
    merged_ = false;
}

template <typename T>
void LoraModel<T>::merge_and_unload() {
    if (!merged_) merge();
    merged_ = false;
    adapters_.clear();
    order_.clear();
    active_.clear();
}

template <typename T>
LoraAdapter<T>& LoraModel<T>::add_weighted_adapter(const std::vector<std::string>& names,
                                                   const std::vector<double>& weights,
                                                   const std::string& name,
                                                   const std::string& combination_in) {
    MSLM_CHECK(!names.empty(), "LoRA: add_weighted_adapter needs at least one adapter");
    MSLM_CHECK(names.size() == weights.size(), "LoRA: {} adapters but {} weights", names.size(),
               weights.size());
    MSLM_CHECK(combination_in == "linear" || combination_in == "cat",
               "LoRA: combination_type \"{}\" is not supported (linear, cat)", combination_in);
    // PEFT: a single adapter can only be combined linearly.
    const std::string combination = names.size() == 1 ? "linear" : combination_in;
    std::vector<const LoraAdapter<T>*> src;
    for (const auto& n : names) src.push_back(&adapter(n));
    int64_t new_rank = 0;
    for (const auto* a : src) {
        if (combination == "linear")
            MSLM_CHECK(
                a->cfg_.r == src[0]->cfg_.r,
                "LoRA: combination \"linear\" needs adapters of one rank (\"{}\" has r = {}, \"{}\" r = {}); "
                "use \"cat\"",
                src[0]->name_, src[0]->cfg_.r, a->name_, a->cfg_.r);
        new_rank = combination == "linear" ? a->cfg_.r : new_rank + a->cfg_.r;
    }
    LoraConfig cfg = src[0]->cfg_;
    cfg.r = new_rank;
    cfg.alpha = static_cast<double>(new_rank);
    const bool regex = !cfg.target_regex.empty();
    for (const auto* a : src)
        MSLM_CHECK(a->cfg_.target_regex.empty() != regex,
                   "LoRA: adapters to combine must all give target_modules as names or all as a regex");
    if (regex) {
        cfg.target_regex.clear();
        for (const auto* a : src)
            cfg.target_regex += (cfg.target_regex.empty() ? "(" : "|(") + a->cfg_.target_regex + ")";
    } else {
        std::set<std::string> all;
        for (const auto* a : src) all.insert(a->cfg_.target_names.begin(), a->cfg_.target_names.end());
        cfg.target_names.assign(all.begin(), all.end());
    }
    LoraAdapter<T>& out = make_adapter(name, cfg, matched_targets(cfg));
    for (const auto& m : out.modules_) {
        const int64_t in = targets_[m.target].in, rows = targets_[m.target].rows;
        T* A = out.params_.value(m.A);  // (new_rank, in)
        T* B = out.params_.value(m.B);  // (rows, new_rank)
        int64_t filled = 0;             // cat: ranks used so far
        for (size_t i = 0; i < src.size(); ++i) {
            const auto* sm = src[i]->module_on(m.target);
            if (!sm) continue;
            const int64_t r = src[i]->cfg_.r;
            const T* Ai = src[i]->params_.value(sm->A);
            const T* Bi = src[i]->params_.value(sm->B);
            const double ws = weights[i] * src[i]->scaling();
            if (combination == "cat") {
                const T wa = static_cast<T>(ws);
                for (int64_t k = 0; k < r * in; ++k) A[filled * in + k] = Ai[k] * wa;
                for (int64_t o = 0; o < rows; ++o)
                    for (int64_t k = 0; k < r; ++k) B[o * new_rank + filled + k] = Bi[o * r + k];
                filled += r;
            } else {
                // The sign goes on A only, so that it is not applied twice.
                const T wb = static_cast<T>(std::sqrt(std::fabs(ws)));
                const T wa = ws >= 0 ? wb : -wb;
                for (int64_t k = 0; k < r * in; ++k) A[k] += Ai[k] * wa;
                for (int64_t k = 0; k < rows * r; ++k) B[k] += Bi[k] * wb;
            }
        }
    }
    out.params_.freeze_grads();
    return out;
}

// ---------------------------------------------------------------------------------------------
// PEFT files

template <typename T>
void LoraModel<T>::save_adapter(const std::string& name, const std::string& dir) const {
    const LoraAdapter<T>& a = adapter(name);
    fs::create_directories(dir);
    std::vector<std::pair<std::string, Tensor>> tensors;
    const Parameters<T>& p = a.params_;
    for (size_t i = 0; i < p.specs().size(); ++i) {
        const ParamSpec& s = p.specs()[i];
        Tensor t = Tensor::empty(s.shape, DType::F32);
        float* d = t.data<float>();
        for (int64_t k = 0; k < s.numel; ++k) d[k] = static_cast<float>(p.value(i)[k]);
        tensors.emplace_back(kKeyPrefix + s.name, t);
    }
    save_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
    const fs::path cfg_path = fs::path(dir) / "adapter_config.json";
    std::ofstream out(cfg_path);
    out << lora_config_to_peft_json(a.cfg_).dump(2) << "\n";
    MSLM_CHECK(out.good(), "{}: write failed", cfg_path.string());
}

template <typename T>
LoraAdapter<T>& LoraModel<T>::load_adapter(const std::string& dir, const std::string& name, bool trainable) {
    const fs::path cfg_path = fs::path(dir) / "adapter_config.json";
    const fs::path weights_path = fs::path(dir) / "adapter_model.safetensors";
    std::ifstream in(cfg_path);
    MSLM_CHECK(in,
               "{}: cannot open (a PEFT adapter directory holds adapter_config.json and "
               "adapter_model.safetensors)",
               cfg_path.string());
    json j;
    try {
        j = json::parse(in);
    } catch (const json::parse_error& e) {
        fail("{}: not valid JSON: {}", cfg_path.string(), e.what());
    }
    const LoraConfig cfg = lora_config_from_peft_json(j, cfg_path.string());
    MSLM_CHECK(fs::exists(weights_path),
               "{}: missing (adapter_model.bin, PyTorch's pickle format, is not read)",
               weights_path.string());
    SafetensorsFile file = SafetensorsFile::open(weights_path.string());
    std::vector<size_t> targets;
    try {
        targets = matched_targets(cfg);
    } catch (const Error& e) {
        fail("{}: {}", cfg_path.string(), e.what());
    }
    // Every module the config selects must be in the file, and the file may hold nothing else.
    std::set<std::string> expected;
    for (size_t t : targets)
        for (const char* ab : {".lora_A.weight", ".lora_B.weight"})
            expected.insert(kKeyPrefix + targets_[t].module + ab);
    for (const auto& key : file.names())
        MSLM_CHECK(expected.count(key),
                   "{}: tensor '{}' is not the lora_A / lora_B weight of a module that "
                   "adapter_config.json's target_modules selects on this model",
                   file.name(), key);
    for (const auto& key : expected)
        MSLM_CHECK(file.contains(key), "{}: missing tensor '{}'", file.name(), key);
    LoraAdapter<T>& a = make_adapter(name, cfg, targets);
    for (size_t i = 0; i < a.params_.specs().size(); ++i) {
        const ParamSpec& s = a.params_.specs()[i];
        const std::string key = kKeyPrefix + s.name;
        const SafetensorsEntry& e = file.entry(key);
        if (e.shape != s.shape) {
            const std::string msg = fmt::format(
                "{}: tensor '{}' has shape {}, expected {} (r = {} from "
                "adapter_config.json)",
                file.name(), key, shape_str(e.shape), shape_str(s.shape), cfg.r);
            delete_adapter(name);
            fail("{}", msg);
        }
        Tensor t = file.get_f32(key);
        const float* d = t.data<float>();
        for (int64_t k = 0; k < s.numel; ++k) a.params_.value(i)[k] = static_cast<T>(d[k]);
    }
    if (!trainable) a.params_.freeze_grads();
    return a;
}

template std::vector<LoraTarget> lora_targets<float>(const HybridLM<float>&, HfArch);
template std::vector<LoraTarget> lora_targets<double>(const HybridLM<double>&, HfArch);
template class LoraModel<float>;
template class LoraModel<double>;

}  // namespace mslm
