// `mamba-slm bench`: the train / prefill / decode / memory tables of a preset or model directory on
// the CPU or a GPU (bench/model_bench.h), or with --profile the kernel-family profile of a CUDA
// training step (bench/train_profile.h).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/model_bench.h"
#include "bench/train_profile.h"
#include "cli/commands.h"
#include "core/error.h"
#include "model/config.h"
#include "model/model_io.h"

namespace mslm::cli {

void register_bench(CLI::App& app) {
    auto* cmd = app.add_subcommand("bench",
                                   "Throughput, latency and memory tables of a model on the CPU or a GPU "
                                   "(train, prefill, decode, memory), or the kernel-family profile of a "
                                   "CUDA training step (--profile)");
    struct Args {
        std::string preset, model, device = "cpu", tables = "train,prefill,decode,memory",
                                   decode_batch = "1,8,64";
        int64_t batch = 0, seq = 0, decode_tokens = 0;
        int steps = 0, warmup = -1;
        double peak_tflops = 790, peak_tbs = 4.3;
        bool json = false, profile = false;
        std::string dtype = "f32";
    };
    auto args = std::make_shared<Args>();
    auto* p =
        cmd->add_option("--preset", args->preset,
                        "A built-in configuration: " + fmt::format("{}", fmt::join(preset_names(), ", ")));
    auto* m =
        cmd->add_option("--model", args->model,
                        "A model directory or config.json (native or Hugging Face); random weights of its "
                        "shape are benchmarked");
    p->excludes(m);
    auto* dev =
        cmd->add_option("--device", args->device, "cpu, cuda or cuda:N (default cpu; cuda with --profile)");
    cmd->add_option("--dtype", args->dtype,
                    "Weights of the prefill and decode tables: f32, bf16, int8 (= w8a8; weight-only on a GPU), "
                    "w8a16, nf4 or fp4 (bitsandbytes 4-bit, blocks of 64); on a GPU f32 means bf16")
        ->check(CLI::IsMember({"f32", "fp32", "bf16", "int8", "w8a8", "w8a16", "nf4", "fp4"}))
        ->default_str("f32");
    cmd->add_option("--batch", args->batch, "Training batch rows (default: CPU 1, GPU 8)")
        ->check(CLI::PositiveNumber);
    cmd->add_option(
           "--seq", args->seq,
           "Training sequence length and prefill length (default: CPU 256, GPU 2048, at most the model's "
           "max_seq_len)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--tables", args->tables, "Comma list of tables: train, prefill, decode, memory");
    cmd->add_option("--decode-batch", args->decode_batch, "Comma list of decode batch sizes");
    cmd->add_option("--steps", args->steps,
                    "Timed repetitions of each measurement (default: CPU 3, GPU 10; profile 5)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--warmup", args->warmup, "Untimed repetitions first (default: CPU 1, GPU 2)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--decode-tokens", args->decode_tokens,
                    "Timed decode steps per batch size (default: CPU 16, GPU 128)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--peak-tflops", args->peak_tflops,
                    "The GPU's bf16 dense matmul ceiling for MFU and the profile")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--peak-tbs", args->peak_tbs,
                    "The GPU's memory bandwidth ceiling in TB/s for the profile")
        ->check(CLI::PositiveNumber);
    cmd->add_flag("--json", args->json, "Print the tables as one JSON document instead of markdown");
    cmd->add_flag("--profile", args->profile,
                  "Profile CUDA training steps by kernel family (GEMM, SSD, attention, norms, ...) against "
                  "the ceilings");
    cmd->callback([args, dev] {
        if (args->preset.empty() && args->model.empty()) throw CLI::RequiredError("--preset or --model");
        MSLM_CHECK(!(args->json && args->profile),
                   "bench: --json is for the tables; --profile prints markdown");
        const ModelConfig cfg = args->model.empty() ? preset(args->preset) : load_any_config(args->model);
        const std::string name = args->model.empty() ? "preset " + args->preset : args->model;
        auto progress = [](const std::string& line) {
            std::fprintf(stderr, "%s\n", line.c_str());
            std::fflush(stderr);
        };
        if (args->profile) {
            bench::ProfileOptions o;
            if (dev->count()) o.device = args->device;
            if (args->batch) o.batch = args->batch;
            if (args->seq) o.seq = args->seq;
            if (args->steps) o.steps = args->steps;
            if (args->warmup >= 0) o.warmup = args->warmup;
            o.peak_tflops = args->peak_tflops;
            o.peak_tbs = args->peak_tbs;
            fmt::print("{}", bench::format_profile(bench::run_training_profile(cfg, name, o, progress)));
            return;
        }
        bench::BenchOptions o;
        o.device = args->device;
        o.dtype = args->dtype;
        o.batch = args->batch;
        o.seq = args->seq;
        o.tables = bench::parse_tables(args->tables);
        o.decode_batches = bench::parse_positive_list(args->decode_batch, "--decode-batch");
        o.steps = args->steps;
        o.warmup = args->warmup;
        o.decode_tokens = args->decode_tokens;
        o.peak_tflops = args->peak_tflops;
        const bench::BenchReport r = bench::run_bench(cfg, name, o, progress);
        if (args->json)
            fmt::print("{}\n", bench::bench_report_json(r).dump(2));
        else
            fmt::print("{}", bench::format_bench_markdown(r));
    });
}

}  // namespace mslm::cli
