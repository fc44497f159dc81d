#include "core/allocator.h"

#include <cstdlib>

#include "core/error.h"

namespace mslm {

void* aligned_malloc(size_t bytes) {
    size_t rounded = (bytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
    if (rounded == 0) rounded = kCpuAlignment;
    void* p = std::aligned_alloc(kCpuAlignment, rounded);
    MSLM_CHECK(p != nullptr, "out of memory allocating {} bytes", bytes);
    return p;
}

void aligned_free(void* p) { std::free(p); }

}  // namespace mslm
