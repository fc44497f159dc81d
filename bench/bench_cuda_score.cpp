// The quality of the GPU decoder's arithmetic: a model directory's loss and perplexity on prepared
// data, every token through the batch-1 decode step (CausalLM::step, the kernels generate() runs
// at batch 1), for each weight format asked. Window k of the split (T + 1 tokens from k · T, as
// `mamba-slm eval` takes them) starts a fresh decoder slot; its T inputs are stepped one at a time
// and each step's logits score the next token. So the figures compare with `mamba-slm eval
// --seq-len T --batch-size 1 --max-batches N` over the same windows (CPU, full forward), and with
// each other: bf16 against a packed format, or one format under two kernel settings (environment
// variables such as MSLM_DECODE_GEMV_DP4A, read at each launch). Prints a markdown table.
// --batch B steps B windows at once (B slots; the decoder's batched products instead of batch 1's).
//   bench_cuda_score --model DIR --data DIR [--split val] [--seq-len 256] [--windows 100]
//                    [--dtypes bf16,nf4] [--batch 1]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "bench/timing.h"
#include "bench_args.h"
#include "core/cuda_device.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "model/cuda_inference.h"
#include "model/hybrid_lm.h"
#include "model/model_io.h"
#include "ops/packed_linear.h"

using namespace mslm;

int main(int argc, char** argv) {
    std::string model_dir, data, split = "val", dtypes = "bf16,nf4";
    int64_t seq_len = 256, windows = 100, batch = 1;
    for (int i = 1; i < argc; ++i) {
        auto next = [&] { return bench_args::value(argc, argv, i); };
        const std::string a = argv[i];
        if (a == "--model")
            model_dir = next();
        else if (a == "--data")
            data = next();
        else if (a == "--split")
            split = next();
        else if (a == "--seq-len")
            seq_len = std::stoll(next());
        else if (a == "--windows")
            windows = std::stoll(next());
        else if (a == "--dtypes")
            dtypes = next();
        else if (a == "--batch")
            batch = std::stoll(next());
        else {
            fmt::print(
                "usage: bench_cuda_score --model DIR --data DIR [--split val] [--seq-len 256] [--windows "
                "100] "
                "[--dtypes bf16,nf4,fp4,int8] [--batch 1]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
    if (model_dir.empty() || data.empty()) {
        fmt::print(stderr, "bench_cuda_score: --model and --data are required\n");
        return 1;
    }
    if (seq_len < 1 || windows < 1 || batch < 1) {
        fmt::print(stderr, "bench_cuda_score: --seq-len, --windows and --batch must be positive\n");
        return 1;
    }
#ifndef MSLM_HAVE_CUDA
    (void)split, (void)dtypes, (void)batch;
    fmt::print("bench_cuda_score: built without CUDA\n");
    return 0;
#else
    if (!cuda_available()) {
        fmt::print("bench_cuda_score: no CUDA GPU ({})\n", cuda_device_summary());
        return 0;
    }
    try {
        const DataLoader loader = DataLoader::from_manifest(data, split, {1, seq_len, 0, false, 0, 1});
        const int64_t n = std::min(windows, loader.total_windows());
        if (n < 1) {
            fmt::print(stderr, "bench_cuda_score: the {} split of {} has no window of {} tokens\n", split,
                       data, seq_len + 1);
            return 1;
        }
        std::vector<int32_t> tokens(static_cast<size_t>(n * seq_len + 1));
        loader.read_tokens(0, n * seq_len + 1, tokens.data());
        const char* dp = std::getenv("MSLM_DECODE_GEMV_DP4A");
        const char* qdp = std::getenv("MSLM_QUANT_GEMV_DP4A");
        fmt::print(
            "# bench_cuda_score, {}; {} on {} ({}): {} windows of {} tokens, each token one decode step, {} "
            "windows a step; MSLM_DECODE_GEMV_DP4A={}, MSLM_QUANT_GEMV_DP4A={}\n\n",
            cuda_device_summary(), model_dir, data, split, n, seq_len, batch, dp ? dp : "(unset)",
            qdp ? qdp : "(unset)");
        fmt::print("| dtype | loss | ppl | tokens | tokens/s |\n|---|---|---|---|---|\n");
        for (const std::string& dtype : bench::split_list(dtypes)) {
            const ops::WeightFormat format =
                dtype == "bf16" ? ops::WeightFormat::F32 : ops::parse_weight_format(dtype);
            auto model = load_model<float>(model_dir, nullptr, format);
            if (dtype != "bf16") model->pack_weights(format);
            const int64_t V = model->config().vocab_size;
            CudaCausalLM gpu(*model);
            std::vector<float> logits(static_cast<size_t>(batch * V));
            double nll = 0;
            gpu.start(batch, seq_len + 1);
            const auto t0 = std::chrono::steady_clock::now();
            for (int64_t w0 = 0; w0 < n; w0 += batch) {
                const int64_t k = std::min(batch, n - w0);
                std::vector<int64_t> slots(static_cast<size_t>(k));
                std::vector<int32_t> in(static_cast<size_t>(k));
                for (int64_t r = 0; r < k; ++r) {
                    slots[static_cast<size_t>(r)] = r;
                    gpu.clear(r);
                }
                for (int64_t t = 0; t < seq_len; ++t) {
                    for (int64_t r = 0; r < k; ++r)
                        in[static_cast<size_t>(r)] = tokens[static_cast<size_t>((w0 + r) * seq_len + t)];
                    gpu.step(slots, in, logits.data(), nullptr);
                    for (int64_t r = 0; r < k; ++r) {
                        const float* l = logits.data() + r * V;
                        const int32_t target = tokens[static_cast<size_t>((w0 + r) * seq_len + t + 1)];
                        double mx = l[0];
                        for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
                        double z = 0;
                        for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
                        nll += mx + std::log(z) - double(l[target]);
                    }
                }
            }
            const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            const double loss = nll / double(n * seq_len);
            fmt::print("| {} | {:.5f} | {:.3f} | {} | {:.0f} |\n", dtype, loss, std::exp(loss), n * seq_len,
                       double(n * seq_len) / secs);
            std::fflush(stdout);
        }
    } catch (const std::exception& e) {
        fmt::print(stderr, "bench_cuda_score: {}\n", e.what());
        return 1;
    }
    return 0;
#endif
}
