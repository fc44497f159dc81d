#include "train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <limits>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"
#include "data/manifest.h"
#include "lora/lora.h"
#include "model/config.h"
#include "model/cuda_model.h"
#include "model/model_io.h"
#include "quant/fake_quant.h"
#include "quant/qlora.h"
#include "train/checkpoint.h"
#include "train/loss_curve.h"
#include "train/metrics.h"

namespace mslm {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// TrainConfig

namespace {

// -1 for "cpu", N for "cuda:N", 0 for "cuda".
int cuda_device_index(const std::string& device) {
    if (device == "cpu") return -1;
    if (device == "cuda") return 0;
    const std::string prefix = "cuda:";
    const std::string digits = device.rfind(prefix, 0) == 0 ? device.substr(prefix.size()) : "";
    MSLM_CHECK(!digits.empty() && digits.size() <= 4 &&
                   digits.find_first_not_of("0123456789") == std::string::npos,
               "train config: device must be \"cpu\", \"cuda\" or \"cuda:N\" (got \"{}\")", device);
    return std::stoi(digits);
}

}  // namespace

LoraConfig TrainConfig::lora_config() const {
    LoraConfig c;
    c.r = lora.r;
    c.alpha = lora.alpha;
    c.dropout = lora.dropout;
    c.use_rslora = lora.rslora;
    c.init = lora.init;
    set_lora_targets(c, lora.targets);
    c.base_model_name_or_path = init_from;
    return c;
}

int64_t TrainConfig::total_steps() const {
    if (tokens <= 0) return steps;
    const int64_t per_step = batch_size * seq_len * grad_accum;
    return (tokens + per_step - 1) / per_step;
}

LrSchedule TrainConfig::schedule() const {
    LrSchedule s;
    s.kind = LrSchedule::parse_kind(lr_schedule);
    s.lr = lr;
    s.min_lr = min_lr;
    s.warmup = warmup;
    s.total = total_steps();
    s.decay = decay;
    return s;
}

void TrainConfig::validate() const {
    const int sources = !model_preset.empty() + !model_config.empty() + !init_from.empty();
    MSLM_CHECK(sources == 1, "train config: give exactly one of model.preset, model.config and model.init_from "
               "({} given)", sources);
    MSLM_CHECK(model_vocab_size >= 0, "train config: model.vocab_size must be >= 0");
    MSLM_CHECK(init_from.empty() || model_vocab_size == 0,
               "train config: model.vocab_size cannot override the vocabulary of model.init_from weights");
    MSLM_CHECK(!data.empty(), "train config: data (a `data prepare` output directory) is required");
    MSLM_CHECK(!run_dir.empty(), "train config: run_dir is required");
    MSLM_CHECK(batch_size > 0, "train config: batch_size must be > 0 (got {})", batch_size);
    MSLM_CHECK(seq_len > 0, "train config: seq_len must be > 0 (got {})", seq_len);
    MSLM_CHECK(grad_accum > 0, "train config: grad_accum must be > 0 (got {})", grad_accum);
    MSLM_CHECK(steps > 0, "train config: steps must be > 0 (got {})", steps);
    MSLM_CHECK(tokens >= 0, "train config: tokens must be >= 0 (got {})", tokens);
    [[maybe_unused]] const int gpu = cuda_device_index(device);  // throws unless cpu, cuda, cuda:N
#ifndef MSLM_HAVE_CUDA
    MSLM_CHECK(gpu < 0, "train config: device \"{}\": this build of mamba-slm has no CUDA support; train on "
               "\"cpu\", or build with CUDA (cmake --preset cuda)", device);
#endif
    MSLM_CHECK(grad_clip >= 0, "train config: grad_clip must be >= 0 (got {})", grad_clip);
    MSLM_CHECK(eval_every >= 0 && eval_batches > 0 && log_every > 0 && checkpoint_every >= 0,
               "train config: eval_every and checkpoint_every must be >= 0, eval_batches and log_every > 0");
    MSLM_CHECK(keep_last > 0, "train config: keep_last must be > 0 (got {})", keep_last);
    MSLM_CHECK(nan_policy == "skip" || nan_policy == "stop",
               "train config: nan_policy must be \"skip\" or \"stop\" (got \"{}\")", nan_policy);
    MSLM_CHECK(lora.r >= 0, "train config: lora.r must be >= 0 (got {}; 0 trains the whole model)", lora.r);
    if (lora.r > 0) {
        MSLM_CHECK(gpu < 0 || lora.dropout == 0,
                   "train config: lora.dropout {} > 0 is not supported on device \"{}\" yet; set lora.dropout 0 or "
                   "device \"cpu\"", lora.dropout, device);
        try {
            lora_config().validate();
        } catch (const Error& e) {
            fail("train config: lora: {}", e.what());
        }
    }
    if (!lora.base_quant.empty()) {
        MSLM_CHECK(lora.r > 0, "train config: lora.base_quant \"{}\" (QLoRA) needs lora.r > 0", lora.base_quant);
        try {
            quant::parse_base_quant(lora.base_quant);
        } catch (const Error& e) {
            fail("train config: lora.base_quant: {}", e.what());
        }
    }
    if (!qat.empty()) {
        try {
            quant::parse_qat_type(qat);
            quant::check_int4_group(qat_group);
        } catch (const Error& e) {
            fail("train config: {}", e.what());
        }
        MSLM_CHECK(gpu < 0, "train config: qat runs on the CPU only; set device \"cpu\"");
        MSLM_CHECK(lora.r == 0, "train config: qat and LoRA (lora.r > 0) cannot be combined");
    }
    schedule().validate();
}

json train_config_to_json(const TrainConfig& c) {
    return {
        {"model", {{"preset", c.model_preset}, {"config", c.model_config}, {"init_from", c.init_from},
                   {"vocab_size", c.model_vocab_size}}},
        {"data", c.data},
        {"val_data", c.val_data},
        {"run_dir", c.run_dir},
        {"batch_size", c.batch_size},
        {"seq_len", c.seq_len},
        {"grad_accum", c.grad_accum},
        {"steps", c.steps},
        {"tokens", c.tokens},
        {"device", c.device},
        {"lr_schedule", c.lr_schedule},
        {"lr", c.lr},
        {"min_lr", c.min_lr},
        {"warmup", c.warmup},
        {"decay", c.decay},
        {"weight_decay", c.weight_decay},
        {"beta1", c.beta1},
        {"beta2", c.beta2},
        {"eps", c.eps},
        {"grad_clip", c.grad_clip},
        {"eval_every", c.eval_every},
        {"eval_batches", c.eval_batches},
        {"log_every", c.log_every},
        {"checkpoint_every", c.checkpoint_every},
        {"keep_last", c.keep_last},
        {"seed", c.seed},
        {"nan_policy", c.nan_policy},
        {"activation_checkpointing", c.activation_checkpointing},
        {"qat", c.qat},
        {"qat_group", c.qat_group},
        {"lora", {{"r", c.lora.r}, {"alpha", c.lora.alpha}, {"dropout", c.lora.dropout}, {"targets", c.lora.targets},
                  {"init", c.lora.init}, {"rslora", c.lora.rslora}, {"base_quant", c.lora.base_quant},
                  {"double_quant", c.lora.double_quant}}},
    };
}

namespace {

// Every key of `given` must exist in `known` (the defaults), recursively for objects.
void check_keys(const json& given, const json& known, const std::string& prefix, const std::string& source) {
    MSLM_CHECK(given.is_object(), "{}: {} must be a JSON object", source, prefix.empty() ? "the config" : prefix);
    for (auto it = given.begin(); it != given.end(); ++it) {
        const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
        auto k = known.find(it.key());
        MSLM_CHECK(k != known.end(), "{}: unknown key \"{}\"", source, key);
        if (k->is_object()) check_keys(*it, *k, key, source);
    }
}

template <typename V>
void read(const json& j, const char* key, V& out, const std::string& source, const std::string& prefix = "") {
    try {
        out = j.at(key).get<V>();
    } catch (const json::exception&) {
        fail("{}: \"{}{}\" has the wrong type ({})", source, prefix, key, j.at(key).dump());
    }
}

}  // namespace

TrainConfig train_config_from_json(const json& given, const std::string& source) {
    TrainConfig c;
    json j = train_config_to_json(c);
    check_keys(given, j, "", source);
    j.merge_patch(given);
    const json& m = j.at("model");
    read(m, "preset", c.model_preset, source, "model.");
    read(m, "config", c.model_config, source, "model.");
    read(m, "init_from", c.init_from, source, "model.");
    read(m, "vocab_size", c.model_vocab_size, source, "model.");
    read(j, "data", c.data, source);
    read(j, "val_data", c.val_data, source);
    read(j, "run_dir", c.run_dir, source);
    read(j, "batch_size", c.batch_size, source);
    read(j, "seq_len", c.seq_len, source);
    read(j, "grad_accum", c.grad_accum, source);
    read(j, "steps", c.steps, source);
    read(j, "tokens", c.tokens, source);
    read(j, "device", c.device, source);
    read(j, "lr_schedule", c.lr_schedule, source);
    read(j, "lr", c.lr, source);
    read(j, "min_lr", c.min_lr, source);
    read(j, "warmup", c.warmup, source);
    read(j, "decay", c.decay, source);
    read(j, "weight_decay", c.weight_decay, source);
    read(j, "beta1", c.beta1, source);
    read(j, "beta2", c.beta2, source);
    read(j, "eps", c.eps, source);
    read(j, "grad_clip", c.grad_clip, source);
    read(j, "eval_every", c.eval_every, source);
    read(j, "eval_batches", c.eval_batches, source);
    read(j, "log_every", c.log_every, source);
    read(j, "checkpoint_every", c.checkpoint_every, source);
    read(j, "keep_last", c.keep_last, source);
    read(j, "seed", c.seed, source);
    read(j, "nan_policy", c.nan_policy, source);
    read(j, "activation_checkpointing", c.activation_checkpointing, source);
    read(j, "qat", c.qat, source);
    read(j, "qat_group", c.qat_group, source);
    const json& l = j.at("lora");
    read(l, "r", c.lora.r, source, "lora.");
    read(l, "alpha", c.lora.alpha, source, "lora.");
    read(l, "dropout", c.lora.dropout, source, "lora.");
    read(l, "targets", c.lora.targets, source, "lora.");
    read(l, "init", c.lora.init, source, "lora.");
    read(l, "rslora", c.lora.rslora, source, "lora.");
    read(l, "base_quant", c.lora.base_quant, source, "lora.");
    read(l, "double_quant", c.lora.double_quant, source, "lora.");
    return c;
}

TrainConfig load_train_config(const std::string& path) {
    std::ifstream in(path);
    MSLM_CHECK(in, "{}: cannot open the train config", path);
    json j;
    try {
        j = json::parse(in);
    } catch (const json::parse_error& e) {
        fail("{}: not valid JSON: {}", path, e.what());
    }
    return train_config_from_json(j, path);
}

namespace {

// "model.preset" -> "/model/preset"
json::json_pointer dotted_to_pointer(std::string key) {
    for (char& ch : key)
        if (ch == '.') ch = '/';
    return json::json_pointer("/" + key);
}

}  // namespace

void apply_override(TrainConfig& c, std::string_view key_value) {
    const size_t eq = key_value.find('=');
    MSLM_CHECK(eq != std::string_view::npos && eq > 0, "--set {}: expected key=value", key_value);
    const std::string key(key_value.substr(0, eq));
    const std::string text(key_value.substr(eq + 1));
    json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded() || value.is_object() || value.is_array()) value = text;
    json patch = json::object();
    json* at = &patch;
    size_t begin = 0;
    for (size_t dot; (dot = key.find('.', begin)) != std::string::npos; begin = dot + 1)
        at = &(*at)[key.substr(begin, dot - begin)];
    (*at)[key.substr(begin)] = value;
    json j = train_config_to_json(c);
    check_keys(patch, j, "", fmt::format("--set {}", key_value));
    if (j.at(dotted_to_pointer(key)).is_string()) (*at)[key.substr(begin)] = text;  // run_dir=123 stays text
    j.merge_patch(patch);
    c = train_config_from_json(j, fmt::format("--set {}", key_value));
}

