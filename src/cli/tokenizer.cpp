#include "tokenizer/tokenizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"

namespace mslm::cli {

// `mamba-slm tokenizer encode|decode`; `tokenizer train` comes from register_tokenizer_train.
void register_tokenizer(CLI::App& app) {
    auto* cmd = app.add_subcommand("tokenizer",
                                   "Encode, decode and train byte-level BPE tokenizers (HF tokenizer.json)");
    cmd->require_subcommand(1);

    struct EncodeArgs {
        std::string tokenizer, text, input;
        bool special = false;
    };
    auto e = std::make_shared<EncodeArgs>();
    auto* enc = cmd->add_subcommand("encode", "Print the ids of a text, space-separated");
    enc->add_option("--tokenizer", e->tokenizer, "tokenizer.json")->required();
    auto* text = enc->add_option("--text", e->text, "The text to encode");
    auto* input =
        enc->add_option("--input", e->input, "A file to encode (its bytes; invalid UTF-8 becomes U+FFFD)");
    text->excludes(input);
    enc->add_flag("--special", e->special, "Add the post-processor's special tokens (e.g. BOS)");
    enc->callback([e, text, input] {
        if (!text->count() && !input->count()) throw CLI::RequiredError("--text or --input");
        Tokenizer tok = Tokenizer::load(e->tokenizer);
        if (input->count()) {
            std::ifstream f(e->input, std::ios::binary);
            MSLM_CHECK(f, "{}: cannot open", e->input);
            std::stringstream ss;
            ss << f.rdbuf();
            e->text = ss.str();
        }
        fmt::print("{}\n", fmt::join(tok.encode(e->text, e->special), " "));
    });

    struct DecodeArgs {
        std::string tokenizer;
        std::vector<int32_t> ids;
        bool skip_special = false;
    };
    auto d = std::make_shared<DecodeArgs>();
    auto* dec = cmd->add_subcommand("decode", "Print the text of ids");
    dec->add_option("--tokenizer", d->tokenizer, "tokenizer.json")->required();
    dec->add_option("ids", d->ids, "Token ids")->required();
    dec->add_flag("--skip-special", d->skip_special, "Leave out special tokens");
    dec->callback([d] { fmt::print("{}\n", Tokenizer::load(d->tokenizer).decode(d->ids, d->skip_special)); });

    register_tokenizer_train(cmd);
}

}  // namespace mslm::cli
