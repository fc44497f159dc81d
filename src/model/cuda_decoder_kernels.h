// The decode step's own kernels (cuda_decoder_kernels.cu), used by CudaCausalLM
// (model/cuda_inference.h). Plain C++ header; the definitions exist only in builds with CUDA.
//
// decode_gemv: out = epilogue(norm(x) · Wᵀ (+ b)) for k ≤ kDecodeGemvMaxRows input rows — the
// batch-1 step is a weight stream (CudaCausalLM sends it 1 or 2 rows: from 3 rows the norm kernel +
// cuBLASLt + epilogue kernel is faster, docs/PERFORMANCE.md), so one kernel reads each bf16 weight
// row once (16-byte loads, a warp per output row, fp32 accumulation) and fuses what sits on either
// side of the product:
//   prologue  none, RMSNorm, LayerNorm, or Mamba-2's gated RMSNorm (x · silu(z) over groups), each
//             block normalising the rows itself (they are small) and rounding them to bf16 as the
//             norm kernel would store them;
//   epilogue  store bf16; add into a residual stream (round(v + b), then round(res + that), the
//             two roundings of the unfused linear + axpy); SwiGLU over the row pairs (o, O + o) of
//             a fused gate_up weight (each rounded, then silu(g)·u rounded); or store fp32 (logits).
// At batch 1 on bf16 weights whose rows fit (≤ 8 outputs a warp with 3 blocks an SM, ≤ 80 KiB of
// rows a block) every block copies all its weight rows into shared memory before it waits for its
// predecessor (programmatic dependent launch), so a product's weights stream while the previous
// kernels of the step run; with more outputs a warp (the LM head) each warp keeps a ring of 4 rows
// there instead, the first copied before the wait (MSLM_DECODE_GEMV_RING=0 streams those);
// MSLM_DECODE_GEMV_PRE=0 streams every product after the wait (the same sums, bit for bit).
// MSLM_DECODE_GEMV_TC=1 runs batch-1 products on 4-bit rows with fp32 absmax (blocks of ≥ 32) on tensor cores
// in fp16 (the code book rounded to fp16, x scaled by a power of two into fp16, fp32 sums) — opt-in, measured
// no faster than the default streaming kernel. Every kernel also reads what its epilogue needs early: the
// norm weights, biases and conv weights and window before the wait, the residual right after it. Every stored
// value is computed in fp32 and rounded once, as the unfused kernels do; the sums run in a different order
// than cuBLASLt's, so results agree with the unfused path to bf16 rounding, not bit for bit.
//
// The weight may instead be quantized (q: int8 rows, or bitsandbytes' NF4 / FP4 with fp32 or
// double-quantized absmax, ops/cuda/quant_gemv.h's GPU layout): the same prologue and epilogues, and
// a product that reads 16 bytes of codes per lane load (32 4-bit or 16 int8 weights) and scales by
// the block's absmax (4-bit, per 32 columns) or the row's scale (int8, once) — the arithmetic of
// ops::cuda::quant_gemv, so a quantized decode step is one kernel per product as for bf16. One row
// of x (k = 1) on 4-bit codes needs blocks of ≥ 32 columns (decode_gemv_supported says no to 16),
// and by default runs on dp4a: the code book times 127 rounded to int8, x quantized to int8 per 32
// columns (its largest magnitude to 127), exact integer sums of 32 products scaled by absmax · m /
// 127² (MSLM_DECODE_GEMV_DP4A=0 keeps the fp32 code book and bf16 x; docs/PERFORMANCE.md has the
// speed and the perplexity cost).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/cuda/kernel_trace.h"
#include "ops/cuda/quant_gemv.h"

