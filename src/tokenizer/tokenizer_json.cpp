// tokenizer.json in (build_tokenizer) and out (Impl::to_json).
#include <openssl/evp.h>

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace mslm {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

std::string type_of(const json& j) {
    return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>()
                                                                        : j.dump();
}

// An integer field, read without undefined behaviour: nlohmann's get<int>() converts any number,
// and an out-of-range float is UB (the fuzzer found an id of 1.9e30). Throws json::type_error so
// the caller's handler names the file.
template <typename I>
I integer(const json& j) {
    if (!j.is_number_integer())
        throw json::type_error::create(302, "expected an integer, got " + j.dump(), &j);
    if (j.is_number_unsigned()) {
        const auto v = j.get<uint64_t>();
        if (v > static_cast<uint64_t>(std::numeric_limits<I>::max()))
            throw json::out_of_range::create(406, "integer " + j.dump() + " out of range", &j);
        return static_cast<I>(v);
    }
    const auto v = j.get<int64_t>();
    if (v < static_cast<int64_t>(std::numeric_limits<I>::min()) || v > static_cast<int64_t>(std::numeric_limits<I>::max()))
        throw json::out_of_range::create(406, "integer " + j.dump() + " out of range", &j);
    return static_cast<I>(v);
}

std::string escape_regex_literal(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (std::string_view("\\^$.|?*+()[]{}-/#").find(c) != std::string_view::npos) out += '\\';
        out += c;
    }
    return out;
}

struct Builder {
    const std::string& source;
    Tokenizer::Impl& t;

    void normalizer(const json& j) {
        if (j.is_null()) return;
        std::string type = type_of(j);
        if (type == "NFC") {
            t.nfc = true;
        } else if (type == "Sequence") {
            for (const auto& n : j.at("normalizers")) normalizer(n);
        } else {
            fail("{}: unsupported normalizer '{}' (supported: NFC, Sequence)", source, type);
        }
    }

    void pre_tokenizer(const json& j) {
        if (j.is_null()) return;
        std::string type = type_of(j);
        if (type == "Sequence") {
            for (const auto& p : j.at("pretokenizers")) pre_tokenizer(p);
            return;
        }
        MSLM_CHECK(
            t.pre_tokenizers.empty() || t.pre_tokenizers.back().kind != PreTokenizerStep::Kind::ByteLevel,
            "{}: unsupported pre_tokenizer: '{}' after ByteLevel (ByteLevel must come last)", source, type);
        PreTokenizerStep step{};
        if (type == "ByteLevel") {
            step.kind = PreTokenizerStep::Kind::ByteLevel;
            step.add_prefix_space = j.value("add_prefix_space", true);
            if (j.value("use_regex", true)) step.regex = std::make_shared<RegexSplitter>(kGpt2Pattern);
        } else if (type == "Split") {
            step.kind = PreTokenizerStep::Kind::Split;
            std::string behavior = j.at("behavior").get<std::string>();
            MSLM_CHECK(behavior == "Isolated",
                       "{}: unsupported pre_tokenizer Split behavior '{}' (supported: Isolated)", source,
                       behavior);
            MSLM_CHECK(!j.value("invert", false), "{}: unsupported pre_tokenizer Split with invert: true",
                       source);
            const json& pattern = j.at("pattern");
            std::string regex;
            if (pattern.contains("Regex"))
                regex = pattern["Regex"].get<std::string>();
            else if (pattern.contains("String"))
                regex = escape_regex_literal(pattern["String"].get<std::string>());
            else
                fail("{}: pre_tokenizer Split: pattern must be {{\"Regex\": ...}} or {{\"String\": ...}}",
                     source);
            try {
                step.regex = std::make_shared<RegexSplitter>(regex);
            } catch (const Error& e) {
                fail("{}: pre_tokenizer Split: {}", source, e.what());
            }
        } else {
            fail("{}: unsupported pre_tokenizer '{}' (supported: ByteLevel, Split, Sequence)", source, type);
        }
        t.pre_tokenizers.push_back(std::move(step));
    }

