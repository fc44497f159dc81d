// The host half of ops/cuda/adamw.h, compiled in every build (no CUDA needed).
#include <algorithm>

#include "core/error.h"
#include "nn/parameters.h"
#include "ops/cuda/adamw.h"

namespace mslm::ops::cuda {

std::vector<uint8_t> adamw_decay_mask(const std::vector<ParamSpec>& specs, int64_t total) {
    MSLM_CHECK(total >= 0, "adamw_decay_mask: negative buffer length {}", total);
    std::vector<uint8_t> mask(static_cast<size_t>(total), 0);
    for (const ParamSpec& s : specs) {
        MSLM_CHECK(s.numel >= 0 && static_cast<int64_t>(s.offset) + s.numel <= total,
                   "adamw_decay_mask: parameter {} ({} elements at {}) ends past the buffer's {}", s.name,
                   s.numel, s.offset, total);
        if (s.decay) std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(s.offset), s.numel, uint8_t(1));
    }
    return mask;
}

}  // namespace mslm::ops::cuda
