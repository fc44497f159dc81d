// `mamba-slm generate`: one-shot generation from a model directory, with every decoding strategy
// and processor as flags, streaming to the terminal or a JSON document with tokens, scores and
// timings.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/generation_options.h"
#include "model/cuda_inference.h"
#include "core/error.h"

namespace mslm::cli {

namespace {

struct GenerateArgs {
    std::string model, tokenizer, prompt_file, prompt_ids;
    std::vector<std::string> prompts;
    bool stream = false, json = false, echo = false;
    GenerationFlags flags;
};

std::vector<int32_t> parse_ids(const std::string& text) {
    std::vector<int32_t> ids;
    std::string cleaned = text;
    for (char& c : cleaned)
        if (c == ',') c = ' ';
    std::istringstream in(cleaned);
    std::string word;
    while (in >> word) {
        size_t used = 0;
        long v = 0;
        try {
            v = std::stol(word, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        MSLM_CHECK(used == word.size() && v >= 0 && v <= INT32_MAX, "--prompt-ids: '{}' is not a token id", word);
        ids.push_back(static_cast<int32_t>(v));
    }
    MSLM_CHECK(!ids.empty(), "--prompt-ids: no ids given");
    return ids;
}

std::string read_all(std::istream& in) {
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void run_generate(GenerateArgs& a) {
    LoadedGenerator g = load_generator(a.model, a.tokenizer, a.flags.dtype);
    GenerationConfig cfg = g.config;
    apply_generation_flags(a.flags, cfg);

    // Prompts: --prompt-ids, --prompt (repeatable), --prompt-file, else standard input.
    std::vector<std::string> texts = a.prompts;
    if (!a.prompt_file.empty()) {
        std::ifstream f(a.prompt_file, std::ios::binary);
        MSLM_CHECK(f.good(), "{}: cannot open the prompt file", a.prompt_file);
        texts.push_back(read_all(f));
    }
    std::vector<std::vector<int32_t>> prompts;
    if (!a.prompt_ids.empty()) {
        prompts.push_back(parse_ids(a.prompt_ids));
    } else {
        if (texts.empty()) {
            MSLM_CHECK(!isatty(STDIN_FILENO), "no prompt: give --prompt TEXT, --prompt-file FILE or pipe it on stdin");
            texts.push_back(read_all(std::cin));
        }
        MSLM_CHECK(g.tokenizer, "{}: no tokenizer.json; pass --tokenizer FILE or --prompt-ids", a.model);
        for (const auto& t : texts) prompts.push_back(g.tokenizer->encode(t, true));
    }

    const Strategy strategy = strategy_for(cfg);
    const bool streaming = a.stream && !a.json && strategy != Strategy::BeamSearch &&
                           strategy != Strategy::BeamSample && prompts.size() == 1 && cfg.num_return_sequences == 1;
    if (a.stream && !streaming && !a.json)
        fmt::print(stderr, "generate: --stream needs one prompt, one sequence and no beam search; printing at the end\n");

    InterruptGuard guard;
    GenerateHooks hooks;
    if (g.tokenizer) hooks.tokenizer = &*g.tokenizer;
    hooks.default_seed = 0;
    hooks.on_token = [&](int64_t, int32_t, std::string_view text) {
        if (streaming) {
            std::fwrite(text.data(), 1, text.size(), stdout);
            std::fflush(stdout);
        }
        return !InterruptGuard::requested();
    };
    if (streaming && a.echo) fmt::print("{}", g.tokenizer ? g.tokenizer->decode(prompts[0]) : std::string());
    const std::unique_ptr<CausalLM> lm_ptr = make_causal_lm(*g.model, a.flags.device);
    CausalLM& lm = *lm_ptr;
    // Decoding on the CPU reads only the packed copies: their fp32 values go back to the OS.
    if (parse_inference_device(a.flags.device) < 0) g.model->release_unpacked_values();
    GenerationResult res = generate(lm, prompts, cfg, hooks);

    auto text_of = [&](const std::vector<int32_t>& ids) {
        return g.tokenizer ? g.tokenizer->decode(ids, true) : fmt::format("{}", fmt::join(ids, " "));
    };
    const double decode_tps = res.decode_seconds > 0 ? static_cast<double>(res.generated_tokens) / res.decode_seconds : 0;
    const double prefill_tps = res.prefill_seconds > 0 ? static_cast<double>(res.prompt_tokens) / res.prefill_seconds : 0;
    if (a.json) {
        nlohmann::ordered_json j;
        j["strategy"] = strategy_name(res.strategy);
        j["prompt_tokens"] = res.prompt_tokens;
        j["generated_tokens"] = res.generated_tokens;
        j["interrupted"] = res.interrupted;
        j["sequences"] = nlohmann::json::array();
        for (const auto& s : res.sequences) {
            nlohmann::ordered_json o;
            o["prompt_index"] = s.prompt_index;
            o["text"] = text_of(s.tokens);
            o["tokens"] = s.tokens;
            o["token_scores"] = s.token_scores;
            o["score"] = s.score;
            o["stop_reason"] = stop_reason_name(s.stop_reason);
            j["sequences"].push_back(o);
        }
        j["timings"] = {{"prefill_seconds", res.prefill_seconds},
                        {"decode_seconds", res.decode_seconds},
                        {"prefill_tokens_per_second", prefill_tps},
                        {"decode_tokens_per_second", decode_tps}};
        fmt::print("{}\n", j.dump(2));
        return;
    }
    if (streaming) {
        fmt::print("\n");
    } else {
        for (size_t i = 0; i < res.sequences.size(); ++i) {
            const auto& s = res.sequences[i];
            if (res.sequences.size() > 1)
                fmt::print("--- prompt {} sequence {} (score {:.4f})\n", s.prompt_index, i, s.score);
            if (a.echo && g.tokenizer) fmt::print("{}", g.tokenizer->decode(prompts[s.prompt_index]));
            fmt::print("{}\n", text_of(s.tokens));
        }
    }
    fmt::print(stderr, "[{}: prompt {} tokens, {:.1f} tok/s prefill; generated {} tokens, {:.1f} tok/s{}]\n",
               strategy_name(res.strategy), res.prompt_tokens, prefill_tps, res.generated_tokens, decode_tps,
               res.interrupted ? "; interrupted" : "");
}

}  // namespace

void register_generate(CLI::App& app) {
    auto a = std::make_shared<GenerateArgs>();
    auto* cmd = app.add_subcommand("generate", "Generate text from a model directory (greedy, sampling, beam, contrastive)");
    cmd->add_option("--model", a->model, "Model directory (native or Hugging Face)")->required();
    cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json (default: the model directory's)");
    cmd->add_option("--prompt,-p", a->prompts, "Prompt text (repeatable: a batch)");
    cmd->add_option("--prompt-file", a->prompt_file, "Read the prompt from a file");
    cmd->add_option("--prompt-ids", a->prompt_ids, "Prompt as token ids: '5 17 33' (no tokenizer needed)");
    cmd->add_flag("--stream", a->stream, "Print text as it is generated");
    cmd->add_flag("--json", a->json, "Print a JSON document: tokens, scores, timings");
    cmd->add_flag("--echo", a->echo, "Print the prompt before the generated text");
    add_generation_flags(cmd, a->flags);
    cmd->callback([a] { run_generate(*a); });
}

}  // namespace mslm::cli
