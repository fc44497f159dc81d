// Memory bandwidth of the quantized GPU GEMV (ops/cuda/quant_gemv.h) against the bf16 decode GEMV
// (model/cuda_decoder_kernels.h, decode_gemv: the bf16 decoder's product), per shape, weight format
// and batch: y (M, N) = x (M, K) · Wᵀ, fp32 outputs. Prints a markdown table. Times are GPU time per
// call: `iters` calls captured in a CUDA graph and replayed (as the decoder replays its step), so the
// host's launch cost is not in them.
//   bench_cuda_quant_gemv [--shapes 2048x8192,8192x2048,768x3072,3072x768] [--batch 1,4,16]
//                         [--iters 200] [--peak-tbs 4.3]
// Quantized weights run through both kernels: ops::cuda::quant_gemv, and the decode step's fused
// decode_gemv (what the GPU decoder calls for up to 8 rows). A shape is K x N (row length x rows). "bytes" is what one call must read or write: the weights
// (codes and scales, or bf16), x and y. The weights are cycled over copies totalling ≥ 512 MiB, so
// every call streams them from HBM, not from the 50 MiB L2. "of peak" is GB/s over --peak-tbs (the
// H200's copy bandwidth is ~4.3 TB/s of the 4.8 nominal).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_args.h"
#include "core/rng.h"
#ifdef MSLM_HAVE_CUDA
#include "cuda_bench_util.h"
#include "model/cuda_decoder_kernels.h"
#include "ops/cuda/quant_gemv.h"
#endif

using namespace mslm;

