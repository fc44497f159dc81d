#include "model/info.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.h"
#include "cli/generation_options.h"
#include "core/cuda_device.h"
#include "core/thread_pool.h"
#include "model/config.h"
#include "model/cuda_inference.h"
#include "model/cuda_model.h"
#include "model/model_io.h"
#include "ops/packed_linear.h"

namespace mslm::cli {

void register_info(CLI::App& app) {
    auto* cmd = app.add_subcommand("info", "Show a model's layers, parameter count and memory estimates");
    struct Args {
        std::string preset, model;
        int64_t batch = 8, seq_len = 0;
    };
    auto args = std::make_shared<Args>();
    auto* p = cmd->add_option("--preset", args->preset, "A built-in configuration: " + fmt::format("{}", fmt::join(preset_names(), ", ")));
    auto* m = cmd->add_option("--model", args->model, "A model directory or config.json (native, or Hugging Face Mamba/Mamba2/Jamba/Bamba)");
    p->excludes(m);
    cmd->add_option("--batch", args->batch, "Batch size for the training memory estimate")->check(CLI::PositiveNumber);
    cmd->add_option("--seq-len", args->seq_len, "Sequence length for the estimates (default: the model's max_seq_len)")
        ->check(CLI::PositiveNumber);
    add_state_dtype_flag(cmd);
    cmd->callback([args] {
        if (args->preset.empty() && args->model.empty()) throw CLI::RequiredError("--preset or --model");
        std::string format = "preset", quantization;
        ModelConfig cfg =
            args->model.empty() ? preset(args->preset) : load_any_config(args->model, &format, &quantization);
        int64_t T = args->seq_len ? args->seq_len : cfg.max_seq_len;
        if (!quantization.empty()) format += ", " + quantization;
        fmt::print("model       {}\n", args->model.empty() ? "preset " + args->preset : args->model + " (" + format + ")");
        fmt::print("{}", describe_model(cfg, args->batch, T));
        // Where it would run: the CPU pool and its packed-weight kernels, and the GPU if any.
        fmt::print("machine     CPU {} threads; bf16/int8 kernels: {}\n", num_threads(),
                   ops::packed_kernels_description());
        fmt::print("            GPU {}\n", cuda_available() ? cuda_device_summary()
                                                            : "none (" + cuda_device_summary() + ")");
#ifdef MSLM_HAVE_CUDA
        // The GPU decoder's allocations (one per category, from the caching allocator).
        const CudaDecoderMemory one = CudaCausalLM::plan(cfg, 1, T), many = CudaCausalLM::plan(cfg, args->batch, T);
        fmt::print("GPU decode  weights {} (bf16); state {} per sequence of {} tokens, {} for {}; scratch {} ({} rows)\n",
                   format_bytes(static_cast<int64_t>(one.weights)), format_bytes(static_cast<int64_t>(one.state)), T,
                   format_bytes(static_cast<int64_t>(many.state)), args->batch,
                   format_bytes(static_cast<int64_t>(many.scratch)),
                   std::max<int64_t>(args->batch, std::min<int64_t>(CudaCausalLM::kPrefillChunk, T)));
        if (!cuda_available()) {
            fmt::print("GPU train   (the plan needs a GPU: the kernels size some workspaces with the device)\n");
            return;
        }
        const CudaTrainingMemory t = CudaHybridLM::training_memory(cfg, args->batch, T);
        fmt::print("GPU train   batch {} x {}: weights fp32+bf16 {} + grads fp32+bf16 {} + AdamW {} + activations {} = {}\n",
                   args->batch, T, format_bytes(static_cast<int64_t>(t.params)), format_bytes(static_cast<int64_t>(t.grads)),
                   format_bytes(static_cast<int64_t>(t.optimizer)), format_bytes(static_cast<int64_t>(t.activations)),
                   format_bytes(static_cast<int64_t>(t.total())));
#endif
    });
}

}  // namespace mslm::cli
