// Batches of token windows from a set of shards, for training and evaluation.
//
// The shards of a split are read as one token stream (their concatenation, in order; documents
// are already separated by EOT tokens). A window is T+1 consecutive tokens; window k covers
// tokens [k*T, k*T + T + 1), so neighbours share one token and the last window ends at or before
// the end of the stream (W = (N - 1) / T windows for N tokens; windows may span two shards).
// Inputs are a window's first T tokens, targets its last T.
//
// Shuffled mode (training): each epoch visits the windows in a fresh permutation (Fisher-Yates
// with mslm::Rng, seeded once; epoch e's permutation is drawn from the generator's state after
// epoch e-1's). Rank r of n takes positions r, r+n, r+2n, ... of the permutation, and every rank
// takes floor(W / n) windows an epoch so all ranks take the same number of steps (the W mod n
// left over are a different random few each epoch). Batches run on across epoch boundaries
// without end. Memory: 4 bytes per window for the permutation.
//
// Sequential mode (evaluation): windows 0, 1, ..., W-1 in order; rank r takes windows r, r+n,
// ... (all W are covered, counts differ by at most one); the last batch may be short and next()
// returns false after it.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/shard.h"

namespace mslm {

struct LoaderOptions {
    int64_t batch_size = 8;  // B
    int64_t seq_len = 1024;  // T
    uint64_t seed = 0;
    bool shuffle = true;  // false: sequential mode
    int rank = 0;
    int world_size = 1;
};

// Where a loader stands; save it with a checkpoint and set_state() gives the same batches again.
struct LoaderState {
    int64_t epoch = 0;
    int64_t position = 0;  // windows this rank has taken in the current epoch
    Rng::State rng{};      // the generator before it drew the current epoch's permutation
    int64_t windows = 0;   // windows per epoch over all ranks, to catch a state from other data

    nlohmann::json to_json() const;
    static LoaderState from_json(const nlohmann::json& j);
};

struct Batch {
    int64_t rows = 0;              // B, or fewer in the last sequential batch
    int64_t seq_len = 0;           // T
    std::vector<int32_t> inputs;   // (rows, T)
    std::vector<int32_t> targets;  // (rows, T)
    std::vector<int64_t> windows;  // (rows,) window index of each row, for tests and logging
};

class DataLoader {
public:
    DataLoader(const std::vector<std::string>& shard_paths, const LoaderOptions& opt);
    static DataLoader from_manifest(const std::string& manifest_or_dir, const std::string& split,
                                    const LoaderOptions& opt);

    // Fills the next batch. Shuffled mode: always true. Sequential mode: false when done.
    bool next(Batch& batch);

    LoaderState state() const;
    void set_state(const LoaderState& s);
    void reset();  // back to the start: epoch 0, position 0, the seed's generator

    int64_t total_tokens() const { return total_tokens_; }
    int64_t total_windows() const { return windows_; }  // W, over all ranks
    int64_t rank_windows() const;                       // windows this rank takes per epoch
    const LoaderOptions& options() const { return opt_; }

    // Copies tokens [begin, begin + n) of the stream into out.
    void read_tokens(int64_t begin, int64_t n, int32_t* out) const;

private:
    void draw_permutation();
    int64_t window_at(int64_t position) const;  // window index of this rank's position-th window

    LoaderOptions opt_;
    std::vector<ShardReader> shards_;
    std::vector<int64_t> starts_;  // starts_[i]: stream offset of shard i's first token; back(): N
    int64_t total_tokens_ = 0;
    int64_t windows_ = 0;
    int64_t epoch_ = 0;
    int64_t position_ = 0;
    Rng rng_;
    Rng::State epoch_rng_{};      // rng_ before drawing perm_
    std::vector<uint32_t> perm_;  // shuffled mode: this epoch's order of the windows
};

}  // namespace mslm
