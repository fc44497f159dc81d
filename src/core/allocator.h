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

// Zero-filled, page-aligned memory from an anonymous mapping: a page is backed by memory only once
// it is written, so the parts of a buffer that are never written cost no resident memory (the fp32
// slots of QLoRA's 4-bit base weights in a model's one parameter buffer, nn/parameters.h).
// Free with zeroed_free (make_zeroed does).
void* zeroed_malloc(size_t bytes);
void zeroed_free(void* p);

template <typename T>
AlignedBuffer<T> make_zeroed(size_t n) {
    return AlignedBuffer<T>(static_cast<T*>(zeroed_malloc(n * sizeof(T))), zeroed_free);
}

// Hands the whole pages inside [p, p + bytes) back to the OS (madvise MADV_DONTNEED): they stop
// counting in the resident set, and read as zero afterwards in anonymous memory (a read-only file
// mapping reads the file again). The partial pages at either end are left alone.
void release_pages(const void* p, size_t bytes);

}  // namespace mslm
