// The training loop: a TrainConfig (JSON, with `--set key=value` overrides) names the model, the
// prepared data and the run directory; Trainer validates everything before the first step, then
// runs AdamW with gradient accumulation, clipping, a NaN policy, periodic eval and checkpoints,
// and resumes bitwise from the latest checkpoint of the run directory.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "data/loader.h"
#include "eval/perplexity.h"
#include "lora/config.h"
#include "model/hybrid_lm.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace mslm {

template <typename T>
class LoraModel;
namespace quant {
template <typename T>
class FakeQuantizer;
template <typename T>
class QloraBase;
}

struct TrainConfig {
    // Model: exactly one of preset, config (a config.json or model dir) and init_from (a model dir
    // with weights, native or HF). vocab_size > 0 overrides a preset's or config's vocabulary.
    std::string model_preset, model_config, init_from;
    int64_t model_vocab_size = 0;

    std::string data;     // a `data prepare` output directory (manifest.json)
    // Eval reads the val split of this directory instead of data's, e.g. a held-out tail prepared
    // on its own with --val-fraction 1; it must come from the same tokenizer as data. "": data.
    std::string val_data;
    std::string run_dir;  // metrics.jsonl, checkpoints, loss_curve.svg

    int64_t batch_size = 8;  // rows per micro-batch
    int64_t seq_len = 256;
    int64_t grad_accum = 1;  // micro-batches per step: a step sees batch_size · grad_accum rows
    int64_t steps = 1000;
    // A token budget instead of a step count: when > 0, steps becomes the fewest steps that see
    // this many tokens (batch_size · seq_len · grad_accum per step).
    int64_t tokens = 0;
    // "cpu", or "cuda" / "cuda:N" (GPU 0 / N; builds with CUDA): the steps run on the GPU
    // (model/cuda_model.h, bf16 activations, fp32 masters and AdamW state); eval and checkpoints
    // download the weights and optimizer state into the CPU model and optimizer and run as on CPU.
    std::string device = "cpu";

    std::string lr_schedule = "cosine";  // constant | cosine | wsd
    double lr = 3e-4, min_lr = 3e-5;
    int64_t warmup = 0;
    int64_t decay = 0;  // wsd: length of the final decay
    double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
    double grad_clip = 1.0;  // global norm; 0: no clipping

    int64_t eval_every = 100;  // 0: eval only at the end
    int64_t eval_batches = 10;
    int64_t log_every = 10;
    int64_t checkpoint_every = 500;  // 0: only at the end
    int keep_last = 3;
    uint64_t seed = 0;
    std::string nan_policy = "stop";  // skip: drop the step's update; stop: fail naming the step
    // Keep only each layer's input during forward and recompute the layer before its backward:
    // activation memory of one layer instead of all, for about one more forward pass of compute
    // (on device cuda too: CudaHybridLM::set_recompute).
    bool activation_checkpointing = false;

    // LoRA fine-tuning when lora.r > 0 (src/lora): the model is the frozen base, only one PEFT
    // adapter trains (AdamW state for it alone), and checkpoints hold the adapter in PEFT's layout
    // instead of the model. On device cuda the base is frozen on the GPU as bf16 (or 4-bit with
    // base_quant) and lora.dropout must be 0 (model/cuda_model.h).
    struct Lora {
        int64_t r = 0;
        double alpha = 8;      // lora_alpha; scaling alpha / r (alpha / sqrt(r) with rslora)
        double dropout = 0.0;  // lora_dropout
        // Module names ("q_proj,v_proj", matched as PEFT does), a regex over the module path, or
        // "all-linear"; names are those of the model's Hugging Face class (lora/lora.h).
        std::string targets = "all-linear";
        std::string init = "default";  // default (Kaiming-uniform A) | gaussian; B = 0 either way
        bool rslora = false;
        // QLoRA (quant/qlora.h): "nf4" or "fp4" holds the frozen base's linear weights in that
        // bitsandbytes 4-bit format (double_quant: absmax double-quantized) and releases their fp32
        // values; "" keeps the base in fp32.
        std::string base_quant;
        bool double_quant = true;
    } lora;

