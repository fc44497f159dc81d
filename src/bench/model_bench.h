// `mamba-slm bench`: the throughput and memory tables of one model on one device, CPU or CUDA —
//   train    full training steps (zero_grad, forward, backward, gradient clip at 1, AdamW) of
//            B × T random tokens: tokens/s, ms/step, model FLOPs (model/flops.h) and on a GPU the
//            MFU against a stated peak;
//   prefill  one prompt of T tokens through the decoder (CausalLM::prefill): tokens/s;
//   decode   k slots after a short prompt, greedy: each step feeds every slot the token picked
//            from its last logits, kGreedyChunk steps a call (CausalLM::step_greedy_n, as
//            generate() runs greedy decoding without logits processors; on a GPU the pick is made
//            there and the steps run as one device-side loop): aggregate tokens/s for each k;
//   memory   parameters, gradients, optimizer state, activations and inference state as planned
//            (model/info.h on the CPU, CudaHybridLM::training_memory and CudaCausalLM::plan on the
//            GPU) beside what the built objects hold, and the process's (CPU) or device's (GPU)
//            memory in use.
// Random weights: the speed does not depend on them. The library entry points are the model's
// (HybridLM, CudaHybridLM), the optimizer's and the decoders' (make_causal_lm).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"

namespace mslm::bench {

struct BenchOptions {
    std::string device = "cpu";  // cpu, cuda or cuda:N
    // Weights of the prefill and decode tables (ops::parse_weight_format): f32, bf16, int8, w8a16, nf4,
    // fp4; packed after the train table. On a GPU f32 and bf16 both mean bf16 weights.
    std::string dtype = "f32";
    // 0: the device's default — CPU 1 × 256, GPU 8 × 2048 (T at most the model's max_seq_len unless
    // given; a larger T raises it, the weights being random).
    int64_t batch = 0, seq = 0;
    std::vector<std::string> tables = {"train", "prefill", "decode", "memory"};
    std::vector<int64_t> decode_batches = {1, 8, 64};
    // Timed and untimed repetitions of each measurement; steps 0 / warmup −1: CPU 3 / 1, GPU 10 / 2.
    int steps = 0, warmup = -1;
    int64_t decode_tokens = 0;  // timed decode steps per batch size; 0: CPU 16, GPU 128
    double peak_tflops = 790;   // the MFU's denominator on a GPU (the H200's measured bf16 matmul rate)
};

struct TrainResult {
    int64_t batch = 0, seq = 0;
    double step_ms = 0, tokens_per_s = 0;
    double flops_per_token = 0, tflops = 0;
    std::optional<double> mfu;  // GPU only
};
struct PrefillResult {
    int64_t tokens = 0;
    double ms = 0, tokens_per_s = 0;
};
struct DecodeResult {
    int64_t batch = 0;
    double ms_per_step = 0, tokens_per_s = 0;
};
struct MemoryRow {
    std::string category;
    std::optional<double> planned, measured;  // bytes; absent where there is no plan or no measure
};

struct BenchReport {
    std::string model;        // "preset tiny", or the directory
    std::string device;       // "cpu", "cuda:0"
    std::string device_desc;  // threads and kernels, or the GPU
    std::string dtype;        // the prefill and decode tables' weights
    std::string state_dtype;  // the decoder's Mamba-2 SSM states, f32 or bf16 (none without Mamba-2 layers)
    int64_t params = 0;
    int64_t prompt = 0;  // the decode table's prompt length
    double peak_tflops = 0;
    std::optional<TrainResult> train;
    std::optional<PrefillResult> prefill;
    std::vector<DecodeResult> decode;
    std::vector<MemoryRow> memory;
};

// The table names of a comma list (train, prefill, decode, memory); throws naming an unknown one.
std::vector<std::string> parse_tables(const std::string& list);
// A comma list of positive integers ("1,8,64"); throws naming `what` and the bad item.
std::vector<int64_t> parse_positive_list(const std::string& list, const std::string& what);

// Runs the asked tables. progress receives a line at each phase and about every two seconds of a
// long one (the CLI prints them to stderr).
BenchReport run_bench(const ModelConfig& cfg, const std::string& model_name, const BenchOptions& options,
                      const std::function<void(const std::string&)>& progress);

std::string format_bench_markdown(const BenchReport& r);
nlohmann::json bench_report_json(const BenchReport& r);

}  // namespace mslm::bench
