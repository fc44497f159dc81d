#include <gtest/gtest.h>
#include <unistd.h>
#include <utf8proc.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/trainer.h"

using namespace mslm;
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using Pretokenizer = BpeTrainerOptions::Pretokenizer;

namespace {

// MSLM_DATA_DIR in the environment wins over the build's path (a worktree's ../shared/data may
// not exist).
fs::path data_file(const std::string& name) {
    const char* env = std::getenv("MSLM_DATA_DIR");
    return fs::path(env ? env : MSLM_DATA_DIR) / name;
}

std::string read_file(const fs::path& path, size_t max_bytes = std::string::npos) {
    std::ifstream in(path, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return s.substr(0, max_bytes);
}

void write_file(const fs::path& path, const std::string& content) {
    std::ofstream out(path, std::ios::binary);
    out << content;
}

class TempDir {
public:
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "mslm_tok_train_XXXXXX").string();
        path_ = mkdtemp(pattern.data());
    }
    ~TempDir() { fs::remove_all(path_); }
    const fs::path& path() const { return path_; }
    fs::path operator/(const std::string& name) const { return path_ / name; }

private:
    fs::path path_;
};

// Copies the first `bytes` of a shared data file into dir (the corpora tests train on), or
// returns an empty path when the data set is absent.
fs::path data_prefix(const TempDir& dir, const std::string& name, size_t bytes) {
    fs::path src = data_file(name);
    if (!fs::exists(src)) return {};
    fs::path dst = dir / (name + ".prefix");
    write_file(dst, read_file(src, bytes));
    return dst;
}

#define REQUIRE_DATA(path) \
    if ((path).empty()) GTEST_SKIP() << "data set missing under " << data_file("").string()

struct ThreadsGuard {
    int saved = num_threads();
    ~ThreadsGuard() { set_num_threads(saved); }
};

std::vector<std::pair<std::string, std::string>> merges_of(const ojson& doc) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& m : doc["model"]["merges"]) out.emplace_back(m[0], m[1]);
    return out;
}

BpeTrainerOptions options(std::vector<std::string> inputs, int64_t vocab,
                          Pretokenizer kind = Pretokenizer::Gpt2) {
    BpeTrainerOptions opt;
    for (auto& p : inputs) opt.inputs.push_back(std::move(p));
    opt.vocab_size = vocab;
    opt.pretokenizer = kind;
    return opt;
}

// Checks what every trained file must satisfy: ids 0..n-1 each used once, special tokens first
// and listed as added tokens, all 256 byte-level symbols present (any byte string encodes), and
// each merge made of known tokens.
void expect_well_formed(const ojson& doc, const BpeTrainerOptions& opt) {
    const ojson& vocab = doc["model"]["vocab"];
    std::vector<int> seen(vocab.size(), 0);
    for (const auto& [token, id] : vocab.items()) {
        ASSERT_LT(id.get<size_t>(), vocab.size()) << token;
        ++seen[id.get<size_t>()];
    }
    for (int s : seen) EXPECT_EQ(s, 1);
    ASSERT_EQ(doc["added_tokens"].size(), opt.special_tokens.size());
    for (size_t i = 0; i < opt.special_tokens.size(); ++i) {
        EXPECT_EQ(doc["added_tokens"][i]["id"], i);
        EXPECT_EQ(doc["added_tokens"][i]["content"], opt.special_tokens[i]);
        EXPECT_EQ(doc["added_tokens"][i]["special"], true);
        EXPECT_EQ(vocab[opt.special_tokens[i]], i);
    }
    for (int b = 0; b < 256; ++b) {
        std::string symbol = byte_level_encode(std::string(1, static_cast<char>(b)));
        EXPECT_TRUE(vocab.contains(symbol)) << "byte " << b;
    }
    for (const auto& [a, b] : merges_of(doc)) {
        EXPECT_TRUE(vocab.contains(a) && vocab.contains(b) && vocab.contains(a + b)) << a << " + " << b;
    }
}

// ---- the python `tokenizers` package, when installed ----

bool have_hf_tokenizers() {
    static const bool ok = std::system("python3 -c 'import tokenizers' >/dev/null 2>&1") == 0;
    return ok;
}

