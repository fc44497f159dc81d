#include "model/info.h"

#include <fmt/format.h>

#include "model/inference.h"
#include "nn/attention.h"
#include "nn/mamba1.h"
#include "nn/mamba2.h"
#include "nn/mlp.h"

namespace mslm {

ParamBreakdown count_parameters(const ModelConfig& cfg) {
    // Counted from the config so that `info` works for models too big to allocate here; a test
    // checks these formulas against the parameters HybridLM actually registers.
    ParamBreakdown p;
    const int64_t D = cfg.d_model;
    p.embedding = cfg.vocab_size * D;
    p.lm_head = cfg.tie_embeddings ? 0 : cfg.vocab_size * D;
    const int64_t norm_params = cfg.norm == NormKind::LayerNorm ? 2 * D : D;
    p.norms = norm_params;  // final norm
    for (LayerKind kind : cfg.layers) {
        p.norms += norm_params;
        if (kind == LayerKind::Mamba) {
            const int64_t Din = cfg.mamba_d_inner(), S = cfg.mamba.d_state, K = cfg.mamba.d_conv;
            const int64_t pb = cfg.mamba.proj_bias ? 1 : 0, cb = cfg.mamba.conv_bias ? 1 : 0;
            if (cfg.mamba.version == 1) {
                const int64_t R = cfg.mamba_dt_rank();
                p.mamba += D * 2 * Din + pb * 2 * Din + Din * K + cb * Din + Din * (R + 2 * S) + R * Din + Din +
                           Din * S + Din + Din * D + pb * D + (cfg.mamba.dt_bc_norm ? R + 2 * S : 0);
            } else {
                const int64_t G = cfg.mamba.n_groups, H = cfg.mamba_n_heads();
                const int64_t W = 2 * Din + 2 * G * S + H, C = Din + 2 * G * S;
                p.mamba += D * W + pb * W + C * K + cb * C + 3 * H + Din + Din * D + pb * D;
            }
        } else {
            const int64_t Hq = cfg.attention.n_heads, Hkv = cfg.attn_kv_heads(), Dh = cfg.attn_head_dim();
            const int64_t W = (Hq + 2 * Hkv) * Dh;
            p.attention += D * W + (cfg.attention.qkv_bias ? W : 0) + Hq * Dh * D + (cfg.attention.out_bias ? D : 0);
        }
        if (cfg.mlp.kind != MlpKind::None) {
            p.norms += norm_params;
            const int64_t F = cfg.mlp.d_ff, up = cfg.mlp.kind == MlpKind::SwiGLU ? 2 * F : F;
            p.mlp += D * up + F * D + (cfg.mlp.bias ? up + D : 0);
        }
    }
    return p;
}

MemoryEstimate estimate_memory(const ModelConfig& cfg, int64_t batch, int64_t seq_len) {
    MemoryEstimate m{};
    const int64_t n = count_parameters(cfg).total();
    m.weights_f32 = 4 * n;
    m.weights_bf16 = 2 * n;
    int64_t state = 0, state16 = 0;  // fp32 values; bf16 SSM states (MSLM_DECODE_STATE=bf16)
    const bool bf16_ssm = cpu_bf16_ssm_state(cfg);
    for (LayerKind kind : cfg.layers) {
        if (kind == LayerKind::Mamba) {
            const int64_t Din = cfg.mamba_d_inner(), S = cfg.mamba.d_state, K = cfg.mamba.d_conv;
            const int64_t conv_ch = cfg.mamba.version == 1 ? Din : Din + 2 * cfg.mamba.n_groups * S;
            state += (K - 1) * conv_ch;
            (bf16_ssm ? state16 : state) += Din * S;
        } else {
            int64_t kv_len = cfg.attention.sliding_window ? std::min(seq_len, cfg.attention.sliding_window) : seq_len;
            state += 2 * kv_len * cfg.attn_kv_heads() * cfg.attn_head_dim();
        }
    }
    m.state_per_sequence = 4 * state + 2 * state16;
    m.train_params_grads_adam = 16 * n;
    m.train_activations = 4 * batch * seq_len * activation_elements_per_token(cfg);
    return m;
}

int64_t activation_elements_per_token(const ModelConfig& cfg) {
    // Mirrors HybridLM::forward: the residual stream entering each layer and leaving the last,
    // the mixer inputs, the final norm output, logits (+ per-row loss and logsumexp), and for
    // layers with an MLP the mid residual and the MLP input.
    const int64_t D = cfg.d_model, L = cfg.n_layers;
    int64_t n = D * (L + 1) + D * L + D + cfg.vocab_size + 2;
    for (LayerKind kind : cfg.layers) {
        if (kind == LayerKind::Attention)
            n += AttentionMixer<float>::saved_per_token(cfg);
        else if (cfg.mamba.version == 1)
            n += Mamba1Mixer<float>::saved_per_token(cfg);
        else
            n += Mamba2Mixer<float>::saved_per_token(cfg);
        if (cfg.mlp.kind != MlpKind::None) n += 2 * D + Mlp<float>::saved_per_token(cfg);
    }
    return n;
}

std::string format_bytes(int64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, units[u]);
}

std::string format_count(int64_t n) {
    if (n >= 1'000'000'000) return fmt::format("{:.2f}B", n / 1e9);
    if (n >= 1'000'000) return fmt::format("{:.1f}M", n / 1e6);
    if (n >= 1'000) return fmt::format("{:.1f}K", n / 1e3);
    return fmt::format("{}", n);
}

std::string describe_model(const ModelConfig& cfg, int64_t batch, int64_t seq_len) {
    ParamBreakdown p = count_parameters(cfg);
    MemoryEstimate m = estimate_memory(cfg, batch, seq_len);
    std::string s;
    s += fmt::format("layers      {} ({} Mamba-{}, {} attention){}\n", cfg.layer_pattern(), cfg.count(LayerKind::Mamba),
                     cfg.mamba.version, cfg.count(LayerKind::Attention),
                     cfg.mlp.kind == MlpKind::None ? ", no MLP" : ", each with an MLP");
    s += fmt::format("d_model     {}   vocab {}   max_seq_len {}   norm {} (eps {})   tied embeddings {}\n", cfg.d_model,
                     cfg.vocab_size, cfg.max_seq_len, cfg.norm == NormKind::RMSNorm ? "rmsnorm" : "layernorm",
                     cfg.norm_eps, cfg.tie_embeddings ? "yes" : "no");
    s += fmt::format("parameters  {} ({})\n", format_count(p.total()), p.total());
    s += fmt::format("  embedding {:>10}   lm_head {:>10}   mamba {:>10}   attention {:>10}   mlp {:>10}   norms {:>8}\n",
                     format_count(p.embedding), p.lm_head ? format_count(p.lm_head) : "tied", format_count(p.mamba),
                     format_count(p.attention), format_count(p.mlp), format_count(p.norms));
    s += fmt::format("inference   weights {} (fp32) / {} (bf16); state per sequence at {} tokens {}{}\n",
                     format_bytes(m.weights_f32), format_bytes(m.weights_bf16), seq_len,
                     format_bytes(m.state_per_sequence),
                     cpu_bf16_ssm_state(cfg) ? " (bf16 SSM states, --state-dtype bf16)" : "");
    s += fmt::format("training    batch {} x {} tokens, fp32 CPU: weights+grads+AdamW {} + activations {} = {}\n", batch,
                     seq_len, format_bytes(m.train_params_grads_adam), format_bytes(m.train_activations),
                     format_bytes(m.train_params_grads_adam + m.train_activations));
    return s;
}

}  // namespace mslm
