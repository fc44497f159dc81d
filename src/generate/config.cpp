#include "generate/config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace mslm {

using nlohmann::json;

namespace {

// Where a value came from, for error messages: `<source>: 'top_k' must be ...`.
struct Where {
    const std::string& source;
    const std::string& key;
};

[[noreturn]] void wrong(const Where& w, const char* expected, const json& v) {
    fail("{}: '{}' must be {}, got {}", w.source, w.key, expected, v.dump());
}

void read(const json& v, const Where& w, int64_t& out) {
    // nlohmann reports unsigned values above INT64_MAX as integers too.
    if (!v.is_number_integer() ||
        (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))) {
        wrong(w, "an integer", v);
    }
    out = v.get<int64_t>();
}

void read(const json& v, const Where& w, uint64_t& out) {
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) {
        wrong(w, "a non-negative integer", v);
    }
    out = v.get<uint64_t>();
}

// Token ids. Negative ones are read (transformers tolerates pad_token_id = -1); validate()
// refuses them where they would be used.
void read(const json& v, const Where& w, int32_t& out) {
    int64_t x = 0;
    read(v, w, x);
    if (x < INT32_MIN || x > INT32_MAX) wrong(w, "a token id", v);
    out = static_cast<int32_t>(x);
}

void read(const json& v, const Where& w, double& out) {
    if (!v.is_number()) wrong(w, "a number", v);
    out = v.get<double>();
}

void read(const json& v, const Where& w, bool& out) {
    if (!v.is_boolean()) wrong(w, "true or false", v);
    out = v.get<bool>();
}

void read(const json& v, const Where& w, EarlyStopping& out) {
    if (v.is_boolean()) {
        out = v.get<bool>() ? EarlyStopping::NumBeamsDone : EarlyStopping::Heuristic;
    } else if (v == "never") {
        out = EarlyStopping::Never;
    } else {
        wrong(w, "true, false or \"never\"", v);
    }
}

// eos_token_id: one id or a list of ids.
void read(const json& v, const Where& w, std::vector<int32_t>& out) {
    out.clear();
    if (!v.is_array()) {
        out.push_back(0);
        read(v, w, out.back());
        return;
    }
    for (const json& e : v) read(e, w, out.emplace_back());
}

// stop_strings: one string or a list of strings.
void read(const json& v, const Where& w, std::vector<std::string>& out) {
    out.clear();
    if (v.is_string()) {
        out.push_back(v.get<std::string>());
        return;
    }
    if (!v.is_array()) wrong(w, "a string or a list of strings", v);
    for (const json& e : v) {
        if (!e.is_string()) wrong(w, "a string or a list of strings", v);
        out.push_back(e.get<std::string>());
    }
}

void read(const json& v, const Where& w, std::vector<std::vector<int32_t>>& out) {
    out.clear();
    if (!v.is_array()) wrong(w, "a list of lists of token ids", v);
    for (const json& seq : v) {
        if (!seq.is_array()) wrong(w, "a list of lists of token ids", v);
        read(seq, w, out.emplace_back());
    }
}

// A later entry for the same ids replaces the earlier one in its place, as transformers'
// conversion of the sequence_bias list into a dict does.
void set_bias(std::vector<SequenceBias>& biases, SequenceBias b) {
    auto same =
        std::find_if(biases.begin(), biases.end(), [&](const SequenceBias& o) { return o.ids == b.ids; });
    if (same != biases.end()) {
        same->bias = b.bias;
    } else {
        biases.push_back(std::move(b));
    }
}

// sequence_bias: [[ids, bias], ...].
void read(const json& v, const Where& w, std::vector<SequenceBias>& out) {
    out.clear();
    const char* expected = "a list of [[token ids], bias] pairs";
    if (!v.is_array()) wrong(w, expected, v);
    for (const json& e : v) {
        if (!e.is_array() || e.size() != 2 || !e[0].is_array() || !e[1].is_number()) wrong(w, expected, v);
        SequenceBias b;
        read(e[0], w, b.ids);
        b.bias = e[1].get<float>();
        set_bias(out, std::move(b));
    }
}

