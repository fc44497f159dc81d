// The CPU thread pool used by every kernel. Sized to the hardware by default; MSLM_THREADS or
// set_num_threads (the CLI's --threads) override it.
#pragma once
#include <cstdint>
#include <functional>

namespace mslm {

int num_threads();
void set_num_threads(int n);

// Splits [0, n) into contiguous ranges of at least `grain` items and runs fn(begin, end) on the
// pool; returns when all ranges are done. Called from inside a pool worker it runs inline, so
// nested parallel_for never deadlocks. Ranges are a pure function of (n, grain, num_threads()),
// so a kernel that reduces per range is deterministic for a given thread count.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

}  // namespace mslm