// ---------------------------------------------------------------------------------------------
// Trainer

namespace {

bool weights_finite(const Parameters<float>& p) {
    for (size_t i = 0; i < p.specs().size(); ++i)
        for (int64_t k = 0; k < p.specs()[i].numel; ++k)
            if (!std::isfinite(p.value(i)[k])) return false;
    return true;
}

}  // namespace

std::unique_ptr<HybridLM<float>> build_initial_model(const TrainConfig& cfg) {
    if (!cfg.init_from.empty()) return load_model<float>(cfg.init_from);
    ModelConfig mc = cfg.model_preset.empty() ? load_config(cfg.model_config) : preset(cfg.model_preset);
    if (cfg.model_vocab_size > 0) mc.vocab_size = cfg.model_vocab_size;
    mc.validate();
    auto model = std::make_unique<HybridLM<float>>(mc);
    model->init(cfg.seed);
    return model;
}

namespace {

// A resumed run continues the same optimisation: everything that shapes the model, the data
// stream or the update must be as the checkpoint recorded it. What only changes how long the run
// goes, how often it reports, or how it spends memory may differ.
void check_resume_config(const json& saved, const json& now, const std::string& run_dir) {
    static const std::set<std::string> may_change = {
        "/steps", "/tokens", "/device", "/eval_every", "/eval_batches", "/log_every", "/checkpoint_every", "/keep_last",
        "/nan_policy", "/activation_checkpointing", "/run_dir"};
    const json was = saved.flatten(), is = now.flatten();
    std::string diffs;
    for (auto it = is.begin(); it != is.end(); ++it) {
        if (may_change.count(it.key())) continue;
        auto w = was.find(it.key());
        const std::string before = w == was.end() ? "(unset)" : w->dump();
        if (w == was.end() || *w != *it)
            diffs += fmt::format("{}{} {} -> {}", diffs.empty() ? "" : ", ", it.key().substr(1), before, it->dump());
    }
    MSLM_CHECK(diffs.empty(), "train --resume: the config differs from the one {} was started with: {}. Resume "
               "with the same settings (only steps, eval/log/checkpoint intervals, keep_last, nan_policy and "
               "activation_checkpointing may change), or start a new run_dir", run_dir, diffs);
}

}  // namespace

