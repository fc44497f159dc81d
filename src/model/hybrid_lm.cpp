#include "model/hybrid_lm.h"

#include <type_traits>

#include "nn/buffers.h"

#include <cmath>
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "nn/attention.h"
#include "nn/mamba1.h"
#include "nn/mamba2.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/linear.h"

namespace mslm {

template <typename T>
HybridLM<T>::HybridLM(const ModelConfig& cfg, bool allocate) : cfg_(cfg) {
    cfg_.validate();
    const int64_t D = cfg.d_model;
    embed_ = params_.add("embed.weight", {cfg.vocab_size, D}, true);
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
        std::string p = fmt::format("layers.{}", l);
        Layer layer;
        layer.kind = cfg.layers[l];
        layer.norm = Norm<T>(params_, p + ".norm", cfg.norm, D, cfg.norm_eps);
        if (layer.kind == LayerKind::Attention) {
            layer.mixer = std::make_unique<AttentionMixer<T>>(params_, p + ".mixer", cfg);
        } else if (cfg.mamba.version == 1) {
            layer.mixer = std::make_unique<Mamba1Mixer<T>>(params_, p + ".mixer", cfg);
        } else {
            layer.mixer = std::make_unique<Mamba2Mixer<T>>(params_, p + ".mixer", cfg);
        }
        if (cfg.mlp.kind != MlpKind::None) {
            layer.mlp_norm = Norm<T>(params_, p + ".mlp_norm", cfg.norm, D, cfg.norm_eps);
            layer.mlp = std::make_unique<Mlp<T>>(params_, p + ".mlp", cfg);
        }
        layers_.push_back(std::move(layer));
    }
    final_norm_ = Norm<T>(params_, "final_norm", cfg.norm, D, cfg.norm_eps);
    lm_head_ = cfg.tie_embeddings ? embed_ : params_.add("lm_head.weight", {cfg.vocab_size, D}, true);
    params_.mark_linear(lm_head_);  // packed for inference with the other matrix weights
    if (allocate) params_.allocate();
}

template <typename T>
HybridLM<T>::~HybridLM() = default;

template <typename T>
void HybridLM<T>::init(uint64_t seed) {
    Rng rng(seed);
    const int residuals_per_layer = cfg_.mlp.kind == MlpKind::None ? 1 : 2;
    InitContext ctx{rng, cfg_.initializer_range,
                    1.0 / std::sqrt(static_cast<double>(residuals_per_layer * cfg_.n_layers))};
    T* e = params_.value(embed_);
    rng.fill_normal(e, cfg_.vocab_size * cfg_.d_model, 0.0, ctx.std);
    for (auto& layer : layers_) {
        layer.norm.init();
        layer.mixer->init(ctx);
        if (layer.mlp) {
            layer.mlp_norm.init();
            layer.mlp->init(ctx);
        }
    }
    final_norm_.init();
    if (lm_head_ != embed_) {
        T* w = params_.value(lm_head_);
        rng.fill_normal(w, cfg_.vocab_size * cfg_.d_model, 0.0, ctx.std);
    }
}

