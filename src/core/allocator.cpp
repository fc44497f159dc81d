#include "core/allocator.h"

#include <cstdlib>
#include <string_view>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/error.h"

namespace mslm {

namespace {

// Buffers this large are weights, KV caches or activations that kernels stream through. They get
// 2 MiB alignment and are offered to the kernel's transparent huge pages: with 4 KiB pages a
// batch-1 decode that streams ~250 MB of weights per token walks ~60K page-table entries, and in
// a virtual machine each TLB miss is a two-level (nested) walk. Where THP is "madvise" (the
// Debian default) nothing else would give these buffers huge pages.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugeThreshold = size_t(4) << 20;

// MSLM_HUGEPAGES=0 turns the advice off (for measuring what it buys).
bool huge_pages_wanted() {
    static const bool wanted = [] {
        const char* v = std::getenv("MSLM_HUGEPAGES");
        return v == nullptr || std::string_view(v) != "0";
    }();
    return wanted;
}

}  // namespace

void* aligned_malloc(size_t bytes) {
    size_t align = bytes >= kHugeThreshold && huge_pages_wanted() ? kHugePage : kCpuAlignment;
    size_t rounded = (bytes + align - 1) / align * align;
    if (rounded == 0) rounded = kCpuAlignment;
    void* p = std::aligned_alloc(align, rounded);
    MSLM_CHECK(p != nullptr, "out of memory allocating {} bytes", bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Advice only: a kernel without THP, or with it set to "never", ignores it.
    if (align == kHugePage) (void)madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return p;
}

void aligned_free(void* p) { std::free(p); }

}  // namespace mslm