namespace mslm::cuda_decoder_detail {

constexpr int64_t kDecodeGemvMaxRows = 8;
constexpr size_t kDecodeGemvMaxSmem = 200 * 1024;  // the staged input rows, gate rows and norm weights

enum class DecodeNorm { None, RMS, Layer, Gated };
enum class DecodeEpilogue { Store, Residual, SwiGLU, F32 };

struct DecodeGemv {
    const uint16_t* x = nullptr;  // (k, I) bf16, row stride ld_x
    int64_t ld_x = 0;
    const uint16_t* W = nullptr;  // (O, I), or (2·O, I) [gate | up] for SwiGLU
    const ops::cuda::QuantWeight* q = nullptr;  // or this quantized weight (W null), same rows
    const uint16_t* bias = nullptr;  // (O) or (2·O), or null
    int64_t k = 0, I = 0, O = 0;
    DecodeNorm norm = DecodeNorm::None;
    const uint16_t *norm_w = nullptr, *norm_b = nullptr;  // (I)
    float eps = 0;
    const uint16_t* z = nullptr;  // gated: (k, I), row stride ld_z
    int64_t ld_z = 0, groups = 1;
    uint16_t* x_out = nullptr;  // (k, I) contiguous: the normalised rows, or null
    DecodeEpilogue epi = DecodeEpilogue::Store;
    uint16_t* out = nullptr;  // bf16 outputs (k, O), row stride ld_out
    float* out32 = nullptr;   // F32 outputs (k, O), row stride ld_out
    int64_t ld_out = 0;
    // Optional, with the Store epilogue (Mamba-2's in_proj [z | xBC | dt]): outputs conv_col0 ..
    // conv_col0 + conv_C − 1 of each row are also the causal conv's input channels, so the epilogue
    // runs conv1d_causal_update's arithmetic on each stored bf16 value — window (conv_K − 1 earlier
    // inputs of row i's slot conv_slots[i]), weights, bias, SiLU — writes conv_out (k, conv_C) and
    // shifts the value into the window. Saves the step a kernel per Mamba-2 layer.
    // The window is read before the kernel waits for its predecessor: nothing else in a step writes
    // it, and its last writer (this product in the previous step) has finished, as every step starts
    // with a kernel launched without programmatic dependent launch (the embedding).
    uint16_t* conv_state = nullptr;  // (slots, conv_K − 1, conv_C), or null: no conv
    const int64_t* conv_slots = nullptr;
    const uint16_t *conv_w = nullptr, *conv_b = nullptr;  // (conv_C, conv_K), (conv_C) or null
    uint16_t* conv_out = nullptr;
    int64_t conv_col0 = 0, conv_C = 0, conv_K = 0;
    // When the launch lets its successor launch (programmatic dependent launch): at its start, or
    // (late) once its blocks have waited for their inputs. Late, at most one kernel of the step
    // copies its weight rows ahead beside a running one: launched at the start, the next two or
    // three did, and their copies slowed the running kernel's chain more than they saved
    // (CudaCausalLM's step sets it: +0.5–3% tokens/s at batch 1, docs/PERFORMANCE.md).
    bool late_trigger = false;
};

// Decode attention split over the keys (flash-decoding): one query per row i against its slot's
// ring (as ops::cuda::attention_decode: positions max(0, pos − L + 1, pos − window + 1) .. pos, GQA,
// ALiBi), the visible keys cut into splits of kAttentionSplitKeys, each split's online softmax in
// its own block (4 warps, 4 key rows in flight per warp), then a second kernel combining the splits'
// (max, sum, Σ w·v) — so a long context spreads over the GPU instead of one block per head.
// workspace: attention_split_workspace_floats floats. out (k, Hq, Dh) bf16; head_dim ≤ 128.
constexpr int64_t kAttentionSplitKeys = 128;
int64_t attention_split_count(int64_t cache_len, int64_t window);
size_t attention_split_workspace_floats(int64_t k, int64_t Hq, int64_t Dh, int64_t cache_len, int64_t window);
void attention_decode_split(uint16_t* out, const uint16_t* q, int64_t ld_q, const uint16_t* k_cache,
                            const uint16_t* v_cache, const int64_t* slots, const int64_t* pos, int64_t k,
                            int64_t cache_len, int64_t Hq, int64_t Hkv, int64_t Dh, float scale, int64_t window,
                            bool alibi, float* workspace, void* stream);

// rope_kv_append + attention_decode_split + its combine as one kernel (the decode step's default;
// MSLM_DECODE_ATTN_FUSED=0 takes the three): q (k, Hq·Dh) and k_src / v_src (k, Hkv·Dh) rows of
// stride ld, the new key rotated (rotary_dim, theta as rope_kv_append) and appended with its value
// to row pos[i] % L of slot slots[i], q rotated without being written back. Each split's block
// rotates its query head itself and the split holding the new key uses it from shared memory, so
// no split waits for the append; the splits past a row's visible keys leave at once, and the last
// of its active splits to finish combines (one active split writes out itself). workspace:
// attention_split_workspace_floats(workspace_rows, ...) floats (k ≤ workspace_rows), its last
// workspace_rows · Hq (the counters) zero before the first call (each call leaves them zero).
void attention_decode_fused(uint16_t* out, const uint16_t* q, const uint16_t* k_src, const uint16_t* v_src,
                            int64_t ld, uint16_t* k_cache, uint16_t* v_cache, const int64_t* slots,
                            const int64_t* pos, int64_t k, int64_t cache_len, int64_t Hq, int64_t Hkv,
                            int64_t Dh, int64_t rotary_dim, double theta, float scale, int64_t window,
                            bool alibi, float* workspace, int64_t workspace_rows, void* stream);

// Greedy decoding's pick from k rows of V fp32 logits, on the device: token[i] the first index of
// row i's largest logit (generate/processors.h argmax_token), logit[i] that logit, log_prob[i] its
// log-softmax (max-shifted, Σ exp in double, as generate's host path; the sum is taken over
// greedy_pick_splits(V) column ranges, each scaled to the row's maximum, so it agrees with the
// host's to double rounding). part: k · splits entries; done: k counters, zero before the first
// call (each call leaves them zero).
struct GreedyPart {
    double sum;
    int64_t at;
    float max;
};
int64_t greedy_pick_splits(int64_t V);
void greedy_pick(const float* logits, int64_t k, int64_t V, GreedyPart* part, unsigned* done,
                 double* log_prob, float* logit, int32_t* token, void* stream);

// The end of one iteration of a device-side greedy loop (CudaCausalLM::step_greedy_n: a CUDA graph
// whose while node runs the step, greedy_pick and this): the pick of row i (log_prob, logit, token,
// as greedy_pick wrote them) to out[iter · k + i], its token to ids[i] (the next step's input), pos[i]
// one further; then iter + 1, and the loop's condition (handle) set to continue while iter < max and
// no row picked one of the stop ids. ctl: [iter, max, n_stop, stop ids …] (int32, in GPU memory).
struct LoopPick {
    double log_prob;
    float logit;
    int32_t token;
};
constexpr int64_t kLoopMaxStops = 16;
void greedy_loop_tail(int64_t k, const double* log_prob, const float* logit, const int32_t* token,
                      int32_t* ids, int64_t* pos, LoopPick* out, int32_t* ctl, unsigned long long handle,
                      void* stream);

// Diagnostics (MSLM_DECODE_GEMV_TRACE=1, read at each launch; bench_cuda_decode --trace): each
// decode_gemv launch (and each fused decode attention's and SSD update's) takes the next of kGemvTraceSlots
// slots (in launch order since the last decode_gemv_trace_reset(true); a captured graph keeps its slots), and
// thread 0 of each of its blocks records the global timer (ns) when the block starts, when its wait for the
// previous kernel returns, after its prologue (x staged and normalised) and at its end — the earliest and
// latest over the blocks of the launch.
constexpr int kGemvTraceSlots = 512;
// A product's block 0 phases (b0): after x is staged, after the norm's sum of squares, after the
// PRE rows' copies are waited for, after the dot products, after their warp sums, after the
// epilogue, at the end; then its wait's end.
using GemvTrace = ops::cuda::KernelTrace;
enum class TraceKind { Product, Attention, SsdUpdate };
struct GemvTraceLaunch {
    int64_t I, O;
    bool pre;  // a kernel that copies weights before its wait (PRE, or TC's first items)
    // The fused decode attention (attention_decode_fused) and the SSD update (ops::cuda::ssd_update)
    // take slots too. Attention: I the head dim, O the query heads; its block 0's phases: q, k, v
    // staged / scores / softmax / values waited / Σ w·v / merged / end. SSD update: I the head dim
    // P, O the heads; its block 0's phases: dt, decay and x ready / states advanced and stored (B, C
    // read) / warp sums and y stored / — / — / — / end.
    TraceKind kind = TraceKind::Product;
};
// The record of the next slot for a kernel of another kind (MSLM_DECODE_GEMV_TRACE=1 and a slot
// left; a device pointer), or null.
ops::cuda::KernelTrace* decode_trace_record(TraceKind kind, int64_t I, int64_t O);
void decode_gemv_trace_reset(bool restart_slots);  // clears the records (restart: slots from 0)
int decode_gemv_trace_used();                      // slots taken since the last restart
std::vector<GemvTrace> decode_gemv_trace_read(int first, int count);
GemvTraceLaunch decode_gemv_trace_launch(int slot);  // the shape a slot's launch had

size_t decode_gemv_smem(const DecodeGemv& a);  // bytes of shared memory one block stages
bool decode_gemv_supported(const DecodeGemv& a);
void decode_gemv(const DecodeGemv& a, void* stream);

}  // namespace mslm::cuda_decoder_detail