#define REQUIRE_HF()           \
    if (!have_hf_tokenizers()) \
    GTEST_SKIP() << "python3 with the `tokenizers` package is not available (pip install tokenizers)"

// Runs a python script with arguments; returns its exit status, output in `log`.
int run_python(const TempDir& dir, const std::string& script, const std::vector<std::string>& args,
               std::string& log) {
    fs::path py = dir / "script.py", out = dir / "python.log";
    write_file(py, script);
    std::string cmd = "python3 '" + py.string() + "'";
    for (const auto& a : args) cmd += " '" + a + "'";
    cmd += " > '" + out.string() + "' 2>&1";
    int status = std::system(cmd.c_str());
    log = read_file(out);
    return status;
}

// Encodes a text file with HF and checks the decode reproduces it; returns the ids.
std::vector<int64_t> hf_encode(const TempDir& dir, const fs::path& tokenizer, const fs::path& text) {
    const char* script = R"(
import sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8", newline="").read()
ids = tok.encode(text, add_special_tokens=False).ids
back = tok.decode(ids, skip_special_tokens=False)
if back != text:
    i = next(i for i in range(min(len(back), len(text)) + 1) if back[i:i+1] != text[i:i+1])
    sys.exit(f"decode differs at char {i}: {back[i:i+40]!r} vs {text[i:i+40]!r}")
open(sys.argv[3], "w").write(" ".join(map(str, ids)))
)";
    std::string log;
    fs::path ids_path = dir / "ids.txt";
    int status = run_python(dir, script, {tokenizer.string(), text.string(), ids_path.string()}, log);
    EXPECT_EQ(status, 0) << log;
    std::vector<int64_t> ids;
    std::istringstream in(read_file(ids_path));
    for (int64_t id; in >> id;) ids.push_back(id);
    return ids;
}

// BPE by its definition (GPT-2's bpe()): within each pre-token, repeatedly take the adjacent pair
// with the lowest merge rank and merge all its occurrences left to right.
std::vector<int64_t> reference_encode(const ojson& doc, const std::string& text, Pretokenizer kind) {
    std::map<std::pair<std::string, std::string>, size_t> rank;
    const auto merges = merges_of(doc);
    for (size_t r = 0; r < merges.size(); ++r) rank.emplace(merges[r], r);
    std::string normalized = text;
    if (kind == Pretokenizer::Llama3) {
        char* nfc =
            reinterpret_cast<char*>(utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(text.c_str())));
        normalized = nfc;
        std::free(nfc);
    }
    RegexSplitter splitter(kind == Pretokenizer::Llama3 ? kLlama3Pattern : kGpt2Pattern);
    std::vector<std::string_view> pieces;
    splitter.split(normalized, pieces);
    std::map<std::string_view, std::vector<int64_t>> cache;
    std::vector<int64_t> ids;
    for (std::string_view piece : pieces) {
        auto [it, fresh] = cache.try_emplace(piece);
        if (fresh) {
            std::vector<std::string> sym;
            for (char c : piece) sym.push_back(byte_level_encode(std::string(1, c)));
            for (;;) {
                size_t best = SIZE_MAX;
                for (size_t i = 0; i + 1 < sym.size(); ++i) {
                    auto r = rank.find({sym[i], sym[i + 1]});
                    if (r != rank.end()) best = std::min(best, r->second);
                }
                if (best == SIZE_MAX) break;
                const auto& [a, b] = merges[best];
                std::vector<std::string> next;
                for (size_t i = 0; i < sym.size(); ++i) {
                    if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
                        next.push_back(a + b);
                        ++i;
                    } else {
                        next.push_back(sym[i]);
                    }
                }
                sym = std::move(next);
            }
            for (const auto& s : sym) it->second.push_back(doc["model"]["vocab"].at(s).get<int64_t>());
        }
        ids.insert(ids.end(), it->second.begin(), it->second.end());
    }
    return ids;
}

}  // namespace

// ---- building blocks ----

