// Tokenizer: parity with HF tokenizers (recorded fixtures, and live when python3 has
// `tokenizers`), round trips, streaming decode, error messages, the byte-level map.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/trainer.h"
#include "core/utf8.h"

namespace mslm {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* const kCorpora[] = {"tinyshakespeare.txt", "wikitext2-test.txt", "wikitext2-valid.txt",
                                "edge_cases.txt"};
const char* const kTokenizers[] = {"gpt2", "llama3"};

std::string data_dir() {
    if (const char* env = std::getenv("MSLM_DATA_DIR")) return env;
    return MSLM_DATA_DIR;
}
std::string fixture_dir() {
    return std::string(MSLM_FIXTURE_DIR) + "/tokenizers";
}
std::string script() {
    return std::string(MSLM_FIXTURE_DIR) + "/../make_tokenizer_fixtures.py";
}
std::string tokenizer_path(const std::string& name) {
    return fixture_dir() + "/" + name + ".json";
}
std::string corpus_path(const std::string& corpus) {
    return corpus == "edge_cases.txt" ? fixture_dir() + "/" + corpus : data_dir() + "/" + corpus;
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error("cannot open " + path + " (set MSLM_DATA_DIR to the folder with the corpora)");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write_file(const std::string& path, std::string_view data) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::string temp_path(const std::string& name) {
    return (fs::temp_directory_path() / ("mslm_tok_" + std::to_string(getpid()) + "_" + name)).string();
}

std::string ids_sha256(const std::vector<int32_t>& ids) {
    std::string bytes;
    for (int32_t id : ids)
        for (int k = 0; k < 4; ++k)
            bytes.push_back(static_cast<char>(static_cast<uint32_t>(id) >> (8 * k) & 0xFF));
    return sha256_hex(bytes);
}

const Tokenizer& fixture(const std::string& name) {
    static std::map<std::string, Tokenizer> cache;
    auto it = cache.find(name);
    if (it == cache.end()) it = cache.emplace(name, Tokenizer::load(tokenizer_path(name))).first;
    return it->second;
}

const json& expected() {
    static const json j = json::parse(read_file(fixture_dir() + "/expected.json"));
    return j;
}

bool have_hf() {
    static const bool ok = std::system("python3 -c 'import tokenizers' >/dev/null 2>&1") == 0;
    return ok;
}

// HF's ids for the file `input` (read as bytes, decoded with errors='replace').
std::vector<int32_t> hf_encode(const std::string& tokenizer, const std::string& input, bool special = false) {
    std::string out = temp_path("hf_ids.bin");
    std::string cmd = "python3 '" + script() + "' encode '" + tokenizer + "' '" + input + "' '" + out + "'" +
                      (special ? " --special" : "");
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::string bytes = read_file(out);
    fs::remove(out);
    std::vector<int32_t> ids(bytes.size() / 4);
    for (size_t i = 0; i < ids.size(); ++i) {
        uint32_t v = 0;
        for (int k = 0; k < 4; ++k)
            v |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[4 * i + k])) << (8 * k);
        ids[i] = static_cast<int32_t>(v);
    }
    return ids;
}

// Describes the first position where two id sequences differ, with the tokens around it.
std::string first_difference(const Tokenizer& tok, const std::vector<int32_t>& ours,
                             const std::vector<int32_t>& hf) {
    size_t n = std::min(ours.size(), hf.size()), i = 0;
    while (i < n && ours[i] == hf[i]) ++i;
    if (i == n && ours.size() == hf.size()) return "identical";
    auto show = [&](const std::vector<int32_t>& ids) {
        std::string s;
        for (size_t k = i >= 8 ? i - 8 : 0; k < std::min(ids.size(), i + 8); ++k) {
            auto t = tok.id_to_token(ids[k]);
            s += (k == i ? " >>" : " ") + std::to_string(ids[k]) + ":'" + std::string(t ? *t : "?") + "'";
        }
        return s;
    };
    return "first difference at id " + std::to_string(i) + " (ours " + std::to_string(ours.size()) +
           " ids, HF " + std::to_string(hf.size()) + ")\n  ours:" + show(ours) + "\n  HF:  " + show(hf);
}

