// Embedding kernels. Forward: a grid-stride copy of 16-byte packs (4 × f32, 8 × bf16) when rows and
// pointers allow it, one element at a time otherwise. Backward: ids become sort keys (a bad id the
// sentinel V, sorted last and skipped), CUB's stable radix sort groups equal ids with their
// positions in increasing order, and the block at the start of each run of one id sums that run's
// rows of dout in position order, in fp32, and adds the sum to the table row once. No float atomics,
// so the result is bitwise reproducible; a very frequent id makes one block walk a long run.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/embedding.h"
#include "ops/cuda/reduce.cuh"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

constexpr size_t kAlign = 256;  // of each workspace part (CUB's temporary storage wants 256)

size_t align_up(size_t bytes) {
    return (bytes + kAlign - 1) / kAlign * kAlign;
}

// Radix sort bits that hold every key in [0, vocab], the sentinel vocab included.
int key_bits(int64_t vocab) {
    int bits = 1;
    while (bits < 31 && (int64_t(1) << bits) <= vocab) ++bits;
    return bits;
}

void check_shape(const char* kernel, int64_t N, int64_t vocab, int64_t D) {
    MSLM_CHECK(N >= 0 && vocab >= 0 && D >= 0, "CUDA kernel {}: negative shape (N {}, V {}, D {})", kernel, N,
               vocab, D);
    MSLM_CHECK(N < INT32_MAX && vocab < INT32_MAX, "CUDA kernel {}: N = {} or V = {} does not fit int32", kernel,
               N, vocab);
}

template <int V, typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* ids, const T* table, int64_t N, int64_t vocab,
                                         int64_t D, IndexStatus* status) {
    // The decode step's next kernel (launched with programmatic dependent launch) may start now and
    // prefetch its weights; it reads these rows only after its wait.
    pdl_trigger();
    const int64_t packs_per_row = D / V, total = N * packs_per_row;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < total; p += stride) {
        const int64_t n = p / packs_per_row, c = (p - n * packs_per_row) * V;
        const int32_t id = ids[n];
        Pack<T, V> pack;
        if (id >= 0 && id < vocab) {
            pack = load<V>(table + id * D + c);
        } else {
#pragma unroll
            for (int e = 0; e < V; ++e) pack.v[e] = from_f32<T>(NAN);
            if (c == 0) record_bad_index(status, n, id);
        }
        store<V>(out + n * D + c, pack);
    }
}

// keys (N) = ids with a bad one replaced by vocab; positions (N) = 0, 1, ..., N − 1.
__global__ void embedding_keys_kernel(uint32_t* keys, int32_t* positions, const int32_t* ids, int64_t N,
                                      int64_t vocab, IndexStatus* status) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < N; n += stride) {
        const int32_t id = ids[n];
        const bool good = id >= 0 && id < vocab;
        if (!good) record_bad_index(status, n, id);
        keys[n] = good ? uint32_t(id) : uint32_t(vocab);
        positions[n] = int32_t(n);
    }
}

// Block i sums the run of equal keys that starts at sorted index i, if one does.
template <int V, typename T>
__global__ void embedding_runs_kernel(T* dtable, const T* dout, const uint32_t* keys, const int32_t* positions,
                                      int64_t N, int64_t vocab, int64_t D) {
    const int64_t i = blockIdx.x;
    const uint32_t id = keys[i];
    if (id >= vocab || (i > 0 && keys[i - 1] == id)) return;
    for (int64_t c = int64_t(threadIdx.x) * V; c < D; c += int64_t(blockDim.x) * V) {
        float acc[V] = {};
        for (int64_t j = i; j < N && keys[j] == id; ++j) {
            const Pack<T, V> g = load<V>(dout + int64_t(positions[j]) * D + c);
#pragma unroll
            for (int e = 0; e < V; ++e) acc[e] += to_f32(g.v[e]);
        }
        T* dst = dtable + int64_t(id) * D + c;
        Pack<T, V> row = load<V>(dst);
#pragma unroll
        for (int e = 0; e < V; ++e) row.v[e] = from_f32<T>(to_f32(row.v[e]) + acc[e]);
        store<V>(dst, row);
    }
}