// Device cuda: the model and AdamW live on the GPU for the steps; model_ and optimizer_ stay the
// run's record, refreshed by sync_from_gpu before eval and checkpoints.
#ifdef MSLM_HAVE_CUDA
struct Trainer::Gpu {
    size_t used_before_model = CudaHybridLM::device_used_bytes();
    CudaHybridLM model;

    Gpu(const HybridLM<float>& cpu, const AdamW<float>& optimizer) : model(cpu.config()) {
        model.upload(cpu);
        model.upload_optimizer_state(optimizer);
    }
    // LoRA / QLoRA: the frozen base (4-bit where qlora holds it) and the adapter "default".
    Gpu(LoraModel<float>& lora, const quant::QloraBase<float>* qlora, const AdamW<float>& optimizer)
        : model(lora, "default", qlora) {
        model.upload_optimizer_state(optimizer);
    }
    // The step's gradients, as the CPU loop computes them; returns the mean loss.
    double forward_backward(DataLoader& train, Batch& batch, int64_t grad_accum) {
        model.zero_grad();
        double loss = 0;
        for (int64_t m = 0; m < grad_accum; ++m) {
            train.next(batch);
            loss += static_cast<double>(model.forward(batch.inputs.data(), batch.targets.data(), batch.rows,
                                                      batch.seq_len, /*backward_follows=*/true));
            model.backward();
        }
        if (grad_accum > 1) model.scale_grads(1.0f / static_cast<float>(grad_accum));
        return loss / static_cast<double>(grad_accum);
    }
    void hook(Parameters<float>& params, const std::function<void(Parameters<float>&)>& fn) {
        std::vector<float> flat;
        model.download_grads(flat);
        std::copy(flat.begin(), flat.end(), params.grads());
        fn(params);
        std::copy(params.grads(), params.grads() + params.total(), flat.begin());
        model.upload_grads(flat);
    }
    double clip(double max_norm) { return model.clip_grad_norm(max_norm); }
    void step(float lr) { model.optimizer_step(lr); }
    void download(Parameters<float>& trained, AdamW<float>* optimizer) {
        model.download_params(trained);
        if (optimizer) model.download_optimizer_state(*optimizer);
    }
    // The device memory after `step` steps: the plan, what the model holds, and the device's use
    // (cudaMemGetInfo, the CUDA context and cuBLASLt's workspaces included) against before the run.
    void report_memory(int64_t step) const {
        const double mib = 1024.0 * 1024.0;
        std::fprintf(stderr,
                     "cuda memory after step %lld: planned %.1f MiB, held by the model %.1f MiB, device use grew "
                     "by %.1f MiB (%.1f MiB used in all)\n",
                     static_cast<long long>(step), static_cast<double>(planned.total()) / mib,
                     static_cast<double>(model.memory_bytes()) / mib,
                     static_cast<double>(CudaHybridLM::device_used_bytes() - used_before_model) / mib,
                     static_cast<double>(CudaHybridLM::device_used_bytes()) / mib);
    }
    CudaTrainingMemory planned;
};
#else
struct Trainer::Gpu {  // never built: TrainConfig::validate refuses device cuda in this build
    [[noreturn]] static void absent() { fail("this build of mamba-slm has no CUDA support"); }
    double forward_backward(DataLoader&, Batch&, int64_t) { absent(); }
    void hook(Parameters<float>&, const std::function<void(Parameters<float>&)>&) { absent(); }
    double clip(double) { absent(); }
    void step(float) { absent(); }
    void download(Parameters<float>&, AdamW<float>*) { absent(); }
    void report_memory(int64_t) const { absent(); }
};
#endif