// Encodes each text with ours and HF's (one python run for all), compares ids and decodes.
void expect_same_as_hf(const std::string& tokenizer_file, const Tokenizer& tok,
                       const std::vector<std::string>& texts) {
    std::string in = temp_path("hf_texts.json"), out = temp_path("hf_results.json");
    write_file(in, json(texts).dump());
    std::string cmd = "python3 '" + script() + "' batch '" + tokenizer_file + "' '" + in + "' '" + out + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    json results = json::parse(read_file(out));
    fs::remove(in);
    fs::remove(out);
    ASSERT_EQ(results.size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
        SCOPED_TRACE("text: " + texts[i].substr(0, 200));
        auto hf = results[i]["ids"].get<std::vector<int32_t>>();
        std::vector<int32_t> ours = tok.encode(texts[i]);
        EXPECT_EQ(ours, hf) << first_difference(tok, ours, hf);
        EXPECT_EQ(tok.encode(texts[i], true), results[i]["ids_special"].get<std::vector<int32_t>>());
        EXPECT_EQ(tok.decode(ours), results[i]["decoded"].get<std::string>());
        EXPECT_EQ(tok.decode(ours, true), results[i]["decoded_skip"].get<std::string>());
    }
}

// ---- parity ---------------------------------------------------------------------------------

TEST(TokenizerParity, MatchesRecordedHFEncodings) {
    for (const char* name : kTokenizers) {
        const Tokenizer& tok = fixture(name);
        for (const char* corpus : kCorpora) {
            SCOPED_TRACE(std::string(name) + " x " + corpus);
            const json& e = expected()[name][corpus];
            std::vector<int32_t> ids = tok.encode(read_file(corpus_path(corpus)));
            auto first = e["first"].get<std::vector<int32_t>>();
            EXPECT_EQ(static_cast<int64_t>(ids.size()), e["count"].get<int64_t>());
            EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + std::min(ids.size(), first.size())),
                      first);
            EXPECT_EQ(ids_sha256(ids), e["sha256"].get<std::string>());
        }
    }
}

TEST(TokenizerParity, MatchesRecordedHFDecodeAndSpecials) {
    std::string text = read_file(corpus_path("edge_cases.txt"));
    for (const char* name : kTokenizers) {
        SCOPED_TRACE(name);
        const Tokenizer& tok = fixture(name);
        const json& e = expected()[name]["edge_cases.txt"];
        std::string decoded = tok.decode(tok.encode(text));
        EXPECT_EQ(decoded.size(), e["decoded_bytes"].get<size_t>());
        EXPECT_EQ(sha256_hex(decoded), e["decoded_sha256"].get<std::string>());
        std::vector<int32_t> with_special = tok.encode(text, true);
        auto first = e["with_special_first"].get<std::vector<int32_t>>();
        with_special.resize(std::min(with_special.size(), first.size()));
        EXPECT_EQ(with_special, first);
    }
    EXPECT_EQ(fixture("llama3").encode("hi", true).front(),
              fixture("llama3").token_to_id("<|begin_of_text|>"));
}

TEST(TokenizerParity, LiveAgainstHF) {
    if (!have_hf()) GTEST_SKIP() << "python3 with `tokenizers` is not importable: live comparison skipped";
    for (const char* name : kTokenizers) {
        const Tokenizer& tok = fixture(name);
        for (const char* corpus : kCorpora) {
            SCOPED_TRACE(std::string(name) + " x " + corpus);
            std::vector<int32_t> hf = hf_encode(tokenizer_path(name), corpus_path(corpus));
            std::vector<int32_t> ours = tok.encode(read_file(corpus_path(corpus)));
            EXPECT_TRUE(ours == hf) << first_difference(tok, ours, hf);
        }
    }
}

