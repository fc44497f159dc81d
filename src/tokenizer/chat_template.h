// Chat templates: a conversation -> the prompt text a chat model was trained on, rendered from the
// model's own Jinja2 template exactly as transformers' apply_chat_template(tokenize=False) renders
// it (jinja.h is the interpreter).
//
// Where the template comes from (load_for_model), in transformers' order of preference:
//   1. <model_dir>/chat_template.jinja
//   2. "chat_template" of <model_dir>/tokenizer_config.json: a string, or the entry named "default"
//      of a list of {"name", "template"}
//   3. built-in ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, and
//      "<|im_start|>assistant\n" as the generation prompt
// The named special tokens of tokenizer_config.json (bos_token, eos_token, unk_token, sep_token,
// pad_token, cls_token, mask_token; a string or {"content": ...}) become template variables, as
// transformers passes them.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/jinja.h"

namespace mslm {

struct ChatMessage {
    std::string role;  // "system", "user", "assistant", ...
    std::string content;
};

class ChatTemplate {
public:
    // Parses `text`; `source` names it in errors and in source(). Throws mslm::Error
    // "<source>:<line>:<column>: <what>" for a syntax error.
    explicit ChatTemplate(std::string_view text, std::string source = "<chat template>");

    // The template of the model in `model_dir` (see above). Throws mslm::Error for an unreadable or
    // malformed tokenizer_config.json or template.
    static ChatTemplate load_for_model(const std::string& model_dir);
    static ChatTemplate chatml();
    static std::string_view chatml_text();  // the built-in ChatML template's Jinja2 source

    // Renders `messages` as transformers does: the variables are `messages` (each {role, content}),
    // `add_generation_prompt`, `tools` and `documents` (none), the special tokens read by
    // load_for_model, then `extra` (a JSON object: it may override all but messages and
    // add_generation_prompt; its objects keep their key order, which tojson shows). Throws
    // mslm::Error "<source>:<line>: <what>" for an error of the template, or the template's own
    // message when it calls raise_exception().
    std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                       const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

    // Where the template came from, for the user: "<dir>/chat_template.jinja",
    // "<dir>/tokenizer_config.json" or "built-in ChatML".
    const std::string& source() const { return template_.name(); }
    // The variables load_for_model read (the special tokens); render() passes them.
    const nlohmann::ordered_json& variables() const { return variables_; }

private:
    jinja::Template template_;
    nlohmann::ordered_json variables_ = nlohmann::ordered_json::object();
};

}  // namespace mslm