Trainer::Trainer(TrainConfig cfg, bool resume) : cfg_(std::move(cfg)) {
    cfg_.validate();
    const int gpu_index = cuda_device_index(cfg_.device);
    if (gpu_index >= 0)
        MSLM_CHECK(cuda_available(), "train: device \"{}\": {}; train on \"cpu\" or on a machine with a GPU",
                   cfg_.device, cuda_device_summary());
#ifdef MSLM_HAVE_CUDA
    if (gpu_index >= 0) CudaHybridLM::select_device(gpu_index);
#endif
    if (cfg_.tokens > 0) {
        cfg_.steps = cfg_.total_steps();
        cfg_.tokens = 0;  // resolved: from here on the run is a step count
    }
    schedule_ = cfg_.schedule();

    std::optional<LoadedCheckpoint> ckpt;
    std::string ckpt_dir;
    if (resume) {
        auto latest = latest_checkpoint(cfg_.run_dir);
        MSLM_CHECK(latest, "train --resume: no complete checkpoint in {}", cfg_.run_dir);
        ckpt_dir = *latest;
        ckpt = load_checkpoint(ckpt_dir);
        MSLM_CHECK(ckpt->adapter == (cfg_.lora.r > 0), "train --resume: {} holds {}, but the config has lora.r = {}",
                   ckpt_dir, ckpt->adapter ? "a LoRA adapter" : "a whole model", cfg_.lora.r);
        // A LoRA checkpoint holds only the adapter: the frozen base is rebuilt as the run began.
        if (!ckpt->adapter) model_ = std::move(ckpt->model);
        resumed_ = true;
    }
    if (!model_) {
        if (cfg_.lora.base_quant.empty()) {
            model_ = build_initial_model(cfg_);
        } else {
            const quant::QloraOptions qo{quant::parse_base_quant(cfg_.lora.base_quant), cfg_.lora.double_quant};
            // From a directory, the linear weights go straight from the file into 4 bits.
            if (!cfg_.init_from.empty()) {
                quant::QloraLoaded<float> loaded = quant::load_qlora_base<float>(cfg_.init_from, qo);
                model_ = std::move(loaded.model);
                qlora_ = std::move(loaded.base);
            } else {
                model_ = build_initial_model(cfg_);
                qlora_ = std::make_unique<quant::QloraBase<float>>(model_->params(), qo);
            }
            std::fprintf(stderr, "qlora base: %s; peak RSS after loading %.1f MiB\n", qlora_->summary().c_str(),
                         static_cast<double>(quant::peak_rss_bytes()) / (1024.0 * 1024.0));
        }
    }

    // Model against data, before any step.
    const ModelConfig& mc = model_->config();
    MSLM_CHECK(cfg_.seq_len <= mc.max_seq_len, "train: seq_len {} exceeds the model's max_seq_len {}",
               cfg_.seq_len, mc.max_seq_len);
    const json manifest = read_manifest(cfg_.data);
    const int64_t data_vocab = manifest.at("tokenizer").at("vocab_size").get<int64_t>();
    MSLM_CHECK(data_vocab <= mc.vocab_size,
               "train: the data's tokenizer has {} tokens but the model's vocab_size is {} "
               "(set model.vocab_size >= {})", data_vocab, mc.vocab_size, data_vocab);
    const SplitInfo train_split = manifest_split(cfg_.data, "train");
    const std::string& val_dir = cfg_.val_data.empty() ? cfg_.data : cfg_.val_data;
    if (!cfg_.val_data.empty())
        MSLM_CHECK(read_manifest(val_dir).at("tokenizer") == manifest.at("tokenizer"),
                   "train: val_data {} was prepared with another tokenizer than data {}", val_dir, cfg_.data);
    const SplitInfo val_split = manifest_split(val_dir, "val");
    bytes_per_token_ = val_split.bytes_per_token();

    LoaderOptions lo{cfg_.batch_size, cfg_.seq_len, cfg_.seed, true, 0, 1};
    train_ = std::make_unique<DataLoader>(DataLoader::from_manifest(cfg_.data, "train", lo));
    MSLM_CHECK(train_->total_windows() > 0, "train: the train split of {} has {} tokens, fewer than one window "
               "of seq_len + 1 = {}", cfg_.data, train_split.tokens, cfg_.seq_len + 1);
    lo.shuffle = false;
    MSLM_CHECK(val_split.tokens > cfg_.seq_len, "train: the val split of {} has {} tokens, fewer than one window "
               "of seq_len + 1 = {} (val_data can name another directory)", val_dir, val_split.tokens,
               cfg_.seq_len + 1);
    val_ = std::make_unique<DataLoader>(DataLoader::from_manifest(val_dir, "val", lo));

    AdamWOptions ao;
    ao.lr = cfg_.lr;
    ao.beta1 = cfg_.beta1;
    ao.beta2 = cfg_.beta2;
    ao.eps = cfg_.eps;
    ao.weight_decay = cfg_.weight_decay;
    if (cfg_.lora.r > 0) {
        std::string format = "mamba_slm";
        if (!cfg_.init_from.empty()) load_any_config(cfg_.init_from, &format);
        lora_ = std::make_unique<LoraModel<float>>(*model_, lora_naming_arch(mc, format));
        if (ckpt)
            lora_->load_adapter(ckpt_dir, "default", /*trainable=*/true);
        else
            lora_->add_adapter("default", cfg_.lora_config(), cfg_.seed);
        lora_->freeze_base();
        lora_->set_training(true);
    }
    if (!cfg_.qat.empty())
        qat_ = std::make_unique<quant::FakeQuantizer<float>>(model_->params(), quant::parse_qat_type(cfg_.qat),
                                                             cfg_.qat_group);
    optimizer_ = std::make_unique<AdamW<float>>(trained_params(), ao);
    model_->set_activation_checkpointing(cfg_.activation_checkpointing);

    if (ckpt) {
        optimizer_->load_state([&](const std::string& name) { return ckpt->optimizer.get(name); });
        const json& ts = ckpt->trainer_state;
        train_->set_state(LoaderState::from_json(ts.at("loader")));
        step_ = ckpt->step;
        skipped_ = ts.value("skipped_steps", int64_t{0});
        tokens_seen_ = ts.value("tokens_seen", int64_t{0});
        MSLM_CHECK(step_ <= cfg_.steps, "train --resume: the checkpoint is at step {}, past steps = {}", step_,
                   cfg_.steps);
        // Read back through the defaults, so that keys added since the checkpoint (qat) read as unset.
        check_resume_config(train_config_to_json(train_config_from_json(ts.at("config"), ckpt_dir)),
                            train_config_to_json(cfg_), cfg_.run_dir);
    }
#ifdef MSLM_HAVE_CUDA
    if (gpu_index >= 0) {
        gpu_ = lora_ ? std::make_unique<Gpu>(*lora_, qlora_.get(), *optimizer_)
                     : std::make_unique<Gpu>(*model_, *optimizer_);
        // activation_checkpointing on the GPU: each layer's forward is recomputed before its backward.
        gpu_->model.set_recompute(cfg_.activation_checkpointing);
        const CudaMemoryPlan plan{cfg_.lora.r, cfg_.lora.targets, !cfg_.lora.base_quant.empty(),
                                  cfg_.activation_checkpointing};
        gpu_->planned = CudaHybridLM::training_memory(mc, cfg_.batch_size, cfg_.seq_len, plan);
        std::fprintf(stderr, "cuda memory plan: %s\n", describe(gpu_->planned).c_str());
    }
#endif
}

