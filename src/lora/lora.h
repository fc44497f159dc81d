// LoRA adapters on a HybridLM, with PEFT's semantics and file layout.
//
// An adapter adds scaling · B·A(dropout(x)) to the output of each linear module it targets, where
// A is (r, in), B is (out, r) and scaling = alpha / r (alpha / sqrt(r) with rsLoRA). Modules are
// named as PEFT sees them on the Hugging Face class of the model ("model.layers.2.self_attn.q_proj"),
// whatever the native layout: our attention fuses q/k/v into one qkv_proj and SwiGLU fuses gate/up,
// so an adapter on HF's q_proj acts on exactly the rows of the native qkv_proj weight that hold q
// (the row ranges hf_tensor_map gives). A and B of every module are parameters of the adapter's own
// Parameters (names "<module>.lora_A.weight", the PEFT key without "base_model.model."), so the
// optimizer, clipping and checkpoints work on an adapter as on a model.
//
// The adapters hook into the model through Parameters::set_adapter: Linear::forward adds the active
// adapters' outputs after its base product, and Linear::backward runs their backward. The hook saves
// nothing between forward and backward: backward recomputes A·dropout(x) (N·in·r multiply-adds,
// about r/out of the base product) from the x it is given, and the dropout mask is a hash of
// (step, adapter, module, element) rather than a stream of draws. So inference calls between a
// forward and its backward, and activation checkpointing's recomputed forward, see the same
// adapters, and no buffer depends on the order of calls.
//
// A frozen base (training adapters only): freeze_base() releases the model's gradient buffer, after
// which every backward skips the base weights' gradient products (Parameters::freeze_grads) and
// only the adapters' gradients are computed. The base weights are read through the Linear, so a
// base held in another format (a quantized Linear, issue 8 must 5) needs nothing from LoRA but
// the hook.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lora/config.h"
#include "model/hf_import.h"
#include "model/hybrid_lm.h"

namespace mslm {

// One module an adapter can target: rows [row_begin, row_begin + rows) of a native Linear weight
// (out_rows, in).
struct LoraTarget {
    std::string module;  // HF module path, e.g. "model.layers.2.self_attn.q_proj"
    std::string native;  // the native weight, e.g. "layers.2.mixer.qkv_proj.weight"
    size_t weight = 0;   // its index in the model's Parameters
    int64_t row_begin = 0, rows = 0, out_rows = 0, in = 0;
};

// The HF class whose module names adapters of this model use: that of the HF directory it was
// loaded from (`format` = its model_type), or for a native model ("mamba_slm") the class of the
// same structure: Mamba (Mamba-1 only), Mamba2 (Mamba-2 only), Jamba (Mamba-1 with attention or an
// MLP), Bamba (Mamba-2 with attention or an MLP).
HfArch lora_naming_arch(const ModelConfig& cfg, const std::string& format);

template <typename T>
std::vector<LoraTarget> lora_targets(const HybridLM<T>& model, HfArch arch);

template <typename T>
class LoraAdapter {
public:
    struct Module {
        size_t target;  // index into LoraModel::targets()
        size_t A, B;    // parameter indices: A (r, in), B (rows, r)
    };

    const std::string& name() const { return name_; }
    const LoraConfig& config() const { return cfg_; }
    double scaling() const { return cfg_.scaling(); }
    Parameters<T>& params() { return params_; }
    const Parameters<T>& params() const { return params_; }
    const std::vector<Module>& modules() const { return modules_; }
    const Module* module_on(size_t target) const {
        auto it = by_target_.find(target);
        return it == by_target_.end() ? nullptr : &modules_[it->second];
    }
    bool trainable() const { return !params_.frozen(); }

private:
    template <typename>
    friend class LoraModel;
    std::string name_;
    LoraConfig cfg_;
    Parameters<T> params_;
    std::vector<Module> modules_;
    std::map<size_t, size_t> by_target_;
};

template <typename T>
class LoraModel {
public:
    // Attaches to `model` (which must outlive this object); hooks are removed on destruction.
    LoraModel(HybridLM<T>& model, HfArch naming);
    ~LoraModel();
    LoraModel(const LoraModel&) = delete;
    LoraModel& operator=(const LoraModel&) = delete;

