// nn.Linear through cuBLASLt. The matrix products are cuBLASLt's (hand-written GEMMs would not
// come close on Hopper); ours are the row-major mapping (linear.h), the choice and caching of
// algorithms, the bias gradient and the zero-width corner cases.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/linear.h"
#include "ops/cuda/skinny_gemm.h"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

// NVIDIA's recommended cuBLASLt workspace for Hopper.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
// Candidates asked of the heuristic; the first acceptable one (see acceptable()) is used.
constexpr int kHeuristicResults = 16;

template <typename T>
void check_cublas(cublasStatus_t status, const char* what, const char* op) {
    MSLM_CHECK(status == CUBLAS_STATUS_SUCCESS, "cuBLASLt {}<{}>: {}: {} ({})", op, dtype_label<T>(), what,
               cublasLtGetStatusName(status), cublasLtGetStatusString(status));
}

template <typename T>
constexpr cudaDataType_t kDataType = std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;

// The largest power of two up to 256 that divides the address: cuBLASLt's kernels differ in the
// alignment they need, and the heuristic only offers those that the declared alignment allows.
uint32_t alignment(const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    return a == 0 ? 256u : uint32_t(std::min<uintptr_t>(a & (~a + 1), 256));
}

// Everything the algorithm choice depends on.
struct AlgoKey {
    int device;
    cudaDataType_t type, d_type;
    bool trans_a, trans_b;
    int64_t m, n, k, lda, ldb, ldd;
    cublasLtEpilogue_t epilogue;
    uint32_t align_a, align_b, align_d, align_bias;
    int64_t batch, stride_a, stride_b, stride_d;

    auto tie() const {
        return std::tie(device, type, d_type, trans_a, trans_b, m, n, k, lda, ldb, ldd, epilogue, align_a,
                        align_b, align_d, align_bias, batch, stride_a, stride_b, stride_d);
    }
    bool operator<(const AlgoKey& other) const { return tie() < other.tie(); }
};

// The process's cuBLASLt state: a handle per device, a workspace per device and stream (two
// streams running matmuls at once must not share one), and the algorithm per AlgoKey (nullopt:
// none exists). Created on first use; never freed, since freeing CUDA resources from static
// destructors races the CUDA runtime's own teardown at exit.
class LtContext {
public:
    static LtContext& instance() {
        static LtContext* context = new LtContext;
        return *context;
    }

    struct Session {
        cublasLtHandle_t handle;
        void* workspace;
    };

    template <typename T>
    Session session(int device, cudaStream_t stream, const char* op) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto h = handles_.find(device);
        if (h == handles_.end()) {
            cublasLtHandle_t handle = nullptr;
            check_cublas<T>(cublasLtCreate(&handle), "cublasLtCreate", op);
            h = handles_.emplace(device, handle).first;
        }
        auto w = workspaces_.find({device, stream});
        if (w == workspaces_.end()) {
            void* workspace = nullptr;
            check_cuda<T>(cudaMalloc(&workspace, kWorkspaceBytes), "cudaMalloc (cuBLASLt workspace)", op);
            w = workspaces_.emplace(std::make_pair(device, stream), workspace).first;
        }
        return {h->second, w->second};
    }

    // The cached algorithm for `key`, or `choose()`'s answer, cached.
    template <typename Choose>
    std::optional<cublasLtMatmulAlgo_t> algo(const AlgoKey& key, Choose choose) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = algos_.find(key);
        if (it == algos_.end()) it = algos_.emplace(key, choose()).first;
        return it->second;
    }

private:
    std::mutex mutex_;
    std::map<int, cublasLtHandle_t> handles_;
    std::map<std::pair<int, cudaStream_t>, void*> workspaces_;
    std::map<AlgoKey, std::optional<cublasLtMatmulAlgo_t>> algos_;
};

// RAII for the cuBLASLt descriptors of one call.
template <typename Handle, cublasStatus_t (*Destroy)(Handle)>
struct Owned {
    Handle h = nullptr;
    ~Owned() {
        if (h) Destroy(h);
    }
};
using MatmulDesc = Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using Layout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = Owned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// Split-K reductions that add partial sums in the output type (INPLACE, OUTPUT_TYPE) would
// accumulate in bf16; for bf16 outputs only unsplit algorithms and fp32 (compute type) reductions
// pass.
template <typename T>
bool acceptable(const cublasLtMatmulHeuristicResult_t& r) {
    if (r.state != CUBLAS_STATUS_SUCCESS) return false;
    if constexpr (std::is_same_v<T, float>) return true;
    uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
    size_t written = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                             sizeof(scheme), &written) != CUBLAS_STATUS_SUCCESS)
        return false;
    return scheme == CUBLASLT_REDUCTION_SCHEME_NONE || scheme == CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
}

