// The quickstart job until the full trainer lands (issue 4): a byte-level `tiny` hybrid model
// trained with plain SGD on a text file, showing the forward and backward pass at work — the
// training loss and the held-out loss both fall from log(256).
#pragma once
#include <cstdint>
#include <string>

namespace mslm {

struct QuickstartOptions {
    std::string data;          // a UTF-8 text file, read as bytes
    std::string preset = "tiny";
    int64_t steps = 60;
    int64_t batch = 8;
    int64_t seq_len = 128;
    double lr = 0.5;
    double clip = 1.0;         // global gradient-norm clip
    uint64_t seed = 0;
    int64_t log_every = 10;
};

struct QuickstartResult {
    double first_loss, last_loss, val_before, val_after, tokens_per_second;
};

QuickstartResult run_quickstart(const QuickstartOptions& opt);

}  // namespace mslm
