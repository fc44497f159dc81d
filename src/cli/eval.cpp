#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "data/manifest.h"
#include "eval/perplexity.h"
#include "model/model_io.h"
#include "quant/fake_quant.h"

namespace mslm::cli {

void register_eval(CLI::App& app) {
    auto* cmd =
        app.add_subcommand("eval", "Loss, perplexity and bits per byte of a model on prepared token shards");
    struct Args {
        std::string model, data, split = "val", dtype = "f32";
        int64_t seq_len = 256, batch_size = 8, max_batches = 0;
        bool json = false;
        std::string fake_quant;
        int64_t group = 32;
    };
    auto a = std::make_shared<Args>();
    cmd->add_option("--model", a->model, "A model directory (native or Hugging Face), e.g. a checkpoint")
        ->required();
    cmd->add_option("--data", a->data, "A `data prepare` output directory")->required();
    cmd->add_option("--split", a->split, "Split to score: val or train")->capture_default_str();
    cmd->add_option("--seq-len", a->seq_len, "Tokens per window")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cmd->add_option("--batch-size", a->batch_size, "Windows per forward pass (changes speed, not the result)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cmd->add_option("--max-batches", a->max_batches, "Score only the first N batches (0: the whole split)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd->add_option("--fake-quant", a->fake_quant,
                    "Score the model with its linear weights quantized and dequantized first (post-training "
                    "quantization, the weights QAT trains): int8, int4 or nf4");
    cmd->add_option("--fake-quant-group", a->group, "int4 group size, a power of two in [8, 4096]")
        ->capture_default_str();
    cmd->add_option("--dtype", a->dtype,
                    "Weights of the linear layers: f32, bf16, int8 = w8a8 (int8 weights, per-token int8 "
                    "activations), w8a16 (int8 weights, fp32 activations), nf4 or fp4 (bitsandbytes 4-bit, "
                    "blocksize 64; a bitsandbytes 4-bit directory of that type runs on its own codes)")
        ->check(CLI::IsMember({"f32", "fp32", "bf16", "int8", "w8a8", "w8a16", "nf4", "fp4"}))
        ->capture_default_str();
    cmd->add_flag("--json", a->json, "Print one JSON object instead of the summary line");
    cmd->callback([a] {
        const ops::WeightFormat format = ops::parse_weight_format(a->dtype);
        auto model = load_model<float>(a->model, nullptr, format);
        // Fake quantization rewrites the fp32 weights, so it comes before any packing of them.
        if (!a->fake_quant.empty())
            quant::fake_quantize_model_weights(model->params(), quant::parse_qat_type(a->fake_quant), a->group);
        model->pack_weights(format);
        const ModelConfig& mc = model->config();
        MSLM_CHECK(a->seq_len <= mc.max_seq_len, "eval: --seq-len {} exceeds the model's max_seq_len {}",
                   a->seq_len, mc.max_seq_len);
        const int64_t data_vocab = read_manifest(a->data).at("tokenizer").at("vocab_size").get<int64_t>();
        MSLM_CHECK(data_vocab <= mc.vocab_size, "eval: the data's tokenizer has {} tokens, the model only {}",
                   data_vocab, mc.vocab_size);
        const SplitInfo split = manifest_split(a->data, a->split);
        MSLM_CHECK(split.tokens > a->seq_len,
                   "eval: the {} split of {} has {} tokens, fewer than one window of {}", a->split, a->data,
                   split.tokens, a->seq_len + 1);
        DataLoader loader =
            DataLoader::from_manifest(a->data, a->split, {a->batch_size, a->seq_len, 0, false, 0, 1});
        const EvalResult r = evaluate_windows(*model, loader, a->max_batches, split.bytes_per_token());
        if (a->json) {
            const nlohmann::json j = {{"model", a->model},    {"data", a->data},    {"split", a->split},
                                      {"loss", r.loss},       {"ppl", r.ppl},       {"bpb", r.bpb},
                                      {"windows", r.windows}, {"tokens", r.tokens}, {"seq_len", a->seq_len},
                                      {"dtype", a->dtype},    {"fake_quant", a->fake_quant}};
            fmt::print("{}\n", j.dump());
        } else {
            fmt::print(
                "{} on {} ({}): loss {:.4f}  ppl {:.2f}  bpb {:.4f}  ({} windows of {}, {} of {} tokens)\n",
                a->model, a->data, a->split, r.loss, r.ppl, r.bpb, r.windows, a->seq_len, r.tokens,
                split.tokens);
        }
    });
}

}  // namespace mslm::cli
