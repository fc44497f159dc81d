// ONNX export (issue 9): a decoder graph with explicit recurrent / KV state, built from standard
// opset-17 operators (plus com.microsoft MatMulNBits for 4-bit weights) and written with Debian's
// libonnx protobuf classes, plus onnxruntime-genai's genai_config.json. Built only when libonnx-dev
// is found (MSLM_HAVE_ONNX); otherwise every entry point fails with one line saying so.
//
// The graph `model.onnx` is one decoding step for a batch of sequences:
//   inputs   input_ids (batch, 1) int64
//            attention_mask (batch, total_len) int64, total_len = past positions + 1   [attention layers]
//            position_ids (batch, 1) int64                   [attention layers with RoPE]
//            past_key_values.N.key / .value (batch, kv_heads, cache_len, head_dim) f32   [attention layer N]
//            past_key_values.N.conv_state (batch, d_conv − 1, conv_channels) f32        [Mamba layer N]
//            past_key_values.N.ssm_state  (batch, d_inner, d_state) f32                 [Mamba-1 layer N]
//                                         (batch, heads, head_dim, d_state) f32         [Mamba-2 layer N]
//   outputs  logits (batch, 1, vocab) f32, present.N.* with the same shapes.
// Without a sliding window the KV cache grows by one row a step (cache_len = past positions). With
// attention.sliding_window W it keeps the last W rows, as the engine's ring buffer does
// (model/inference.h): present = the last min(W, past + 1) rows of [past | new], and the mask's last
// min(W, total_len) columns go with them. ALiBi distances are counted along the cache, whose rows
// are consecutive positions. A prompt is consumed either by running the step once per token from an
// empty state (zero-length KV caches, zero conv / SSM states), which is what onnxruntime-genai does
// with a recurrent model, or in one call of `model_prefill.onnx`: a Loop over the sequence axis whose
// body is the same step (input_ids / position_ids (batch, seq), logits (batch, seq, vocab)).
//
// Weights: f32, or the matrices of the linear layers and the LM head (the weights the engine packs,
// Parameters::is_linear) as
//   int8  per-output-row symmetric int8, s = absmax(row) / 127 (the engine's W8A16 weights, bit for
//         bit), DequantizeLinear (axis 0) feeding the Gemm: standard QDQ;
//   q4    4-bit blocks of 32 along the input axis, symmetric around 8 like llama.cpp's Q4_0
//         (d = the block's largest-magnitude value / −8, q = clamp(round(w / d) + 8, 0, 15),
//         w ≈ (q − 8)·d, d kept in fp32), as com.microsoft MatMulNBits (bits 4, block_size 32, no
//         zero_points input: onnxruntime's default zero point for 4 bits is 8).
// The embedding lookup keeps fp32 (a tied head is also stored quantized, as the engine packs it).
#pragma once
#include <string>
#include <vector>

#include "model/hybrid_lm.h"

namespace mslm {

// True when this build can write ONNX (libonnx-dev was found at configure time).
bool onnx_export_available();

enum class OnnxWeights { F32, Int8, Q4 };

// "f32" | "int8" | "q4"; throws naming the accepted names otherwise.
OnnxWeights parse_onnx_weights(const std::string& name);
const char* onnx_weights_name(OnnxWeights w);

// The weight (out, in) row-major as the export stores it, dequantized to fp32: what onnxruntime
// computes with (F32: a copy).
std::vector<float> onnx_dequantized_weight(const float* w, int64_t out, int64_t in, OnnxWeights type);

struct OnnxExportOptions {
    bool overwrite = false;  // replace a non-empty output directory
    OnnxWeights weights = OnnxWeights::F32;
};

struct OnnxExportSummary {
    std::vector<std::string> files;  // written, relative to the output directory
    int64_t nodes = 0, initializers = 0;
    int opset = 0;
    int64_t quantized = 0;  // matrices stored as int8 / 4-bit
    std::vector<std::string> inputs, outputs;
};

// Exports the model in `model` (fp32 weights) to out_dir. `source_dir`, when not empty, is the
// model directory the tokenizer files and generation_config.json (bos / eos / pad ids) are
// copied / read from. Runs the ONNX checker on each graph before writing it. Also writes
// mslm_config.json (the model's native config, which `mamba-slm bench --onnx` reads).
OnnxExportSummary export_onnx(const HybridLM<float>& model, const std::string& out_dir,
                              const OnnxExportOptions& opts, const std::string& source_dir = "");
// Loads a model directory (native or Hugging Face) and exports it.
OnnxExportSummary export_onnx(const std::string& model_dir, const std::string& out_dir,
                              const OnnxExportOptions& opts);

}  // namespace mslm
