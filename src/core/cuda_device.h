// The few CUDA runtime calls the core needs, behind a header that compiles without CUDA. On a
// build without CUDA, or a machine without a GPU, cuda_available() is false and the rest throw.
#pragma once
#include <cstddef>
#include <string>

namespace mslm {

bool cuda_available();             // built with CUDA and at least one device is visible
std::string cuda_device_summary(); // "NVIDIA H200, 139.8 GiB, sm_90" or why there is none
void* cuda_malloc(size_t bytes);
void cuda_free(void* p);
enum class CopyKind { HostToDevice, DeviceToHost, DeviceToDevice };
void cuda_copy(void* dst, const void* src, size_t bytes, CopyKind kind);  // complete when it returns
void cuda_synchronize();

}  // namespace mslm
