// Training checkpoints (DESIGN §8): one directory per saved step,
//
//   <run_dir>/checkpoints/step_00001200/
//       config.json  model.safetensors   the model directory (save_model, native names, fp32)
//       optimizer.safetensors            optimizer state tensors under the optimizer's own names
//       trainer_state.json               the trainer's json (rng, loader position, config, ...)
//                                        with "step" set to the checkpoint's step
//
// A LoRA run checkpoints its adapter instead of the model: adapter_config.json +
// adapter_model.safetensors (PEFT's layout) in place of config.json + model.safetensors.
//
// Atomic at the directory level: everything is written into step_XXXXXXXX.tmp/, every file and
// the directory are fsynced, and only then is the directory renamed to its final name (and the
// parent fsynced). A crash, kill -9 included, leaves either no step_XXXXXXXX/ or a complete one;
// readers never look at *.tmp directories.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "model/hybrid_lm.h"

namespace mslm {

struct CheckpointContents {
    const HybridLM<float>* model = nullptr;
    std::vector<std::pair<std::string, Tensor>> optimizer;  // CPU tensors, names unique
    // An object (rng, loader position, config, metrics, ...); its "step", if any, must equal step.
    nlohmann::json trainer_state = nlohmann::json::object();
    // Instead of model, for LoRA runs: the adapter's parameters (checked finite) and the writer of its
    // two files into the directory it is given.
    const Parameters<float>* adapter = nullptr;
    std::function<void(const std::string& dir)> write_adapter = nullptr;
};

// Writes <run_dir>/checkpoints/step_%08d/ atomically and returns its path. Then deletes the
// oldest complete checkpoints so that at most `keep_last` (>= 1) remain; the one just written is
// never deleted, nor is anything ending in .tmp. Refuses (mslm::Error, nothing written) when a
// model or optimizer value is NaN or infinite. Saving a step that already exists replaces it
// atomically (rename exchange).
std::string save_checkpoint(const std::string& run_dir, int64_t step, const CheckpointContents& contents,
                            int keep_last);

// The complete checkpoint with the highest step under <run_dir>/checkpoints, if any. Directories
// that are not complete (a *.tmp left by a crash, or a step directory missing one of its files) are
// skipped and, when `skipped` is given, appended to it so the caller can report them; nothing is
// deleted here.
std::optional<std::string> latest_checkpoint(const std::string& run_dir,
                                             std::vector<std::string>* skipped = nullptr);

struct LoadedCheckpoint {
    std::unique_ptr<HybridLM<float>> model;  // null for an adapter checkpoint
    bool adapter = false;                    // the directory holds a LoRA adapter (load it from there)
    SafetensorsFile optimizer;  // get / get_f32 by the names given to save_checkpoint
    nlohmann::json trainer_state;
    int64_t step = 0;
};

// Loads a checkpoint directory. Errors name the file that is missing or corrupt.
LoadedCheckpoint load_checkpoint(const std::string& dir);

}  // namespace mslm
