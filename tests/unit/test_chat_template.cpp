// Chat templates: byte parity with transformers' apply_chat_template on real models' templates and
// with jinja2 on the language fixtures (both recorded by tests/parity/make_chat_template_fixtures.py),
// the choice of template by load_for_model, and the error messages a user sees.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/jinja.h"

namespace mslm {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

std::string fixture_path(const std::string& name) {
    return std::string(MSLM_FIXTURE_DIR) + "/chat_templates/" + name + ".json";
}

ojson read_json(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot open " + path);
    return ojson::parse(in);
}

void write_file(const fs::path& path, std::string_view text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
}

std::vector<ChatMessage> messages_of(const ojson& list) {
    std::vector<ChatMessage> out;
    for (const auto& m : list) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    return out;
}

// What rendering throws, or "" when it does not.
template <typename F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

std::string render(std::string_view text, const ojson& variables = ojson::object()) {
    return jinja::Template(text, "t").render(variables);
}

// ---- parity with transformers: every fixture template, installed as a model directory's
// tokenizer_config.json, renders every recorded conversation byte for byte, or raises the same
// message.

class RealChatTemplate : public testing::TestWithParam<const char*> {};

TEST_P(RealChatTemplate, RendersLikeTransformers) {
    const ojson fixture = read_json(fixture_path(GetParam()));
    const fs::path dir = test::fresh_test_dir("chat_template");
    ojson config = fixture["special_tokens"];
    config["chat_template"] = fixture["template"];
    write_file(dir / "tokenizer_config.json", config.dump(2));

    const ChatTemplate t = ChatTemplate::load_for_model(dir.string());
    EXPECT_EQ(t.source(), (dir / "tokenizer_config.json").string());
    ASSERT_GE(fixture["cases"].size(), 7u);
    for (const auto& c : fixture["cases"]) {
        SCOPED_TRACE(c["name"].get<std::string>());
        const auto messages = messages_of(c["messages"]);
        const bool prompt = c["add_generation_prompt"].get<bool>();
        const ojson extra = c.value("extra", ojson::object());
        if (c.contains("output")) {
            EXPECT_EQ(t.render(messages, prompt, extra), c["output"].get<std::string>());
        } else {
            EXPECT_EQ(error_of([&] { t.render(messages, prompt, extra); }), c["error"].get<std::string>());
        }
    }
}

INSTANTIATE_TEST_SUITE_P(ChatTemplate, RealChatTemplate,
                         testing::Values("chatml", "qwen2.5", "qwen3", "llama2", "llama3", "llama3.1",
                                         "mistral-v0.1", "mistral-v0.3", "zephyr", "gemma", "phi3", "smollm2",
                                         "granite3"),
                         [](const testing::TestParamInfo<const char*>& info) {
                             std::string name = info.param;
                             for (char& ch : name)
                                 if (ch == '.' || ch == '-') ch = '_';
                             return name;
                         });

// ---- parity with jinja2 on the language: outputs byte for byte; raise_exception's message
// verbatim; every other error recorded there (syntax, undefined, type errors) fails too.

TEST(ChatTemplateLanguage, MatchesJinja2OnFixtureSnippets) {
    const ojson fixture = read_json(fixture_path("expressions"));
    int outputs = 0, errors = 0;
    for (const auto& c : fixture["cases"]) {
        const std::string text = c["template"].get<std::string>();
        SCOPED_TRACE(text);
        auto run = [&] { return render(text, c["variables"]); };
        if (c.contains("output")) {
            std::string out;
            EXPECT_NO_THROW(out = run());
            EXPECT_EQ(out, c["output"].get<std::string>());
            ++outputs;
            continue;
        }
        const std::string error = error_of(run);
        EXPECT_FALSE(error.empty()) << "jinja2 raised " << c["error"]["type"] << ": "
                                    << c["error"]["message"];
        if (c["error"]["type"] == "TemplateError") {
            EXPECT_EQ(error, c["error"]["message"].get<std::string>());
        }
        ++errors;
    }
    EXPECT_GT(outputs, 80);
    EXPECT_GT(errors, 20);
}

// ---- load_for_model: chat_template.jinja > tokenizer_config.json > ChatML

TEST(ChatTemplate, FallsBackToChatML) {
    const std::string dir = test::fresh_test_dir("chat_template");
    const ChatTemplate t = ChatTemplate::load_for_model(dir);
    EXPECT_EQ(t.source(), "built-in ChatML");
    EXPECT_EQ(
        t.render({{"system", "Be brief."}, {"user", "Hi"}}, true),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(t.render({{"user", "Hi"}, {"assistant", "Hello"}}, false),
              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n");

    // A tokenizer_config.json without a chat_template still gives ChatML, and its tokens.
    write_file(fs::path(dir) / "tokenizer_config.json", R"({"eos_token": "</s>", "chat_template": null})");
    const ChatTemplate u = ChatTemplate::load_for_model(dir);
    EXPECT_EQ(u.source(), "built-in ChatML");
    EXPECT_EQ(u.variables(), ojson({{"eos_token", "</s>"}}));
}

TEST(ChatTemplate, PrefersChatTemplateJinjaOverTokenizerConfig) {
    const fs::path dir = test::fresh_test_dir("chat_template");
    write_file(dir / "tokenizer_config.json", R"({
        "bos_token": {"content": "<s>", "lstrip": false, "special": true},
        "eos_token": "</s>", "pad_token": null, "unk_token": {"content": "<unk>"},
        "chat_template": "from config"})");
    // transformers writes the file with a final newline, which jinja2 drops.
    write_file(
        dir / "chat_template.jinja",
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}\n");
    const ChatTemplate t = ChatTemplate::load_for_model(dir.string());
    EXPECT_EQ(t.source(), (dir / "chat_template.jinja").string());
    EXPECT_EQ(t.render({{"user", "hi"}}, true), "<s>[user] hi</s>");
    EXPECT_EQ(t.variables(), ojson({{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}}));

    fs::remove(dir / "chat_template.jinja");
    const ChatTemplate u = ChatTemplate::load_for_model(dir.string());
    EXPECT_EQ(u.source(), (dir / "tokenizer_config.json").string());
    EXPECT_EQ(u.render({{"user", "hi"}}, true), "from config");
}

TEST(ChatTemplate, PicksTheDefaultOfATemplateList) {
    const fs::path dir = test::fresh_test_dir("chat_template");
    write_file(dir / "tokenizer_config.json", R"({"chat_template": [
        {"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]})");
    EXPECT_EQ(ChatTemplate::load_for_model(dir.string()).render({{"user", "x"}}, false), "plain");

    write_file(dir / "tokenizer_config.json", R"({"chat_template": [
        {"name": "tool_use", "template": "tools"}, {"name": "rag", "template": "rag"}]})");
    EXPECT_EQ(error_of([&] { ChatTemplate::load_for_model(dir.string()); }),
              (dir / "tokenizer_config.json").string() +
                  ": chat_template has no template named 'default' (it has: tool_use, rag)");
}

TEST(ChatTemplate, ReportsBadModelFiles) {
    const fs::path dir = test::fresh_test_dir("chat_template");
    EXPECT_EQ(error_of([&] { ChatTemplate::load_for_model((dir / "missing").string()); }),
              (dir / "missing").string() + ": not a model directory");
    const std::string config = (dir / "tokenizer_config.json").string();
    write_file(config, "{not json");
    EXPECT_EQ(
        error_of([&] { ChatTemplate::load_for_model(dir.string()); }).rfind(config + ": not valid JSON", 0),
        0u);
    write_file(config, R"({"chat_template": 42})");
    EXPECT_EQ(error_of([&] { ChatTemplate::load_for_model(dir.string()); }),
              config + ": chat_template must be a string or a list of {name, template}");
    write_file(config, R"({"eos_token": 7})");
    EXPECT_EQ(error_of([&] { ChatTemplate::load_for_model(dir.string()); }),
              config + ": eos_token must be a string or {\"content\": ...}");
    // A template with a syntax error fails to load, naming the file, line and column.
    write_file(dir / "tokenizer_config.json", "{}");
    write_file(dir / "chat_template.jinja", "{% for m in messages %}\n  {{ m.content + }}\n{% endfor %}\n");
    EXPECT_EQ(error_of([&] { ChatTemplate::load_for_model(dir.string()); }),
              (dir / "chat_template.jinja").string() + ":2:18: unexpected end of print statement '}}'");
}

// ---- render(): the variables transformers passes, and extra ones

TEST(ChatTemplate, PassesTheVariablesTransformersPasses) {
    const ChatTemplate t(
        "{{ messages|length }} {{ add_generation_prompt }} {{ tools is defined }} {{ tools is none }} "
        "{{ documents is none }} [{{ bos_token }}] {{ date_string|default('no date') }}");
    EXPECT_EQ(t.render({{"user", "a"}, {"assistant", "b"}}, true), "2 True True True True [] no date");
    EXPECT_EQ(t.render({}, false, {{"bos_token", "<s>"}, {"date_string", "today"}}),
              "0 False True True True [<s>] today");
    // A plain nlohmann::json converts (its objects' keys come sorted).
    EXPECT_EQ(t.render({}, false, nlohmann::json{{"bos_token", "<b>"}}),
              "0 False True True True [<b>] no date");
    EXPECT_EQ(error_of([&] {
                  t.render({}, false, {{"messages", ojson::array()}});
              }),
              "chat template variable 'messages' is set by render() itself");
}

TEST(ChatTemplate, ExtraVariablesKeepTheirKeyOrder) {
    // tojson writes a tool's keys in the order the caller gave them, as Python's json.dumps does.
    const ChatTemplate t("{% for tool in tools %}{{ tool|tojson }}{% endfor %}");
    const ojson tools = ojson::parse(R"([{"type": "function", "function": {"name": "f", "arguments": {}}}])");
    EXPECT_EQ(t.render({}, false, {{"tools", tools}}),
              R"({"type": "function", "function": {"name": "f", "arguments": {}}})");
}

// ---- errors

TEST(ChatTemplate, RaiseExceptionCarriesTheTemplatesMessage) {
    const ChatTemplate t(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif "
        "%}ok");
    EXPECT_EQ(t.render({{"user", "hi"}}, false), "ok");
    EXPECT_EQ(error_of([&] {
                  t.render({{"system", "s"}, {"user", "hi"}}, false);
              }),
              "System role not supported");
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
    auto parse_error = [](std::string_view text) {
        return error_of([&] { jinja::Template(text, "tpl.jinja"); });
    };
    EXPECT_EQ(parse_error("{% if x %}\nyes"),
              "tpl.jinja:2:4: unexpected end of template, expected 'elif' or 'else' or 'endif'");
    EXPECT_EQ(parse_error("a\n{% for x in xs %}{% endif %}"), "tpl.jinja:2:21: unexpected 'endif'");
    EXPECT_EQ(parse_error("{{ 'é' ~ }}"), "tpl.jinja:1:10: unexpected end of print statement '}}'");
    EXPECT_EQ(parse_error("x\n  {{ 'open }}"), "tpl.jinja:2:6: unterminated string");
    EXPECT_EQ(parse_error("{% include 'x' %}"), "tpl.jinja:1:4: unknown or unsupported tag 'include'");
    EXPECT_EQ(parse_error("{{ a ) }}"), "tpl.jinja:1:6: unexpected ')'");
    EXPECT_EQ(parse_error("\n\n {{ x"), "tpl.jinja:3:2: missing '}}' to close this tag");
    EXPECT_EQ(parse_error("{# never closed"), "tpl.jinja:1:1: missing end of comment tag '#}'");
    EXPECT_EQ(parse_error("{% break %}"), "tpl.jinja:1:4: 'break' outside of a loop");
    EXPECT_EQ(parse_error("{{ x @ y }}"), "tpl.jinja:1:6: unexpected character '@'");
}

TEST(ChatTemplate, RuntimeErrorsNameTheLine) {
    auto render_error = [](std::string_view text) {
        return error_of([&] { jinja::Template(text, "tpl.jinja").render(ojson::object()); });
    };
    EXPECT_EQ(render_error("fine\n{{ user.name }}"), "tpl.jinja:2: 'user' is undefined");
    EXPECT_EQ(render_error("{% set m = {} %}\n\n{{ m.a.b }}"),
              "tpl.jinja:3: 'dict object' has no attribute 'a'");
    EXPECT_EQ(render_error("{{ 1 + 'a' }}"),
              "tpl.jinja:1: unsupported operand type(s) for +: 'int' and 'str'");
    EXPECT_EQ(render_error("{{ [1]|frobnicate }}"), "tpl.jinja:1: filter 'frobnicate' is not supported");
    EXPECT_EQ(render_error("{% set x = 1 %}{% set x.y = 2 %}"),
              "tpl.jinja:1: cannot assign attribute on non-namespace object 'x'");
}

TEST(ChatTemplate, RunawayTemplatesFailCleanly) {
    const std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
    EXPECT_NE(error_of([&] { jinja::Template(deep, "t"); }).find("template nested too deeply"),
              std::string::npos);
    EXPECT_EQ(error_of([] { render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"); }),
              "t:1: macro calls nested too deeply");
    EXPECT_EQ(error_of([] { render("{{ range(100001)|length }}"); }),
              "t:1: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
}

// ---- the language, by hand (the fixture snippets cover it against jinja2 itself)

TEST(ChatTemplateLanguage, WhitespaceControl) {
    // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before one.
    EXPECT_EQ(render("{% for x in xs %}\n    {% if x %}\n  {{ x }}\n    {% endif %}\n{% endfor %}",
                     {{"xs", {1, 0, 2}}}),
              "  1\n  2\n");
    EXPECT_EQ(render("a  {{- ' b ' -}}  c"), "a b c");
    EXPECT_EQ(render("a\n  {%- if true %} b {% endif -%}\n  c"), "a b c");
    EXPECT_EQ(render("  {%+ if true %}x{% endif +%}\ny"), "  x\ny");
    EXPECT_EQ(render("a {# note #}b\n  {# own line #}\nc"), "a b\nc");
    EXPECT_EQ(render("last line\n"), "last line");
}

TEST(ChatTemplateLanguage, OperatorsFollowJinjaPrecedence) {
    EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ -2 ** 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }}"),
              "7 4 3 -4 2 3.5");
    // ~ binds tighter than + (so 'a' ~ 1 + 2 is a type error), a filter tighter than any operator.
    EXPECT_EQ(render("{{ 'a' ~ 1 * 2 }}|{{ 'n: ' ~ xs|length }}", {{"xs", {1, 2}}}), "a2|n: 2");
    EXPECT_EQ(render("{{ 'x' in 'xyz' and 2 not in [1] }} {{ not 1 == 2 }} {{ 1 < 2 < 3 }} {{ 0 or 'b' }}"),
              "True True True b");
    EXPECT_EQ(render("{{ 'yes' if x is defined and x else 'no' }}", {{"x", 0}}), "no");
    EXPECT_EQ(render("{{ m['content'] + '!' }} {{ m.content|upper }} {{ xs[1:]|join(',') }} {{ xs[-1] }}",
                     {{"m", {{"content", "hi"}}}, {"xs", {"a", "b", "c"}}}),
              "hi! HI b,c c");
}

TEST(ChatTemplateLanguage, LoopVariablesAndScoping) {
    EXPECT_EQ(render("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ "
                     "loop.length }} {% endfor %}"),
              "10TrueFalse3 21FalseFalse3 32FalseTrue3 ");
    // A set inside a loop body is gone after the iteration; a namespace attribute is not.
    EXPECT_EQ(render("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for x in [1, 2, 3] %}{% set n = n + x %}"
                     "{% set ns.n = ns.n + x %}{% endfor %}{{ n }} {{ ns.n }}"),
              "0 6");
    EXPECT_EQ(render("{% if true %}{% set kept = 'if bodies share the scope' %}{% endif %}{{ kept }}"),
              "if bodies share the scope");
}

TEST(ChatTemplateLanguage, FiltersTestsAndMethods) {
    EXPECT_EQ(
        render("{{ '  x '|trim }}|{{ 'Ab'|lower }}{{ 'Ab'|upper }}|{{ [1, 2]|length }}|{{ u|default('d') }}|"
               "{{ [1, 2]|first }}{{ [1, 2]|last }}|{{ {'k': [1, 'é']}|tojson }}"),
        "x|abAB|2|d|12|{\"k\": [1, \"é\"]}");
    EXPECT_EQ(
        render(
            "{{ ' a b '.strip() }}|{{ 'ab'.startswith('a') }}{{ 'ab'.endswith('a') }}|{{ 'a,b'.split(',') }}|"
            "{{ d.get('k') }}{{ d.get('z', 0) }}|{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}",
            {{"d", {{"k", 1}}}}),
        "a b|TrueFalse|['a', 'b']|10|k1");
    EXPECT_EQ(
        render("{{ x is none }} {{ x is not none }} {{ 'a' is string }} {{ y is defined }} {{ 3 is odd }}",
               {{"x", nullptr}}),
        "True False True False True");
}

}  // namespace
}  // namespace mslm