TEST(TokenizerTrainer, ByteLevelAlphabet) {
    EXPECT_EQ(byte_level_encode("A~!"), "A~!");
    EXPECT_EQ(byte_level_encode(" "), "\u0120");   // Ġ
    EXPECT_EQ(byte_level_encode("\n"), "\u010A");  // Ċ
    EXPECT_EQ(byte_level_encode(std::string(1, '\0')), "\u0100");
    EXPECT_EQ(byte_level_encode("\x7f"), "\u0121");  // first byte after the 33 of 0x00..0x20
    EXPECT_EQ(byte_level_encode("\xa0"), "\u0142");
    EXPECT_EQ(byte_level_encode("\xad"), "\u0143");  // the 68th and last remapped byte
    EXPECT_EQ(byte_level_encode("\xa1\xac\xae\xff"), "\u00a1\u00ac\u00ae\u00ff");
    std::set<std::string> symbols;
    for (int b = 0; b < 256; ++b) symbols.insert(byte_level_encode(std::string(1, static_cast<char>(b))));
    EXPECT_EQ(symbols.size(), 256u);
}

// Expected strings are Python's bytes.decode("utf-8", errors="replace") of the same bytes (the
// first is the example of Unicode's "U+FFFD substitution of maximal subparts", Table 3-8).
TEST(TokenizerTrainer, Utf8ReplacementMatchesPython) {
    const std::string fffd = "\xEF\xBF\xBD";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64",
         "a" + fffd + fffd + fffd + "b" + fffd + "c" + fffd + fffd + "d"},
        {"\xE2\x82", fffd},
        {"\xED\xA0\x80x", fffd + fffd + fffd + "x"},
        {"\xF4\x90\x80\x80", fffd + fffd + fffd + fffd},
        {"\xC0\xAF\xE0\x80\xBF\xF0\x8F\xBF\xBF",
         std::string() + fffd + fffd + fffd + fffd + fffd + fffd + fffd + fffd + fffd},
        {"ok \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", "ok \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"},
    };
    for (const auto& [in, want] : cases) {
        std::string out;
        EXPECT_EQ(append_utf8_replacing(in, true, out), in.size());
        EXPECT_EQ(out, want);
        // Streamed in two blocks cut anywhere: the same text.
        for (size_t cut = 0; cut <= in.size(); ++cut) {
            std::string streamed, carry = in.substr(0, cut);
            size_t used = append_utf8_replacing(carry, false, streamed);
            EXPECT_LE(carry.size() - used, 3u);
            append_utf8_replacing(carry.substr(used) + in.substr(cut), true, streamed);
            EXPECT_EQ(streamed, want) << "cut at " << cut;
        }
    }
}

// ---- merges on corpora small enough to check by hand ----

// Word counts hug 10, pug 5, pun 12, bun 4, hugs 5 (one per line; "\n" pre-tokens have no pairs).
// Pair counts: ug 20, pu 17, un 16, hu 15, ... so the merges are u+g (20), then u+n (16, as
// "pug" no longer has "pu"), then h+ug (15).
TEST(TokenizerTrainer, FirstMergesOnHandCheckableCorpus) {
    TempDir dir;
    std::string text;
    for (auto [word, n] : std::vector<std::pair<std::string, int>>{
             {"hug", 10}, {"pug", 5}, {"pun", 12}, {"bun", 4}, {"hugs", 5}}) {
        for (int i = 0; i < n; ++i) text += word + "\n";
    }
    write_file(dir / "corpus.txt", text);
    BpeTrainerOptions opt = options({(dir / "corpus.txt").string()}, 256 + 3);
    ojson doc = train_bpe(opt);
    using P = std::pair<std::string, std::string>;
    EXPECT_EQ(merges_of(doc), (std::vector<P>{{"u", "g"}, {"u", "n"}, {"h", "ug"}}));
    EXPECT_EQ(doc["model"]["vocab"]["ug"], 256);
    EXPECT_EQ(doc["model"]["vocab"]["hug"], 258);
    expect_well_formed(doc, opt);
}

