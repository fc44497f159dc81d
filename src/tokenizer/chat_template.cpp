#include "tokenizer/chat_template.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace mslm {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// The ChatML template that transformers once fell back to for tokenizers without one.
constexpr std::string_view kChatML =
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// SPECIAL_TOKENS_ATTRIBUTES of transformers' tokenizers: the ones apply_chat_template passes.
const char* const kSpecialTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                      "pad_token", "cls_token", "mask_token"};

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    MSLM_CHECK(in.good(), "{}: cannot open: {}", path.string(), std::strerror(errno));
    std::stringstream ss;
    ss << in.rdbuf();
    MSLM_CHECK(!in.bad(), "{}: read error", path.string());
    return ss.str();
}

// tokenizer_config.json's chat_template: a string, or a list of {"name", "template"} of which
// transformers uses "default".
std::string template_from_config(const ojson& value, const std::string& path) {
    if (value.is_string()) return value.get<std::string>();
    MSLM_CHECK(value.is_array(), "{}: chat_template must be a string or a list of {{name, template}}", path);
    std::string names;
    for (const auto& entry : value) {
        MSLM_CHECK(entry.is_object() && entry.contains("name") && entry["name"].is_string() &&
                       entry.contains("template") && entry["template"].is_string(),
                   "{}: each chat_template entry must be {{\"name\": ..., \"template\": ...}}", path);
        if (entry["name"] == "default") return entry["template"].get<std::string>();
        names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
    }
    fail("{}: chat_template has no template named 'default' (it has: {})", path, names);
}

}  // namespace

ChatTemplate::ChatTemplate(std::string_view text, std::string source) : template_(text, std::move(source)) {}

ChatTemplate ChatTemplate::chatml() {
    return ChatTemplate(kChatML, "built-in ChatML");
}

std::string_view ChatTemplate::chatml_text() { return kChatML; }

ChatTemplate ChatTemplate::load_for_model(const std::string& model_dir) {
    const fs::path dir(model_dir);
    const fs::path config_path = dir / "tokenizer_config.json";
    const fs::path jinja_path = dir / "chat_template.jinja";
    std::error_code ec;
    MSLM_CHECK(fs::is_directory(dir, ec), "{}: not a model directory", model_dir);
    ojson config = ojson::object();
    if (fs::exists(config_path, ec)) {
        try {
            config = ojson::parse(read_text(config_path));
        } catch (const nlohmann::json::exception& e) {
            fail("{}: not valid JSON: {}", config_path.string(), e.what());
        }
        MSLM_CHECK(config.is_object(), "{}: not a JSON object", config_path.string());
    }

    ojson variables = ojson::object();
    for (const char* key : kSpecialTokens) {
        const auto it = config.find(key);
        if (it == config.end() || it->is_null()) continue;
        if (it->is_object() && it->contains("content")) {
            const ojson& content = (*it)["content"];
            MSLM_CHECK(content.is_string(), "{}: {}.content must be a string", config_path.string(), key);
            variables[key] = content;
        } else {
            MSLM_CHECK(it->is_string(), "{}: {} must be a string or {{\"content\": ...}}",
                       config_path.string(), key);
            variables[key] = *it;
        }
    }

    ChatTemplate t = [&] {
        if (fs::exists(jinja_path, ec)) return ChatTemplate(read_text(jinja_path), jinja_path.string());
        const auto it = config.find("chat_template");
        if (it != config.end() && !it->is_null())
            return ChatTemplate(template_from_config(*it, config_path.string()), config_path.string());
        return chatml();
    }();
    t.variables_ = std::move(variables);
    return t;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
    MSLM_CHECK(extra.is_object(), "chat template variables must be a JSON object");
    ojson vars = variables_;
    ojson list = ojson::array();
    for (const ChatMessage& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
    // transformers always passes tools and documents, as None when the caller has none.
    vars["tools"] = nullptr;
    vars["documents"] = nullptr;
    for (const auto& [key, value] : extra.items()) {
        MSLM_CHECK(key != "messages" && key != "add_generation_prompt",
                   "chat template variable '{}' is set by render() itself", key);
        vars[key] = value;
    }
    vars["messages"] = std::move(list);
    vars["add_generation_prompt"] = add_generation_prompt;
    return template_.render(vars);
}

}  // namespace mslm