// D = op(A) · op(B) + beta · D (+ bias along D's rows with epilogue BIAS), alpha = 1, fp32
// accumulation; D is fp32 instead of T when fp32_d. Returns false, having launched nothing, when
// cuBLASLt has no acceptable algorithm.
template <typename T>
bool try_matmul(const char* op, const ColumnMajorGemm& g, float beta, cublasLtEpilogue_t epilogue,
                const T* bias, cudaStream_t stream, bool fp32_d = false) {
    int device = 0;
    check_cuda<T>(cudaGetDevice(&device), "cudaGetDevice", op);
    const LtContext::Session session = LtContext::instance().session<T>(device, stream, op);

    MatmulDesc desc;
    check_cublas<T>(cublasLtMatmulDescCreate(&desc.h, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                    "cublasLtMatmulDescCreate", op);
    const cublasOperation_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    auto set_desc = [&](cublasLtMatmulDescAttributes_t attr, const void* value, size_t size) {
        check_cublas<T>(cublasLtMatmulDescSetAttribute(desc.h, attr, value, size),
                        "cublasLtMatmulDescSetAttribute", op);
    };
    set_desc(CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
    set_desc(CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
    set_desc(CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
    if (bias) set_desc(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));

    // Stored shapes: A is (k, m) when transposed, else (m, k); B is (n, k) or (k, n).
    Layout a, b, d;
    const cudaDataType_t d_type = fp32_d ? CUDA_R_32F : kDataType<T>;
    auto layout = [&](Layout& l, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t stride) {
        check_cublas<T>(cublasLtMatrixLayoutCreate(&l.h, type, uint64_t(rows), uint64_t(cols), ld),
                        "cublasLtMatrixLayoutCreate", op);
        if (g.batch > 1) {
            const auto count = static_cast<int32_t>(g.batch);
            check_cublas<T>(cublasLtMatrixLayoutSetAttribute(l.h, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                             sizeof(count)),
                            "cublasLtMatrixLayoutSetAttribute", op);
            check_cublas<T>(cublasLtMatrixLayoutSetAttribute(l.h, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                             &stride, sizeof(stride)),
                            "cublasLtMatrixLayoutSetAttribute", op);
        }
    };
    layout(a, kDataType<T>, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, g.lda, g.stride_a);
    layout(b, kDataType<T>, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, g.ldb, g.stride_b);
    layout(d, d_type, g.m, g.n, g.ldd, g.stride_d);

    const uint32_t align_a = alignment(g.a), align_b = alignment(g.b), align_d = alignment(g.d);
    const AlgoKey key{device,   kDataType<T>, d_type,     g.trans_a,  g.trans_b, g.m,     g.n,
                      g.k,      g.lda,        g.ldb,      g.ldd,      epilogue,  align_a, align_b,
                      align_d,  alignment(bias), g.batch, g.stride_a, g.stride_b, g.stride_d};
    const std::optional<cublasLtMatmulAlgo_t> algo = LtContext::instance().algo(key, [&] {
        Preference pref;
        check_cublas<T>(cublasLtMatmulPreferenceCreate(&pref.h), "cublasLtMatmulPreferenceCreate", op);
        auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* value, size_t size) {
            check_cublas<T>(cublasLtMatmulPreferenceSetAttribute(pref.h, attr, value, size),
                            "cublasLtMatmulPreferenceSetAttribute", op);
        };
        const uint64_t workspace = kWorkspaceBytes;
        set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
        set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a));
        set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b));
        set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof(align_d));
        set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d));
        // bf16: when every candidate splits K with a bf16 reduction, ask again for fp32 reductions only.
        std::optional<cublasLtMatmulAlgo_t> chosen;
        const int attempts = std::is_same_v<T, float> ? 1 : 2;
        for (int attempt = 0; attempt < attempts && !chosen; ++attempt) {
            const uint32_t schemes = attempt == 0 ? uint32_t(CUBLASLT_REDUCTION_SCHEME_MASK)
                                                  : uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
            set_pref(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes));
            cublasLtMatmulHeuristicResult_t results[kHeuristicResults] = {};
            int count = 0;
            const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
                session.handle, desc.h, a.h, b.h, d.h, d.h, pref.h, kHeuristicResults, results, &count);
            if (status == CUBLAS_STATUS_NOT_SUPPORTED) continue;
            check_cublas<T>(status, "cublasLtMatmulAlgoGetHeuristic", op);
            for (int i = 0; i < count && !chosen; ++i)
                if (acceptable<T>(results[i])) chosen = results[i].algo;
        }
        return chosen;
    });
    if (!algo) return false;

    const float alpha = 1.0f;
    check_cublas<T>(cublasLtMatmul(session.handle, desc.h, &alpha, g.a, a.h, g.b, b.h, &beta, g.d, d.h, g.d,
                                   d.h, &*algo, session.workspace, kWorkspaceBytes, stream),
                    "cublasLtMatmul", op);
    return true;
}

