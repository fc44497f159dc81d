#include "ops/cuda/index_status.h"

#include <cuda_runtime.h>

#include "core/error.h"

namespace mslm::ops::cuda {

namespace {

void check(cudaError_t err, const char* what) {
    MSLM_CHECK(err == cudaSuccess, "CUDA index status: {}: {}", what, cudaGetErrorString(err));
}

}  // namespace

void index_status_clear(IndexStatus* status, void* stream) {
    auto s = static_cast<cudaStream_t>(stream);
    check(cudaMemsetAsync(&status->first_bad, 0xff, sizeof(status->first_bad), s), "cudaMemsetAsync");
    check(cudaMemsetAsync(&status->count, 0, sizeof(status->count), s), "cudaMemsetAsync");
}

IndexReport index_status_read(const IndexStatus* status, void* stream) {
    auto s = static_cast<cudaStream_t>(stream);
    IndexStatus host{};
    check(cudaMemcpyAsync(&host, status, sizeof(host), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    IndexReport report;
    report.count = static_cast<int64_t>(host.count);
    if (host.first_bad != ~0ull) {
        report.bad = true;
        report.position = static_cast<int64_t>(host.first_bad >> 32);
        report.index = static_cast<int32_t>(static_cast<uint32_t>(host.first_bad & 0xffffffffu));
    }
    return report;
}

}  // namespace mslm::ops::cuda
