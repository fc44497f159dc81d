#include "core/caching_allocator.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <vector>

#include "core/error.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace mslm {

namespace {
constexpr size_t kSmallQuantum = 512;
constexpr size_t kLargeQuantum = size_t(1) << 20;
}  // namespace

size_t CachingAllocator::round_size(size_t bytes) {
    const size_t q = bytes > kLargeQuantum ? kLargeQuantum : kSmallQuantum;
    return std::max<size_t>(q, (bytes + q - 1) / q * q);
}

CachingAllocator::~CachingAllocator() {
    empty_cache();
    // Blocks still handed out belong to objects that outlive the allocator only at process exit;
    // return them too rather than leak device memory.
    for (auto& [p, size] : live_) free_(p);
}

void* CachingAllocator::allocate(size_t bytes) {
    const size_t size = round_size(bytes);
    ++stats_.allocations;
    void* p = nullptr;
    auto it = free_blocks_.lower_bound(size);
    if (it != free_blocks_.end() && it->first <= std::max(2 * size, size + kLargeQuantum)) {
        p = it->second;
        const size_t got = it->first;
        free_blocks_.erase(it);
        stats_.cached -= got;
        live_[p] = got;
        stats_.in_use += got;
        ++stats_.cache_hits;
    } else {
        auto attempt = [&]() -> void* {
            try {
                return alloc_(size);
            } catch (const Error&) {
                return nullptr;
            }
        };
        p = attempt();
        if (!p && !free_blocks_.empty()) {
            empty_cache();
            p = attempt();
        }
        MSLM_CHECK(p, "out of device memory: could not allocate {:.1f} MiB ({:.1f} MiB in use)",
                   size / 1048576.0, stats_.in_use / 1048576.0);
        ++stats_.backend_allocs;
        live_[p] = size;
        stats_.in_use += size;
    }
    stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.in_use + stats_.cached);
    return p;
}

void CachingAllocator::deallocate(void* p) {
    if (!p) return;
    auto it = live_.find(p);
    MSLM_CHECK(it != live_.end(), "CachingAllocator::deallocate: {} was not allocated here", p);
    const size_t size = it->second;
    live_.erase(it);
    stats_.in_use -= size;
    stats_.cached += size;
    free_blocks_.emplace(size, p);
}

void CachingAllocator::empty_cache() {
    for (auto& [size, p] : free_blocks_) {
        free_(p);
        ++stats_.backend_frees;
    }
    free_blocks_.clear();
    stats_.cached = 0;
}

CachingAllocator& cuda_caching_allocator(int device) {
#ifdef MSLM_HAVE_CUDA
    // Never destroyed: freeing device memory from a static destructor races the CUDA runtime's own
    // teardown at exit (as linear.cu's cuBLASLt state).
    static std::mutex mutex;
    static auto& per_device = *new std::vector<std::unique_ptr<CachingAllocator>>;
    std::lock_guard<std::mutex> lock(mutex);
    MSLM_CHECK(device >= 0 && device < 1024, "cuda_caching_allocator: device {}", device);
    if (per_device.size() <= static_cast<size_t>(device)) per_device.resize(static_cast<size_t>(device) + 1);
    auto& a = per_device[static_cast<size_t>(device)];
    if (!a)
        a = std::make_unique<CachingAllocator>(
            [device](size_t bytes) {
                int current = 0;
                cudaGetDevice(&current);
                cudaSetDevice(device);
                void* p = nullptr;
                const cudaError_t err = cudaMalloc(&p, bytes);
                cudaSetDevice(current);
                if (err != cudaSuccess) {
                    cudaGetLastError();  // clear the sticky-free error state of a failed malloc
                    return static_cast<void*>(nullptr);
                }
                return p;
            },
            [](void* p) { cudaFree(p); });
    return *a;
#else
    fail("--device cuda:{}: this build of mamba-slm has no CUDA support", device);
#endif
}

}  // namespace mslm