template <typename T>
void matmul(const char* op, const ColumnMajorGemm& g, float beta, cudaStream_t stream) {
    MSLM_CHECK(try_matmul<T>(op, g, beta, CUBLASLT_EPILOGUE_DEFAULT, nullptr, stream),
               "cuBLASLt {}<{}>: no algorithm for (m, n, k) = ({}, {}, {})", op, dtype_label<T>(), g.m, g.n,
               g.k);
}

// bf16 outputs. With a bf16 D, cuBLASLt rounds the product to bf16 before it adds the BIAS epilogue's
// bias or beta·C (measured on the H200: errors up to 0.85 bf16 ulp at K = 1, where one rounding
// gives at most 0.5). So for bf16 the product goes to an fp32 buffer and this kernel adds the bias
// or the old value and rounds once: out[i] = bf16(acc[i] + b[i % O]) or bf16(out[i] + acc[i]).
template <typename D>
__global__ void round_once_kernel(D* out, const float* acc, const D* bias, int64_t n, int64_t O,
                                  bool accumulate) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = acc[i];
        if (bias) v += to_f32(bias[i % O]);
        if (accumulate) v = to_f32(out[i]) + v;
        out[i] = from_f32<D>(v);
    }
}

// g's D (n_elems contiguous values of T = bf16) = round(bias + product) or round(D + product).
template <typename T>
void matmul_round_once(const char* op, const ColumnMajorGemm& g, int64_t n_elems, int64_t O, const T* bias,
                       bool accumulate, cudaStream_t stream) {
    using D = device_t<T>;
    float* acc = nullptr;
    check_cuda<T>(cudaMallocAsync(reinterpret_cast<void**>(&acc), size_t(n_elems) * sizeof(float), stream),
                  "cudaMallocAsync (fp32 product)", op);
    ColumnMajorGemm g32 = g;
    g32.d = acc;
    MSLM_CHECK(try_matmul<T>(op, g32, 0.0f, CUBLASLT_EPILOGUE_DEFAULT, nullptr, stream, true),
               "cuBLASLt {}<{}>: no algorithm for (m, n, k) = ({}, {}, {}) with an fp32 output", op,
               dtype_label<T>(), g.m, g.n, g.k);
    round_once_kernel<<<grid_size<T>(n_elems, op), kThreads, 0, stream>>>(
        static_cast<D*>(g.d), acc, reinterpret_cast<const D*>(bias), n_elems, O, accumulate);
    check_launch<T>("round_once");
    check_cuda<T>(cudaFreeAsync(acc, stream), "cudaFreeAsync (fp32 product)", op);
}

// out (N, O) = b broadcast over rows, or 0 when b is null.
template <typename D>
__global__ void broadcast_rows_kernel(D* out, const D* b, int64_t N, int64_t O) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * O; i += stride)
        out[i] = b ? b[i % O] : from_f32<D>(0.0f);
}

// db (O) += Σ_n dout (N, O). A block owns kColumns columns; thread (x, y) sums, in order, rows y,
// y + kRowPhases, ... of its column, then a column's kRowPhases partial sums are added in a fixed
// tree and added to db once. Fixed partition, no atomics: deterministic. Warps read 32 adjacent
// columns of a row.
constexpr int kColumns = 32, kRowPhases = 32;

template <typename D>
__global__ void bias_grad_kernel(D* db, const D* dout, int64_t N, int64_t O) {
    __shared__ float partial[kRowPhases][kColumns + 1];
    const int64_t o = int64_t(blockIdx.x) * kColumns + threadIdx.x;
    float sum = 0.0f;
    if (o < O)
        for (int64_t n = threadIdx.y; n < N; n += kRowPhases) sum += to_f32(dout[n * O + o]);
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    for (int half = kRowPhases / 2; half > 0; half /= 2) {
        if (int(threadIdx.y) < half)
            partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + half][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && o < O) db[o] = from_f32<D>(to_f32(db[o]) + partial[0][threadIdx.x]);
}

