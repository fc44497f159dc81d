// HybridLM: embedding → blocks (x += mixer(norm(x)); x += mlp(norm(x)) when the config has an
// MLP) → final norm → LM head (tied to the embedding by default) → cross-entropy.
// forward and backward read as mirror lists of layer calls; every buffer is sized once for a
// (batch, length) and reused.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/inference.h"
#include "nn/mixer.h"
#include "nn/mlp.h"
#include "nn/norm.h"
#include "nn/parameters.h"

namespace mslm {

template <typename T>
class HybridLM {
public:
    // allocate = false builds the parameter layout only (names, shapes, linear marks) with no
    // values: for tools that map a checkpoint's tensors without running the model.
    explicit HybridLM(const ModelConfig& cfg, bool allocate = true);
    HybridLM(const HybridLM&) = delete;
    HybridLM& operator=(const HybridLM&) = delete;
    ~HybridLM();

    const ModelConfig& config() const { return cfg_; }
    Parameters<T>& params() { return params_; }
    const Parameters<T>& params() const { return params_; }

    // mamba_ssm-style initialisation (see DESIGN §4), deterministic in the seed.
    void init(uint64_t seed);

    // ids, targets (B, T); targets may be null (no loss) and use −100 for positions that do not
    // count; target t is the token that logits at position t should predict (already shifted).
    // Returns the mean cross-entropy over counted positions (0 when none count).
    T forward(const int32_t* ids, const int32_t* targets, int64_t B, int64_t Tn);
    // (B, T, V) logits of the last forward. backward() overwrites them with their gradient.
    const T* logits() const { return logits_.data(); }
    // Hidden states after the final norm (B, T, D) of the last forward.
    const T* final_hidden() const { return hf_.data(); }
    // Gradient of the last forward's loss: accumulates into params().grad(). Needs targets.
    void backward();

    // Inference (DESIGN §5), in buffers of its own: the activations a forward saved for backward
    // are left alone.
    // Consumes ids[0..n) of one sequence into `slot` (parallel form), continuing from its state.
    // logits: (n, V) when all_positions else (1, V) for the last token; hidden: the final-norm
    // output, (n, D) or (1, D) likewise. Either may be null.
    void prefill(InferenceState<T>& st, int64_t slot, const int32_t* ids, int64_t n, T* logits, T* hidden,
                 bool all_positions = false);
    // One token for each of k distinct slots (recurrent step). logits (k, V), hidden (k, D), either
    // may be null.
    void decode(InferenceState<T>& st, const int64_t* slots, const int32_t* tokens, int64_t k, T* logits,
                T* hidden);

    // Activation checkpointing: forward keeps only the residual stream entering each layer and
    // backward recomputes each layer's forward just before its backward, so the activations of
    // one layer are alive at a time instead of all of them; gradients are bitwise the same.
    void set_activation_checkpointing(bool on);
    bool activation_checkpointing() const { return checkpointing_; }
    // Bytes held by training activations and scratch (not parameters, not inference state).
    size_t activation_bytes() const;

    // Inference weights: packs every matrix weight (projections, MLP, LM head) into bf16 or int8
    // (ops/packed_linear.h); forward, prefill and decode then read the packed copies. F32 goes back
    // to the fp32 weights. backward() refuses a packed model.
    void pack_weights(ops::WeightFormat format);
    // After pack_weights for CPU inference: gives the fp32 values of every packed weight back to the
    // OS (the tied embedding excepted: its lookup reads them), so a bf16 model holds ~2 bytes a
    // parameter instead of 6. The model can then only run forward on the CPU: repacking, saving,
    // training and the GPU decoder (which uploads fp32 values) are refused. Returns the bytes released.
    size_t release_unpacked_values();
    ops::WeightFormat weight_format() const { return params_.weight_format(); }
    // Bytes a batch-1 decoding step streams: the packed copies plus the fp32 parameters without one
    // (the embedding's one row per token aside when it is not tied).
    double weight_bytes_per_token() const {
        return static_cast<double>(params_.packed_bytes()) +
               4.0 * static_cast<double>(num_params() - params_.packed_numel());
    }

    int64_t num_params() const { return params_.total_unique(); }
    std::string summary() const;  // one line per layer

private:
    struct Layer {
        LayerKind kind;
        Norm<T> norm;
        std::unique_ptr<Mixer<T>> mixer;
        Norm<T> mlp_norm;
        std::unique_ptr<Mlp<T>> mlp;
    };

    void layer_forward(int64_t l);
    void lm_head_forward(T* logits, const T* h, int64_t rows) const;
    T* layer_mid(int64_t l);
    void release_layer(int64_t l);

    ModelConfig cfg_;
    bool checkpointing_ = false;
    Parameters<T> params_;
    size_t embed_ = kNoParam, lm_head_ = kNoParam;
    std::vector<Layer> layers_;
    Norm<T> final_norm_;

    // Activations of the last forward (N = B·T rows).
    int64_t B_ = 0, T_ = 0, count_ = 0;
    std::vector<int32_t> ids_, targets_;
    std::vector<T> res_;     // (L + 1, N, D) residual stream entering each layer, and the output
    std::vector<T> mid_;     // (L, N, D) residual after the mixer (layers with an MLP)
    std::vector<T> ln1_;     // (L, N, D) mixer inputs
    std::vector<T> ln2_;     // (L, N, D) MLP inputs
    std::vector<T> hf_;      // (N, D) final norm output
    std::vector<T> logits_;  // (N, V)
    std::vector<T> losses_, lse_;  // (N)
    std::vector<T> tmp_, g_res_, g_ln_;

    // Inference: the blocks over `rows` rows of inf_x_ (prefill: one slot; decode: k slots), then
    // the final norm and LM head over the last `out_rows` rows.
    template <typename MixerCall>
    void infer_rows(int64_t rows, int64_t out_rows, T* logits, T* hidden, MixerCall&& mixer_call);
    std::vector<T> inf_x_, inf_ln_, inf_tmp_, inf_h_;  // (rows, D)
};

}  // namespace mslm
