// A caching allocator: keeps freed blocks and hands them out again instead of returning them to
// the backend, so repeated allocations of similar sizes (a decoder re-started for every request, a
// prefill scratch that grows and shrinks) cost no cudaMalloc / cudaFree — each of which
// synchronises the device. The GPU inference path allocates through cuda_caching_allocator().
//
// Sizes are rounded up to a multiple of 512 bytes (1 MiB above 1 MiB: fewer distinct sizes, so
// more reuse). A request takes the smallest cached block that fits, provided the block is at most
// twice the rounded request (or the request plus 1 MiB, whichever is larger), so a small request
// never pins a huge block. Blocks are never split. When the backend fails, the cache is emptied
// and the request retried once. Not thread-safe: one allocator per device and thread of use.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <unordered_map>

namespace mslm {

struct CachingAllocatorStats {
    size_t in_use = 0;       // bytes of blocks handed out (rounded sizes)
    size_t cached = 0;       // bytes of free blocks held
    size_t peak_in_use = 0;
    size_t peak_reserved = 0;  // in_use + cached, at its highest
    int64_t allocations = 0;   // allocate() calls
    int64_t cache_hits = 0;    // served from the cache
    int64_t backend_allocs = 0, backend_frees = 0;
};

class CachingAllocator {
public:
    using AllocFn = std::function<void*(size_t)>;  // throws (or returns null) when out of memory
    using FreeFn = std::function<void(void*)>;

    CachingAllocator(AllocFn alloc, FreeFn free) : alloc_(std::move(alloc)), free_(std::move(free)) {}
    CachingAllocator(const CachingAllocator&) = delete;
    CachingAllocator& operator=(const CachingAllocator&) = delete;
    ~CachingAllocator();

    static size_t round_size(size_t bytes);

    void* allocate(size_t bytes);       // 0 bytes: a block of the smallest size
    void deallocate(void* p);           // p from allocate (null is ignored); the block is cached
    void empty_cache();                 // returns every cached block to the backend
    const CachingAllocatorStats& stats() const { return stats_; }

private:
    AllocFn alloc_;
    FreeFn free_;
    std::multimap<size_t, void*> free_blocks_;   // size => block
    std::unordered_map<void*, size_t> live_;     // block => size
    CachingAllocatorStats stats_;
};

// The process's allocator for GPU `device` (cudaMalloc / cudaFree on that device); throws on a
// build without CUDA.
CachingAllocator& cuda_caching_allocator(int device);

}  // namespace mslm