    HybridLM<T>& model() { return model_; }
    const std::vector<LoraTarget>& targets() const { return targets_; }
    // The targets a config selects, in model order; throws when it selects none.
    std::vector<size_t> matched_targets(const LoraConfig& cfg) const;
    // "all-linear" → the set of last path components of all targets, as PEFT resolves it.
    LoraConfig resolved(LoraConfig cfg) const;

    // A new trainable adapter, initialised by cfg.init from `seed` (B = 0, so the model is
    // unchanged until it trains). The first adapter added or loaded becomes the active one.
    LoraAdapter<T>& add_adapter(const std::string& name, const LoraConfig& cfg, uint64_t seed);
    // adapter_config.json + adapter_model.safetensors from `dir` (PEFT's layout); frozen unless
    // `trainable`, as PeftModel.from_pretrained.
    LoraAdapter<T>& load_adapter(const std::string& dir, const std::string& name, bool trainable = false);
    void save_adapter(const std::string& name, const std::string& dir) const;

    LoraAdapter<T>& adapter(const std::string& name);
    const LoraAdapter<T>& adapter(const std::string& name) const;
    bool has_adapter(const std::string& name) const { return adapters_.count(name) != 0; }
    std::vector<std::string> adapter_names() const;
    void delete_adapter(const std::string& name);

    // PEFT's set_adapter: every listed adapter adds its output (in list order).
    void set_active(const std::vector<std::string>& names);
    const std::vector<std::string>& active() const { return active_; }

    // PEFT's add_weighted_adapter for combination_type "linear" (all ranks equal; per module
    // A = Σ sign(wᵢsᵢ)·sqrt|wᵢsᵢ|·Aᵢ and B = Σ sqrt|wᵢsᵢ|·Bᵢ, sᵢ the adapter's scaling) and "cat"
    // (rank Σ rᵢ; A = [w₁s₁A₁; w₂s₂A₂; …], B = [B₁ B₂ …], the adapters present on a module packed
    // first and the rest zero). The new adapter copies the first one's config with r = lora_alpha =
    // the new rank (so its scaling is 1, or sqrt(r) when the first uses rsLoRA) and targets the
    // union of the sources' modules; it is frozen and not made active.
    LoraAdapter<T>& add_weighted_adapter(const std::vector<std::string>& adapters,
                                         const std::vector<double>& weights, const std::string& name,
                                         const std::string& combination);

    // Adds the active adapters' scaling·B·A into the base weights (PEFT's merge_adapter); while merged
    // the hooks add nothing. unmerge subtracts the same products again (PEFT's unmerge_adapter).
    void merge();
    void unmerge();
    bool merged() const { return merged_; }
    // merge(), then drop every adapter and detach: the model is a plain model with merged weights.
    void merge_and_unload();

    // Training: dropout on, and the model's base gradients released (freeze_base).
    void set_training(bool on) { training_ = on; }
    bool training() const { return training_; }
    // The dropout masks of the next forward/backward are a function of this counter (set it per
    // micro-batch): a recomputed forward draws the same mask as the first.
    void set_step(uint64_t step) { step_ = step; }
    void freeze_base() { model_.params().freeze_grads(); }

private:
    class Hook;
    friend class Hook;
    void forward(const std::vector<size_t>& targets, T* y, const T* x, int64_t N);
    void backward(const std::vector<size_t>& targets, T* dx, const T* dy, const T* x, int64_t N);
    // x with the adapter's dropout applied (training, p > 0) into scratch, or x itself.
    const T* dropped(const LoraAdapter<T>& a, size_t adapter_id, size_t target, const T* x, int64_t N,
                     std::vector<T>& scratch) const;
    void apply_delta(const LoraAdapter<T>& a, T sign);
    LoraAdapter<T>& make_adapter(const std::string& name, const LoraConfig& cfg,
                                 const std::vector<size_t>& targets);
    void require_unmerged(const char* what) const;
    size_t adapter_id(const std::string& name) const;

    HybridLM<T>& model_;
    HfArch naming_;
    std::vector<LoraTarget> targets_;
    std::vector<std::unique_ptr<Hook>> hooks_;
    std::map<std::string, std::unique_ptr<LoraAdapter<T>>> adapters_;
    std::vector<std::string> order_;  // adapter names in the order they were added (dropout ids)
    std::vector<std::string> active_;
    bool merged_ = false, training_ = false;
    uint64_t step_ = 0;
    std::vector<T> xd_, u_, gu_, tmp_;  // scratch (one hook runs at a time)
};

}  // namespace mslm
