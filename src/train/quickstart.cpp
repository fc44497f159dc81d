#include "train/quickstart.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>

#include "core/error.h"
#include "data/manifest.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/source.h"
#include "generate/generate.h"
#include "model/config.h"
#include "model/info.h"
#include "model/model_io.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace mslm {

namespace {

constexpr const char* kEot = "<|endoftext|>";

std::vector<SourceSpec> corpus_specs(const std::vector<std::string>& data) {
    std::vector<SourceSpec> specs;
    for (const std::string& text : data) {
        SourceSpec spec = parse_source_spec(text);
        // A plain text file is one document; blank-line blocks give the held-out split something to draw.
        if (text.find("split=") == std::string::npos) spec.txt_split = TxtSplit::Block;
        specs.push_back(spec);
    }
    return specs;
}

std::vector<std::string> corpus_files(const std::vector<SourceSpec>& specs, const std::vector<std::string>& data) {
    std::vector<std::string> files;
    for (size_t i = 0; i < specs.size(); ++i) {
        std::unique_ptr<DocumentReader> reader;
        try {
            reader = open_source(specs[i]);
        } catch (const Error& e) {
            if (data[i] == kFortunesCorpus)
                fail("quickstart: Debian's fortunes corpus is not installed (scripts/setup.sh installs the "
                     "`fortunes` package); or pass --data FILE ({})", e.what());
            throw;
        }
        files.insert(files.end(), reader->files().begin(), reader->files().end());
    }
    return files;
}

// Entropy (nats) of the token frequencies of a split: the loss of the best model that ignores context.
double unigram_entropy(const SplitInfo& split, int64_t vocab) {
    std::vector<int64_t> counts(static_cast<size_t>(vocab), 0);
    int64_t total = 0;
    for (const std::string& path : split.shards) {
        ShardReader shard = ShardReader::open(path);
        for (int64_t i = 0; i < shard.size(); ++i) ++counts[static_cast<size_t>(shard[i])];
        total += shard.size();
    }
    double h = 0;
    for (int64_t c : counts)
        if (c > 0) {
            const double p = static_cast<double>(c) / static_cast<double>(total);
            h -= p * std::log(p);
        }
    return h;
}

}  // namespace