    void decoder(const json& j) {
        if (j.is_null()) return;
        t.has_decoder = true;
        std::string type = type_of(j);
        DecoderStep d{};
        if (type == "Sequence") {
            for (const auto& x : j.at("decoders")) decoder(x);
            return;
        } else if (type == "ByteLevel") {
            d.kind = DecoderStep::Kind::ByteLevel;
        } else if (type == "ByteFallback") {
            d.kind = DecoderStep::Kind::ByteFallback;
        } else if (type == "Fuse") {
            d.kind = DecoderStep::Kind::Fuse;
        } else if (type == "Strip") {
            d.kind = DecoderStep::Kind::Strip;
            d.content = j.at("content").get<std::string>();
            d.start = integer<int>(j.at("start"));
            d.stop = integer<int>(j.at("stop"));
        } else if (type == "Replace") {
            d.kind = DecoderStep::Kind::Replace;
            const json& pattern = j.at("pattern");
            MSLM_CHECK(pattern.contains("String"), "{}: unsupported decoder Replace with a Regex pattern",
                       source);
            d.pattern = pattern["String"].get<std::string>();
            d.content = j.at("content").get<std::string>();
            MSLM_CHECK(!d.pattern.empty(), "{}: decoder Replace: empty pattern", source);
        } else {
            fail(
                "{}: unsupported decoder '{}' (supported: ByteLevel, ByteFallback, Fuse, Strip, Replace, "
                "Sequence)",
                source, type);
        }
        t.decoders.push_back(std::move(d));
    }

    int32_t id_of(const std::string& token) const {
        auto it = t.added_by_content.find(token);
        if (it != t.added_by_content.end()) return it->second;
        int32_t id = t.model->token_to_id(token);
        MSLM_CHECK(id >= 0, "{}: post_processor: token '{}' is not in the vocabulary", source, token);
        return id;
    }

    void post_processor(const json& j) {
        if (j.is_null()) return;
        std::string type = type_of(j);
        PostProcessorStep p{};
        if (type == "Sequence") {
            for (const auto& x : j.at("processors")) post_processor(x);
            return;
        } else if (type == "ByteLevel") {
            p.kind = PostProcessorStep::Kind::ByteLevel;
        } else if (type == "BertProcessing" || type == "RobertaProcessing") {
            p.kind = PostProcessorStep::Kind::Wrap;
            p.before.push_back(integer<int32_t>(j.at("cls").at(1)));
            p.after.push_back(integer<int32_t>(j.at("sep").at(1)));
        } else if (type == "TemplateProcessing") {
            p.kind = PostProcessorStep::Kind::Template;
            const json& specials = j.at("special_tokens");
            for (const auto& item : j.at("single")) {
                PostProcessorStep::Item it;
                if (item.contains("Sequence")) {
                    std::string which = item["Sequence"].at("id").get<std::string>();
                    MSLM_CHECK(which == "A", "{}: post_processor: single template uses sequence '{}'", source,
                               which);
                    it.is_sequence = true;
                } else {
                    std::string name = item.at("SpecialToken").at("id").get<std::string>();
                    MSLM_CHECK(specials.contains(name), "{}: post_processor: special token '{}' has no entry",
                               source, name);
                    it.ids = specials[name].at("ids").get<std::vector<int32_t>>();
                }
                p.items.push_back(std::move(it));
            }
        } else {
            fail(
                "{}: unsupported post_processor '{}' (supported: TemplateProcessing, ByteLevel, "
                "BertProcessing, "
                "RobertaProcessing, Sequence)",
                source, type);
        }
        t.post_processors.push_back(std::move(p));
    }

    std::optional<std::string> optional_string(const json& m, const char* key) const {
        if (!m.contains(key) || m[key].is_null()) return std::nullopt;
        return m[key].get<std::string>();
    }

