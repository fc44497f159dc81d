// ONNX export (issue 9): a decoder graph with explicit recurrent / KV state, built from standard
// opset-17 operators and written with Debian's libonnx protobuf classes, plus onnxruntime-genai's
// genai_config.json. Built only when libonnx-dev is found (MSLM_HAVE_ONNX); otherwise every entry
// point fails with one line saying so.
//
// The graph `model.onnx` is one decoding step for a batch of sequences:
//   inputs   input_ids (batch, 1) int64
//            attention_mask (batch, past_len + 1) int64      [models with attention layers]
//            position_ids (batch, 1) int64                   [attention layers with RoPE]
//            past_key_values.N.key / .value (batch, kv_heads, past_len, head_dim) f32   [attention layer N]
//            past_key_values.N.conv_state (batch, d_conv − 1, conv_channels) f32        [Mamba layer N]
//            past_key_values.N.ssm_state (batch, heads, head_dim, d_state) f32          [Mamba-2 layer N]
//   outputs  logits (batch, 1, vocab) f32, present.N.* with the same shapes (past_len + 1 for KV).
// A prompt is consumed by running the step once per token from an empty state (past_len 0, zero
// conv / SSM states), which is also what onnxruntime-genai does with a recurrent model.
#pragma once
#include <string>
#include <vector>

#include "model/hybrid_lm.h"

namespace mslm {

// True when this build can write ONNX (libonnx-dev was found at configure time).
bool onnx_export_available();

struct OnnxExportOptions {
    bool overwrite = false;  // replace a non-empty output directory
};

struct OnnxExportSummary {
    std::vector<std::string> files;  // written, relative to the output directory
    int64_t nodes = 0, initializers = 0;
    int opset = 0;
    std::vector<std::string> inputs, outputs;
};

// Exports the model in `model` (fp32 weights) to out_dir. `source_dir`, when not empty, is the
// model directory the tokenizer files and generation_config.json (bos / eos / pad ids) are
// copied / read from. Runs the ONNX checker on the graph before writing it.
OnnxExportSummary export_onnx(const HybridLM<float>& model, const std::string& out_dir,
                              const OnnxExportOptions& opts, const std::string& source_dir = "");
// Loads a model directory (native or Hugging Face) and exports it.
OnnxExportSummary export_onnx(const std::string& model_dir, const std::string& out_dir,
                              const OnnxExportOptions& opts);

}  // namespace mslm