template <typename T>
void read(const json& v, const Where& w, std::optional<T>& out) {
    T x;
    read(v, w, x);
    out = x;
}

template <typename T>
json write(const T& x) {
    return x;
}

template <typename T>
json write(const std::optional<T>& x) {
    return x ? json(*x) : json();
}

json write(EarlyStopping e) {
    return e == EarlyStopping::Never ? json("never") : json(e == EarlyStopping::NumBeamsDone);
}

json write(const std::vector<SequenceBias>& biases) {
    json out = json::array();
    for (const SequenceBias& b : biases) out.push_back(json::array({b.ids, b.bias}));
    return out;
}

struct Field {
    const char* key;
    std::function<void(GenerationConfig&, const json&, const Where&)> read;
    std::function<json(const GenerationConfig&)> write;  // empty for an alias
};

// null restores the default, as an unset field in transformers.
template <typename T>
Field field(const char* key, T GenerationConfig::*m) {
    return {key,
            [m](GenerationConfig& c, const json& v, const Where& w) {
                T x = GenerationConfig{}.*m;
                if (!v.is_null()) read(v, w, x);
                c.*m = std::move(x);
            },
            [m](const GenerationConfig& c) { return write(c.*m); }};
}

// logit_bias, OpenAI's {"token id": bias}: sets single-token sequence_bias entries (null removes
// them all). Not transformers'; an alias, so to_json writes sequence_bias only.
Field logit_bias_alias() {
    return {"logit_bias",
            [](GenerationConfig& c, const json& v, const Where& w) {
                const char* expected = "an object {\"token id\": bias}";
                if (v.is_null()) {
                    std::erase_if(c.sequence_bias, [](const SequenceBias& b) { return b.ids.size() == 1; });
                    return;
                }
                if (!v.is_object()) wrong(w, expected, v);
                for (auto it = v.begin(); it != v.end(); ++it) {
                    int32_t id = 0;
                    const std::string& key = it.key();
                    const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
                    if (ec != std::errc() || end != key.data() + key.size() || !it->is_number()) {
                        wrong(w, expected, v);
                    }
                    set_bias(c.sequence_bias, {{id}, it->get<float>()});
                }
            },
            {}};
}

const std::vector<Field>& fields() {
    using G = GenerationConfig;
    static const std::vector<Field> all = {
        field("max_new_tokens", &G::max_new_tokens),
        field("max_length", &G::max_length),
        field("min_new_tokens", &G::min_new_tokens),
        field("min_length", &G::min_length),
        field("max_time", &G::max_time),
        field("stop_strings", &G::stop_strings),
        field("do_sample", &G::do_sample),
        field("num_beams", &G::num_beams),
        field("num_return_sequences", &G::num_return_sequences),
        field("length_penalty", &G::length_penalty),
        field("early_stopping", &G::early_stopping),
        field("penalty_alpha", &G::penalty_alpha),
        field("seed", &G::seed),
        field("temperature", &G::temperature),
        field("top_k", &G::top_k),
        field("top_p", &G::top_p),
        field("min_p", &G::min_p),
        field("typical_p", &G::typical_p),
        field("epsilon_cutoff", &G::epsilon_cutoff),
        field("eta_cutoff", &G::eta_cutoff),
        field("repetition_penalty", &G::repetition_penalty),
        field("frequency_penalty", &G::frequency_penalty),
        field("presence_penalty", &G::presence_penalty),
        field("no_repeat_ngram_size", &G::no_repeat_ngram_size),
        field("bad_words_ids", &G::bad_words_ids),
        field("sequence_bias", &G::sequence_bias),
        field("renormalize_logits", &G::renormalize_logits),
        logit_bias_alias(),
        field("eos_token_id", &G::eos_token_id),
        field("pad_token_id", &G::pad_token_id),
        field("bos_token_id", &G::bos_token_id),
    };
    return all;
}

const Field* find_field(const std::string& key) {
    for (const Field& f : fields()) {
        if (key == f.key) return &f;
    }
    return nullptr;
}