Trainer::~Trainer() = default;

Parameters<float>& Trainer::trained_params() {
    return lora_ ? lora_->adapter("default").params() : model_->params();
}

void Trainer::sync_from_gpu(bool optimizer_state) {
    if (gpu_) gpu_->download(trained_params(), optimizer_state ? optimizer_.get() : nullptr);
}

EvalResult Trainer::evaluate() {
    sync_from_gpu(false);
    if (lora_) lora_->set_training(false);  // no dropout in eval
    const EvalResult r = evaluate_windows(*model_, *val_, cfg_.eval_batches, bytes_per_token_);
    if (lora_) lora_->set_training(true);
    return r;
}

std::string Trainer::checkpoint() {
    sync_from_gpu(true);
    MSLM_CHECK(weights_finite(trained_params()), "train: step {}: the weights are not finite; not checkpointing",
               step_);
    CheckpointContents c;
    if (lora_) {
        c.adapter = &trained_params();
        c.write_adapter = [this](const std::string& dir) { lora_->save_adapter("default", dir); };
    } else {
        c.model = model_.get();
    }
    c.optimizer = optimizer_->state_tensors();
    // The loader state carries the only random generator the loop draws from (the shuffle).
    c.trainer_state = {{"step", step_},
                       {"loader", train_->state().to_json()},
                       {"config", train_config_to_json(cfg_)},
                       {"tokens_seen", tokens_seen_},
                       {"skipped_steps", skipped_}};
    return save_checkpoint(cfg_.run_dir, step_, c, cfg_.keep_last);
}