// Added-token options (lstrip, rstrip, single_word, normalized, non-special) against HF.
TEST(TokenizerParity, AddedTokenOptionsLive) {
    if (!have_hf()) GTEST_SKIP() << "python3 with `tokenizers` is not importable: live comparison skipped";
    for (const char* name : kTokenizers) {
        SCOPED_TRACE(name);
        json j = json::parse(read_file(tokenizer_path(name)));
        int32_t next = static_cast<int32_t>(fixture(name).vocab_size());
        auto add = [&](const std::string& content, bool lstrip, bool rstrip, bool single_word,
                       bool normalized, bool special) {
            j["added_tokens"].push_back({{"id", next++},
                                         {"content", content},
                                         {"single_word", single_word},
                                         {"lstrip", lstrip},
                                         {"rstrip", rstrip},
                                         {"normalized", normalized},
                                         {"special", special}});
        };
        add("<mask>", true, false, false, false, true);
        add("[SEP]", false, true, false, false, true);
        add("word", false, false, true, false, false);
        add("caf\u00e9", false, false, false, true, false);       // matches decomposed input once NFC'd
        add("<|endoftext|>x", false, false, false, false, true);  // longest match wins over <|endoftext|>
        add("\u00e9t\u00e9", false, false, false, true, false);
        std::string path = temp_path(std::string(name) + "_added.json");
        write_file(path, j.dump());
        Tokenizer tok = Tokenizer::load(path);
        std::string edge;
        utf8::append_lossy(read_file(corpus_path("edge_cases.txt")), edge);
        expect_same_as_hf(
            path, tok,
            {"a  <mask> b", "<mask>", "x\t\n <mask>[SEP]  \n y", "word words sword word_ word. 1word",
             "cafe\u0301 caf\u00e9!", "<|endoftext|>x <|endoftext|>y", "\u00e9t\u00e9 e\u0301te\u0301",
             "  [SEP]<mask>  <mask>  ", "\u3000<mask>\u00a0[SEP]\u2028", edge});
        fs::remove(path);
    }
}

// Pre-tokenizer, decoder and post-processor settings the fixtures do not use, against HF.
TEST(TokenizerParity, PipelineVariantsLive) {
    if (!have_hf()) GTEST_SKIP() << "python3 with `tokenizers` is not importable: live comparison skipped";
    std::string edge;
    utf8::append_lossy(read_file(corpus_path("edge_cases.txt")), edge);
    const std::vector<std::string> texts = {
        "Hello world", " leading space", "a  b\n\nc", "x<|endoftext|>y z", edge, ""};
    json gpt2 = json::parse(read_file(tokenizer_path("gpt2")));
    json llama3 = json::parse(read_file(tokenizer_path("llama3")));
    std::vector<json> variants;
    json j = gpt2;
    j["pre_tokenizer"]["add_prefix_space"] = true;
    j["post_processor"] = {{"type", "RobertaProcessing"},
                           {"sep", {"<|endoftext|>", 0}},
                           {"cls", {"\u0120the", 261}},
                           {"trim_offsets", true},
                           {"add_prefix_space", true}};
    variants.push_back(j);
    j = llama3;
    j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
    j["decoder"] = nullptr;  // tokens joined with spaces
    j["post_processor"] = {
        {"type", "BertProcessing"}, {"sep", {"<|end_of_text|>", 1}}, {"cls", {"<|begin_of_text|>", 0}}};
    variants.push_back(j);
    j = llama3;
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}})}};
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", json::array({{{"type", "Split"},
                                                          {"pattern", {{"String", " "}}},
                                                          {"behavior", "Isolated"},
                                                          {"invert", false}},
                                                         {{"type", "ByteLevel"},
                                                          {"add_prefix_space", false},
                                                          {"trim_offsets", true},
                                                          {"use_regex", false}}})}};
    variants.push_back(j);
    j = gpt2;
    j["pre_tokenizer"]["use_regex"] = false;  // whole texts are single words: long merges, no cache
    j["post_processor"] = {{"type", "Sequence"},
                           {"processors", json::array({gpt2["post_processor"], llama3["post_processor"]})}};
    variants.push_back(j);
    for (size_t v = 0; v < variants.size(); ++v) {
        SCOPED_TRACE("variant " + std::to_string(v));
        std::string path = temp_path("variant.json");
        write_file(path, variants[v].dump());
        expect_same_as_hf(path, Tokenizer::load(path), texts);
        fs::remove(path);
    }
}

