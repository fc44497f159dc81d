// Small models that together cover every mixer option and position encoding, shared by the CPU
// decoding tests (test_inference.cpp) and the GPU decoder's (test_cuda_decoder.cpp), so that both
// decoders are checked on the same configurations.
#pragma once
#include <ostream>
#include <string>

#include "model/config.h"

namespace mslm::test {

inline ModelConfig base_config(const std::string& layers) {
    ModelConfig c;
    c.vocab_size = 29;
    c.d_model = 16;
    c.layers = parse_layer_pattern(layers);
    c.n_layers = static_cast<int64_t>(c.layers.size());
    c.mamba.version = 2;
    c.mamba.d_state = 4;
    c.mamba.head_dim = 4;
    c.mamba.chunk_size = 4;  // prompts span several chunks
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 10, false};
    c.max_seq_len = 40;
    return c;
}

// Rows of 64 (d_model) and wider: the packed CPU weights' tests (test_packed_model.cpp,
// test_packed_dequant.cpp), whose kernels work in 16- to 64-column groups.
inline ModelConfig packed_model_config(const std::string& layers, int mamba_version) {
    ModelConfig c;
    c.vocab_size = 97;
    c.d_model = 64;
    c.layers = parse_layer_pattern(layers);
    c.n_layers = static_cast<int64_t>(c.layers.size());
    c.mamba.version = mamba_version;
    c.mamba.d_state = 8;
    c.mamba.head_dim = 16;
    c.mamba.chunk_size = 8;
    c.mamba.dt_rank = 4;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 96, false};
    c.max_seq_len = 64;
    return c;
}

inline ModelConfig mamba1_plain() {
    ModelConfig c = base_config("MM");
    c.mamba.version = 1;
    c.mamba.dt_rank = 3;
    c.mlp.kind = MlpKind::None;
    return c;
}

// Jamba: Mamba-1 with RMSNorm on dt, B, C; attention without positions; LayerNorm, GELU, biases.
inline ModelConfig mamba1_jamba() {
    ModelConfig c = base_config("MAM");
    c.mamba.version = 1;
    c.mamba.d_state = 3;
    c.mamba.dt_rank = 2;
    c.mamba.dt_bc_norm = true;
    c.mamba.proj_bias = true;
    c.attention.position = PositionKind::None;
    c.attention.n_kv_heads = 4;
    c.attention.qkv_bias = true;
    c.attention.out_bias = true;
    c.mlp = {MlpKind::GELU, 7, true};
    c.norm = NormKind::LayerNorm;
    c.tie_embeddings = false;
    return c;
}

// Mamba-2 with two groups + attention with partial RoPE and GQA.
inline ModelConfig mamba2_rope_partial() {
    ModelConfig c = base_config("MAM");
    c.mamba.n_groups = 2;
    c.attention.rotary_dim = 2;
    c.attention.rope_theta = 100;  // angles that differ visibly between positions
    return c;
}

// Pure Mamba-2 with dt clamped (part of the dt values hit the limit), one norm group, d_conv 3.
inline ModelConfig mamba2_dt_limit() {
    ModelConfig c = base_config("MM");
    c.mamba.n_groups = 2;
    c.mamba.norm_groups = 1;
    c.mamba.d_conv = 3;
    c.mamba.dt_limit_max = 0.05;
    c.mlp.kind = MlpKind::None;
    return c;
}

// ALiBi with 3 heads (not a power of two), one KV head, a window of 3: the ring buffer wraps.
inline ModelConfig alibi_window() {
    ModelConfig c = base_config("AMA");
    c.attention.position = PositionKind::ALiBi;
    c.attention.n_heads = 3;
    c.attention.n_kv_heads = 1;
    c.attention.head_dim = 5;
    c.attention.sliding_window = 3;
    c.mlp = {MlpKind::GELUTanh, 9, false};
    return c;
}

// Full RoPE with a window of 5 and GQA.
inline ModelConfig rope_window() {
    ModelConfig c = base_config("MA");
    c.attention.rope_theta = 100;
    c.attention.sliding_window = 5;
    return c;
}

struct Case {
    const char* name;
    ModelConfig (*make)();
};

inline void PrintTo(const Case& c, std::ostream* os) {
    *os << c.name;
}

inline const Case kInferenceCases[] = {{"Mamba1", mamba1_plain},
                       {"Mamba1JambaNorms", mamba1_jamba},
                       {"Mamba2RopePartialGqa", mamba2_rope_partial},
                       {"Mamba2DtLimit", mamba2_dt_limit},
                       {"AlibiWindowMqa", alibi_window},
                       {"RopeWindowGqa", rope_window}};

}  // namespace mslm::test