template <typename T>
T HybridLM<T>::forward(const int32_t* ids, const int32_t* targets, int64_t B, int64_t Tn) {
    MSLM_CHECK(B > 0 && Tn > 0, "forward: empty batch ({} x {})", B, Tn);
    MSLM_CHECK(Tn <= cfg_.max_seq_len, "sequence length {} exceeds the model's max_seq_len {}", Tn, cfg_.max_seq_len);
    const int64_t N = B * Tn, D = cfg_.d_model, V = cfg_.vocab_size, L = cfg_.n_layers;
    B_ = B;
    T_ = Tn;
    ids_.assign(ids, ids + N);
    targets_.clear();
    if (targets) targets_.assign(targets, targets + N);
    res_.resize((L + 1) * N * D);
    const bool has_mlp = cfg_.mlp.kind != MlpKind::None;
    // With activation checkpointing only the residual stream is kept per layer; a layer's norm
    // outputs and mid-residual live in one layer's worth of buffers and are recomputed.
    const int64_t kept = checkpointing_ ? 1 : L;
    mid_.resize(has_mlp ? kept * N * D : 0);
    ln1_.resize(kept * N * D);
    ln2_.resize(has_mlp ? kept * N * D : 0);
    hf_.resize(N * D);
    logits_.resize(N * V);
    tmp_.resize(N * D);

    ops::embedding_forward(res_.data(), ids, params_.value(embed_), N, V, D);  // (N) => (N, D)
    for (int64_t l = 0; l < L; ++l) {
        layer_forward(l);
        if (checkpointing_) release_layer(l);
    }
    final_norm_.forward(hf_.data(), res_.data() + L * N * D, N);
    lm_head_forward(logits_.data(), hf_.data(), N);

    count_ = 0;
    if (!targets) return T(0);
    losses_.resize(N);
    lse_.resize(N);
    count_ = ops::cross_entropy_forward(losses_.data(), lse_.data(), logits_.data(), targets, N, V);
    T sum = T(0);
    for (int64_t i = 0; i < N; ++i) sum += losses_[i];
    return count_ ? sum / static_cast<T>(count_) : T(0);
}

// Layer l of the training forward: residual l → norm → mixer → (+ norm → MLP) → residual l + 1.
template <typename T>
void HybridLM<T>::layer_forward(int64_t l) {
    const int64_t N = B_ * T_, D = cfg_.d_model;
    Layer& layer = layers_[l];
    const T* x = res_.data() + l * N * D;
    T* ln1 = ln1_.data() + (checkpointing_ ? 0 : l) * N * D;
    T* mid = layer_mid(l);
    layer.norm.forward(ln1, x, N);
    layer.mixer->forward(tmp_.data(), ln1, B_, T_);
    for (int64_t i = 0; i < N * D; ++i) mid[i] = x[i] + tmp_[i];
    if (layer.mlp) {
        T* ln2 = ln2_.data() + (checkpointing_ ? 0 : l) * N * D;
        T* y = res_.data() + (l + 1) * N * D;
        layer.mlp_norm.forward(ln2, mid, N);
        layer.mlp->forward(tmp_.data(), ln2, N);
        for (int64_t i = 0; i < N * D; ++i) y[i] = mid[i] + tmp_[i];
    }
}

// The residual after layer l's mixer (layers without an MLP: the layer's output).
template <typename T>
T* HybridLM<T>::layer_mid(int64_t l) {
    const int64_t N = B_ * T_, D = cfg_.d_model;
    if (!layers_[l].mlp) return res_.data() + (l + 1) * N * D;
    return mid_.data() + (checkpointing_ ? 0 : l) * N * D;
}

template <typename T>
void HybridLM<T>::release_layer(int64_t l) {
    layers_[l].mixer->release();
    if (layers_[l].mlp) layers_[l].mlp->release();
}

template <typename T>
void HybridLM<T>::set_activation_checkpointing(bool on) {
    checkpointing_ = on;
    targets_.clear();  // a forward must come between this and backward
    if (on)
        for (int64_t l = 0; l < cfg_.n_layers; ++l) release_layer(l);
}

template <typename T>
size_t HybridLM<T>::activation_bytes() const {
    size_t bytes = buffer_bytes(res_, mid_, ln1_, ln2_, hf_, logits_, losses_, lse_, tmp_, g_res_, g_ln_);
    for (const Layer& layer : layers_) {
        bytes += layer.mixer->activation_bytes();
        if (layer.mlp) bytes += layer.mlp->activation_bytes();
    }
    return bytes;
}