// A character-level BPE (no byte-level): unk, fuse_unk, byte fallback, prefix/suffix,
// ignore_merges, and the ByteFallback/Fuse/Strip/Replace decoders, against HF.
TEST(TokenizerParity, CharLevelModelOptionsLive) {
    if (!have_hf()) GTEST_SKIP() << "python3 with `tokenizers` is not importable: live comparison skipped";
    json vocab = {{"<unk>", 0},   {"a", 1},      {"b", 2},       {"c", 3},      {"ab", 4},
                  {"abc", 5},     {"\u2581", 6}, {"\u2581a", 7}, {"<0x78>", 8}, {"<0xC3>", 9},
                  {"<0xA9>", 10}, {"ca", 11},    {"cab", 12},    {"bb", 13}};
    json merges =
        json::array({json::array({"a", "b"}), json::array({"ab", "c"}), json::array({"\u2581", "a"}),
                     json::array({"c", "a"}), json::array({"ca", "b"})});
    for (int variant = 0; variant < 4; ++variant) {
        SCOPED_TRACE(variant);
        json model = {{"type", "BPE"},
                      {"dropout", nullptr},
                      {"unk_token", "<unk>"},
                      {"continuing_subword_prefix", nullptr},
                      {"end_of_word_suffix", nullptr},
                      {"fuse_unk", variant == 1},
                      {"byte_fallback", variant >= 2},
                      {"ignore_merges", variant == 3},
                      {"vocab", vocab},
                      {"merges", merges}};
        json decoder = {
            {"type", "Sequence"},
            {"decoders",
             json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                          {{"type", "ByteFallback"}},
                          {{"type", "Fuse"}},
                          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
        json j = {{"version", "1.0"},
                  {"truncation", nullptr},
                  {"padding", nullptr},
                  {"added_tokens", json::array()},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", nullptr},
                  {"post_processor", nullptr},
                  {"decoder", decoder},
                  {"model", model}};
        std::string path = temp_path("charlevel.json");
        write_file(path, j.dump());
        Tokenizer tok = Tokenizer::load(path);
        expect_same_as_hf(path, tok,
                          {"abcab", "xxabzzc", "\u2581a\u2581abc", "cab\u00e9x", "zzz", "", "bbb",
                           "\u00e9\u00e9z", "x\u00e9"});
        fs::remove(path);
    }
}

// ---- round trips ----------------------------------------------------------------------------

TEST(TokenizerRoundTrip, DecodeEncodeIsIdentityOnValidText) {
    std::string shakespeare = read_file(corpus_path("tinyshakespeare.txt"));
    std::string edge = read_file(corpus_path("edge_cases.txt"));
    std::string valid;
    utf8::append_lossy(edge, valid);
    for (const char* name : kTokenizers) {
        SCOPED_TRACE(name);
        const Tokenizer& tok = fixture(name);
        EXPECT_EQ(tok.decode(tok.encode(shakespeare)), shakespeare);
        std::string expect = std::string(name) == "llama3" ? nfc_normalize(valid) : valid;
        EXPECT_EQ(tok.decode(tok.encode(valid)), expect);
        EXPECT_EQ(tok.decode(tok.encode(edge)), expect) << "invalid bytes must decode as U+FFFD";
    }
}

TEST(TokenizerRoundTrip, SaveLoadKeepsEncodingsAndHFLoadsIt) {
    std::string text = read_file(corpus_path("edge_cases.txt")) +
                       read_file(corpus_path("wikitext2-valid.txt")).substr(0, 100000);
    for (const char* name : kTokenizers) {
        SCOPED_TRACE(name);
        const Tokenizer& tok = fixture(name);
        std::string path = temp_path(std::string(name) + "_saved.json");
        tok.save(path);
        Tokenizer again = Tokenizer::load(path);
        EXPECT_EQ(again.encode(text), tok.encode(text));
        EXPECT_EQ(again.to_json(), tok.to_json());
        EXPECT_EQ(again.fingerprint(), tok.fingerprint());
        EXPECT_EQ(again.vocab_size(), tok.vocab_size());
        EXPECT_EQ(again.eot_id(), tok.eot_id());
        if (have_hf()) {
            std::string in = temp_path("saved_text.txt");
            write_file(in, text);
            EXPECT_EQ(hf_encode(path, in), tok.encode(text)) << "HF reading our saved file";
            fs::remove(in);
        }
        fs::remove(path);
    }
}

TEST(TokenizerRoundTrip, LegacyMergeStringsLoadIdentically) {
    json j = json::parse(read_file(tokenizer_path("gpt2")));
    for (auto& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
    Tokenizer legacy = Tokenizer::from_json(j.dump(), "legacy.json");
    const Tokenizer& tok = fixture("gpt2");
    std::string text = read_file(corpus_path("wikitext2-valid.txt")).substr(0, 200000);
    EXPECT_EQ(legacy.encode(text), tok.encode(text));
    EXPECT_EQ(legacy.fingerprint(), tok.fingerprint());
}

TEST(TokenizerRoundTrip, BatchEqualsSequential) {
    std::string text = read_file(corpus_path("wikitext2-valid.txt"));
    std::vector<std::string_view> lines;
    for (size_t i = 0, j; i < text.size(); i = j) {
        j = text.find('\n', i);
        j = j == std::string::npos ? text.size() : j + 1;
        lines.push_back(std::string_view(text).substr(i, j - i));
    }
    for (const char* name : kTokenizers) {
        const Tokenizer& tok = fixture(name);
        auto batch = tok.encode_batch(lines);
        ASSERT_EQ(batch.size(), lines.size());
        for (size_t i = 0; i < lines.size(); ++i)
            ASSERT_EQ(batch[i], tok.encode(lines[i])) << name << " line " << i;
    }
}

// ---- streaming decode -----------------------------------------------------------------------

void check_stream(const Tokenizer& tok, const std::vector<int32_t>& ids) {
    for (size_t k = 0; k <= ids.size(); ++k) {
        StreamDecoder dec(tok);
        std::string all;
        for (size_t i = 0; i < k; ++i) {
            std::string piece = dec.push(ids[i]);
            ASSERT_TRUE(utf8::is_valid(piece)) << "prefix " << k << " id " << i;
            all += piece;
        }
        std::string tail = dec.flush();
        ASSERT_TRUE(utf8::is_valid(tail));
        ASSERT_EQ(all + tail, tok.decode(std::span<const int32_t>(ids).first(k))) << "prefix " << k;
    }
}

TEST(TokenizerStream, NeverReturnsInvalidUtf8) {
    std::string text =
        "Emoji 😀😃😄 👍🏽👍🏿 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️ 🧑🏻‍💻 and 我爱自然语言处理 "
        "é";
    for (const char* name : kTokenizers) {
        SCOPED_TRACE(name);
        const Tokenizer& tok = fixture(name);
        std::vector<int32_t> ids = tok.encode(text);
        check_stream(tok, ids);
        // Ids cut in the middle of a character, and invalid bytes, stay well-formed too.
        std::vector<int32_t> odd(ids.begin() + 3, ids.end());
        odd.push_back(tok.token_to_id(std::string(byte_level::char_of(0xF0))));
        check_stream(tok, odd);
    }
}

TEST(TokenizerStream, GeneralDecoderPath) {
    json j = {
        {"added_tokens", json::array()},
        {"decoder",
         {{"type", "Sequence"}, {"decoders", json::array({{{"type", "ByteFallback"}}, {{"type", "Fuse"}}})}}},
        {"model",
         {{"type", "BPE"},
          {"byte_fallback", true},
          {"vocab", {{"a", 0}, {"<0xF0>", 1}, {"<0x9F>", 2}, {"<0x98>", 3}, {"<0x80>", 4}}},
          {"merges", json::array()}}}};
    Tokenizer tok = Tokenizer::from_json(j.dump());
    EXPECT_EQ(tok.decode(std::vector<int32_t>{0, 1, 2, 3, 4, 0}), "a😀a");
    check_stream(tok, {0, 1, 2, 3, 4, 0, 1, 2, 0});
}

// ---- errors ---------------------------------------------------------------------------------

void expect_error(const std::string& text, const std::string& needle) {
    try {
        Tokenizer::from_json(text, "bad/tokenizer.json");
        ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find("bad/tokenizer.json"), std::string::npos) << msg;
        EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
}

TEST(TokenizerErrors, NameTheFileAndTheProblem) {
    json base = json::parse(read_file(tokenizer_path("gpt2")));
    for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
        json j = base;
        j["model"]["type"] = type;
        expect_error(j.dump(), std::string("unsupported model type '") + type + "'");
    }
    json j = base;
    j["normalizer"] = {{"type", "NFKC"}};
    expect_error(j.dump(), "unsupported normalizer 'NFKC'");
    j = base;
    j["normalizer"] = {{"type", "Sequence"},
                       {"normalizers", json::array({{{"type", "NFC"}}, {{"type", "Lowercase"}}})}};
    expect_error(j.dump(), "unsupported normalizer 'Lowercase'");
    j = base;
    j["pre_tokenizer"] = {{"type", "Whitespace"}};
    expect_error(j.dump(), "unsupported pre_tokenizer 'Whitespace'");
    j = base;
    j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}};
    expect_error(j.dump(), "unsupported decoder 'WordPiece'");
    j = base;
    j["model"]["dropout"] = 0.1;
    expect_error(j.dump(), "dropout");
    j = base;
    j["model"]["merges"][0] = json::array({"Ġ", "not-in-vocab"});
    expect_error(j.dump(), "'not-in-vocab' is not in the vocabulary");
    j = base;
    j["model"]["vocab"]["Ġt"] = "seven";
    expect_error(j.dump(), "invalid tokenizer.json");
    expect_error("{\"model\": {\"type\": \"BPE\", ", "malformed JSON");
    expect_error("[1, 2]", "not a tokenizer.json");
    EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.json"), Error);
}

