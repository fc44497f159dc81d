// Byte-level BPE training, streaming over text files with bounded memory, producing a complete
// Hugging Face tokenizer.json (GPT-2 style or Llama-3 style pre-tokenization).
//
// Pipeline: each file is read in chunks (cut where pre-tokenization cannot cross, so chunking
// never changes the result), invalid UTF-8 becomes U+FFFD, special tokens are split out (as the
// tokenizer does before anything else, so their text is never learned), Llama-3 style text is
// NFC-normalised, the regex splits it into pre-tokens, and their counts go into one table
// (per-thread tables merged once per batch of chunks). Merge learning then follows HF
// tokenizers' BpeTrainer: the alphabet is the 256 byte-level symbols, and each step merges the
// most frequent adjacent pair, ties going to the pair with the smallest (left id, right id), ids
// being the order in which tokens entered the vocabulary (special tokens, then the byte symbols
// in code point order, then merges in order). Given each file whole (train_from_iterator; HF's
// train() pre-tokenizes line by line) and text free of special tokens (HF's trainer learns
// theirs), HF writes the same file byte for byte.
//
// Output is deterministic: the same inputs and options give the same document for any thread
// count, because counts are sums and nothing depends on hash-table order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace mslm {

struct BpeTrainerOptions {
    enum class Pretokenizer {
        Gpt2,    // ByteLevel with GPT-2's regex, no normalizer
        Llama3,  // NFC, then Split (Llama-3 regex, Isolated), then ByteLevel without regex
    };

    std::vector<std::string> inputs;          // UTF-8 text files; each file is one document
    int64_t vocab_size = 8192;                // final vocabulary, special tokens included
    std::vector<std::string> special_tokens;  // get ids 0..k-1, in this order
    Pretokenizer pretokenizer = Pretokenizer::Gpt2;
    // Merging stops when the most frequent pair occurs fewer than this many times, so the
    // vocabulary can end below vocab_size on a small corpus. 2 (HF's default is 0) keeps pairs
    // seen once, which only memorise one spot of the corpus, out of the vocabulary.
    int64_t min_frequency = 2;
    // Budget for the pre-token count table (estimated as key bytes + 64 per entry). When a batch
    // of chunks takes the table past it, the rarest pre-tokens are dropped until it is at half
    // the budget; a pre-token seen again later restarts from zero, so counts of rare pre-tokens
    // become lower bounds. Frequent pre-tokens, the ones merges are learned from, survive. The
    // merge phase needs memory proportional to the table that remains.
    size_t max_memory_bytes = size_t{1} << 30;
    bool progress = false;                 // progress to stderr: a bar on a terminal, else lines
    size_t chunk_bytes = size_t{1} << 20;  // read and pre-tokenize unit (tests make it small)
};

struct BpeTrainerStats {
    int64_t bytes_read = 0;        // input bytes, before U+FFFD replacement and NFC
    int64_t pretokens = 0;         // pre-tokens counted
    int64_t unique_pretokens = 0;  // distinct pre-tokens left for merge learning
    int64_t pruned_pretokens = 0;  // table entries dropped by the memory bound
    int64_t merges = 0;            // merge rules in the output
    int64_t vocab_size = 0;        // tokens in the output vocabulary
};

// Trains and returns the tokenizer.json document (key order as HF writes it). Throws mslm::Error
// naming the problem: a missing or unreadable input, vocab_size below 256 + special tokens, an
// empty, duplicated or non-UTF-8 special token.
nlohmann::ordered_json train_bpe(const BpeTrainerOptions& opts, BpeTrainerStats* stats = nullptr);

// train_bpe, then writes the document to out_path atomically (a temporary file in the same
// directory, renamed over out_path). The temporary file is created before training, so an
// unwritable destination fails at once.
void train_bpe_to_file(const BpeTrainerOptions& opts, const std::string& out_path,
                       BpeTrainerStats* stats = nullptr);

// Building blocks, exposed for tests.

// Maps bytes to GPT-2's byte-level alphabet: bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for
// themselves, the other 68 take U+0100 + n in ascending byte order (space -> U+0120 'Ġ').
std::string byte_level_encode(std::string_view bytes);

// Appends `bytes` to `out` as valid UTF-8, each maximal invalid subsequence replaced with U+FFFD
// (what Python's bytes.decode("utf-8", errors="replace") does). Returns how many bytes it
// consumed: all of them when at_end, otherwise it stops before an incomplete sequence at the end
// (at most 3 bytes), which the caller passes again with the next block.
size_t append_utf8_replacing(std::string_view bytes, bool at_end, std::string& out);

}  // namespace mslm