template <typename T>
void HybridLM<T>::backward() {
    MSLM_CHECK(params_.weight_format() == ops::WeightFormat::F32, "backward through a model packed for inference ({} weights)",
               ops::weight_format_name(params_.weight_format()));
    MSLM_CHECK(!targets_.empty(), "backward needs a forward with targets");
    const int64_t N = B_ * T_, D = cfg_.d_model, V = cfg_.vocab_size, L = cfg_.n_layers;
    if (count_ == 0) return;
    g_res_.assign(static_cast<size_t>(N * D), T(0));
    g_ln_.resize(N * D);

    T* dlogits = logits_.data();  // in place: the logits are not needed any more
    ops::cross_entropy_backward(dlogits, logits_.data(), lse_.data(), targets_.data(), N, V,
                                T(1) / static_cast<T>(count_));
    std::fill(g_ln_.begin(), g_ln_.end(), T(0));
    ops::linear_backward(g_ln_.data(), params_.grad(lm_head_), static_cast<T*>(nullptr), dlogits, hf_.data(),
                         params_.value(lm_head_), N, D, V);
    final_norm_.backward(g_res_.data(), g_ln_.data(), res_.data() + L * N * D, N);
    for (int64_t l = L - 1; l >= 0; --l) {
        Layer& layer = layers_[l];
        if (checkpointing_) layer_forward(l);  // the same computation again: the same bits
        // g_res_ holds d loss / d (residual leaving layer l); the skip connections pass it through
        // unchanged and each sublayer adds its input gradient on top.
        if (layer.mlp) {
            std::fill(g_ln_.begin(), g_ln_.end(), T(0));
            layer.mlp->backward(g_ln_.data(), g_res_.data());
            layer.mlp_norm.backward(g_res_.data(), g_ln_.data(), layer_mid(l), N);
        }
        std::fill(g_ln_.begin(), g_ln_.end(), T(0));
        layer.mixer->backward(g_ln_.data(), g_res_.data());
        layer.norm.backward(g_res_.data(), g_ln_.data(), res_.data() + l * N * D, N);
        if (checkpointing_) release_layer(l);
    }
    if (cfg_.embed_padding_idx >= 0) {
        // padding_idx semantics: the lookup of that row contributes no gradient.
        for (int64_t n = 0; n < N; ++n)
            if (ids_[n] == cfg_.embed_padding_idx) std::fill_n(g_res_.data() + n * D, D, T(0));
    }
    if (params_.grad(embed_)) ops::embedding_backward(params_.grad(embed_), g_res_.data(), ids_.data(), N, V, D);
}

template <typename T>
template <typename MixerCall>
void HybridLM<T>::infer_rows(int64_t rows, int64_t out_rows, T* logits, T* hidden, MixerCall&& mixer_call) {
    const int64_t D = cfg_.d_model;
    inf_ln_.resize(rows * D);
    inf_tmp_.resize(rows * D);
    T* x = inf_x_.data();  // (rows, D) residual stream
    for (int64_t l = 0; l < cfg_.n_layers; ++l) {
        Layer& layer = layers_[l];
        layer.norm.apply(inf_ln_.data(), x, rows);
        mixer_call(*layer.mixer, inf_tmp_.data(), inf_ln_.data(), l);
        for (int64_t i = 0; i < rows * D; ++i) x[i] += inf_tmp_[i];
        if (layer.mlp) {
            layer.mlp_norm.apply(inf_ln_.data(), x, rows);
            layer.mlp->apply(inf_tmp_.data(), inf_ln_.data(), rows);
            for (int64_t i = 0; i < rows * D; ++i) x[i] += inf_tmp_[i];
        }
    }
    // Only the rows asked for go through the final norm and the (V, D) LM head.
    T* h = hidden;
    if (!h) {
        inf_h_.resize(out_rows * D);
        h = inf_h_.data();
    }
    final_norm_.apply(h, x + (rows - out_rows) * D, out_rows);
    if (logits) lm_head_forward(logits, h, out_rows);
}

