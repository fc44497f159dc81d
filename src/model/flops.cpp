#include "model/flops.h"

#include <algorithm>

#include "model/info.h"

namespace mslm {

const char* kernel_family_name(KernelFamily f) {
    switch (f) {
        case KernelFamily::Gemm:
            return "GEMM";
        case KernelFamily::Ssd:
            return "SSD/scan";
        case KernelFamily::Attention:
            return "attention";
        case KernelFamily::Norm:
            return "norms";
        case KernelFamily::Conv:
            return "conv";
        case KernelFamily::Elementwise:
            return "elementwise";
        case KernelFamily::EmbedLoss:
            return "embed+CE";
        case KernelFamily::Optimizer:
            return "optimizer";
        case KernelFamily::Other:
            return "other";
    }
    return "?";
}

namespace {

constexpr double kAct = 2.0;  // bytes of a bf16 activation

struct Costs {
    StepCosts c{};
    FamilyCost& operator[](KernelFamily f) { return c[static_cast<size_t>(f)]; }
};

// Every projection I → O of the model, in no particular order.
template <typename Fn>
void for_each_projection(const ModelConfig& cfg, Fn&& fn) {
    const int64_t D = cfg.d_model;
    for (LayerKind kind : cfg.layers) {
        if (kind == LayerKind::Attention) {
            const int64_t Hq = cfg.attention.n_heads, Dh = cfg.attn_head_dim();
            fn(D, (Hq + 2 * cfg.attn_kv_heads()) * Dh);
            fn(Hq * Dh, D);
        } else if (cfg.mamba.version == 1) {
            const int64_t Din = cfg.mamba_d_inner(), R = cfg.mamba_dt_rank();
            fn(D, 2 * Din);
            fn(Din, R + 2 * cfg.mamba.d_state);
            fn(R, Din);
            fn(Din, D);
        } else {
            const int64_t Din = cfg.mamba_d_inner(), GS = cfg.mamba.n_groups * cfg.mamba.d_state;
            fn(D, 2 * Din + 2 * GS + cfg.mamba_n_heads());
            fn(Din, D);
        }
        if (cfg.mlp.kind != MlpKind::None) {
            fn(D, cfg.mlp.kind == MlpKind::SwiGLU ? 2 * cfg.mlp.d_ff : cfg.mlp.d_ff);
            fn(cfg.mlp.d_ff, D);
        }
    }
    fn(D, cfg.vocab_size);  // LM head
}

// Keys a query attends to, on average over the T positions of a causal sequence.
double mean_keys(const ModelConfig& cfg, double T) {
    const double w = static_cast<double>(cfg.attention.sliding_window);
    return w > 0 && w < T ? w * (1.0 - w / (2.0 * T)) : T / 2.0;
}

// One (N, width) norm, forward and backward; stats: bytes of its fp32 statistics per row.
double norm_bytes(double N, double width, double stats) {
    return kAct * (2.0 * N * width + 4.0 * N * width) + 2.0 * stats * N;
}

}  // namespace

StepCosts training_step_costs(const ModelConfig& cfg, int64_t B_, int64_t T_, bool optimizer) {
    Costs k;
    const double B = static_cast<double>(B_), T = static_cast<double>(T_), N = B * T;
    const double D = static_cast<double>(cfg.d_model), V = static_cast<double>(cfg.vocab_size);
    const double P = static_cast<double>(count_parameters(cfg).total());
    const double stats = cfg.norm == NormKind::LayerNorm ? 8.0 : 4.0;
    using KF = KernelFamily;

    for_each_projection(cfg, [&](int64_t i, int64_t o) {
        const double I = static_cast<double>(i), O = static_cast<double>(o);
        k[KF::Gemm].flops += 6.0 * N * I * O;
        k[KF::Gemm].bytes += kAct * (3.0 * N * I + 3.0 * N * O + 2.0 * I * O) + 8.0 * I * O;
    });

    // Embedding, LM head's loss, and the step's own bookkeeping.
    k[KF::EmbedLoss].bytes += 4.0 * N + 2.0 * kAct * N * D;  // lookup: ids, rows, output
    k[KF::EmbedLoss].bytes += kAct * N * V + 12.0 * N;       // CE forward: logits, targets, loss, lse
    k[KF::EmbedLoss].bytes += 2.0 * kAct * N * V + 8.0 * N;  // CE backward: logits, dlogits, lse, targets
    k[KF::EmbedLoss].bytes += kAct * N * D + 4.0 * N + 2.0 * kAct * std::min(N, V) * D;  // scatter
    k[KF::Norm].bytes += norm_bytes(N, D, stats);                                        // final norm
    // The parameters whose gradients stage in bf16: all but the matrix weights (the projections,
    // the LM head), whose gradients the GEMMs add in fp32; a tied head's matrix is the embedding,
    // whose lookups stage.
    double matrices = 0;
    for_each_projection(
        cfg, [&](int64_t i, int64_t o) { matrices += static_cast<double>(i) * static_cast<double>(o); });
    const double S = P - matrices + (cfg.tie_embeddings ? V * D : 0.0);
    k[KF::Elementwise].bytes += kAct * S + kAct * N * D;  // zero the staged grads, g_res
    k[KF::Elementwise].bytes += (kAct + 8.0) * S;         // fold staged into fp32

    // A residual add: with RMSNorm inside the next norm, which reads the stream and the sublayer's
    // output and writes the sum beside its output (2 more (N, D) passes); with LayerNorm a copy and an
    // add (5 passes).
    const bool fused_residual = cfg.norm == NormKind::RMSNorm;
    const KF residual_family = fused_residual ? KF::Norm : KF::Elementwise;
    const double residual_bytes = (fused_residual ? 2.0 : 5.0) * kAct * N * D;
    for (LayerKind kind : cfg.layers) {
        k[KF::Norm].bytes += norm_bytes(N, D, stats);
        k[residual_family].bytes += residual_bytes;  // the mixer's residual
        if (kind == LayerKind::Attention) {
            const double Hq = static_cast<double>(cfg.attention.n_heads);
            const double Hkv = static_cast<double>(cfg.attn_kv_heads());
            const double Dh = static_cast<double>(cfg.attn_head_dim()), Wq = (Hq + 2 * Hkv) * Dh;
            k[KF::Attention].flops += 6.0 * 2.0 * mean_keys(cfg, T) * Hq * Dh * N;
            k[KF::Attention].bytes += kAct * (4.0 * N * Wq + 3.0 * N * Hq * Dh) + 2.0 * 4.0 * N * Hq;
            if (cfg.attention.position == PositionKind::RoPE)
                k[KF::Elementwise].bytes += kAct * 4.0 * N * (Hq + Hkv) * Dh;
            k[KF::Elementwise].bytes += kAct * N * Wq;  // zero dqkv
        } else if (cfg.mamba.version == 1) {
            const double Din = static_cast<double>(cfg.mamba_d_inner()),
                         S = static_cast<double>(cfg.mamba.d_state);
            const double R = static_cast<double>(cfg.mamba_dt_rank()), Wx = R + 2 * S;
            const double K = static_cast<double>(cfg.mamba.d_conv);
            k[KF::Conv].flops += 6.0 * K * N * Din;
            k[KF::Conv].bytes += kAct * 6.0 * N * Din;
            k[KF::Ssd].bytes += kAct * (14.0 * N * Din + 8.0 * N * S);
            if (cfg.mamba.dt_bc_norm) {
                k[KF::Norm].bytes += norm_bytes(N, R, 4.0) + 2.0 * norm_bytes(N, S, 4.0);
                k[KF::Elementwise].bytes += kAct * (4.0 * N * Wx + N * Wx + 2.0 * N * S);  // gathers, zeroing
            } else {
                k[KF::Elementwise].bytes += kAct * 4.0 * N * R;  // dt's column copies
            }
            k[KF::Elementwise].bytes += kAct * (N * Din + N * Wx + N * Din + 2.0 * N * Din);  // zeroing
        } else {
            const double Din = static_cast<double>(cfg.mamba_d_inner()),
                         Ns = static_cast<double>(cfg.mamba.d_state);
            const double G = static_cast<double>(cfg.mamba.n_groups), GS = G * Ns;
            const double H = static_cast<double>(cfg.mamba_n_heads()),
                         Pd = static_cast<double>(cfg.mamba.head_dim);
            const double C = Din + 2 * GS;
            const double K = static_cast<double>(cfg.mamba.d_conv);
            const int64_t q = std::min<int64_t>(cfg.mamba.chunk_size, T_);
            const double Q = static_cast<double>(q);
            const double chunks = static_cast<double>((T_ + q - 1) / q);
            const double Gn = static_cast<double>(cfg.mamba_norm_groups());
            k[KF::Ssd].flops += 3.0 * N * (2.0 * Q * Ns * G + H * (2.0 * Q * Pd + 4.0 * Pd * Ns));
            const double in = N * (Din + 2 * GS + H);  // x, B, C, dt
            k[KF::Ssd].bytes +=
                kAct * (in + N * Din + in + N * Din + 2.0 * in) + 2.0 * 4.0 * B * chunks * H * Pd * Ns;
            k[KF::Conv].flops += 6.0 * K * N * C;
            k[KF::Conv].bytes += kAct * 6.0 * N * C;
            k[KF::Norm].bytes += kAct * 10.0 * N * Din + 2.0 * 4.0 * N * Gn;     // gated norm
            // (no elementwise passes: z is read in place, every activation gradient overwritten)
        }
        if (cfg.mlp.kind != MlpKind::None) {
            const double F = static_cast<double>(cfg.mlp.d_ff);
            const double U = cfg.mlp.kind == MlpKind::SwiGLU ? 2 * F : F;
            k[KF::Norm].bytes += norm_bytes(N, D, stats);
            k[residual_family].bytes += residual_bytes;                      // the MLP's residual
            k[KF::Elementwise].bytes += kAct * (4.0 * N * U + 2.0 * N * F);  // activation forward + backward
            if (cfg.mlp.kind != MlpKind::SwiGLU) k[KF::Elementwise].bytes += kAct * N * U;  // zero g_h
        }
    }
    if (optimizer) k[KF::Optimizer].bytes += 39.0 * P;
    return k.c;
}

double training_flops_per_token(const ModelConfig& cfg, int64_t T) {
    const StepCosts c = training_step_costs(cfg, 1, T, false);
    const double f = c[static_cast<size_t>(KernelFamily::Gemm)].flops +
                     c[static_cast<size_t>(KernelFamily::Ssd)].flops +
                     c[static_cast<size_t>(KernelFamily::Attention)].flops;
    return f / static_cast<double>(T);
}

int64_t matmul_params(const ModelConfig& cfg) {
    int64_t n = 0;
    for_each_projection(cfg, [&](int64_t i, int64_t o) { n += i * o; });
    return n;
}

std::string training_flops_formula() {
    return "model FLOPs/token = 6·P_matmul (projections, MLPs, LM head) + per attention layer "
           "6·2·(T/2)·Hq·Dh + "
           "per Mamba-2 layer 3·(2·Q·N·G + H·(2·Q·P + 4·P·N)), Q = min(chunk, T), chunk the one the step "
           "runs (CUDA training: at most 128)";
}

}  // namespace mslm
