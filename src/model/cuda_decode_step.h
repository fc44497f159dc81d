// The persistent decode step: one kernel runs a whole batch-1 decoding step (embedding through the
// logits) for models of Mamba-2 and attention layers with RMSNorm and SwiGLU (or no) MLPs. Every
// block stays resident; the step's stages (a layer's in-projection with the causal conv fused into
// its epilogue, the SSD state update, the gated norm and out-projection, the attention stages, the
// MLP halves, the head) are separated by grid-wide barriers, and each block asks the L2 for its
// share of the weights two stages ahead, so the weights stream from memory while the barriers and
// the small reductions run. It replaces ~80 kernel launches per token, each paying a launch and a
// cold start (docs/PERFORMANCE.md). The arithmetic and rounding points are those of the step
// kernels it replaces (decode_gemv's prologues and epilogues, conv1d_causal_update, ssd_update,
// rope_kv_append, the split decode attention), up to the order of fp32 sums.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mslm::cuda_decoder_detail {

enum class StepStage : int32_t { MambaIn, Ssd, MambaOut, Qkv, Attention, AttnOut, MlpUp, MlpDown, Head };

// One layer's weights (bf16 bits) and state for the step; absent parts null.
struct alignas(8) StepLayer {
    const uint16_t *norm_w = nullptr, *mlp_norm_w = nullptr;
    const uint16_t *in_w = nullptr, *in_b = nullptr, *conv_w = nullptr, *conv_b = nullptr;  // Mamba-2
    const uint16_t *dt_bias = nullptr, *A_log = nullptr, *D = nullptr, *gnorm_w = nullptr;
    const uint16_t *qkv_w = nullptr, *qkv_b = nullptr;    // attention
    const uint16_t *out_w = nullptr, *out_b = nullptr;    // Mamba out_proj or attention o_proj
    const uint16_t *up_w = nullptr, *up_b = nullptr;      // SwiGLU: gate rows then up rows
    const uint16_t *down_w = nullptr, *down_b = nullptr;
    uint16_t* conv = nullptr;  // (slots, K − 1, C2)
    float* ssm = nullptr;      // (slots, H, P, N)
    uint16_t *kc = nullptr, *vc = nullptr;  // (slots, cache_len, Hkv, Dh)
};

struct StepStageEntry {
    int32_t stage = 0;  // StepStage
    int32_t layer = 0;
};

// Key splits of the step's attention (each a warp's online softmax, combined in the next stage).
constexpr int kStepMaxSplits = 32;
constexpr int kStepMaxTraceBlocks = 1024;

struct PersistentStep {
    const StepLayer* layers = nullptr;        // device
    const StepStageEntry* stages = nullptr;   // device, in order; the last is Head
    int32_t n_stages = 0, n_layers = 0;
    int32_t D = 0, Din = 0, H = 0, P = 0, G = 0, N = 0, K = 0, C2 = 0, F = 0, V = 0;
    int32_t Hq = 0, Hkv = 0, Dh = 0, rotary_dim = 0, norm_groups = 1;
    double rope_theta = 10000.0;
    float eps = 1e-5f, dt_min = 0.0f, dt_max = 0.0f, attn_scale = 1.0f;
    bool alibi = false;
    int64_t window = 0, cache_len = 0;
    const uint16_t *embed = nullptr, *final_w = nullptr, *lm_head = nullptr;
    const int64_t *slots = nullptr, *pos = nullptr;  // row 0: the slot and its position
    const int32_t* ids = nullptr;                    // row 0: the token
    uint16_t *res = nullptr, *proj = nullptr, *conv_out = nullptr, *y = nullptr, *a = nullptr, *hf = nullptr;
    float* logits = nullptr;
    float* part = nullptr;        // (Hq, kStepMaxSplits, Dh + 2)
    unsigned* barrier = nullptr;  // one counter, zeroed before each launch
    // Optional (MSLM_DECODE_STEP_TRACE=1): thread 0 of every block records the global timer (ns)
    // per stage at its start, after its weights arrived, after its prologue, at the barrier and after
    // it: (n_stages, blocks, 5) values, blocks ≤ kStepMaxTraceBlocks.
    unsigned long long* trace = nullptr;
    int32_t prefetch_ahead = 0;  // stages whose weights are asked of the L2 ahead (0: none; measured slower)
    bool stage_weights = true;   // bulk copies of each block's weight rows into shared memory
    uint32_t stage_buf = 0;      // set by persistent_step(): bytes of each of the two buffers (0: off)
    uint32_t early_floats = 0;   // set by persistent_step(): the epilogues' per-row values
};

size_t persistent_step_part_floats(int64_t Hq, int64_t Dh);
// Whether this device can run the step (cooperative launch, one block per SM resident).
bool persistent_step_available();
// Zeroes the barrier and launches the step on `stream` (a cooperative launch: every block resident).
void persistent_step(const PersistentStep& a, void* stream);

}  // namespace mslm::cuda_decoder_detail