// transformers parameters that change the output and that we do not implement, with the value
// that makes each a no-op (null: only unset is).
const std::vector<std::pair<const char*, json>>& unimplemented() {
    static const std::vector<std::pair<const char*, json>> all = {
        {"top_h", nullptr},
        {"guidance_scale", 1.0},
        {"suppress_tokens", nullptr},
        {"begin_suppress_tokens", nullptr},
        {"forced_bos_token_id", nullptr},
        {"forced_eos_token_id", nullptr},
        {"exponential_decay_length_penalty", nullptr},
        {"remove_invalid_values", false},
        {"encoder_repetition_penalty", 1.0},
        {"encoder_no_repeat_ngram_size", 0},
        {"watermarking_config", nullptr},
        {"constraints", nullptr},
        {"force_words_ids", nullptr},
        {"num_beam_groups", 1},
        {"diversity_penalty", 0.0},
        {"dola_layers", nullptr},
        {"token_healing", false},
        {"prompt_lookup_num_tokens", nullptr},
    };
    return all;
}

}  // namespace

GenerationConfig GenerationConfig::from_json(const json& j, const std::string& source,
                                             std::vector<std::string>* ignored) {
    MSLM_CHECK(j.is_object(), "{}: expected a JSON object, got {}", source, j.type_name());
    GenerationConfig c;
    for (const Field& f : fields()) {
        auto it = j.find(f.key);
        if (it != j.end()) f.read(c, *it, Where{source, it.key()});
    }
    if (ignored) {
        ignored->clear();
        for (const auto& [key, no_op] : unimplemented()) {
            auto it = j.find(key);
            if (it != j.end() && !it->is_null() && *it != no_op) ignored->push_back(key);
        }
    }
    try {
        c.validate();
    } catch (const Error& e) {
        fail("{}: {}", source, e.what());
    }
    return c;
}

GenerationConfig GenerationConfig::load(const std::string& path) {
    std::ifstream in(path);
    MSLM_CHECK(in, "{}: cannot open", path);
    std::stringstream text;
    text << in.rdbuf();
    json j = json::parse(text.str(), nullptr, false);
    MSLM_CHECK(!j.is_discarded(), "{}: not valid JSON", path);
    return from_json(j, path);
}

json GenerationConfig::to_json() const {
    json j = json::object();
    for (const Field& f : fields()) {
        if (f.write) j[f.key] = f.write(*this);
    }
    return j;
}

void GenerationConfig::set(const std::string& key, const std::string& value) {
    const Field* f = find_field(key);
    if (!f) {
        for (const auto& u : unimplemented()) {
            MSLM_CHECK(key != u.first,
                       "set: '{}' is a transformers parameter that mamba-slm does not implement", key);
        }
        std::string known;
        for (const Field& k : fields()) known += fmt::format("{}{}", known.empty() ? "" : ", ", k.key);
        fail("set: unknown generation parameter '{}' (known: {})", key, known);
    }
    json v = json::parse(value, nullptr, false);
    if (v.is_discarded()) v = value;
    const std::string source = "set";
    GenerationConfig next = *this;
    f->read(next, v, Where{source, key});
    try {
        next.validate();
    } catch (const Error& e) {
        fail("set: {}", e.what());
    }
    *this = std::move(next);
}

