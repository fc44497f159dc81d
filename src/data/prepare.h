// `data prepare`: documents → token ids → train / val token shards + manifest.json.
//
// Stream layout: every document is written as EOT followed by its tokens (llm.c's choice: EOT
// is prepended, so each document, the first included, starts right after an EOT and a window
// that begins at an EOT starts a document cleanly; nanoGPT appends instead). Documents are
// concatenated; a shard is filled to exactly `shard_tokens` and the rest spills into the next, so
// a document may span two shards (the loader reads a split as one stream).
//
// Split rule: document i of the stream (0-based, in stream order) goes to val when the i-th
// output of splitmix64 seeded with `seed`, as a uniform in [0, 1), is below val_fraction.
// It depends only on (seed, i, val_fraction): not on threads, batching or shard size.
//
// Determinism: documents are encoded in parallel in batches, and written in stream order, so
// the shards are byte-identical for any thread count.
//
// Reuse: when out_dir holds a manifest whose inputs (see same_inputs), tokenizer (fingerprint,
// vocab size, EOT id) and options (val_fraction, shard_tokens, seed, split and EOT rules) equal
// this run's, and whose shards are all present with the sizes it lists, nothing is rebuilt
// (result.reused). `force` rebuilds regardless.
//
// manifest.json (written last, atomically; a directory without it is incomplete):
//   format, format_version, inputs, tokenizer {fingerprint, vocab_size, eot_id}, options,
//   dtype ("uint16"|"uint32"), magic, version, eot ("prepended"), stream (the stream's summary()),
//   splits {train|val: {documents, tokens, text_bytes, bytes_per_token, shards [{file, tokens}]}},
//   documents, tokens, text_bytes (over both splits). tokens count the EOTs; text_bytes are the
//   documents' UTF-8 bytes, for bits per byte.
//
// Memory: a bounded number of document batches (each up to batch_documents documents or
// batch_bytes of text, or one document when a document alone is larger), and their ids; it does
// not grow with the corpus.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/mixture.h"
#include "data/source.h"
#include "tokenizer/encoder.h"

namespace mslm {

// Where prepare_shards gets its documents. next() is called from one reader thread of prepare's
// own (never concurrently), so it must not call parallel_for.
class DocumentStream {
public:
    virtual ~DocumentStream() = default;
    virtual bool next(Document& doc) = 0;
    // Facts for the manifest once the stream has ended (documents per source, skipped records).
    virtual nlohmann::json summary() const { return nlohmann::json::object(); }
};

struct PrepareOptions {
    std::string out_dir;
    double val_fraction = 0.005;
    int64_t shard_tokens = 100'000'000;
    uint64_t seed = 0;  // of the train / val draw
    bool force = false;
    // What the documents come from; compared with the manifest's to decide reuse. Entries named
    // "mtime_ns" are recorded but not compared (see same_inputs).
    nlohmann::json inputs = nlohmann::json::object();
    int64_t expected_text_bytes = 0;  // for the progress ETA; 0 when unknown
    bool progress = true;             // progress lines on stderr
    // Batching: changes speed and memory, never the output.
    int64_t batch_documents = 256;
    int64_t batch_bytes = 8 << 20;
};

struct SplitResult {
    int64_t documents = 0;
    int64_t tokens = 0;
    int64_t text_bytes = 0;
    std::vector<std::string> shards;  // full paths
};

struct PrepareResult {
    bool reused = false;
    std::string why_rebuilt;  // when not reused: "no manifest", "inputs changed", ...
    std::string manifest_path;
    std::string dtype;
    SplitResult train, val;
    double seconds = 0;
};

PrepareResult prepare_shards(DocumentStream& docs, const TextEncoder& encoder, const PrepareOptions& opt);

// The split rule above.
bool document_in_val(uint64_t seed, int64_t index, double val_fraction);

// Equal JSON, except that object entries named "mtime_ns" are ignored.
bool same_inputs(const nlohmann::json& a, const nlohmann::json& b);

// An input file as the manifest records it.
struct InputFile {
    std::string path;
    int64_t size = 0;
    int64_t mtime_ns = 0;
    std::string sha256;  // hex
};

std::string sha256_file(const std::string& path);

// Stats every file and takes its SHA-256 from `known` (an earlier manifest's record) when path,
// size and mtime all match there; otherwise reads and hashes it (in parallel over files).
// `hashed`, when given, receives how many files were read.
std::vector<InputFile> describe_input_files(const std::vector<std::string>& paths,
                                            const std::vector<InputFile>& known, int64_t* hashed = nullptr);
nlohmann::json input_file_json(const InputFile& f);

// "bytes" → ByteEncoder; anything else is a tokenizer.json path.
std::unique_ptr<TextEncoder> load_text_encoder(const std::string& spec);

// prepare_sources.cpp: the documents of a Mixture of sources. Resolves every spec's files,
// describes them (size, mtime, SHA-256; see describe_input_files, reusing the hashes of the
// manifest in out_dir) into opt.inputs, then runs prepare_shards.
PrepareResult prepare_from_sources(const std::vector<SourceSpec>& specs, const MixtureOptions& mixture,
                                   const TextEncoder& encoder, PrepareOptions opt);

}  // namespace mslm
