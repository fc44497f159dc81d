// CachingAllocator over a counting host backend: reuse, the fit rule, statistics and the retry
// after an out-of-memory failure.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <set>

#include "core/caching_allocator.h"
#include "core/error.h"

namespace mslm {
namespace {

struct Backend {
    std::set<void*> live;
    size_t bytes = 0, limit = size_t(1) << 40;
    CachingAllocator make() {
        return CachingAllocator(
            [this](size_t n) -> void* {
                if (bytes + n > limit) return nullptr;
                void* p = std::malloc(n);
                live.insert(p);
                bytes += n;
                sizes[p] = n;
                return p;
            },
            [this](void* p) {
                live.erase(p);
                bytes -= sizes[p];
                std::free(p);
            });
    }
    std::map<void*, size_t> sizes;
};

TEST(CachingAllocator, RoundsSizes) {
    EXPECT_EQ(CachingAllocator::round_size(0), 512u);
    EXPECT_EQ(CachingAllocator::round_size(1), 512u);
    EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
    EXPECT_EQ(CachingAllocator::round_size(1 << 20), size_t(1) << 20);
    EXPECT_EQ(CachingAllocator::round_size((1 << 20) + 1), size_t(2) << 20);
}

TEST(CachingAllocator, ReusesFreedBlocksWithoutCallingTheBackend) {
    Backend b;
    CachingAllocator a = b.make();
    void* p = a.allocate(1000);
    a.deallocate(p);
    void* q = a.allocate(900);  // same rounded size
    EXPECT_EQ(p, q);
    EXPECT_EQ(a.stats().backend_allocs, 1);
    EXPECT_EQ(a.stats().cache_hits, 1);
    EXPECT_EQ(a.stats().in_use, 1024u);
    a.deallocate(q);
    EXPECT_EQ(a.stats().in_use, 0u);
    EXPECT_EQ(a.stats().cached, 1024u);
    a.empty_cache();
    EXPECT_TRUE(b.live.empty());
    EXPECT_EQ(a.stats().backend_frees, 1);
}

TEST(CachingAllocator, SmallRequestDoesNotPinAHugeBlock) {
    Backend b;
    CachingAllocator a = b.make();
    void* big = a.allocate(64 << 20);
    a.deallocate(big);
    void* small = a.allocate(4096);  // 64 MiB > max(2·4 KiB, 4 KiB + 1 MiB): not reused
    EXPECT_NE(small, big);
    EXPECT_EQ(a.stats().backend_allocs, 2);
    void* mid = a.allocate(40 << 20);  // 64 MiB ≤ 2 · 40 MiB: reused
    EXPECT_EQ(mid, big);
    a.deallocate(small);
    a.deallocate(mid);
}

TEST(CachingAllocator, TakesTheSmallestFittingBlock) {
    Backend b;
    CachingAllocator a = b.make();
    void* p8 = a.allocate(8192);
    void* p4 = a.allocate(4096);
    void* p6 = a.allocate(6144);
    a.deallocate(p8);
    a.deallocate(p4);
    a.deallocate(p6);
    EXPECT_EQ(a.allocate(5000), p6);
    EXPECT_EQ(a.allocate(3000), p4);
    EXPECT_EQ(a.allocate(7000), p8);
    EXPECT_EQ(a.stats().peak_in_use, 8192u + 4096u + 6144u);
}

TEST(CachingAllocator, EmptiesTheCacheAndRetriesWhenTheBackendIsFull) {
    Backend b;
    b.limit = 3 << 20;
    CachingAllocator a = b.make();
    void* p = a.allocate(2 << 20);
    a.deallocate(p);  // cached, 2 MiB of the 3 MiB backend
    void* q = a.allocate(3 << 20);  // does not fit beside it: the cache is emptied, then it fits
    EXPECT_NE(q, nullptr);
    EXPECT_EQ(a.stats().backend_frees, 1);
    EXPECT_THROW(a.allocate(1 << 20), Error);  // really full now: a clear error
    a.deallocate(q);
}

TEST(CachingAllocator, RejectsForeignPointers) {
    Backend b;
    CachingAllocator a = b.make();
    int x = 0;
    EXPECT_THROW(a.deallocate(&x), Error);
    a.deallocate(nullptr);
}

}  // namespace
}  // namespace mslm
