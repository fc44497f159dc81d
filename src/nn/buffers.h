// Freeing and measuring a module's activation buffers, for activation checkpointing: a layer's
// saved activations and backward scratch are released after use and rebuilt by recomputation.
#pragma once
#include <cstddef>
#include <vector>

namespace mslm {

template <typename... V>
void free_buffers(V&... v) {
    ((std::vector<typename V::value_type>().swap(v)), ...);
}

template <typename... V>
size_t buffer_bytes(const V&... v) {
    return (size_t{0} + ... + (v.capacity() * sizeof(typename V::value_type)));
}

}  // namespace mslm