void check_sizes(const char* op, int64_t N, int64_t I, int64_t O) {
    MSLM_CHECK(N >= 0 && I >= 0 && O >= 0, "CUDA {}: negative size N={} I={} O={}", op, N, I, O);
}

}  // namespace

template <typename T>
void linear_forward(T* out, const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O, void* stream,
                    bool w_constant) {
    const char* op = "linear_forward";
    check_sizes(op, N, I, O);
    if (N == 0 || O == 0) return;
    using D = device_t<T>;
    auto s = static_cast<cudaStream_t>(stream);
    auto broadcast = [&] {
        broadcast_rows_kernel<<<grid_size<T>(N * O, op), kThreads, 0, s>>>(
            reinterpret_cast<D*>(out), reinterpret_cast<const D*>(b), N, O);
        check_launch<T>("broadcast_rows");
    };
    if (I == 0) {  // an empty sum: out = b, or 0
        broadcast();
        return;
    }
    const ColumnMajorGemm g = linear_forward_gemm(out, x, W, N, I, O);
    if constexpr (!std::is_same_v<T, float>) {
        if (b) {
            matmul_round_once<T>(op, g, N * O, O, b, false, s);
            return;
        }
        if (skinny_gemm_preferred(N, I, O) && skinny_gemm(SkinnyOut::Bf16, out, x, W, N, I, O, s, w_constant))
            return;
    }
    if (!b) {
        matmul<T>(op, g, 0.0f, s);
        return;
    }
    if (try_matmul<T>(op, g, 0.0f, CUBLASLT_EPILOGUE_BIAS, b, s)) return;
    // No algorithm fuses the bias for this shape and alignment: out = b, then out += x · Wᵀ rounds
    // the same fp32 sum once, as the epilogue does.
    broadcast();
    matmul<T>(op, g, 1.0f, s);
}

template <typename T>
void linear_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N, int64_t I,
                     int64_t O, void* stream) {
    const char* op = "linear_backward";
    check_sizes(op, N, I, O);
    auto s = static_cast<cudaStream_t>(stream);
    const bool product = N > 0 && I > 0 && O > 0;  // else dx and dW get += 0 or are empty
    if constexpr (std::is_same_v<T, float>) {
        if (dx && product) matmul<T>(op, linear_dx_gemm(dx, dout, W, N, I, O), 1.0f, s);
        if (dW && product) matmul<T>(op, linear_dW_gemm(dW, dout, x, N, I, O), 1.0f, s);
    } else {  // += into bf16: one rounding (round_once_kernel)
        if (dx && product)
            matmul_round_once<T>(op, linear_dx_gemm(dx, dout, W, N, I, O), N * I, I, nullptr, true, s);
        if (dW && product)
            matmul_round_once<T>(op, linear_dW_gemm(dW, dout, x, N, I, O), O * I, I, nullptr, true, s);
    }
    if (db && N > 0 && O > 0) {
        using D = device_t<T>;
        const dim3 block(kColumns, kRowPhases);
        const auto blocks = unsigned((O + kColumns - 1) / kColumns);
        bias_grad_kernel<<<blocks, block, 0, s>>>(reinterpret_cast<D*>(db), reinterpret_cast<const D*>(dout),
                                                  N, O);
        check_launch<T>("bias_grad");
    }
}

template <typename T>
void linear_backward_dx(T* dx, const T* dout, const T* W, int64_t N, int64_t I, int64_t O, void* stream) {
    const char* op = "linear_backward_dx";
    check_sizes(op, N, I, O);
    if (N == 0 || I == 0) return;
    auto s = static_cast<cudaStream_t>(stream);
    if (O == 0) {  // an empty sum
        check_cuda<T>(cudaMemsetAsync(dx, 0, sizeof(T) * size_t(N * I), s), "cudaMemsetAsync", op);
        return;
    }
    matmul<T>(op, linear_dx_gemm(dx, dout, W, N, I, O), 0.0f, s);  // beta 0: one rounding, in cuBLASLt
}

void linear_backward_dW_f32(float* dW, const uint16_t* dout, const uint16_t* x, int64_t N, int64_t I,
                            int64_t O, void* stream) {
    const char* op = "linear_backward_dW_f32";
    check_sizes(op, N, I, O);
    if (N == 0 || I == 0 || O == 0) return;  // dW += 0 or empty
    const ColumnMajorGemm g = linear_dW_gemm(dW, dout, x, N, I, O);
    MSLM_CHECK(try_matmul<uint16_t>(op, g, 1.0f, CUBLASLT_EPILOGUE_DEFAULT, nullptr,
                                    static_cast<cudaStream_t>(stream), true),
               "cuBLASLt {}: no algorithm for (m, n, k) = ({}, {}, {}) with an fp32 output", op, g.m, g.n,
               g.k);
}