    void model(const json& m) {
        MSLM_CHECK(m.is_object(), "{}: 'model' is missing or not an object", source);
        std::string type =
            m.contains("type") ? m["type"].get<std::string>() : (m.contains("merges") ? "BPE" : "?");
        MSLM_CHECK(type == "BPE", "{}: unsupported model type '{}' (only BPE is supported)", source, type);
        if (m.contains("dropout") && !m["dropout"].is_null())
            MSLM_CHECK(m["dropout"].get<double>() == 0.0,
                       "{}: BPE dropout {} is not supported (encoding must be deterministic; use null)",
                       source, m["dropout"].get<double>());
        BpeOptions o;
        o.unk_token = optional_string(m, "unk_token");
        o.continuing_subword_prefix = optional_string(m, "continuing_subword_prefix");
        o.end_of_word_suffix = optional_string(m, "end_of_word_suffix");
        o.fuse_unk = m.value("fuse_unk", false);
        o.byte_fallback = m.value("byte_fallback", false);
        o.ignore_merges = m.value("ignore_merges", false);

        BpeModel::Vocab vocab;
        const json& v = m.at("vocab");
        MSLM_CHECK(v.is_object(), "{}: model.vocab must be an object", source);
        vocab.reserve(v.size());
        for (const auto& [token, id] : v.items()) vocab.emplace(token, integer<int32_t>(id));

        BpeModel::Merges merges;
        const json& ms = m.at("merges");
        MSLM_CHECK(ms.is_array(), "{}: model.merges must be an array", source);
        merges.reserve(ms.size());
        for (size_t i = 0; i < ms.size(); ++i) {
            const json& x = ms[i];
            if (x.is_string()) {  // legacy "a b": exactly one space
                const std::string& s = x.get_ref<const std::string&>();
                size_t sp = s.find(' ');
                MSLM_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                           "{}: merge {} '{}' is not two tokens separated by one space", source, i, s);
                merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
            } else {
                MSLM_CHECK(x.is_array() && x.size() == 2, "{}: merge {} must be a pair of strings or \"a b\"",
                           source, i);
                merges.emplace_back(x[0].get<std::string>(), x[1].get<std::string>());
            }
        }
        bool byte_level =
            !t.pre_tokenizers.empty() && t.pre_tokenizers.back().kind == PreTokenizerStep::Kind::ByteLevel;
        t.model =
            std::make_unique<BpeModel>(std::move(vocab), std::move(merges), std::move(o), byte_level, source);
    }

    void added_tokens(const json& a) {
        if (a.is_null()) return;
        MSLM_CHECK(a.is_array(), "{}: added_tokens must be an array", source);
        for (const auto& x : a) {
            AddedToken tok;
            tok.id = integer<int32_t>(x.at("id"));
            tok.content = x.at("content").get<std::string>();
            tok.single_word = x.value("single_word", false);
            tok.lstrip = x.value("lstrip", false);
            tok.rstrip = x.value("rstrip", false);
            tok.normalized = x.value("normalized", true);
            tok.special = x.value("special", false);
            MSLM_CHECK(tok.id >= 0, "{}: added token '{}' has negative id {}", source, tok.content, tok.id);
            size_t index = t.added.size();
            t.added_by_content[tok.content] = tok.id;
            t.added_by_id[tok.id] = index;
            if (tok.special) t.special_contents.insert(tok.content);
            t.added.push_back(std::move(tok));
        }
    }

    // Special tokens first, then the others, as HF orders its matchers (it only matters when two
    // entries share one content). Tokens with normalized=true match the normalized text, so their
    // patterns are normalized too.
    void build_matchers() {
        for (int pass = 0; pass < 2; ++pass)
            for (size_t i = 0; i < t.added.size(); ++i) {
                const AddedToken& tok = t.added[i];
                if (tok.special != (pass == 0)) continue;
                if (!tok.normalized)
                    t.raw_matcher.add(tok.content, static_cast<int32_t>(i));
                else
                    t.normalized_matcher.add(t.nfc ? nfc_normalize(tok.content) : tok.content,
                                             static_cast<int32_t>(i));
            }
    }
};

}  // namespace

std::string sha256_hex(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    MSLM_CHECK(EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) == 1, "SHA-256 failed");
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
        out += hex[md[i] >> 4];
        out += hex[md[i] & 15];
    }
    return out;
}