QuickstartResult run_quickstart(const QuickstartOptions& opt) {
    const std::vector<SourceSpec> specs = corpus_specs(opt.data);
    const std::vector<std::string> files = corpus_files(specs, opt.data);
    fs::create_directories(opt.out);
    QuickstartResult res;

    // 1. Tokenizer.
    fmt::print("== 1/4 tokenizer: byte-level BPE, {} tokens, on {} file(s)\n", opt.vocab_size, files.size());
    std::fflush(stdout);
    const std::string tok_path = (fs::path(opt.out) / "tokenizer.json").string();
    BpeTrainerOptions bo;
    bo.inputs = files;
    bo.vocab_size = opt.vocab_size;
    bo.special_tokens = {kEot};
    BpeTrainerStats stats;
    train_bpe_to_file(bo, tok_path, &stats);
    const Tokenizer tokenizer = Tokenizer::load(tok_path);
    fmt::print("   {:.1f} MB of text, {} merges -> {}\n", static_cast<double>(stats.bytes_read) / 1e6, stats.merges,
               tok_path);

    // 2. Token shards with a held-out split.
    fmt::print("== 2/4 data: documents -> token shards (5% held out)\n");
    std::fflush(stdout);
    const std::string data_dir = (fs::path(opt.out) / "data").string();
    PrepareOptions po;
    po.out_dir = data_dir;
    po.val_fraction = 0.05;
    po.seed = opt.seed;
    po.progress = false;
    MixtureOptions mo;  // one source (the default corpus) is read whole, in file order
    mo.seed = opt.seed;
    prepare_from_sources(specs, mo, tokenizer, po);
    const SplitInfo train_split = manifest_split(data_dir, "train");
    const SplitInfo val_split = manifest_split(data_dir, "val");
    res.unigram_entropy = unigram_entropy(train_split, tokenizer.vocab_size());
    fmt::print("   train {} documents / {} tokens, held out {} documents / {} tokens ({:.2f} bytes per token)\n",
               train_split.documents, train_split.tokens, val_split.documents, val_split.tokens,
               val_split.bytes_per_token());
    fmt::print("   unigram entropy of the training tokens: {:.3f} nats/token (a model that ignores context "
               "cannot beat it)\n", res.unigram_entropy);

    // 3. Train.
    ModelConfig mc = preset(opt.preset);
    mc.vocab_size = tokenizer.vocab_size();
    mc.max_seq_len = std::max(mc.max_seq_len, opt.seq_len);
    const std::string model_config = (fs::path(opt.out) / "model_config.json").string();
    save_config(mc, model_config);
    TrainConfig tc;
    tc.model_config = model_config;
    tc.data = data_dir;
    tc.run_dir = (fs::path(opt.out) / "run").string();
    tc.batch_size = opt.batch;
    tc.seq_len = opt.seq_len;
    tc.steps = opt.steps;
    tc.lr = opt.lr;
    tc.min_lr = opt.lr / 10;
    tc.warmup = std::min<int64_t>(50, opt.steps / 10);
    tc.weight_decay = 0.1;
    tc.eval_every = std::max<int64_t>(1, opt.steps / 8);
    tc.eval_batches = 8;
    tc.log_every = std::max<int64_t>(1, opt.steps / 40);
    tc.checkpoint_every = 0;
    tc.keep_last = 1;
    tc.seed = opt.seed;
    fs::remove_all(tc.run_dir);  // a fresh run: the quickstart does not resume
    Trainer trainer(tc, false);
    fmt::print("== 3/4 train: '{}' hybrid ({}), {} parameters; {} steps of {} x {} tokens, AdamW lr {} cosine\n",
               opt.preset, mc.layer_pattern(), format_count(trainer.model().num_params()), opt.steps, opt.batch,
               opt.seq_len, opt.lr);
    fmt::print("   untrained loss is about ln(vocab) = {:.3f} nats/token\n", std::log(static_cast<double>(mc.vocab_size)));
    std::fflush(stdout);
    const TrainSummary summary = trainer.run();
    res.final_val_loss = summary.val_loss;
    res.final_bits_per_byte = summary.val_loss / std::numbers::ln2 / val_split.bytes_per_token();
    fmt::print("   held-out loss {:.3f} nats/token = {:.3f} bits/byte; unigram entropy {:.3f}: {:.0f}% of it\n",
               res.final_val_loss, res.final_bits_per_byte, res.unigram_entropy,
               100.0 * res.final_val_loss / res.unigram_entropy);

    // The model directory: weights, tokenizer and sampling defaults.
    res.model_dir = (fs::path(opt.out) / "model").string();
    save_model(trainer.model(), res.model_dir);
    tokenizer.save((fs::path(res.model_dir) / "tokenizer.json").string());
    GenerationConfig gc;
    gc.do_sample = true;
    gc.temperature = 0.8;
    gc.top_k = 50;
    gc.top_p = 0.95;
    gc.repetition_penalty = 1.1;
    gc.max_new_tokens = opt.sample_tokens;
    gc.eos_token_id = {tokenizer.eot_id()};
    gc.bos_token_id = tokenizer.eot_id();
    write_json_atomic((fs::path(res.model_dir) / "generation_config.json").string(), gc.to_json());

    // 4. Samples: each starts where a document starts, right after an end-of-text token.
    fmt::print("== 4/4 samples (temperature 0.8, top-p 0.95, from the start of a document)\n");
    HybridCausalLM lm(trainer.model());
    GenerateHooks hooks;
    hooks.tokenizer = &tokenizer;
    for (int i = 0; i < opt.samples; ++i) {
        gc.seed = opt.seed + static_cast<uint64_t>(i);
        GenerationResult r = generate(lm, {{tokenizer.eot_id()}}, gc, hooks);
        std::string text = tokenizer.decode(r.sequences[0].tokens, true);
        res.samples.push_back(text);
        fmt::print("--- sample {}\n{}\n", i + 1, text);
    }
    fmt::print("---\nmodel: {}   loss curve: {}/loss_curve.svg\n", res.model_dir, tc.run_dir);
    fmt::print("next:  build/cpu/mamba-slm generate --model {} --prompt \"The \" --stream\n"
               "       build/cpu/mamba-slm chat --model {}\n", res.model_dir, res.model_dir);
    return res;
}

}  // namespace mslm