void GenerationConfig::validate() const {
    auto in_range = [](double v, double lo, double hi) { return v >= lo && v <= hi; };  // false for NaN
    MSLM_CHECK(!max_new_tokens || *max_new_tokens > 0, "max_new_tokens = {}: must be positive",
               *max_new_tokens);
    MSLM_CHECK(!max_length || *max_length > 0, "max_length = {}: must be positive", *max_length);
    MSLM_CHECK(!min_new_tokens || *min_new_tokens >= 0, "min_new_tokens = {}: must be >= 0", *min_new_tokens);
    MSLM_CHECK(min_length >= 0, "min_length = {}: must be >= 0", min_length);
    MSLM_CHECK(!max_time || *max_time >= 0, "max_time = {}: must be >= 0 seconds", *max_time);
    for (const std::string& s : stop_strings)
        MSLM_CHECK(!s.empty(), "stop_strings: the empty string would match anywhere");

    MSLM_CHECK(num_beams >= 1, "num_beams = {}: must be >= 1", num_beams);
    MSLM_CHECK(num_return_sequences >= 1, "num_return_sequences = {}: must be >= 1", num_return_sequences);
    MSLM_CHECK(num_return_sequences == 1 || num_beams > 1 || do_sample,
               "num_return_sequences = {}: greedy search returns one sequence (sample or use beams)",
               num_return_sequences);
    MSLM_CHECK(num_beams == 1 || num_return_sequences <= num_beams,
               "num_return_sequences = {}: must be <= num_beams = {}", num_return_sequences, num_beams);
    MSLM_CHECK(std::isfinite(length_penalty), "length_penalty = {}: must be finite", length_penalty);
    MSLM_CHECK(!penalty_alpha || in_range(*penalty_alpha, 0, 1), "penalty_alpha = {}: must be in [0, 1]",
               *penalty_alpha);

    MSLM_CHECK(std::isfinite(temperature) && temperature >= 0, "temperature = {}: must be >= 0", temperature);
    MSLM_CHECK(!do_sample || temperature > 0,
               "temperature = 0 with do_sample = true: must be positive (for greedy decoding set do_sample = "
               "false)");
    MSLM_CHECK(top_k >= 0, "top_k = {}: must be >= 0 (0 disables it)", top_k);
    MSLM_CHECK(in_range(top_p, 0, 1), "top_p = {}: must be in [0, 1]", top_p);
    MSLM_CHECK(!min_p || in_range(*min_p, 0, 1), "min_p = {}: must be in [0, 1]", *min_p);
    MSLM_CHECK(typical_p > 0 && typical_p <= 1, "typical_p = {}: must be in (0, 1]", typical_p);
    MSLM_CHECK(epsilon_cutoff >= 0 && epsilon_cutoff < 1, "epsilon_cutoff = {}: must be in [0, 1)",
               epsilon_cutoff);
    MSLM_CHECK(eta_cutoff >= 0 && eta_cutoff < 1, "eta_cutoff = {}: must be in [0, 1)", eta_cutoff);

    MSLM_CHECK(repetition_penalty > 0 && std::isfinite(repetition_penalty),
               "repetition_penalty = {}: must be positive", repetition_penalty);
    MSLM_CHECK(std::isfinite(frequency_penalty), "frequency_penalty = {}: must be finite", frequency_penalty);
    MSLM_CHECK(std::isfinite(presence_penalty), "presence_penalty = {}: must be finite", presence_penalty);
    MSLM_CHECK(no_repeat_ngram_size >= 0, "no_repeat_ngram_size = {}: must be >= 0", no_repeat_ngram_size);
    auto valid_ids = [](const std::vector<int32_t>& ids) {
        return std::all_of(ids.begin(), ids.end(), [](int32_t id) { return id >= 0; });
    };
    for (const auto& w : bad_words_ids) {
        MSLM_CHECK(!w.empty() && valid_ids(w),
                   "bad_words_ids: every entry must be a non-empty list of token ids");
    }
    for (const SequenceBias& b : sequence_bias) {
        MSLM_CHECK(!b.ids.empty() && valid_ids(b.ids) && !std::isnan(b.bias),
                   "sequence_bias: every entry must be a non-empty list of token ids and a number");
    }
    MSLM_CHECK(valid_ids(eos_token_id), "eos_token_id: token ids must be >= 0");
}

int64_t GenerationConfig::max_new_tokens_for(int64_t prompt_len) const {
    if (max_new_tokens) return *max_new_tokens;
    if (!max_length) return 20;
    MSLM_CHECK(
        *max_length > prompt_len,
        "the prompt has {} tokens, which leaves no room under max_length = {} (set max_new_tokens instead)",
        prompt_len, *max_length);
    return *max_length - prompt_len;
}

int64_t GenerationConfig::min_new_tokens_for(int64_t prompt_len) const {
    if (min_new_tokens) return *min_new_tokens;
    return std::max<int64_t>(0, min_length - prompt_len);
}

}  // namespace mslm