std::shared_ptr<Tokenizer::Impl> build_tokenizer(const json& j, const std::string& source) {
    auto t = std::make_shared<Tokenizer::Impl>();
    t->source = source;
    Builder b{source, *t};
    try {
        MSLM_CHECK(j.is_object(), "{}: not a tokenizer.json (top level is not an object)", source);
        MSLM_CHECK(j.contains("model"), "{}: not a tokenizer.json (no 'model')", source);
        auto get = [&](const char* key) { return j.contains(key) ? j[key] : json(); };
        t->truncation = get("truncation");
        t->padding = get("padding");
        t->normalizer_json = get("normalizer");
        t->pre_tokenizer_json = get("pre_tokenizer");
        t->post_processor_json = get("post_processor");
        t->decoder_json = get("decoder");
        b.normalizer(t->normalizer_json);
        b.pre_tokenizer(t->pre_tokenizer_json);
        b.model(j["model"]);
        b.added_tokens(get("added_tokens"));
        b.build_matchers();
        b.decoder(t->decoder_json);
        b.post_processor(t->post_processor_json);
    } catch (const json::exception& e) {
        fail("{}: invalid tokenizer.json: {}", source, e.what());
    }
    t->byte_level_decoder = t->decoders.size() == 1 && t->decoders[0].kind == DecoderStep::Kind::ByteLevel;

    t->vocab_size = t->model->id_bound();
    for (const auto& a : t->added) t->vocab_size = std::max<int64_t>(t->vocab_size, int64_t{a.id} + 1);
    for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"}) {
        auto it = t->added_by_content.find(std::string_view(name));
        if (it != t->added_by_content.end() && t->is_special(name)) {
            t->default_eot = it->second;
            break;
        }
    }
    t->canonical = t->to_json(-1);
    t->sha256 = sha256_hex(t->canonical);
    return t;
}

std::string Tokenizer::Impl::to_json(int indent) const {
    auto ordered = [](const json& x) { return ordered_json::parse(x.dump()); };
    ordered_json j;
    j["version"] = "1.0";
    j["truncation"] = ordered(truncation);
    j["padding"] = ordered(padding);
    j["added_tokens"] = ordered_json::array();
    for (const auto& a : added) {
        ordered_json x;
        x["id"] = a.id;
        x["content"] = a.content;
        x["single_word"] = a.single_word;
        x["lstrip"] = a.lstrip;
        x["rstrip"] = a.rstrip;
        x["normalized"] = a.normalized;
        x["special"] = a.special;
        j["added_tokens"].push_back(std::move(x));
    }
    j["normalizer"] = ordered(normalizer_json);
    j["pre_tokenizer"] = ordered(pre_tokenizer_json);
    j["post_processor"] = ordered(post_processor_json);
    j["decoder"] = ordered(decoder_json);

    const BpeOptions& o = model->options();
    auto opt = [](const std::optional<std::string>& s) { return s ? ordered_json(*s) : ordered_json(); };
    ordered_json m;
    m["type"] = "BPE";
    m["dropout"] = nullptr;
    m["unk_token"] = opt(o.unk_token);
    m["continuing_subword_prefix"] = opt(o.continuing_subword_prefix);
    m["end_of_word_suffix"] = opt(o.end_of_word_suffix);
    m["fuse_unk"] = o.fuse_unk;
    m["byte_fallback"] = o.byte_fallback;
    m["ignore_merges"] = o.ignore_merges;
    // Vocab in id order. Entries go straight into ordered_map's vector: its own insert searches
    // the keys linearly, which is quadratic for a 100k-token vocabulary (keys are unique here).
    std::vector<std::pair<int32_t, const std::string*>> by_id;
    by_id.reserve(model->vocab().size());
    for (const auto& [token, id] : model->vocab()) by_id.emplace_back(id, &token);
    std::sort(by_id.begin(), by_id.end(), [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first < b.first : *a.second < *b.second;
    });
    ordered_json vocab = ordered_json::object();
    auto& entries = vocab.get_ref<ordered_json::object_t&>();
    entries.reserve(by_id.size());
    for (const auto& [id, token] : by_id) entries.emplace_back(*token, id);
    m["vocab"] = std::move(vocab);
    ordered_json merges = ordered_json::array();
    for (const auto& [a, b] : model->merges()) merges.push_back(ordered_json::array({a, b}));
    m["merges"] = std::move(merges);
    j["model"] = std::move(m);
    return j.dump(indent);
}

}  // namespace mslm