size_t sort_temp_bytes(int64_t N, int64_t vocab, cudaStream_t s) {
    size_t bytes = 0;
    const cudaError_t err = cub::DeviceRadixSort::SortPairs(
        nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
        static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), int(N), 0, key_bits(vocab), s);
    MSLM_CHECK(err == cudaSuccess, "CUDA kernel embedding_backward: radix sort size query: {}",
               cudaGetErrorString(err));
    return bytes;
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t D,
                       IndexStatus* status, void* stream) {
    const char* kernel = "embedding_forward";
    check_shape(kernel, N, V, D);
    auto s = static_cast<cudaStream_t>(stream);
    if (status) index_status_clear(status, stream);
    if (N == 0 || D == 0) return;
    using Dev = device_t<T>;
    constexpr int P = kVec<Dev>;
    auto o = reinterpret_cast<Dev*>(out);
    auto t = reinterpret_cast<const Dev*>(table);
    if (D % P == 0 && aligned16(out) && aligned16(table)) {
        embedding_forward_kernel<P><<<grid_size<T>(N * (D / P), kernel), kThreads, 0, s>>>(o, ids, t, N, V, D,
                                                                                            status);
    } else {
        embedding_forward_kernel<1><<<grid_size<T>(N * D, kernel), kThreads, 0, s>>>(o, ids, t, N, V, D, status);
    }
    check_launch<T>(kernel);
}

size_t embedding_backward_workspace_bytes(int64_t N, int64_t V) {
    check_shape("embedding_backward", N, V, 0);
    return 4 * align_up(size_t(N) * sizeof(int32_t)) + align_up(sort_temp_bytes(N, V, nullptr));
}

template <typename T>
void embedding_backward(T* dtable, void* workspace, const T* dout, const int32_t* ids, int64_t N, int64_t V,
                        int64_t D, IndexStatus* status, void* stream) {
    const char* kernel = "embedding_backward";
    check_shape(kernel, N, V, D);
    auto s = static_cast<cudaStream_t>(stream);
    if (status) index_status_clear(status, stream);
    if (N == 0 || D == 0) return;
    MSLM_CHECK(workspace, "CUDA kernel {}: needs a workspace", kernel);

    // workspace: keys, sorted keys, positions, sorted positions (N each), CUB's temporary storage
    const size_t part = align_up(size_t(N) * sizeof(int32_t));
    auto* base = static_cast<char*>(workspace);
    auto* keys = reinterpret_cast<uint32_t*>(base);
    auto* sorted_keys = reinterpret_cast<uint32_t*>(base + part);
    auto* positions = reinterpret_cast<int32_t*>(base + 2 * part);
    auto* sorted_positions = reinterpret_cast<int32_t*>(base + 3 * part);
    void* temp = base + 4 * part;
    size_t temp_bytes = sort_temp_bytes(N, V, s);

    embedding_keys_kernel<<<grid_size<T>(N, kernel), kThreads, 0, s>>>(keys, positions, ids, N, V, status);
    check_launch<T>(kernel);
    const cudaError_t err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, sorted_keys, positions,
                                                            sorted_positions, int(N), 0, key_bits(V), s);
    check_cuda<T>(err, "radix sort", kernel);

    using Dev = device_t<T>;
    constexpr int P = kVec<Dev>;
    auto dt = reinterpret_cast<Dev*>(dtable);
    auto g = reinterpret_cast<const Dev*>(dout);
    if (D % P == 0 && aligned16(dtable) && aligned16(dout)) {
        embedding_runs_kernel<P><<<unsigned(N), row_threads(D, P), 0, s>>>(dt, g, sorted_keys, sorted_positions,
                                                                           N, V, D);
    } else {
        embedding_runs_kernel<1><<<unsigned(N), row_threads(D, 1), 0, s>>>(dt, g, sorted_keys, sorted_positions,
                                                                           N, V, D);
    }
    check_launch<T>(kernel);
}

void embedding_check(const IndexStatus* status, int64_t V, void* stream) {
    const IndexReport report = index_status_read(status, stream);
    MSLM_CHECK(!report.bad, "embedding: token id {} at position {} is outside the vocabulary [0, {})",
               report.index, report.position, V);
}

#define MSLM_INSTANTIATE(T)                                                                                  \
    template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t, IndexStatus*, \
                                       void*);                                                               \
    template void embedding_backward<T>(T*, void*, const T*, const int32_t*, int64_t, int64_t, int64_t,       \
                                        IndexStatus*, void*);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
