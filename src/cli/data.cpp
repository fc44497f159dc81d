#include <fmt/format.h>

#include <map>

#include "cli/commands.h"
#include "data/prepare.h"
#include "data/source.h"

namespace mslm::cli {

namespace {

void print_split(const char* name, const SplitResult& s) {
    fmt::print("  {:<5} {:>12} documents {:>15} tokens {:>16} text bytes  {:.3f} bytes/token  {} shard{}\n",
               name, s.documents, s.tokens, s.text_bytes,
               s.tokens > 0 ? double(s.text_bytes) / double(s.tokens) : 0.0, s.shards.size(),
               s.shards.size() == 1 ? "" : "s");
}

void register_prepare(CLI::App& data) {
    auto* cmd = data.add_subcommand("prepare",
                                    "Tokenize document sources into train / val token shards (llm.c format)");
    struct Args {
        std::vector<std::string> sources;
        std::string tokenizer;
        PrepareOptions prepare;
        MixtureOptions mixture;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option(
           "--source", args->sources,
           "A source: path, directory or glob, then optional :key=value,... (format, split, field, weight, "
           "name), e.g. 'wiki/**/*.jsonl.gz:field=content,weight=2'. Repeat for a mixture")
        ->required();
    cmd->add_option("--tokenizer", args->tokenizer,
                    "tokenizer.json, or 'bytes' for byte-level ids (EOT = 256)")
        ->required();
    cmd->add_option("--out", args->prepare.out_dir, "Output directory for the shards and manifest.json")
        ->required();
    cmd->add_option("--val-fraction", args->prepare.val_fraction,
                    "Share of documents drawn into the val split")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    cmd->add_option("--shard-tokens", args->prepare.shard_tokens, "Tokens per shard (at most 2^31 - 1)")
        ->check(CLI::Range(int64_t{1}, int64_t{INT32_MAX}))
        ->capture_default_str();
    cmd->add_option("--seed", args->mixture.seed, "Seed of the mixture draw and of the train / val split")
        ->capture_default_str();
    const std::map<std::string, StoppingStrategy> stopping = {
        {"first_exhausted", StoppingStrategy::FirstExhausted},
        {"all_exhausted", StoppingStrategy::AllExhausted}};
    cmd->add_option(
           "--stopping", args->mixture.stopping,
           "Mixture end: first_exhausted (stop when any source ends) or all_exhausted (oversample until "
           "every source has ended once)")
        ->transform(CLI::CheckedTransformer(stopping, CLI::ignore_case))
        ->default_str("first_exhausted");
    const std::map<std::string, Utf8Policy> utf8 = {{"replace", Utf8Policy::Replace},
                                                    {"fail", Utf8Policy::Fail}};
    cmd->add_option("--utf8", args->mixture.read.utf8, "Invalid UTF-8: replace (U+FFFD) or fail")
        ->transform(CLI::CheckedTransformer(utf8, CLI::ignore_case))
        ->default_str("replace");
    cmd->add_flag(
        "--skip-bad", args->mixture.read.skip_bad,
        "Skip malformed JSON records and records without the field, counting them, instead of failing");
    cmd->add_flag("--force", args->prepare.force, "Rebuild even when the existing shards match the inputs");
    cmd->callback([args] {
        std::vector<SourceSpec> specs;
        for (const auto& s : args->sources) specs.push_back(parse_source_spec(s));
        auto encoder = load_text_encoder(args->tokenizer);
        PrepareOptions opt = args->prepare;
        opt.seed = args->mixture.seed;
        PrepareResult r = prepare_from_sources(specs, args->mixture, *encoder, opt);
        if (r.reused) {
            fmt::print(
                "reused the shards in {}: inputs, tokenizer and options unchanged (--force rebuilds)\n",
                opt.out_dir);
        } else {
            fmt::print("wrote {} ({}; rebuilt: {}) in {:.1f} s\n", opt.out_dir, r.dtype, r.why_rebuilt,
                       r.seconds);
        }
        print_split("train", r.train);
        print_split("val", r.val);
        if (opt.val_fraction > 0 && r.val.documents == 0) {
            fmt::print("  note: no document was drawn into val (too few documents for --val-fraction {})\n",
                       opt.val_fraction);
        }
        fmt::print("  manifest {}\n", r.manifest_path);
    });
}

}  // namespace

void register_data(CLI::App& app) {
    auto* data = app.add_subcommand("data", "Prepare training data: sources → mixture → token shards");
    data->require_subcommand(1);
    register_prepare(*data);
}

}  // namespace mslm::cli
