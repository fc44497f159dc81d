// The model configuration: the native config.json of a mamba-slm model (DESIGN §4), presets,
// and validation. Field names follow Hugging Face where a counterpart exists.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace mslm {

enum class LayerKind : char { Mamba = 'M', Attention = 'A' };
enum class NormKind { RMSNorm, LayerNorm };
enum class MlpKind { None, SwiGLU, GELU, GELUTanh, ReLU };
enum class PositionKind { None, RoPE, ALiBi };

struct MambaConfig {
    int version = 2;          // 1: selective scan (S6); 2: SSD
    int64_t d_state = 128;
    int64_t d_conv = 4;
    int64_t expand = 2;
    int64_t d_inner = 0;      // 0: expand · d_model
    int64_t head_dim = 64;    // Mamba-2
    int64_t n_groups = 1;     // Mamba-2: groups of heads sharing B and C
    int64_t chunk_size = 256; // Mamba-2
    int64_t dt_rank = 0;      // Mamba-1; 0: ceil(d_model / 16)
    double dt_min = 0.001, dt_max = 0.1, dt_init_floor = 1e-4;
    double A_init_min = 1, A_init_max = 16;  // Mamba-2: A drawn in this range
    // Mamba-2: dt is clamped to [dt_limit_min, dt_limit_max] after the softplus (HF's
    // time_step_limit, mamba_ssm's dt_limit); the default is no clamp.
    double dt_limit_min = 0, dt_limit_max = std::numeric_limits<double>::infinity();
    bool conv_bias = true;
    bool proj_bias = false;   // in_proj / out_proj bias
    bool dt_bc_norm = false;  // Mamba-1 (Jamba): RMSNorm on dt, B and C after x_proj
    int64_t norm_groups = 0;  // Mamba-2 gated norm groups; 0: n_groups
};

struct AttentionConfig {
    int64_t n_heads = 12;
    int64_t n_kv_heads = 0;   // 0: n_heads
    int64_t head_dim = 0;     // 0: d_model / n_heads
    PositionKind position = PositionKind::RoPE;
    double rope_theta = 10000;
    int64_t rotary_dim = 0;   // 0: head_dim (partial rotary when smaller)
    int64_t sliding_window = 0;  // 0: none
    bool qkv_bias = false;
    bool out_bias = false;
};

struct MlpConfig {
    MlpKind kind = MlpKind::SwiGLU;
    int64_t d_ff = 2048;
    bool bias = false;
};

struct ModelConfig {
    int64_t vocab_size = 32000;
    int64_t d_model = 768;
    int64_t n_layers = 12;
    std::vector<LayerKind> layers;  // one per layer
    MambaConfig mamba;
    AttentionConfig attention;
    MlpConfig mlp;
    NormKind norm = NormKind::RMSNorm;
    double norm_eps = 1e-5;
    bool tie_embeddings = true;
    int64_t max_seq_len = 4096;
    double initializer_range = 0.02;
    // An embedding row that receives no gradient (PyTorch's padding_idx, as Jamba and Bamba set
    // it to pad_token_id); −1: none.
    int64_t embed_padding_idx = -1;

    // Derived sizes.
    int64_t mamba_d_inner() const { return mamba.d_inner ? mamba.d_inner : mamba.expand * d_model; }
    int64_t mamba_dt_rank() const { return mamba.dt_rank ? mamba.dt_rank : (d_model + 15) / 16; }
    int64_t mamba_n_heads() const { return mamba_d_inner() / mamba.head_dim; }
    int64_t mamba_norm_groups() const { return mamba.norm_groups ? mamba.norm_groups : mamba.n_groups; }
    int64_t attn_kv_heads() const { return attention.n_kv_heads ? attention.n_kv_heads : attention.n_heads; }
    int64_t attn_head_dim() const { return attention.head_dim ? attention.head_dim : d_model / attention.n_heads; }
    int64_t attn_rotary_dim() const { return attention.rotary_dim ? attention.rotary_dim : attn_head_dim(); }
    int count(LayerKind k) const;
    std::string layer_pattern() const;  // "MMMA MMMA", grouped by four

    void validate() const;  // throws mslm::Error naming the field and the rule
};

// "MMMA MMMA" -> kinds; spaces are ignored; any other letter is an error naming it.
std::vector<LayerKind> parse_layer_pattern(const std::string& pattern);

ModelConfig config_from_json(const nlohmann::json& j, const std::string& source);  // source names errors
nlohmann::json config_to_json(const ModelConfig& c);
ModelConfig load_config(const std::string& path);  // a config.json or a model directory
void save_config(const ModelConfig& c, const std::string& path);

// The chunk Mamba-2's SSD runs in during CUDA training: the config's chunk_size capped at
// kCudaTrainingSsdChunk, or MSLM_SSD_CHUNK=N from the environment (read when a model plans its buffers
// for a shape). The chunked algorithm gives the same function for any chunk, up to rounding; the
// tensor-core kernels were measured faster at 128 than at the presets' 256 on every preset (130m
// +1.9%, mamba2-130m +3.2%, 370m +1.4%, 1b +0.1%; 64 was slower; docs/PERFORMANCE.md).
constexpr int64_t kCudaTrainingSsdChunk = 128;
int64_t cuda_training_ssd_chunk(const ModelConfig& c);
// The config with that chunk as its chunk_size: what the CUDA benches count a step's FLOPs of.
ModelConfig with_cuda_training_chunk(ModelConfig c);

std::vector<std::string> preset_names();
ModelConfig preset(const std::string& name);  // throws with the list of names when unknown

}  // namespace mslm
