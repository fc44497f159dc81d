// `mamba-slm chat`: an interactive conversation with a model directory. The conversation is
// rendered with the model's chat template (ChatML when it has none) and re-encoded each turn;
// replies stream as they are generated. Ctrl-C stops the reply, not the program.
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/generation_options.h"
#include "model/cuda_inference.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace mslm::cli {

namespace {

struct ChatArgs {
    std::string model, tokenizer, system, template_file;
    GenerationFlags flags;
};

// Reads one line from standard input with read(2), so that Ctrl-C at the prompt interrupts the
// wait (the SIGINT handler is installed without SA_RESTART). Returns false at end of input;
// `interrupted` tells a Ctrl-C apart from a line.
bool read_line(std::string& line, bool& interrupted) {
    line.clear();
    interrupted = false;
    for (;;) {
        char c;
        const ssize_t n = ::read(STDIN_FILENO, &c, 1);
        if (n == 1) {
            if (c == '\n') return true;
            line += c;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            if (InterruptGuard::requested()) {
                InterruptGuard::reset();
                interrupted = true;
                line.clear();
                return true;
            }
            continue;
        }
        return !line.empty();  // end of input: a last line without '\n' still counts
    }
}

std::string trim(std::string s) {
    const size_t b = s.find_first_not_of(" \t\r");
    const size_t e = s.find_last_not_of(" \t\r");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

void save_conversation(const std::string& path, const std::vector<ChatMessage>& messages) {
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (const auto& m : messages) j.push_back({{"role", m.role}, {"content", m.content}});
    std::ofstream out(path);
    MSLM_CHECK(out.good(), "{}: cannot write", path);
    out << j.dump(2) << "\n";
    MSLM_CHECK(out.good(), "{}: write failed", path);
}

const char* kHelp =
    "  /reset              start a new conversation\n"
    "  /set KEY VALUE      change a generation setting (temperature 0.7, top_p 0.9, max_new_tokens 128, ...)\n"
    "  /show               print the generation settings\n"
    "  /save [FILE]        write the conversation as JSON\n"
    "  /quit               leave (or Ctrl-D); Ctrl-C stops a reply\n";

void run_chat(ChatArgs& a) {
    LoadedGenerator g = load_generator(a.model, a.tokenizer, a.flags.dtype);
    MSLM_CHECK(g.tokenizer, "{}: no tokenizer.json; chat needs one (--tokenizer FILE)", a.model);
    const Tokenizer& tok = *g.tokenizer;
    GenerationConfig cfg = g.config;
    if (!cfg.max_new_tokens && !cfg.max_length) cfg.max_new_tokens = 256;
    apply_generation_flags(a.flags, cfg);
    const ChatTemplate tmpl = a.template_file.empty()
                                  ? ChatTemplate::load_for_model(a.model)
                                  : [&] {
                                        std::ifstream in(a.template_file);
                                        MSLM_CHECK(in.good(), "{}: cannot open the chat template", a.template_file);
                                        std::stringstream ss;
                                        ss << in.rdbuf();
                                        return ChatTemplate(ss.str(), a.template_file);
                                    }();

    // The end of a turn: the template's end-of-turn token when the vocabulary has it (an EOS id),
    // else its text as a stop string that is cut from the reply.
    // Found by rendering a short exchange and looking at what follows the assistant's text.
    std::string end_of_turn;
    try {
        const std::string probe = tmpl.render({{"user", "Hi"}, {"assistant", "MSLM_REPLY"}}, false);
        const size_t after = probe.find("MSLM_REPLY");
        for (const char* candidate : {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>"})
            if (after != std::string::npos && probe.find(candidate, after) != std::string::npos) {
                end_of_turn = candidate;
                break;
            }
    } catch (const Error&) {
        // A template that refuses this exchange still ends turns with EOS.
    }
    if (!end_of_turn.empty()) {
        const int32_t id = tok.token_to_id(end_of_turn);
        if (id >= 0) {
            cfg.eos_token_id.push_back(id);
        } else {
            cfg.stop_strings.push_back(end_of_turn);
        }
    }

    const std::unique_ptr<CausalLM> lm_ptr = make_causal_lm(*g.model, a.flags.device);
    CausalLM& lm = *lm_ptr;
    // Decoding on the CPU reads only the packed copies: their fp32 values go back to the OS.
    if (parse_inference_device(a.flags.device) < 0) g.model->release_unpacked_values();
    std::vector<ChatMessage> history;
    if (!a.system.empty()) history.push_back({"system", a.system});
    fmt::print("mamba-slm chat: {} ({} parameters), template: {}\n", a.model, g.model->num_params(), tmpl.source());
    fmt::print("Type a message. /help lists commands; Ctrl-C stops a reply, Ctrl-D or /quit leaves.\n");

    InterruptGuard guard;  // also makes a Ctrl-C at the prompt end read() with EINTR

    uint64_t turn = 0;
    // What slot 0 holds after the last reply: the next turn's prompt usually extends it, and then
    // only the new tokens are prefilled (generate.h, SlotCache).
    SlotCache held;
    // The conversation so far as the model read it: the text rendered up to the end of the last
    // reply and its tokens (the last prompt's, then the reply's own). A next turn whose rendering
    // extends that text is the held tokens plus the encoded rest, so the model continues from its
    // own tokens and the slot's state is reused (re-encoding a reply need not give back the tokens
    // the model chose); otherwise the whole rendering is encoded.
    std::string said_text;
    std::vector<int32_t> said_tokens;
    std::string line;
    for (;;) {
        fmt::print("> ");
        std::fflush(stdout);
        bool interrupted = false;
        if (!read_line(line, interrupted)) break;
        if (interrupted) {
            fmt::print("\n");
            continue;
        }
        line = trim(line);
        if (line.empty()) continue;
        if (line[0] == '/') {
            std::istringstream in(line.substr(1));
            std::string cmd;
            in >> cmd;
            try {
                if (cmd == "quit" || cmd == "exit") break;
                if (cmd == "help") {
                    fmt::print("{}", kHelp);
                } else if (cmd == "reset") {
                    history.clear();
                    held.valid = false;
                    said_text.clear();
                    said_tokens.clear();
                    if (!a.system.empty()) history.push_back({"system", a.system});
                    fmt::print("(conversation cleared)\n");
                } else if (cmd == "set") {
                    std::string key, value;
                    in >> key;
                    std::getline(in, value);
                    value = trim(value);
                    MSLM_CHECK(!key.empty() && !value.empty(), "usage: /set KEY VALUE");
                    GenerationConfig next = cfg;
                    next.set(key, value);
                    next.validate();
                    cfg = next;
                    fmt::print("({} = {})\n", key, cfg.to_json().at(key).dump());
                } else if (cmd == "show") {
                    fmt::print("{}\n", cfg.to_json().dump(2));
                } else if (cmd == "save") {
                    std::string path;
                    in >> path;
                    if (path.empty()) path = fmt::format("chat-{}.json", static_cast<long long>(std::time(nullptr)));
                    save_conversation(path, history);
                    fmt::print("(saved {} messages to {})\n", history.size(), path);
                } else {
                    fmt::print("unknown command /{}; /help lists them\n", cmd);
                }
            } catch (const Error& e) {
                fmt::print("error: {}\n", e.what());
            }
            continue;
        }

        history.push_back({"user", line});
        std::vector<int32_t> prompt;
        std::string rendered;
        try {
            rendered = tmpl.render(history, true);
            if (!said_tokens.empty() && rendered.size() > said_text.size() &&
                rendered.compare(0, said_text.size(), said_text) == 0) {
                prompt = said_tokens;
                const std::vector<int32_t> rest = tok.encode(rendered.substr(said_text.size()), false);
                prompt.insert(prompt.end(), rest.begin(), rest.end());
            } else {
                prompt = tok.encode(rendered, false);
            }
        } catch (const Error& e) {
            history.pop_back();
            fmt::print("error: {}\n", e.what());
            continue;
        }
        GenerationConfig turn_cfg = cfg;
        if (!turn_cfg.seed) turn_cfg.seed = turn;
        ++turn;
        // The reply streams as it comes, held back by the longest stop string so that a stop
        // string is never printed.
        size_t hold = 0;
        for (const auto& s : turn_cfg.stop_strings) hold = std::max(hold, s.size());
        std::string reply;
        size_t printed = 0;
        GenerateHooks hooks;
        hooks.tokenizer = &tok;
        hooks.default_seed = turn;
        hooks.cache = &held;
        hooks.on_token = [&](int64_t, int32_t, std::string_view text) {
            reply += text;
            const size_t safe = reply.size() > hold ? reply.size() - hold : 0;
            if (safe > printed) {
                std::fwrite(reply.data() + printed, 1, safe - printed, stdout);
                std::fflush(stdout);
                printed = safe;
            }
            return !InterruptGuard::requested();
        };
        InterruptGuard::reset();
        GenerationResult res;
        try {
            res = generate(lm, {prompt}, turn_cfg, hooks);
        } catch (const Error& e) {
            history.pop_back();
            fmt::print("\nerror: {}\n", e.what());
            continue;
        }
        InterruptGuard::reset();
        const GeneratedSequence& seq = res.sequences.at(0);
        if (seq.stop_reason == StopReason::StopString) {
            for (const auto& s : turn_cfg.stop_strings) {
                const size_t at = reply.find(s);
                if (at != std::string::npos) reply.resize(at);
            }
        } else if (seq.stop_reason == StopReason::Eos) {
            reply = tok.decode(std::span<const int32_t>(seq.tokens).first(seq.tokens.size() - 1), true);
        }
        if (reply.size() > printed) std::fwrite(reply.data() + printed, 1, reply.size() - printed, stdout);
        history.push_back({"assistant", reply});
        // The reply's tokens as the model chose them (an EOS the template writes as text left out),
        // kept only where they decode to the reply's text exactly (not after a stop string, nor with
        // a character cut in half at the end).
        std::span<const int32_t> reply_tokens(seq.tokens);
        if (seq.stop_reason == StopReason::Eos && !reply_tokens.empty()) reply_tokens = reply_tokens.first(reply_tokens.size() - 1);
        if (seq.stop_reason != StopReason::StopString && tok.decode(reply_tokens, true) == reply) {
            said_text = rendered + reply;
            said_tokens = prompt;
            said_tokens.insert(said_tokens.end(), reply_tokens.begin(), reply_tokens.end());
        } else {
            said_text.clear();
            said_tokens.clear();
        }
        const double tps = res.decode_seconds > 0 ? static_cast<double>(seq.tokens.size()) / res.decode_seconds : 0;
        const std::string reused =
            res.reused_prompt_tokens
                ? fmt::format("; {} of the prompt's tokens held from the last turn", res.reused_prompt_tokens)
                : "";
        fmt::print("\n[{}prompt {} tokens, reply {} tokens, {:.1f} tok/s{}]\n", res.interrupted ? "interrupted; " : "",
                   res.prompt_tokens + res.reused_prompt_tokens, seq.tokens.size(), tps, reused);
    }
    fmt::print("\n");
}

}  // namespace

void register_chat(CLI::App& app) {
    auto a = std::make_shared<ChatArgs>();
    auto* cmd = app.add_subcommand("chat", "Talk to a model: multi-turn, streamed, with its chat template");
    cmd->add_option("--model", a->model, "Model directory (with tokenizer.json)")->required();
    cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json (default: the model directory's)");
    cmd->add_option("--system", a->system, "System message at the start of the conversation");
    cmd->add_option("--chat-template", a->template_file, "A Jinja chat template file instead of the model's");
    add_generation_flags(cmd, a->flags);
    cmd->callback([a] { run_chat(*a); });
}

}  // namespace mslm::cli