int main(int argc, char** argv) {
    std::string shapes = "2048x8192,8192x2048,2048x2048,768x3072,3072x768", batches = "1,4,16";
    int iters = 200;
    double peak_tbs = 4.3;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&] { return bench_args::value(argc, argv, i); };
        if (a == "--shapes")
            shapes = next();
        else if (a == "--batch")
            batches = next();
        else if (a == "--iters")
            iters = std::stoi(next());
        else if (a == "--peak-tbs")
            peak_tbs = std::stod(next());
        else {
            fmt::print(
                "usage: bench_cuda_quant_gemv [--shapes KxN,...] [--batch 1,4,16] [--iters 200] "
                "[--peak-tbs 4.3]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
#ifndef MSLM_HAVE_CUDA
    (void)iters, (void)peak_tbs;
    fmt::print("bench_cuda_quant_gemv: built without CUDA\n");
    return 0;
#else
    using namespace mslm::ops::cuda;
    if (!cuda_available()) {
        fmt::print("bench_cuda_quant_gemv: no GPU: {}\n", cuda_device_summary());
        return 0;
    }
    fmt::print("# quantized GEMV, {} — y (M, N) = x (M, K) · Wᵀ, fp32 out; weights cycled over ≥ 512 MiB\n\n",
               cuda_device_summary());
    fmt::print("| K x N | format | kernel | M | bytes/call | µs | GB/s | of {:.1f} TB/s | weight bytes vs bf16 |\n",
               peak_tbs);
    fmt::print("|---|---|---|---|---|---|---|---|---|\n");
    std::vector<void*> owned;
    cudaStream_t stream;
    cuda_bench::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    Rng rng(1);
    for (const std::string& sh : bench_args::split_list(shapes)) {
        const size_t x_at = sh.find('x');
        if (x_at == std::string::npos) {
            fmt::print(stderr, "--shapes: \"{}\" is not KxN\n", sh);
            return 1;
        }
        const int64_t K = std::stoll(sh.substr(0, x_at)), N = std::stoll(sh.substr(x_at + 1));
        std::vector<float> W(static_cast<size_t>(N * K));
        for (auto& v : W) v = static_cast<float>(0.02 * rng.normal());
        const double bf16_bytes = 2.0 * double(N) * double(K);
        struct Variant {
            const char* name;
            bool bf16;
            QuantHostWeight host;
        };
        std::vector<Variant> variants;
        variants.push_back({"bf16", true, {}});
        variants.push_back({"nf4", false, quant_weight_4bit(W.data(), N, K, QuantFormat::NF4, 64, false)});
        variants.push_back({"nf4+dq", false, quant_weight_4bit(W.data(), N, K, QuantFormat::NF4, 64, true)});
        variants.push_back({"fp4", false, quant_weight_4bit(W.data(), N, K, QuantFormat::FP4, 64, false)});
        variants.push_back({"int8", false, quant_weight_int8(W.data(), N, K)});
        for (const Variant& v : variants) {
            const double wbytes = v.bf16 ? bf16_bytes : double(v.host.stream_bytes());
            const size_t block = v.bf16 ? size_t(bf16_bytes) : v.host.device_bytes();
            const int copies = int(std::max<double>(1.0, std::ceil(double(512 << 20) / double(block))));
            std::vector<QuantWeight> qw;
            std::vector<const uint16_t*> bw;
            std::vector<uint16_t> wb;
            if (v.bf16) {
                wb.resize(W.size());
                for (size_t i = 0; i < W.size(); ++i) wb[i] = f32_to_bf16(W[i]);
            }
            for (int c = 0; c < copies; ++c) {
                void* p = cuda_malloc(block);
                owned.push_back(p);
                if (v.bf16) {
                    cuda_bench::check(cudaMemcpy(p, wb.data(), block, cudaMemcpyHostToDevice), "upload");
                    bw.push_back(static_cast<const uint16_t*>(p));
                } else {
                    qw.push_back(quant_weight_upload(v.host, p, nullptr));
                }
            }
            cuda_synchronize();
            for (const std::string& bs : bench_args::split_list(batches)) {
                const int64_t M = std::stoll(bs);
                std::vector<uint16_t> x(static_cast<size_t>(M * K));
                for (auto& e : x) e = f32_to_bf16(static_cast<float>(rng.uniform(-1.0, 1.0)));
                const uint16_t* dx = cuda_bench::upload(x, owned);
                float* dy = static_cast<float*>(cuda_malloc(sizeof(float) * size_t(M * N)));
                owned.push_back(dy);
                for (const char* kernel : {"decode_gemv", "quant_gemv"}) {
                    const bool fused = std::string(kernel) == "decode_gemv";
                    if (v.bf16 && !fused) continue;
                    if (fused && M > cuda_decoder_detail::kDecodeGemvMaxRows) continue;  // decode_gemv's limit
                    int call = 0;
                    auto op = [&] {
                        const int c = call++ % copies;
                        if (fused) {
                            cuda_decoder_detail::DecodeGemv a;
                            a.x = dx;
                            a.ld_x = K;
                            if (v.bf16)
                                a.W = bw[c];
                            else
                                a.q = &qw[c];
                            a.k = M;
                            a.I = K;
                            a.O = N;
                            a.epi = cuda_decoder_detail::DecodeEpilogue::F32;
                            a.out32 = dy;
                            a.ld_out = N;
                            cuda_decoder_detail::decode_gemv(a, stream);
                        } else {
                            QuantGemv g;
                            g.x = dx;
                            g.ld_x = K;
                            g.M = M;
                            g.W = qw[c];
                            g.epi = QuantEpilogue::F32;
                            g.out32 = dy;
                            g.ld_out = N;
                            quant_gemv(g, stream);
                        }
                    };
                    const float ms = cuda_bench::time_graph_ms(op, stream, std::max(3, copies), iters);
                    const double bytes = wbytes + 2.0 * double(M * K) + 4.0 * double(M * N);
                    const double gbs = bytes / (ms * 1e-3) / 1e9;
                    fmt::print("| {}x{} | {} | {} | {} | {:.2f} MB | {:.2f} | {:.0f} | {:.1f}% | {:.3f} |\n", K, N,
                               v.name, kernel, M, bytes / 1e6, ms * 1e3, gbs, 100.0 * gbs / (peak_tbs * 1e3),
                               wbytes / bf16_bytes);
                }
            }
        }
    }
    for (void* p : owned) cuda_free(p);
    cudaStreamDestroy(stream);
    return 0;
#endif
}
