// Few-row bf16 products, out (M, O) = x (M, I) · W (O, I)ᵀ: the skinny tensor-core kernel
// (ops::cuda::skinny_gemm, called directly) against ops::cuda::linear_forward with MSLM_SKINNY_GEMM=0
// (cuBLASLt), per shape and row count; "linear_forward" says which of the two it takes by default
// (skinny_gemm_preferred). Prints a markdown table of GPU µs a
// call (`iters` calls captured in a CUDA graph and replayed, as the decoder replays its step) and the
// weight stream's GB/s. The weights cycle over copies totalling ≥ 512 MiB, so every call reads them
// from HBM, as a decode step (hundreds of MB of weights a token) does. Built with the sm_90a kernels,
// two more columns: ops::cuda::rows_gemm (wgmma and TMA, rows_gemm.h) as a plain product, and with its
// RMSNorm prologue (what the decode step's norm kernel and product become); "-" where it refuses.
//   bench_cuda_skinny_gemm [--shapes 768x3352,1536x768,768x4096,2048x768,768x1280,768x768]
//                          [--rows 1,4,8,16,32,64] [--iters 200] [--peak-tbs 4.3]
// A shape is I x O (row length x output columns).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_args.h"
#include "core/rng.h"
#ifdef MSLM_HAVE_CUDA
#include "cuda_bench_util.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/skinny_gemm.h"
#ifdef MSLM_HAVE_SM90A
#include "ops/cuda/rows_gemm.h"
#endif
#endif

using namespace mslm;

int main(int argc, char** argv) {
    std::string shapes = "768x3352,1536x768,768x4096,2048x768,768x1280,768x768,2048x8512,4096x2048",
                rows = "1,4,8,16,32,64";
    int iters = 200;
    double peak_tbs = 4.3;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&] { return bench_args::value(argc, argv, i); };
        if (a == "--shapes")
            shapes = next();
        else if (a == "--rows")
            rows = next();
        else if (a == "--iters")
            iters = std::stoi(next());
        else if (a == "--peak-tbs")
            peak_tbs = std::stod(next());
        else {
            std::printf(
                "usage: bench_cuda_skinny_gemm [--shapes IxO,...] [--rows M,...] [--iters N] [--peak-tbs "
                "T]\n");
            return a == "--help" || a == "-h" ? 0 : 2;
        }
    }
#ifndef MSLM_HAVE_CUDA
    (void)iters, (void)peak_tbs;
    std::printf("bench_cuda_skinny_gemm: built without CUDA\n");
    return 0;
