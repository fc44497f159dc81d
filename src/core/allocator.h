// Aligned host memory. Every CPU buffer the library allocates is 64-byte aligned (a cache line,
// one AVX-512 vector) so kernels can use aligned loads on whole rows.
#pragma once
#include <cstddef>
#include <memory>

namespace mslm {

constexpr size_t kCpuAlignment = 64;

void* aligned_malloc(size_t bytes);  // throws mslm::Error when out of memory; 0 bytes is fine
void aligned_free(void* p);

// Owning buffer of n elements of T, aligned, not initialised.
template <typename T>
using AlignedBuffer = std::unique_ptr<T[], void (*)(void*)>;

template <typename T>
AlignedBuffer<T> make_aligned(size_t n) {
    return AlignedBuffer<T>(static_cast<T*>(aligned_malloc(n * sizeof(T))), aligned_free);
}

}  // namespace mslm