// "aaabdaaabac": a+a first (4, overlaps counted, as HF counts them); merging left to right
// leaves "aa a b d aa a b a c", where (aa, a) and (a, b) tie at 2: the tie goes to the smaller
// (left id, right id), and 'a' (a byte symbol) has a smaller id than 'aa' (a merge). Then aa+ab.
TEST(TokenizerTrainer, TiesGoToTheSmallestIds) {
    TempDir dir;
    write_file(dir / "corpus.txt", "aaabdaaabac");
    BpeTrainerOptions opt = options({(dir / "corpus.txt").string()}, 256 + 3);
    opt.min_frequency = 2;
    BpeTrainerStats stats;
    ojson doc = train_bpe(opt, &stats);
    using P = std::pair<std::string, std::string>;
    EXPECT_EQ(merges_of(doc), (std::vector<P>{{"a", "a"}, {"a", "b"}, {"aa", "ab"}}));
    EXPECT_EQ(stats.merges, 3);
    // min_frequency: with the next best pair seen once, merging stops short of the vocab size.
    opt.vocab_size = 300;
    EXPECT_EQ(merges_of(train_bpe(opt)).size(), 3u);
    // With pairs seen once allowed, merging goes on until the one word is one token.
    opt.min_frequency = 1;
    ojson all = train_bpe(opt);
    EXPECT_EQ(merges_of(all).size(), 7u);
    EXPECT_TRUE(all["model"]["vocab"].contains("aaabdaaabac"));
}

// ---- properties on real text ----