    // Quantization-aware training (quant/fake_quant.h): "" (off), "int8", "int4" or "nf4". The linear
    // weights that `mamba-slm quantize` would quantize are fake-quantized in every forward (eval
    // included) and trained through the straight-through estimator; the fp32 masters, their AdamW
    // state and the checkpoints stay fp32. qat_group: int4's group size. CPU only, not with LoRA.
    std::string qat;
    int64_t qat_group = 32;

    int64_t total_steps() const;  // steps, or what the token budget asks for
    LoraConfig lora_config() const;  // lora.* as PEFT's config (base_model_name_or_path = init_from)
    LrSchedule schedule() const;
    void validate() const;  // field-level rules; model and data checks happen in Trainer
};

nlohmann::json train_config_to_json(const TrainConfig& c);
// Unknown keys and wrong types are errors naming the key and `source`.
TrainConfig train_config_from_json(const nlohmann::json& j, const std::string& source);
TrainConfig load_train_config(const std::string& path);
// "key=value" with dotted keys for nested fields ("model.preset=tiny"); the value is read as JSON
// when it parses (numbers, true/false), else as a string.
void apply_override(TrainConfig& c, std::string_view key_value);

// The model a fresh run of `c` starts from: model.init_from's weights, or the preset / config
// initialised with `seed`. `train --save-init` writes it, so that another trainer (the PyTorch
// reference in bench/reference) can start from the same weights.
std::unique_ptr<HybridLM<float>> build_initial_model(const TrainConfig& c);

struct TrainSummary {
    int64_t step = 0;           // steps done, resumed ones included
    int64_t skipped_steps = 0;  // non-finite steps dropped under nan_policy "skip"
    double last_loss = 0;       // train loss of the last step
    double val_loss = 0;        // last eval (NaN when there was none)
    std::string checkpoint;     // the final checkpoint directory
    size_t peak_rss_bytes = 0;  // the process's peak resident set at the end of the run
};

class Trainer {
public:
    // Builds the model (or, with resume, loads the latest checkpoint of run_dir) and the loaders,
    // and checks the model against the data; throws mslm::Error with the reason before any step.
    Trainer(TrainConfig cfg, bool resume);
    ~Trainer();

    TrainSummary run();

    HybridLM<float>& model() { return *model_; }
    // The parameters the optimizer updates: the model's, or the LoRA adapter's (lora.r > 0).
    Parameters<float>& trained_params();
    LoraModel<float>* lora() { return lora_.get(); }
    quant::QloraBase<float>* qlora() { return qlora_.get(); }  // lora.base_quant set: the 4-bit base
    const TrainConfig& config() const { return cfg_; }
    int64_t step() const { return step_; }

    // Test hook: called after the step's backward passes, before clipping (e.g. to poison grads).
    // On device cuda the GPU's gradients are downloaded into params for it and uploaded after it
    // (params' values are then those of the last eval or checkpoint).
    std::function<void(int64_t step, Parameters<float>& params)> after_backward;

private:
    EvalResult evaluate();
    std::string checkpoint();
    void write_curve(const std::string& metrics_path) const;
    void sync_from_gpu(bool optimizer_state);  // device cuda: the GPU's state into model_ (and optimizer_)

    struct Gpu;  // the GPU model and optimizer of device cuda (trainer.cpp); null on cpu

    TrainConfig cfg_;
    LrSchedule schedule_;
    std::unique_ptr<HybridLM<float>> model_;
    std::unique_ptr<quant::QloraBase<float>> qlora_;  // lora.base_quant set: holds model_'s linear weights
    std::unique_ptr<LoraModel<float>> lora_;  // lora.r > 0: the adapter "default" on model_
    std::unique_ptr<quant::FakeQuantizer<float>> qat_;  // qat set: attached to model_'s linear weights
    std::unique_ptr<AdamW<float>> optimizer_;
    std::unique_ptr<DataLoader> train_, val_;
    std::unique_ptr<Gpu> gpu_;
    double bytes_per_token_ = 0;
    bool resumed_ = false;
    int64_t step_ = 0, skipped_ = 0, tokens_seen_ = 0;
};

}  // namespace mslm
