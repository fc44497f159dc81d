// `mamba-slm bench`: the train / prefill / decode / memory tables of a preset or model directory on
// the CPU or a GPU (bench/model_bench.h), or with --profile the kernel-family profile of a CUDA
// training step (bench/train_profile.h). --onnx DIR adds ONNX Runtime's CPU prefill / decode speed on
// an ONNX export of the same model (bench/onnx_reference.h).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "bench/model_bench.h"
#include "bench/onnx_reference.h"
#include "bench/train_profile.h"
#include "cli/commands.h"
#include "cli/generation_options.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/config.h"
#include "model/model_io.h"

namespace mslm::cli {

void register_bench(CLI::App& app) {
    auto* cmd = app.add_subcommand("bench",
                                   "Throughput, latency and memory tables of a model on the CPU or a GPU "
                                   "(train, prefill, decode, memory), or the kernel-family profile of a "
                                   "CUDA training step (--profile)");
    struct Args {
        std::string preset, model, onnx, device = "cpu", tables = "train,prefill,decode,memory",
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
    add_state_dtype_flag(cmd);
    cmd->add_option("--batch", args->batch, "Training batch rows (default: CPU 1, GPU 8)")
        ->check(CLI::PositiveNumber);
    cmd->add_option(
           "--seq", args->seq,
           "Training sequence length and prefill length (default: CPU 256, GPU 2048, at most the model's "
           "max_seq_len)")
        ->check(CLI::PositiveNumber);
    auto* tables = cmd->add_option(
        "--tables", args->tables,
        "Comma list of tables: train, prefill, decode, memory (with --onnx: prefill, decode)");
    auto* decode_batch = cmd->add_option("--decode-batch", args->decode_batch,
                                         "Comma list of decode batch sizes (with --onnx: 1)");
    cmd->add_option(
           "--onnx", args->onnx,
           "An ONNX export of the model (mamba-slm export --format onnx): also time ONNX Runtime's CPU "
           "prefill and batch-1 decode on it (bench/bench_onnx_decode.py, with $MSLM_PYTHON or python3 "
           "when it can import onnxruntime) beside ours; the model's shape comes from the export's "
           "mslm_config.json unless --preset / --model is given")
        ->check(CLI::ExistingDirectory);
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
    cmd->callback([args, dev, tables, decode_batch] {
        const bool onnx = !args->onnx.empty();
        if (args->preset.empty() && args->model.empty() && !onnx)
            throw CLI::RequiredError("--preset, --model or --onnx");
        MSLM_CHECK(!(args->json && args->profile),
                   "bench: --json is for the tables; --profile prints markdown");
        MSLM_CHECK(!onnx || (!args->profile && args->device == "cpu"),
                   "bench: --onnx compares CPU prefill and decode; it goes without --profile and --device");
        const std::string onnx_config = args->onnx + "/mslm_config.json";
        if (onnx && args->preset.empty() && args->model.empty())
            MSLM_CHECK(
                std::filesystem::exists(onnx_config),
                "bench --onnx {}: no mslm_config.json there (an export by an older mamba-slm): pass --model "
                "or --preset for the model's shape",
                args->onnx);
        const ModelConfig cfg = !args->model.empty()    ? load_any_config(args->model)
                                : !args->preset.empty() ? preset(args->preset)
                                                        : load_config(onnx_config);
        const std::string name = !args->model.empty()    ? args->model
                                 : !args->preset.empty() ? "preset " + args->preset
                                                         : args->onnx;
        if (onnx && !tables->count()) args->tables = "prefill,decode";
        if (onnx && !decode_batch->count()) args->decode_batch = "1";
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
        std::optional<bench::OnnxReferenceResult> ort;
        double our_prefill = std::nan(""), our_decode = std::nan("");
        if (onnx) {
            if (r.prefill) our_prefill = r.prefill->tokens_per_s;
            for (const bench::DecodeResult& d : r.decode)
                if (d.batch == 1) our_decode = d.tokens_per_s;
            bench::OnnxReferenceOptions oo;
            oo.prompt = r.prefill ? r.prefill->tokens : std::min<int64_t>(256, cfg.max_seq_len);
            oo.decode_prompt = r.prompt ? r.prompt : std::min<int64_t>(16, oo.prompt);
            oo.decode_tokens = args->decode_tokens ? args->decode_tokens : 16;
            oo.repeats = args->steps ? args->steps : 3;
            progress(fmt::format("onnxruntime on {} ...", args->onnx));
            ort = bench::run_onnx_reference(args->onnx, oo);
        }
        if (args->json) {
            nlohmann::json j = bench::bench_report_json(r);
            if (ort) j["onnxruntime"] = bench::onnx_reference_json(*ort);
            fmt::print("{}\n", j.dump(2));
        } else {
            fmt::print("{}", bench::format_bench_markdown(r));
            if (ort)
                fmt::print("{}", bench::format_onnx_reference(*ort, our_prefill, our_decode, num_threads()));
        }
    });
}

}  // namespace mslm::cli