template <typename T>
void HybridLM<T>::lm_head_forward(T* logits, const T* h, int64_t rows) const {
    if constexpr (std::is_same_v<T, float>) {
        if (const ops::PackedWeight* pw = params_.packed(lm_head_)) {
            ops::packed_linear_forward(logits, h, *pw, nullptr, rows);
            return;
        }
    }
    ops::linear_forward(logits, h, params_.value(lm_head_), static_cast<const T*>(nullptr), rows, cfg_.d_model,
                        cfg_.vocab_size);
}

template <typename T>
void HybridLM<T>::pack_weights(ops::WeightFormat format) {
    params_.pack_linear_weights(format);
}

template <typename T>
size_t HybridLM<T>::release_unpacked_values() {
    size_t bytes = 0;
    for (size_t i = 0; i < params_.specs().size(); ++i) {
        if (!params_.packed(i) || params_.released(i) || i == embed_) continue;
        params_.release_values(i);
        bytes += sizeof(T) * static_cast<size_t>(params_.specs()[i].numel);
    }
    return bytes;
}

template <typename T>
void HybridLM<T>::prefill(InferenceState<T>& st, int64_t slot, const int32_t* ids, int64_t n, T* logits,
                          T* hidden, bool all_positions) {
    MSLM_CHECK(slot >= 0 && slot < st.slots(), "prefill: slot {} out of range [0, {})", slot, st.slots());
    MSLM_CHECK(n > 0, "prefill: no tokens");
    MSLM_CHECK(st.position(slot) + n <= st.max_len(),
               "prefill: slot {} holds {} tokens; {} more exceed the state's max_len {}", slot,
               st.position(slot), n, st.max_len());
    const int64_t D = cfg_.d_model;
    inf_x_.resize(n * D);  // (n, D)
    ops::embedding_forward(inf_x_.data(), ids, params_.value(embed_), n, cfg_.vocab_size, D);
    infer_rows(n, all_positions ? n : 1, logits, hidden, [&](Mixer<T>& mixer, T* out, const T* x, int64_t l) {
        mixer.prefill(out, x, n, st, l, slot);
    });
    st.advance(slot, n);
}

template <typename T>
void HybridLM<T>::decode(InferenceState<T>& st, const int64_t* slots, const int32_t* tokens, int64_t k,
                         T* logits, T* hidden) {
    MSLM_CHECK(k > 0 && k <= st.slots(), "decode: {} slots for a state of {}", k, st.slots());
    for (int64_t i = 0; i < k; ++i) {
        const int64_t s = slots[i];
        MSLM_CHECK(s >= 0 && s < st.slots(), "decode: slot {} out of range [0, {})", s, st.slots());
        MSLM_CHECK(st.position(s) < st.max_len(), "decode: slot {} is full (max_len {})", s, st.max_len());
        for (int64_t j = 0; j < i; ++j) MSLM_CHECK(slots[j] != s, "decode: slot {} given twice", s);
    }
    const int64_t D = cfg_.d_model;
    inf_x_.resize(k * D);  // (k, D)
    ops::embedding_forward(inf_x_.data(), tokens, params_.value(embed_), k, cfg_.vocab_size, D);
    infer_rows(k, k, logits, hidden,
               [&](Mixer<T>& mixer, T* out, const T* x, int64_t l) { mixer.step(out, x, k, st, l, slots); });
    for (int64_t i = 0; i < k; ++i) st.advance(slots[i], 1);
}

template <typename T>
std::string HybridLM<T>::summary() const {
    std::string s;
    for (size_t l = 0; l < layers_.size(); ++l) {
        s += fmt::format("  layer {:>2}  {}", l, layers_[l].mixer->describe());
        if (layers_[l].mlp) s += " + " + layers_[l].mlp->describe();
        s += "\n";
    }
    return s;
}


template class HybridLM<float>;
template class HybridLM<double>;

}  // namespace mslm