// ---- pieces ---------------------------------------------------------------------------------

TEST(TokenizerByteLevel, MapMatchesGpt2Alphabet) {
    EXPECT_EQ(byte_level::byte_to_codepoint(' '), 0x120u);
    EXPECT_EQ(byte_level::byte_to_codepoint('\n'), 0x10Au);
    EXPECT_EQ(byte_level::char_of(' '), "\u0120");
    EXPECT_EQ(byte_level::char_of('\n'), "\u010a");
    EXPECT_EQ(byte_level::byte_to_codepoint('A'), static_cast<uint32_t>('A'));
    EXPECT_EQ(byte_level::byte_to_codepoint(0x00), 0x100u);
    EXPECT_EQ(byte_level::byte_to_codepoint(0xAD), 0x143u);  // the last of the 68 remapped bytes
    EXPECT_EQ(byte_level::byte_to_codepoint(0xFF), 0xFFu);
    std::string all;
    for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
    std::string back;
    ASSERT_TRUE(byte_level::decode(byte_level::encode(all), back));
    EXPECT_EQ(back, all);
    EXPECT_FALSE(byte_level::decode("\u4e2d", back));
}

TEST(TokenizerUtf8, ReplacesLikePython) {
    auto lossy = [](std::string_view s) {
        std::string out;
        utf8::append_lossy(s, out);
        return out;
    };
    const std::string R = "\xEF\xBF\xBD";
    EXPECT_EQ(lossy("a\xFF"
                    "b"),
              "a" + R + "b");
    EXPECT_EQ(lossy("\xE2\x82"
                    "a"),
              R + "a");                                   // truncated 3-byte: one U+FFFD
    EXPECT_EQ(lossy("\xC0\xAF"), R + R);                  // overlong: C0 never starts a sequence
    EXPECT_EQ(lossy("\xE0\x80\xAF"), R + R + R);          // E0 needs A0..BF next
    EXPECT_EQ(lossy("\xED\xA0\x80"), R + R + R);          // surrogate
    EXPECT_EQ(lossy("\xF4\x90\x80\x80"), R + R + R + R);  // above U+10FFFF
    EXPECT_EQ(lossy("\xF0\x9F\x98"), R);                  // truncated 4-byte at the end
    EXPECT_EQ(lossy("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
    EXPECT_EQ(utf8::incomplete_suffix("a\xF0\x9F\x98"), 3u);
    EXPECT_EQ(utf8::incomplete_suffix("a\xF0\x9F\x98\x80"), 0u);
    EXPECT_EQ(utf8::incomplete_suffix("a\xC3"), 1u);
    EXPECT_EQ(utf8::incomplete_suffix("a\xFF"), 0u);
    EXPECT_EQ(utf8::incomplete_suffix("\x80\x80\x80"), 0u);
}

// The quick check may only skip text that NFC leaves alone: every code point it passes is stable
// alone, after a starter, and before a combining mark the check then catches.
TEST(TokenizerNfc, QuickCheckOnlySkipsStableText) {
    const std::string firsts[] = {"a", "e", "A", "\u30a2", "\uac00", "\u0627", "\u0915", "\u00e9"};
    for (uint32_t cp = 0x80; cp < 0x110000; ++cp) {
        if (cp >= 0xD800 && cp < 0xE000) continue;
        std::string c;
        utf8::append_codepoint(cp, c);
        if (nfc_may_change(c)) continue;
        ASSERT_EQ(nfc_normalize(c), c) << std::hex << cp;
        for (const std::string& f : firsts) ASSERT_EQ(nfc_normalize(f + c), f + c) << std::hex << cp;
    }
    EXPECT_TRUE(nfc_may_change("cafe\u0301"));
    EXPECT_TRUE(nfc_may_change("\u212b"));        // Angstrom sign: a singleton decomposition
    EXPECT_TRUE(nfc_may_change("\u1100\u1161"));  // Hangul jamo compose
    EXPECT_FALSE(nfc_may_change("caf\u00e9 \u2013 \u201cquoted\u201d"));
}

TEST(TokenizerBpe, LinearAndHeapMergeLoopsAgree) {
    json j = json::parse(read_file(tokenizer_path("gpt2")));
    BpeModel::Vocab vocab;
    for (const auto& [t, id] : j["model"]["vocab"].items()) vocab.emplace(t, id.get<int32_t>());
    BpeModel::Merges merges;
    for (const auto& m : j["model"]["merges"])
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    BpeModel model(std::move(vocab), std::move(merges), BpeOptions{}, true, "gpt2.json");
    std::string text = read_file(corpus_path("wikitext2-valid.txt")).substr(0, 300000) +
                       read_file(corpus_path("edge_cases.txt"));
    std::vector<std::string_view> words;
    RegexSplitter(kGpt2Pattern).split(text, words);
    words.push_back(std::string_view(text).substr(0, 5000));  // long words too
    words.push_back(std::string_view(text).substr(777, 3000));
    for (std::string_view w : words) {
        std::vector<int32_t> a, b;
        model.encode_word_uncached(w, a, BpeModel::MergeLoop::Linear);
        model.encode_word_uncached(w, b, BpeModel::MergeLoop::Heap);
        ASSERT_EQ(a, b) << w.substr(0, 100);
    }
}

TEST(TokenizerApi, VocabEotAndFingerprint) {
    const Tokenizer& gpt2 = fixture("gpt2");
    const Tokenizer& llama3 = fixture("llama3");
    EXPECT_EQ(gpt2.vocab_size(), 4096);
    EXPECT_EQ(llama3.vocab_size(), 6000);
    EXPECT_EQ(gpt2.eot_id(), gpt2.token_to_id("<|endoftext|>"));
    EXPECT_EQ(llama3.eot_id(), llama3.token_to_id("<|end_of_text|>"));
    EXPECT_EQ(gpt2.id_to_token(gpt2.token_to_id("Ġthe")).value_or(""), "Ġthe");
    EXPECT_FALSE(gpt2.id_to_token(999999).has_value());
    EXPECT_EQ(gpt2.token_to_id("not a token"), -1);
    EXPECT_EQ(gpt2.fingerprint().size(), 64u);
    EXPECT_NE(gpt2.fingerprint(), llama3.fingerprint());
    Tokenizer copy = gpt2;
    copy.set_eot_id(5);
    EXPECT_EQ(copy.eot_id(), 5);
    EXPECT_NE(copy.fingerprint(), gpt2.fingerprint());
    EXPECT_THROW(copy.set_eot_id(4096), Error);
    EXPECT_EQ(gpt2.encode("<|endoftext|>"), std::vector<int32_t>{gpt2.eot_id()});
    EXPECT_EQ(gpt2.decode(gpt2.encode("a<|endoftext|>b"), true), "ab");
    std::vector<int32_t> appended = {7};
    gpt2.encode_append("hello", appended);
    EXPECT_EQ(appended.size(), 1 + gpt2.encode("hello").size());
}


// The trainer's output, loaded by our Tokenizer, encodes exactly as HF tokenizers encodes with the
// same file (issue 3: "the file it writes loads in HF tokenizers and encodes identically").
TEST(TokenizerTrainedFile, OursAndHfEncodeIdentically) {
    if (!fs::exists(corpus_path("tinyshakespeare.txt"))) GTEST_SKIP() << "no corpora at " << data_dir();
    for (auto kind : {BpeTrainerOptions::Pretokenizer::Gpt2, BpeTrainerOptions::Pretokenizer::Llama3}) {
        BpeTrainerOptions opt;
        opt.inputs = {corpus_path("tinyshakespeare.txt")};
        opt.vocab_size = 1500;
        opt.special_tokens = {"<|endoftext|>"};
        opt.pretokenizer = kind;
        const std::string file = temp_path("trained_tokenizer.json");
        train_bpe_to_file(opt, file);
        Tokenizer tok = Tokenizer::load(file);
        EXPECT_EQ(tok.vocab_size(), 1500);
        const std::vector<int32_t> ours = tok.encode(read_file(corpus_path("wikitext2-valid.txt")));
        EXPECT_EQ(tok.decode(ours), read_file(corpus_path("wikitext2-valid.txt")));
        if (!have_hf()) GTEST_SKIP() << "python3 with `tokenizers` is not importable: live comparison skipped";
        const std::vector<int32_t> hf = hf_encode(file, corpus_path("wikitext2-valid.txt"));
        EXPECT_EQ(ours, hf) << first_difference(tok, ours, hf);
        fs::remove(file);
    }
}

}  // namespace
}  // namespace mslm