TEST(TokenizerTrainer, SpecialTokensFirstAndVocabSizeExact) {
    TempDir dir;
    fs::path corpus = data_prefix(dir, "tinyshakespeare.txt", 200'000);
    REQUIRE_DATA(corpus);
    BpeTrainerOptions opt = options({corpus.string()}, 1000);
    opt.special_tokens = {"<|endoftext|>", "<pad>"};
    BpeTrainerStats stats;
    ojson doc = train_bpe(opt, &stats);
    EXPECT_EQ(doc["model"]["vocab"].size(), 1000u);
    EXPECT_EQ(stats.vocab_size, 1000);
    EXPECT_EQ(doc["model"]["merges"].size(), 1000u - 2 - 256);
    expect_well_formed(doc, opt);
    // The byte symbols follow the special tokens in code point order ('!' first, U+0143 last).
    EXPECT_EQ(doc["model"]["vocab"]["!"], 2);
    EXPECT_EQ(doc["model"]["vocab"]["\u0143"], 2 + 255);
    EXPECT_EQ(doc["model"]["merges"][0], ojson::array({"\u0120", "t"}));  // " t" leads in Shakespeare
    EXPECT_EQ(doc["version"], "1.0");
    EXPECT_EQ(doc["normalizer"], nullptr);
    EXPECT_EQ(doc["pre_tokenizer"]["type"], "ByteLevel");
    EXPECT_EQ(doc["pre_tokenizer"]["use_regex"], true);
    EXPECT_EQ(doc["model"]["type"], "BPE");
    EXPECT_EQ(doc["model"]["byte_fallback"], false);
}

TEST(TokenizerTrainer, DeterministicAcrossThreadCounts) {
    TempDir dir;
    fs::path a = data_prefix(dir, "tinyshakespeare.txt", 150'000);
    fs::path b = data_prefix(dir, "wikitext2-valid.txt", 150'000);
    REQUIRE_DATA(a);
    REQUIRE_DATA(b);
    ThreadsGuard guard;
    for (Pretokenizer kind : {Pretokenizer::Gpt2, Pretokenizer::Llama3}) {
        BpeTrainerOptions opt = options({a.string(), b.string()}, 1500, kind);
        opt.special_tokens = {"<|endoftext|>"};
        opt.chunk_bytes = 4096;  // ~75 chunks: several batches, spread over the threads
        for (size_t budget : {size_t{1} << 30, size_t{256} << 10}) {  // without and with pruning
            opt.max_memory_bytes = budget;
            BpeTrainerStats stats;
            set_num_threads(1);
            std::string one = train_bpe(opt, &stats).dump(2);
            set_num_threads(3);
            std::string three = train_bpe(opt).dump(2);
            EXPECT_TRUE(one == three) << "pretokenizer " << static_cast<int>(kind) << ", budget " << budget;
            EXPECT_EQ(stats.pruned_pretokens > 0, budget < (size_t{1} << 30));
        }
    }
}

// Chunks end only where pre-tokenization cannot cross, so the chunk size never changes the
// counts; the text mixes blank lines, trailing spaces and CRLF lines, where a careless cut would.
TEST(TokenizerTrainer, ChunkSizeDoesNotChangeTheResult) {
    TempDir dir;
    fs::path wiki = data_prefix(dir, "wikitext2-valid.txt", 120'000);
    REQUIRE_DATA(wiki);
    std::string crlf = "First line  \r\nsecond:\r\n\r\n  third line\r\n'tis 123456 they'll\r\n";
    std::string text = read_file(wiki);
    for (int i = 0; i < 200; ++i) text += crlf;
    write_file(dir / "mixed.txt", text);
    for (Pretokenizer kind : {Pretokenizer::Gpt2, Pretokenizer::Llama3}) {
        BpeTrainerOptions opt = options({(dir / "mixed.txt").string()}, 800, kind);
        opt.min_frequency = 1;
        std::string whole = train_bpe(opt).dump();
        for (size_t chunk : {16, 61, 1000}) {
            opt.chunk_bytes = chunk;
            EXPECT_TRUE(train_bpe(opt).dump() == whole)
                << "chunk " << chunk << ", kind " << static_cast<int>(kind);
        }
    }
}

// Special tokens in the text are split out first, as the tokenizer will at encode time: their
// text yields no merges, and the text around them is pre-tokenized apart.
TEST(TokenizerTrainer, SpecialTokensInTheTextAreNotLearned) {
    TempDir dir;
    std::string text;
    for (int i = 0; i < 100; ++i) text += "The end.<|endoftext|>Another <end of this document> doc";
    write_file(dir / "docs.txt", text);
    BpeTrainerOptions opt = options({(dir / "docs.txt").string()}, 400);
    auto learned = [](const ojson& doc, const std::string& part) {
        for (const auto& [a, b] : merges_of(doc)) {
            if ((a + b).find(part) != std::string::npos) return true;
        }
        return false;
    };
    ojson plain = train_bpe(opt);
    EXPECT_TRUE(learned(plain, "endof"));
    opt.special_tokens = {"<|endoftext|>", "<end of this document>"};
    ojson with = train_bpe(opt);
    EXPECT_FALSE(learned(with, "endof"));
    EXPECT_FALSE(learned(with, byte_level_encode("of this")));
    for (size_t chunk : {16, 100}) {  // never a cut inside "<end of this document>"
        opt.chunk_bytes = chunk;
        EXPECT_TRUE(train_bpe(opt) == with) << "chunk " << chunk;
    }
}

TEST(TokenizerTrainer, TinyMemoryBudgetPrunesAndStillTrains) {
    TempDir dir;
    fs::path corpus = data_prefix(dir, "wikitext2-valid.txt", 300'000);
    REQUIRE_DATA(corpus);
    BpeTrainerOptions opt = options({corpus.string()}, 600);
    opt.chunk_bytes = 8192;
    BpeTrainerStats full, pruned;
    train_bpe(opt, &full);
    opt.max_memory_bytes = 64 << 10;  // ~1000 entries against ~20000 distinct pre-tokens
    ojson doc = train_bpe(opt, &pruned);
    EXPECT_EQ(full.pruned_pretokens, 0);
    EXPECT_GT(pruned.pruned_pretokens, 0);
    EXPECT_LT(pruned.unique_pretokens, full.unique_pretokens);
    EXPECT_LE(pruned.unique_pretokens * 64, int64_t{64 << 10});
    EXPECT_EQ(pruned.pretokens, full.pretokens);
    EXPECT_EQ(doc["model"]["vocab"].size(), 600u);
    expect_well_formed(doc, opt);
}

TEST(TokenizerTrainer, InvalidUtf8IsCountedAsReplacementCharacter) {
    TempDir dir;
    std::string text;
    for (int i = 0; i < 50; ++i) text += "ok \xff\xfe ok\n";
    write_file(dir / "bad.txt", text);
    ojson doc = train_bpe(options({(dir / "bad.txt").string()}, 300));
    const ojson& vocab = doc["model"]["vocab"];
    // U+FFFD is EF BF BD; " \uFFFD\uFFFD" is one pre-token (a space and a run of symbols).
    EXPECT_TRUE(vocab.contains(byte_level_encode(" \xEF\xBF\xBD\xEF\xBF\xBD")));
    for (const auto& [a, b] : merges_of(doc)) {
        EXPECT_EQ((a + b).find(byte_level_encode("\xff")), std::string::npos) << a << " + " << b;
    }
}

TEST(TokenizerTrainer, Llama3NormalizesToNfc) {
    TempDir dir;
    std::string text;
    for (int i = 0; i < 50; ++i) text += "cafe\xCC\x81 ";  // "e" + combining acute: NFC makes "é"
    write_file(dir / "nfd.txt", text);
    BpeTrainerOptions opt = options({(dir / "nfd.txt").string()}, 300, Pretokenizer::Llama3);
    ojson doc = train_bpe(opt);
    EXPECT_TRUE(doc["model"]["vocab"].contains(byte_level_encode("caf\xC3\xA9")));
    EXPECT_EQ(doc["normalizer"], (ojson{{"type", "NFC"}}));
    EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], kLlama3Pattern);
    EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
    // No normalizer for GPT-2 style: the combining mark stays, a pre-token of its own (not a letter).
    opt.pretokenizer = Pretokenizer::Gpt2;
    ojson gpt2 = train_bpe(opt);
    EXPECT_TRUE(gpt2["model"]["vocab"].contains(byte_level_encode("\xCC\x81")));
    EXPECT_FALSE(gpt2["model"]["vocab"].contains(byte_level_encode("caf\xC3\xA9")));
}

TEST(TokenizerTrainer, ErrorsNameTheProblem) {
    TempDir dir;
    write_file(dir / "ok.txt", "some text\n");
    auto message = [](const auto& fn) {
        try {
            fn();
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    BpeTrainerOptions opt = options({(dir / "ok.txt").string(), "/nonexistent/corpus.txt"}, 1000);
    EXPECT_EQ(message([&] { train_bpe(opt); }),
              "/nonexistent/corpus.txt: cannot open: No such file or directory");

    opt = options({(dir / "ok.txt").string()}, 257);
    opt.special_tokens = {"<a>", "<b>"};
    EXPECT_NE(message([&] { train_bpe(opt); }).find("vocab size 257 is below the 256 byte symbols plus 2"),
              std::string::npos);
    opt.vocab_size = 1000;
    opt.special_tokens = {"<a>", "<a>"};
    EXPECT_NE(message([&] { train_bpe(opt); }).find("\"<a>\" given twice"), std::string::npos);

    opt.special_tokens = {};
    EXPECT_NE(message([&] {
                  train_bpe_to_file(opt, "/nonexistent/dir/tokenizer.json");
              }).find("/nonexistent/dir/tokenizer.json: cannot write"),
              std::string::npos);
    // A failed run leaves neither the destination nor a temporary file.
    opt.inputs.push_back((dir / "missing.txt").string());
    EXPECT_NE(message([&] { train_bpe_to_file(opt, (dir / "tok.json").string()); }).find("missing.txt"),
              std::string::npos);
    EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
}

TEST(TokenizerTrainer, WritesFileAtomically) {
    TempDir dir;
    write_file(dir / "ok.txt", "some text some text\n");
    write_file(dir / "tokenizer.json", "old");
    BpeTrainerOptions opt = options({(dir / "ok.txt").string()}, 300);
    train_bpe_to_file(opt, (dir / "tokenizer.json").string());
    ojson doc = ojson::parse(read_file(dir / "tokenizer.json"));
    EXPECT_EQ(doc, train_bpe(opt));
    EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 2);
}

// ---- against Hugging Face tokenizers ----

// HF loads the file; its encoding of text the trainer never saw decodes back to that text, and
// uses only tokens the file's merges build.
TEST(TokenizerTrainerHf, LoadsAndRoundTripsHeldOutText) {
    REQUIRE_HF();
    TempDir dir;
    fs::path train = data_prefix(dir, "tinyshakespeare.txt", 300'000);
    fs::path held_out = data_prefix(dir, "wikitext2-test.txt", 100'000);
    REQUIRE_DATA(train);
    REQUIRE_DATA(held_out);
    for (Pretokenizer kind : {Pretokenizer::Gpt2, Pretokenizer::Llama3}) {
        BpeTrainerOptions opt = options({train.string()}, 2000, kind);
        opt.special_tokens = {"<|endoftext|>"};
        fs::path tok = dir / "tokenizer.json";
        train_bpe_to_file(opt, tok.string());
        ojson doc = ojson::parse(read_file(tok));
        std::vector<int64_t> ids = hf_encode(dir, tok, held_out);
        ASSERT_FALSE(ids.empty());
        std::set<std::string> buildable;
        for (int b = 0; b < 256; ++b)
            buildable.insert(byte_level_encode(std::string(1, static_cast<char>(b))));
        for (const auto& [a, b] : merges_of(doc)) buildable.insert(a + b);
        std::vector<std::string> token_of(doc["model"]["vocab"].size());
        for (const auto& [token, id] : doc["model"]["vocab"].items()) token_of[id.get<size_t>()] = token;
        for (int64_t id : ids) {
            ASSERT_TRUE(id >= 1 && id < 2000) << id;  // never the special token, never out of range
            ASSERT_TRUE(buildable.count(token_of[id])) << token_of[id];
        }
    }
}

// HF's ids equal those of BPE applied by its definition, so the file means what the trainer
// learned: the same pre-tokenization and the merges in rank order.
TEST(TokenizerTrainerHf, IdsEqualMergeRankReference) {
    REQUIRE_HF();
    TempDir dir;
    fs::path train = data_prefix(dir, "wikitext2-valid.txt", 400'000);
    fs::path text = data_prefix(dir, "tinyshakespeare.txt", 200'000);
    REQUIRE_DATA(train);
    REQUIRE_DATA(text);
    for (Pretokenizer kind : {Pretokenizer::Gpt2, Pretokenizer::Llama3}) {
        BpeTrainerOptions opt = options({train.string()}, 3000, kind);
        fs::path tok = dir / "tokenizer.json";
        train_bpe_to_file(opt, tok.string());
        ojson doc = ojson::parse(read_file(tok));
        std::vector<int64_t> hf = hf_encode(dir, tok, text);
        std::vector<int64_t> ref = reference_encode(doc, read_file(text), kind);
        ASSERT_EQ(hf.size(), ref.size()) << "pretokenizer " << static_cast<int>(kind);
        EXPECT_TRUE(hf == ref) << "pretokenizer " << static_cast<int>(kind);
    }
}

// HF's BpeTrainer, given the same documents whole (train_from_iterator), the same pipeline and
// the same settings, learns the same vocabulary and merges in the same order: the tie rule and
// the pair counting are HF's.
TEST(TokenizerTrainerHf, SameMergesAsHfBpeTrainer) {
    REQUIRE_HF();
    TempDir dir;
    fs::path a = data_prefix(dir, "tinyshakespeare.txt", 200'000);
    fs::path b = data_prefix(dir, "wikitext2-valid.txt", 200'000);
    REQUIRE_DATA(a);
    REQUIRE_DATA(b);
    const char* script = R"(
import sys, json
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
ours, out, vocab, min_freq, specials = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
tok = Tokenizer.from_file(ours)  # normalizer, pre-tokenizer, decoder as ours
tok.model = models.BPE()
trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=min_freq, special_tokens=specials,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
texts = [open(f, encoding="utf-8", errors="replace", newline="").read() for f in sys.argv[6:]]
tok.train_from_iterator(texts, trainer)
tok.save(out)
)";
    for (Pretokenizer kind : {Pretokenizer::Gpt2, Pretokenizer::Llama3}) {
        BpeTrainerOptions opt = options({a.string(), b.string()}, 3000, kind);
        opt.special_tokens = {"<|endoftext|>", "<|pad|>"};
        fs::path ours = dir / "ours.json", theirs = dir / "hf.json";
        train_bpe_to_file(opt, ours.string());
        std::string log;
        int status = run_python(
            dir, script,
            {ours.string(), theirs.string(), std::to_string(opt.vocab_size),
             std::to_string(opt.min_frequency), R"(["<|endoftext|>", "<|pad|>"])", a.string(), b.string()},
            log);
        ASSERT_EQ(status, 0) << log;
        ojson mine = ojson::parse(read_file(ours)), hf = ojson::parse(read_file(theirs));
        auto m = merges_of(mine), h = merges_of(hf);
        size_t first_diff = 0;
        while (first_diff < std::min(m.size(), h.size()) && m[first_diff] == h[first_diff]) ++first_diff;
        EXPECT_EQ(m.size(), h.size());
        EXPECT_EQ(first_diff, std::min(m.size(), h.size())) << "first different merge at rank " << first_diff;
        EXPECT_TRUE(mine["model"]["vocab"] == hf["model"]["vocab"]);
        EXPECT_TRUE(mine == hf) << "pretokenizer " << static_cast<int>(kind);
    }
}