void batched_linear_f32_out(float* out, int64_t ld_out, int64_t stride_out, const uint16_t* x, int64_t ld_x,
                            int64_t stride_x, const uint16_t* W, int64_t ld_W, int64_t stride_W, int64_t batch,
                            int64_t M, int64_t I, int64_t O, void* stream) {
    const char* op = "batched_linear_f32_out";
    check_sizes(op, M, I, O);
    MSLM_CHECK(batch >= 1 && batch <= INT32_MAX && ld_x >= I && ld_W >= I && ld_out >= O,
               "{}: batch {} with leading dimensions x {}, W {}, out {} for (M, I, O) = ({}, {}, {})", op, batch,
               ld_x, ld_W, ld_out, M, I, O);
    if (M == 0 || O == 0) return;
    MSLM_CHECK(I > 0, "{}: an empty sum (I = 0)", op);
    // out_bᵀ (O, M) = W_b (O, I) · x_bᵀ: W's rows are column-major (I, O), transposed by the op.
    ColumnMajorGemm g{W, x, out, true, false, O, M, I, ld_W, ld_x, ld_out};
    g.batch = batch;
    g.stride_a = stride_W;
    g.stride_b = stride_x;
    g.stride_d = stride_out;
    MSLM_CHECK(try_matmul<uint16_t>(op, g, 0.0f, CUBLASLT_EPILOGUE_DEFAULT, nullptr, static_cast<cudaStream_t>(stream),
                                    true),
               "cuBLASLt {}: no algorithm for {} × (m, n, k) = ({}, {}, {}) with an fp32 output", op, batch, g.m, g.n,
               g.k);
}

void linear_forward_accumulate(uint16_t* out, const uint16_t* x, const uint16_t* W, int64_t N, int64_t I,
                               int64_t O, void* stream, bool w_constant) {
    const char* op = "linear_forward_accumulate";
    check_sizes(op, N, I, O);
    if (N == 0 || O == 0 || I == 0) return;  // an empty sum adds nothing
    if (skinny_gemm_preferred(N, I, O) &&
        skinny_gemm(SkinnyOut::Bf16Add, out, x, W, N, I, O, stream, w_constant))
        return;
    matmul<uint16_t>(op, linear_forward_gemm(out, x, W, N, I, O), 1.0f, static_cast<cudaStream_t>(stream));
}

void linear_forward_f32_out(float* out, const uint16_t* x, const uint16_t* W, int64_t N, int64_t I, int64_t O,
                            void* stream, bool w_constant) {
    const char* op = "linear_forward_f32_out";
    check_sizes(op, N, I, O);
    if (N == 0 || O == 0) return;
    auto s = static_cast<cudaStream_t>(stream);
    if (I == 0) {  // an empty sum
        check_cuda<uint16_t>(cudaMemsetAsync(out, 0, sizeof(float) * size_t(N * O), s), "cudaMemsetAsync", op);
        return;
    }
    if (skinny_gemm_preferred(N, I, O) && skinny_gemm(SkinnyOut::F32, out, x, W, N, I, O, s, w_constant))
        return;
    const ColumnMajorGemm g = linear_forward_gemm(out, x, W, N, I, O);
    MSLM_CHECK(try_matmul<uint16_t>(op, g, 0.0f, CUBLASLT_EPILOGUE_DEFAULT, nullptr, s, true),
               "cuBLASLt {}: no algorithm for (m, n, k) = ({}, {}, {}) with an fp32 output", op, g.m, g.n, g.k);
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t,
                                    int64_t, void*, bool);
template void linear_forward<uint16_t>(uint16_t*, const uint16_t*, const uint16_t*, const uint16_t*, int64_t,
                                       int64_t, int64_t, void*, bool);
template void linear_backward_dx<float>(float*, const float*, const float*, int64_t, int64_t, int64_t, void*);
template void linear_backward_dx<uint16_t>(uint16_t*, const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t,
                                           void*);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                     int64_t, int64_t, int64_t, void*);
template void linear_backward<uint16_t>(uint16_t*, uint16_t*, uint16_t*, const uint16_t*, const uint16_t*,
                                        const uint16_t*, int64_t, int64_t, int64_t, void*);

}  // namespace mslm::ops::cuda
