#include "core/allocator.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

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

namespace {

size_t page_size() {
    static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return size;
}

}  // namespace

// One mapping of a header page (the mapping's length, for munmap) and the buffer after it.
void* zeroed_malloc(size_t bytes) {
    const size_t page = page_size();
    const size_t length = page + (bytes + page - 1) / page * page;
    void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    MSLM_CHECK(base != MAP_FAILED, "out of memory mapping {} bytes: {}", bytes, std::strerror(errno));
    std::memcpy(base, &length, sizeof(length));
    return static_cast<char*>(base) + page;
}

void zeroed_free(void* p) {
    if (!p) return;
    char* base = static_cast<char*>(p) - page_size();
    size_t length = 0;
    std::memcpy(&length, base, sizeof(length));
    ::munmap(base, length);
}

void release_pages(const void* p, size_t bytes) {
    const uintptr_t page = page_size();
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) / page * page;
    // Advice only: a failure leaves the pages resident, which costs memory but changes no value.
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace mslm