// loss_curve.svg from metrics.jsonl: rewritten at every evaluation and at the end, so the picture
// of a running job is never older than its last eval (`mamba-slm plot RUN_DIR` draws it any time).
void Trainer::write_curve(const std::string& metrics_path) const {
    write_loss_curve_svg((fs::path(cfg_.run_dir) / "loss_curve.svg").string(), read_metric(metrics_path, "train", "loss"),
                         read_metric(metrics_path, "eval", "loss"), fs::path(cfg_.run_dir).filename().string());
}

TrainSummary Trainer::run() {
    using Clock = std::chrono::steady_clock;
    fs::create_directories(cfg_.run_dir);
    MetricsLog log(cfg_.run_dir, resumed_);
    ProgressPrinter progress(cfg_.steps);
    Parameters<float>& params = trained_params();
    const int64_t tokens_per_step = cfg_.batch_size * cfg_.seq_len * cfg_.grad_accum;
    const float accum_scale = 1.0f / static_cast<float>(cfg_.grad_accum);

    TrainSummary out;
    out.val_loss = std::numeric_limits<double>::quiet_NaN();
    Batch batch;
    auto window_start = Clock::now();
    int64_t window_steps = 0;
    while (step_ < cfg_.steps) {
        double loss = 0, norm = 0;
        if (gpu_) {
            loss = gpu_->forward_backward(*train_, batch, cfg_.grad_accum);
            if (after_backward)
                gpu_->hook(params, [&](Parameters<float>& p) { after_backward(step_, p); });
            norm = gpu_->clip(cfg_.grad_clip);
        } else {
            params.zero_grad();
            // Each backward accumulates the gradient of its micro-batch's mean loss; scaling the sum
            // by 1 / grad_accum afterwards gives the gradient of the mean over all grad_accum · B
            // rows, as one batch that large would (every target counts, so micro-batch means weigh
            // equally).
            for (int64_t m = 0; m < cfg_.grad_accum; ++m) {
                train_->next(batch);
                if (lora_) lora_->set_step(static_cast<uint64_t>(step_ * cfg_.grad_accum + m));  // dropout masks
                loss += static_cast<double>(model_->forward(batch.inputs.data(), batch.targets.data(),
                                                            batch.rows, batch.seq_len));
                model_->backward();
            }
            loss /= static_cast<double>(cfg_.grad_accum);
            if (cfg_.grad_accum > 1) {
                float* g = params.grads();
                for (int64_t i = 0; i < params.total(); ++i) g[i] *= accum_scale;
            }
            if (after_backward) after_backward(step_, params);
            norm = cfg_.grad_clip > 0 ? clip_grad_norm(params, cfg_.grad_clip) : grad_norm(params);
        }
        const double lr = schedule_.lr_at(step_);
        tokens_seen_ += tokens_per_step;
        ++step_;
        if (gpu_ && step_ == std::min<int64_t>(3, cfg_.steps)) gpu_->report_memory(step_);
        ++window_steps;
        if (!std::isfinite(loss) || !std::isfinite(norm)) {
            MSLM_CHECK(cfg_.nan_policy == "skip", "train: step {}: non-finite {} ({}); stopping (nan_policy "
                       "\"stop\")", step_, std::isfinite(loss) ? "gradient norm" : "loss",
                       std::isfinite(loss) ? norm : loss);
            ++skipped_;
            std::fprintf(stderr, "train: step %lld: non-finite %s, update skipped (%lld so far)\n",
                         static_cast<long long>(step_), std::isfinite(loss) ? "gradient norm" : "loss",
                         static_cast<long long>(skipped_));
        } else {
            if (gpu_)
                gpu_->step(static_cast<float>(lr));
            else
                optimizer_->step(params, static_cast<float>(lr));
            out.last_loss = loss;
        }

        if (step_ % cfg_.log_every == 0 || step_ == cfg_.steps) {
            const double seconds = std::chrono::duration<double>(Clock::now() - window_start).count();
            const double tok_s = seconds > 0 ? static_cast<double>(window_steps * tokens_per_step) / seconds : 0.0;
            if (std::isfinite(loss) && std::isfinite(norm)) {
                log.write({{"type", "train"}, {"step", step_}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm},
                           {"tokens_per_s", tok_s}, {"tokens", tokens_seen_},
                           {"skipped_steps", skipped_}});
                progress.train_line(step_, loss, lr, norm, tok_s);
            }
            window_start = Clock::now();
            window_steps = 0;
        }
        if ((cfg_.eval_every > 0 && step_ % cfg_.eval_every == 0) || step_ == cfg_.steps) {
            const EvalResult val = evaluate();
            log.write({{"type", "eval"}, {"step", step_}, {"loss", val.loss}, {"ppl", val.ppl},
                       {"bpb", val.bpb}});
            progress.eval_line(step_, val.loss, val.ppl, val.bpb);
            write_curve(log.path());
            out.val_loss = val.loss;
        }
        if ((cfg_.checkpoint_every > 0 && step_ % cfg_.checkpoint_every == 0) || step_ == cfg_.steps)
            out.checkpoint = checkpoint();
    }

    write_curve(log.path());
    sync_from_gpu(true);  // model() and the optimizer hold the run's final state on either device
    out.step = step_;
    out.peak_rss_bytes = quant::peak_rss_bytes();
    out.skipped_steps = skipped_;
    return out;
}

}  // namespace mslm