#else
    using namespace cuda_bench;
    if (!cuda_available()) {
        std::printf("bench_cuda_skinny_gemm: no CUDA GPU: %s\n", cuda_device_summary().c_str());
        return 0;
    }
    std::printf("%s\n\n", cuda_device_summary().c_str());
    std::printf(
        "| I x O | M | splits | cuBLASLt µs | skinny µs | skinny GB/s | of %.1f TB/s | speed-up | "
        "linear_forward | rows_gemm µs | rows_gemm + norm µs |\n",
        peak_tbs);
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
    cudaStream_t stream;
    check(cudaStreamCreate(&stream), "cudaStreamCreate");
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "cudaDeviceGetAttribute");
    Rng rng(5);
    std::vector<void*> owned;
    for (const std::string& shape : bench_args::split_list(shapes)) {
        const size_t xpos = shape.find('x');
        if (xpos == std::string::npos) {
            std::fprintf(stderr, "bench_cuda_skinny_gemm: shape \"%s\" is not IxO\n", shape.c_str());
            return 2;
        }
        const int64_t I = std::stoll(shape.substr(0, xpos)), O = std::stoll(shape.substr(xpos + 1));
        const size_t w_elems = size_t(I * O);
        const int copies = int(std::max<size_t>(1, (size_t(512) << 20) / (2 * w_elems) + 1));
        std::vector<uint16_t> host(w_elems);
        for (auto& v : host) v = encode<uint16_t>(rng.uniform(-1.0, 1.0));
        auto* W = static_cast<uint16_t*>(cuda_malloc(2 * w_elems * size_t(copies)));
        owned.push_back(W);
        for (int c = 0; c < copies; ++c)
            check(cudaMemcpy(W + size_t(c) * w_elems, host.data(), 2 * w_elems, cudaMemcpyHostToDevice),
                  "upload");
        std::vector<uint16_t> xh(size_t(64 * I));
        for (auto& v : xh) v = encode<uint16_t>(rng.uniform(-1.0, 1.0));
        uint16_t* x = upload(xh, owned);
        uint16_t* out = upload(std::vector<uint16_t>(size_t(64 * O)), owned);
        std::vector<uint16_t> nh(static_cast<size_t>(I));
        for (auto& v : nh) v = encode<uint16_t>(rng.uniform(0.5, 1.5));
        uint16_t* norm_w = upload(nh, owned);
        for (const std::string& r : bench_args::split_list(rows)) {
            const int64_t M = std::stoll(r);
            if (M < 1 || M > 64) {
                std::fprintf(stderr, "bench_cuda_skinny_gemm: rows %lld outside 1..64\n",
                             static_cast<long long>(M));
                return 2;
            }
            int c = 0;
            auto lt_op = [&] {
                ops::cuda::linear_forward(out, x, W + size_t(c) * w_elems,
                                          static_cast<const uint16_t*>(nullptr), M, I, O, stream);
                c = (c + 1) % copies;
            };
            auto sk_op = [&] {
                if (!ops::cuda::skinny_gemm(ops::cuda::SkinnyOut::Bf16, out, x, W + size_t(c) * w_elems, M, I,
                                            O, stream)) {
                    std::fprintf(stderr, "bench_cuda_skinny_gemm: the kernel refused %s at %lld rows\n",
                                 shape.c_str(), static_cast<long long>(M));
                    std::exit(1);
                }
                c = (c + 1) % copies;
            };
            setenv("MSLM_SKINNY_GEMM", "0", 1);
            const double lt = 1e3 * time_graph_ms(lt_op, stream, 3, iters);
            unsetenv("MSLM_SKINNY_GEMM");
            const double sk = 1e3 * time_graph_ms(sk_op, stream, 3, iters);
            const double gbs = 2.0 * double(w_elems) / (sk * 1e-6) / 1e9;
            std::string rows_us[2] = {"-", "-"};
#ifdef MSLM_HAVE_SM90A
            for (int norm = 0; norm < 2; ++norm) {
                ops::cuda::RowsGemm g;
                g.x = x;
                g.ld_x = I;
                g.norm_w = norm ? norm_w : nullptr;
                g.eps = 1e-5f;
                g.out = out;
                g.ld_out = O;
                g.M = M;
                g.I = I;
                g.O = O;
                g.w_constant = true;
                g.W = W;
                if (!ops::cuda::rows_gemm_takes(g)) continue;
                auto rows_op = [&] {
                    g.W = W + size_t(c) * w_elems;
                    ops::cuda::rows_gemm(g, stream);
                    c = (c + 1) % copies;
                };
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.2f", 1e3 * time_graph_ms(rows_op, stream, 3, iters));
                rows_us[norm] = buf;
            }
#endif
            std::printf("| %lld x %lld | %lld | %d | %.2f | %.2f | %.0f | %.0f%% | %.2fx | %s | %s | %s |\n",
                        static_cast<long long>(I), static_cast<long long>(O), static_cast<long long>(M),
                        ops::cuda::skinny_gemm_splits(I, O, sms), lt, sk, gbs, 100.0 * gbs / (peak_tbs * 1e3),
                        lt / sk, ops::cuda::skinny_gemm_preferred(M, I, O) ? "skinny" : "cuBLASLt",
                        rows_us[0].c_str(), rows_us[1].c_str());
        }
    }
    for (void* p : owned) cuda_free(p);
    return 0;
#endif
}
