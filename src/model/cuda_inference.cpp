#include "model/cuda_inference.h"

#include <algorithm>

#include "core/error.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <string_view>

#include "core/caching_allocator.h"
#include "core/dtype.h"
#include "model/cuda_decode_step.h"
#include "model/cuda_decoder_kernels.h"
#include "model/cuda_model.h"
#include "model/inference.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/conv1d.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/norm.h"
#include "ops/cuda/quant_gemv.h"
#include "ops/cuda/rows_gemm.h"
#include "ops/cuda/selective_scan.h"
#include "ops/cuda/ssd.h"
#endif

namespace mslm {

int parse_inference_device(const std::string& device) {
    if (device == "cpu") return -1;
    if (device == "cuda") return 0;
    const std::string prefix = "cuda:";
    const std::string digits = device.rfind(prefix, 0) == 0 ? device.substr(prefix.size()) : "";
    MSLM_CHECK(
        !digits.empty() && digits.size() <= 4 && digits.find_first_not_of("0123456789") == std::string::npos,
        "--device must be \"cpu\", \"cuda\" or \"cuda:N\" (got \"{}\")", device);
    return std::stoi(digits);
}

std::unique_ptr<CausalLM> make_causal_lm(HybridLM<float>& model, const std::string& device) {
    const int gpu = parse_inference_device(device);
    if (gpu < 0) return std::make_unique<HybridCausalLM>(model);
#ifdef MSLM_HAVE_CUDA
    return std::make_unique<CudaCausalLM>(model, gpu);
#else
    fail(
        "--device {}: this build of mamba-slm has no CUDA support; use --device cpu, or build with CUDA "
        "(cmake --preset cuda)",
        device);
#endif
}

#ifdef MSLM_HAVE_CUDA

namespace cuda_decoder_detail {
// cuda_decoder_kernels.cu (the rest is in cuda_decoder_kernels.h)
void gather_blocks(void* dst, const void* src, const int64_t* idx, int64_t n, size_t block_bytes, void* stream);
// dst (n) fp32 = the bf16 patterns src exactly; narrow_bf16: dst = src rounded to bf16 (nearest
// even): the prefill's fp32 copy of a slot's bf16 SSM state (MSLM_DECODE_STATE=bf16), and back.
void widen_bf16(float* dst, const uint16_t* src, int64_t n, void* stream);
void narrow_bf16(uint16_t* dst, const float* src, int64_t n, void* stream);
// RoPE of the query and key heads (rotary_dim 0: none) fused with the KV append, as rope_apply_at
// then a copy of the key and value rows into the rings.
void rope_kv_append(uint16_t* q, const uint16_t* k_src, const uint16_t* v_src, int64_t ld, uint16_t* k_cache,
                    uint16_t* v_cache, const int64_t* slots, const int64_t* pos, int64_t k, int64_t L, int64_t Hq,
                    int64_t Hkv, int64_t Dh, int64_t rotary_dim, double theta, void* stream);
}  // namespace cuda_decoder_detail

namespace {

namespace kc = ops::cuda;
using bf16 = uint16_t;

void check(cudaError_t err, const char* what) {
    MSLM_CHECK(err == cudaSuccess, "CudaCausalLM: {}: {}", what, cudaGetErrorString(err));
}

// Sizes every buffer of one category, then carves them out of one block: run once without a base
// to measure, then with the block to place (the same calls in the same order).
struct Carver {
    char* base = nullptr;
    size_t offset = 0;
    template <typename P>
    void take(P*& p, int64_t n) {
        offset = (offset + 255) / 256 * 256;
        p = base ? reinterpret_cast<P*>(base + offset) : nullptr;
        offset += sizeof(P) * static_cast<size_t>(std::max<int64_t>(n, 0));
    }
};

struct Widths {
    int64_t D, V, Din, S, GS, H, P, G, K, C2, W2, R, Wx, Hq, Hkv, Dh, Wq, KVW, F, conv_c, proj;
    explicit Widths(const ModelConfig& c) {
        D = c.d_model;
        V = c.vocab_size;
        Din = c.mamba_d_inner();
        S = c.mamba.d_state;
        G = c.mamba.n_groups;
        GS = G * S;
        H = c.mamba_n_heads();
        P = c.mamba.head_dim;
        K = c.mamba.d_conv;
        C2 = Din + 2 * GS;
        W2 = 2 * Din + 2 * GS + H;
        R = c.mamba_dt_rank();
        Wx = R + 2 * S;
        Hq = c.attention.n_heads;
        Hkv = c.attn_kv_heads();
        Dh = c.attn_head_dim();
        Wq = (Hq + 2 * Hkv) * Dh;
        KVW = Hkv * Dh;
        F = c.mlp.d_ff;
        const bool mamba = c.count(LayerKind::Mamba) > 0, attn = c.count(LayerKind::Attention) > 0;
        const bool v1 = c.mamba.version == 1;
        conv_c = mamba ? (v1 ? Din : C2) : 0;
        proj = std::max(mamba ? (v1 ? 2 * Din : W2) : 0, attn ? Wq : 0);
    }
};

int64_t cache_len_for(const ModelConfig& cfg, int64_t max_len) {
    const int64_t w = cfg.attention.sliding_window;
    return w > 0 ? std::min(max_len, w) : max_len;
}

// Rows of the wrap buffer (an ordered copy of the window plus a prefill piece), 0 when the ring
// never wraps.
int64_t wrap_rows(const ModelConfig& cfg, int64_t max_len, int64_t rows) {
    const int64_t Lc = cache_len_for(cfg, max_len);
    return cfg.count(LayerKind::Attention) && Lc < max_len ? cfg.attention.sliding_window - 1 + rows : 0;
}

}  // namespace

struct CudaCausalLM::Impl {
    struct Layer {
        LayerKind kind;
        const bf16 *norm_w = nullptr, *norm_b = nullptr, *mlp_norm_w = nullptr, *mlp_norm_b = nullptr;
        const bf16 *in_w = nullptr, *in_b = nullptr, *conv_w = nullptr, *conv_b = nullptr, *dt_bias = nullptr,
                   *A_log = nullptr, *D = nullptr, *gnorm_w = nullptr, *out_w = nullptr, *out_b = nullptr;
        const bf16 *x_w = nullptr, *dtp_w = nullptr, *dtp_b = nullptr;
        const bf16 *dt_norm_w = nullptr, *B_norm_w = nullptr, *C_norm_w = nullptr;  // Mamba-1 dt_bc_norm
        const bf16 *qkv_w = nullptr, *qkv_b = nullptr, *o_w = nullptr, *o_b = nullptr;
        const bf16 *up_w = nullptr, *up_b = nullptr, *down_w = nullptr, *down_b = nullptr;
        // A quantized model (--dtype int8 | w8a16 | nf4 | fp4): the linear weights it quantized, whose
        // bf16 pointer above is then null.
        const kc::QuantWeight *in_q = nullptr, *out_q = nullptr, *x_q = nullptr, *dtp_q = nullptr,
                              *qkv_q = nullptr, *o_q = nullptr, *up_q = nullptr, *down_q = nullptr;
        bool has_mlp() const { return up_w || up_q; }
        // State (per slot blocks).
        bf16* conv = nullptr;   // (S, K − 1, conv channels)
        float* ssm = nullptr;   // (S, H, P, N) or (S, Din, N)
        bf16* ssm16 = nullptr;  // instead of ssm: (S, H, P, N) bf16 (Mamba-2 with MSLM_DECODE_STATE=bf16)
        void* ssm_state() const { return ssm ? static_cast<void*>(ssm) : static_cast<void*>(ssm16); }
        bf16 *kc = nullptr, *vc = nullptr;  // (S, cache_len, Hkv, Dh)
    };

    CachingAllocator* alloc = nullptr;
    cudaStream_t stream = nullptr;
    bf16* weights = nullptr;
    const bf16 *embed = nullptr, *lm_head = nullptr, *final_w = nullptr, *final_b = nullptr;
    std::vector<Layer> layers;
    int64_t total = 0;

    // Quantized linear weights (ops/cuda/quant_gemv.h), when the model was packed to int8, w8a16, nf4
    // or fp4: one block for all of them, their views (the layers point into `quant`), and a bf16
    // scratch for the largest one but the LM head, which prefill's GEMMs expand each weight into.
    std::vector<kc::QuantWeight> quant;
    char* qweights = nullptr;
    size_t qweight_bytes = 0;
    const kc::QuantWeight* lm_head_q = nullptr;
    bf16* qscratch = nullptr;
    int64_t qscratch_elems = 0;

    // State and scratch blocks (from the caching allocator).
    char* state = nullptr;
    size_t state_bytes = 0;
    size_t conv_block = 0, ssm_block = 0, kv_block = 0;  // bytes per slot
    char* scratch = nullptr;
    size_t scratch_bytes = 0;
    int64_t rows = 0;  // scratch capacity
    // Scratch buffers.
    int64_t* slots = nullptr;  // (slots) then pos (slots) then ids (rows): one upload
    int64_t* pos = nullptr;
    int32_t* ids = nullptr;
    bf16 *res = nullptr, *ln = nullptr, *tmp = nullptr, *proj = nullptr, *xin = nullptr, *conv_out = nullptr;
    bf16 *y = nullptr, *yn = nullptr, *xdbl = nullptr, *dt = nullptr, *dt_raw = nullptr, *o = nullptr;
    bf16 *h = nullptr, *a = nullptr, *hf = nullptr, *kt = nullptr, *vt = nullptr, *bc_in = nullptr, *bc = nullptr;
    float *mean = nullptr, *rstd = nullptr, *g_rstd = nullptr, *lse = nullptr, *logits = nullptr;
    float* attn_ws = nullptr;  // the split decode attention's partials (and the fused kernel's counters)
    int64_t attn_ws_rows = 0;  // the rows it holds partials for (the slots)
    float* h32 = nullptr;      // a slot's SSM state in fp32 for prefill's SSD, when the states are bf16
    bool bf16_state = false;   // Mamba-2 SSM states in bf16 (MSLM_DECODE_STATE=bf16, read by the constructor)
    char* picks = nullptr;  // greedy picks of the step's rows: [log_prob double | logit float | token int32]
    cuda_decoder_detail::GreedyPart* pick_part = nullptr;  // (slots, splits) partials
    unsigned* pick_done = nullptr;                         // (slots) counters, zeroed by start()
    void* ws = nullptr;
    // Pinned host staging: [slots | pos | ids] as on the device, the logits and the hidden rows.
    char* host = nullptr;
    size_t host_bytes = 0;
    float* host_logits = nullptr;
    bf16* host_hidden = nullptr;
    char* host_picks = nullptr;

    bool graphs = true;
    // decode_gemv lets the next kernel launch after its own wait, not at its start
    // (MSLM_DECODE_PDL_LATE=0: at its start; DecodeGemv::late_trigger).
    bool late_trigger = true;
    bool fused = true;  // decode_gemv for the step's products (MSLM_DECODE_FUSED=0: cuBLASLt + separate kernels)
    bool attn_fused =
        true;  // attention_decode_fused (MSLM_DECODE_ATTN_FUSED=0: RoPE + split + combine kernels)
    // The most rows whose decode attention is the one fused kernel (more take RoPE + split +
    // combine): every batch. Measured on the H200 (docs/PERFORMANCE.md, "the one-kernel decode
    // attention at every batch"): 130m +12% at batch 16, +6% at 64, +8% at 128 against the former
    // limit of 8 rows, and +8% at batch 64 with 2048-token prompts. MSLM_DECODE_ATTN_FUSED_MAX_ROWS
    // sets a limit (measurements).
    int64_t attn_fused_max_rows = std::numeric_limits<int64_t>::max();
    // The most rows a bf16 product takes through decode_gemv; more go through the norm kernel,
    // cuBLASLt and the epilogue kernel. Measured on the H200 (docs/PERFORMANCE.md, "Decode at batch
    // 3..64: cuBLASLt instead of the fused product"): from 3 rows the unfused path is faster on
    // every preset (1.9× at batch 8 on 130m, 2.7× on 1b), at 2 rows only up to d_model 1024.
    // MSLM_DECODE_FUSED_MAX_ROWS overrides it (up to kDecodeGemvMaxRows).
    int64_t fused_max_rows = 1;
    // The most rows a quantized product takes through quant_gemv's tiles, or 0: the measured
    // default (quant_gemv_rows); MSLM_QUANT_GEMV_MAX_ROWS overrides it.
    int64_t quant_gemv_max_rows = 0;
    // Which bf16 decode products take ops::cuda::rows_gemm (wgmma and TMA) instead of cuBLASLt or the
    // skinny kernel, and from how many rows: none by default. Measured on the H200 at batch 64 with
    // bf16 states (docs/PERFORMANCE.md, "rows_gemm"): the residual products (out_proj, o_proj, the
    // MLP's down) from 33 rows gave mamba2-130m +2–4%, 130m −0.1–+1.6%, 370m −0.5% and 1b −14% (each
    // block stages as much x as W at 64 × 64 tiles); its RMSNorm prologue and store / SwiGLU epilogues
    // in place of the norm kernel, cuBLASLt and the SwiGLU kernel were 3–7% slower on 130m.
    // MSLM_ROWS_GEMM_EPI (a comma list of store, residual, swiglu), MSLM_ROWS_GEMM_MIN_ROWS (33) and
    // MSLM_ROWS_GEMM_NORM=1 turn them on for measurements; MSLM_ROWS_GEMM=0 refuses every call.
    int64_t rows_gemm_min_rows = 33;
    bool rows_gemm_norm = false;
    bool rows_gemm_epi[3] = {false, false, false};
    // MSLM_ROWS_GEMM_CONV=1: Mamba-2's in_proj on rows_gemm runs the xBC conv in its epilogue (one
    // conv_update kernel fewer a layer).
    bool rows_gemm_conv = false;
    // The persistent batch-1 step (cuda_decode_step.h) where the model's layers allow it and
    // MSLM_DECODE_PERSISTENT=1 asks for it; `tables` holds its layer and stage tables, the attention
    // partials and the barrier (from the caching allocator, made in start()). Off by default since
    // decode_gemv took a batch-1 instantiation: the kernel-per-op step (graphs + PDL) is now as fast
    // or faster on every preset (docs/PERFORMANCE.md, "Quantized products in the fused decode GEMV").
    bool persistent = false;
    char* tables = nullptr;
    cuda_decoder_detail::PersistentStep pstep;
    // MSLM_DECODE_STEP_TRACE=1: per-stage times of the persistent step, summed over steps and
    // printed (stderr) when the decoder is released.
    bool trace = false;
    int trace_blocks = 0;
    std::vector<int32_t> trace_kind;
    // Per stage, µs summed over steps (means over blocks): weights wait, prologue, product, barrier;
    // then the spread of the blocks' arrivals and the last arrival to the first departure.
    std::vector<std::array<double, 6>> trace_sum;
    double trace_kernel = 0;
    int64_t trace_steps = 0;

    void add_trace(const std::vector<unsigned long long>& t) {
        const size_t n = trace_kind.size(), B = static_cast<size_t>(trace_blocks);
        auto at = [&](size_t s, size_t b, int k) { return static_cast<double>(t[(s * B + b) * 5 + k]); };
        for (size_t s = 0; s < n; ++s) {
            double sum[4] = {}, first_arrival = 1e300, last_arrival = 0, first_departure = 1e300;
            for (size_t b = 0; b < B; ++b) {
                for (int k = 0; k < 4; ++k) sum[k] += at(s, b, k + 1) - at(s, b, k);
                first_arrival = std::min(first_arrival, at(s, b, 3));
                last_arrival = std::max(last_arrival, at(s, b, 3));
                first_departure = std::min(first_departure, at(s, b, 4));
            }
            for (int k = 0; k < 4; ++k) trace_sum[s][k] += 1e-3 * sum[k] / static_cast<double>(B);
            trace_sum[s][4] += 1e-3 * (last_arrival - first_arrival);
            trace_sum[s][5] += s + 1 < n ? 1e-3 * (first_departure - last_arrival) : 0.0;
        }
        trace_kernel += 1e-3 * (at(n - 1, 0, 4) - at(0, 0, 0));
        ++trace_steps;
    }

    void print_trace() {
        if (trace_steps == 0) return;
        static const char* names[] = {"mamba in_proj+conv", "ssd update", "gated norm+out_proj", "qkv",
                                      "attention", "attn combine+o_proj", "mlp gate/up", "mlp down", "head"};
        std::map<int32_t, std::array<double, 6>> by;
        std::map<int32_t, int> count;
        for (size_t i = 0; i < trace_kind.size(); ++i) {
            for (int k = 0; k < 6; ++k) by[trace_kind[i]][k] += trace_sum[i][k];
            ++count[trace_kind[i]];
        }
        const double n = static_cast<double>(trace_steps);
        std::fprintf(stderr, "persistent step, %lld steps, %d blocks: %.1f us/step from block 0's first stage to its end\n",
                     static_cast<long long>(trace_steps), trace_blocks, trace_kernel / n);
        std::fprintf(stderr,
                     "| stage (us per step, all of its kind) | count | weights wait | prologue | product | barrier "
                     "| arrival spread | last arrival to release |\n|---|---|---|---|---|---|---|---|\n");
        for (auto& [k, v] : by)
            std::fprintf(stderr, "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", names[k], count[k], v[0] / n,
                         v[1] / n, v[2] / n, v[3] / n, v[4] / n, v[5] / n);
        trace_steps = 0;
    }
    std::map<int64_t, cudaGraphExec_t> graph;
    std::set<int64_t> warmed;
    // step_greedy_n's device loop: per row count, a graph of one while node over the step's body;
    // its control block (greedy_loop_tail's ctl) and picks (kLoopChunk × slots) on the device and
    // their pinned host copies. loop: whether to use it (MSLM_DECODE_LOOP=0: step_greedy's loop).
    std::map<int64_t, cudaGraphExec_t> loop_graph;
    int32_t* loop_ctl = nullptr;
    cuda_decoder_detail::LoopPick* loop_out = nullptr;
    int32_t* host_loop_ctl = nullptr;
    cuda_decoder_detail::LoopPick* host_loop_out = nullptr;
    bool loop = true;

    void drop_graphs() {
        for (auto& [k, g] : graph) cudaGraphExecDestroy(g);
        for (auto& [k, g] : loop_graph) cudaGraphExecDestroy(g);
        graph.clear();
        loop_graph.clear();
        warmed.clear();
    }
    void release() {
        drop_graphs();
        if (state) alloc->deallocate(state);
        if (scratch) alloc->deallocate(scratch);
        if (tables) alloc->deallocate(tables);
        tables = nullptr;
        print_trace();
        if (host) cudaFreeHost(host);
        state = scratch = host = nullptr;
        state_bytes = scratch_bytes = host_bytes = 0;
    }
};

namespace {

// The pinned staging area's [slots | pos | ids] part, rounded to 16 bytes.
size_t staging_bytes(int64_t slots, int64_t rows) {
    return (2 * sizeof(int64_t) * static_cast<size_t>(slots) + sizeof(int32_t) * static_cast<size_t>(rows) +
            15) /
           16 * 16;
}

// A greedy pick's bytes on the device: log-softmax (double), logit (float), token (int32).
constexpr int64_t kPickBytes = sizeof(double) + sizeof(float) + sizeof(int32_t);

// MSLM_DECODE_STATE=bf16 (unset or f32: fp32): Mamba-2 layers keep their SSM states in bf16 — half
// the bytes a decode step streams and holds per sequence, as mamba-ssm's and transformers' caches
// do for a bf16 model (ops::cuda::ssd_update_bf16_state). Mamba-1 layers, and state sizes N that are
// not a multiple of 4, stay fp32.
bool bf16_ssm_state(const ModelConfig& cfg) {
    return bf16_decode_state_requested() && cfg.count(LayerKind::Mamba) > 0 && cfg.mamba.version == 2 &&
           cfg.mamba.d_state % 4 == 0;
}

// Scratch of one layer for `rows` rows, every buffer the prefill or the step needs.
template <typename Impl>
void carve_scratch(Carver& cv, Impl& m, const ModelConfig& cfg, int64_t rows, int64_t wrap, int64_t slots,
                   int64_t max_len) {
    const Widths w(cfg);
    const int64_t N = rows;
    // [slots (slots) | pos (slots) | ids (rows)], uploaded at once from the same host layout: a step
    // of k rows sends 16 · slots + 4 · k bytes.
    cv.take(m.slots, 2 * slots + (N + 1) / 2);
    if (m.slots) {
        m.pos = m.slots + slots;
        m.ids = reinterpret_cast<int32_t*>(m.slots + 2 * slots);
    }
    cv.take(m.res, N * w.D);
    cv.take(m.ln, N * w.D);
    cv.take(m.tmp, N * w.D);
    cv.take(m.hf, N * w.D);
    cv.take(m.mean, N);
    cv.take(m.rstd, N);
    cv.take(m.proj, N * w.proj);
    cv.take(m.xin, (N + w.K - 1) * w.conv_c);
    cv.take(m.conv_out, (N + w.K - 1) * w.conv_c);
    const int64_t inner = std::max(w.Din, w.Hq * w.Dh);
    cv.take(m.y, N * inner);
    cv.take(m.yn, N * w.Din);
    cv.take(m.g_rstd, N * cfg.mamba_norm_groups());
    cv.take(m.xdbl, cfg.mamba.version == 1 ? N * w.Wx : 0);
    cv.take(m.dt, cfg.mamba.version == 1 ? N * w.R : 0);
    cv.take(m.dt_raw, cfg.mamba.version == 1 ? N * w.Din : 0);
    const bool bc_norm = cfg.mamba.version == 1 && cfg.mamba.dt_bc_norm;
    cv.take(m.bc_in, bc_norm ? N * std::max(w.R, w.S) : 0);  // one block of [dt | B | C], contiguous
    cv.take(m.bc, bc_norm ? N * (w.R + 2 * w.S) : 0);        // the normed blocks, each contiguous
    cv.take(m.o, N * w.Hq * w.Dh);
    cv.take(m.lse, N * w.Hq);
    m.attn_ws_rows = slots;
    cv.take(m.attn_ws, cfg.count(LayerKind::Attention)
                           ? static_cast<int64_t>(cuda_decoder_detail::attention_split_workspace_floats(
                                 slots, w.Hq, w.Dh, cache_len_for(cfg, max_len), cfg.attention.sliding_window))
                           : 0);
    cv.take(m.kt, wrap * w.KVW);
    cv.take(m.vt, wrap * w.KVW);
    cv.take(m.h32, m.bf16_state ? w.H * w.P * w.S : 0);
    const bool mlp = cfg.mlp.kind != MlpKind::None;
    cv.take(m.h, mlp ? N * (cfg.mlp.kind == MlpKind::SwiGLU ? 2 : 1) * w.F : 0);
    cv.take(m.a, mlp ? N * w.F : 0);
    cv.take(m.logits, std::max<int64_t>(slots, 1) * w.V);
    cv.take(m.picks, std::max<int64_t>(slots, 1) * kPickBytes);
    cv.take(m.pick_part, std::max<int64_t>(slots, 1) * cuda_decoder_detail::greedy_pick_splits(w.V));
    cv.take(m.pick_done, std::max<int64_t>(slots, 1));
    cv.take(m.loop_ctl, 3 + cuda_decoder_detail::kLoopMaxStops);
    cv.take(m.loop_out, CudaCausalLM::kLoopChunk * std::max<int64_t>(slots, 1));
    size_t ws = 0;
    if (cfg.count(LayerKind::Mamba) && cfg.mamba.version == 2)
        ws = kc::ssd_forward_workspace_bytes(
            kc::SsdDims{1, N, w.H, w.P, w.G, w.S, cfg.mamba.chunk_size});
    char* p = nullptr;
    cv.take(p, static_cast<int64_t>(ws));
    m.ws = p;
}

struct StateSizes {
    size_t conv = 0, ssm = 0, kv = 0;  // bytes per slot and layer
};

StateSizes state_sizes(const ModelConfig& cfg, int64_t max_len, bool bf16_state) {
    const Widths w(cfg);
    StateSizes s;
    s.conv = sizeof(bf16) * static_cast<size_t>((w.K - 1) * w.conv_c);
    s.ssm = (bf16_state ? sizeof(bf16) : sizeof(float)) *
            static_cast<size_t>(cfg.mamba.version == 1 ? w.Din * w.S : w.H * w.P * w.S);
    s.kv = sizeof(bf16) * static_cast<size_t>(cache_len_for(cfg, max_len) * w.KVW);
    return s;
}

size_t aligned(size_t n) {
    return (n + 255) / 256 * 256;
}

size_t state_total(const ModelConfig& cfg, int64_t slots, int64_t max_len, bool bf16_state) {
    const StateSizes s = state_sizes(cfg, max_len, bf16_state);
    const auto S = static_cast<size_t>(slots);
    return cfg.count(LayerKind::Mamba) * (aligned(S * s.conv) + aligned(S * s.ssm)) +
           cfg.count(LayerKind::Attention) * 2 * aligned(S * s.kv);
}

void copy2d(void* dst, int64_t ld_dst, const void* src, int64_t ld_src, int64_t rows, int64_t cols,
            cudaStream_t s) {
    if (rows <= 0 || cols <= 0) return;
    check(cudaMemcpy2DAsync(dst, sizeof(bf16) * ld_dst, src, sizeof(bf16) * ld_src, sizeof(bf16) * cols, rows,
                            cudaMemcpyDeviceToDevice, s),
          "cudaMemcpy2DAsync");
}

void copy_bytes(void* dst, const void* src, size_t bytes, cudaStream_t s) {
    if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
}

kc::AttentionOptions attention_options(const ModelConfig& cfg, int64_t q_offset) {
    kc::AttentionOptions opt{};
    opt.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg.attn_head_dim())));
    opt.window = cfg.attention.sliding_window;
    opt.alibi = cfg.attention.position == PositionKind::ALiBi;
    opt.q_offset = q_offset;
    return opt;
}

}  // namespace

namespace {

// Whether the persistent batch-1 step takes this model: Mamba-2 and attention layers, RMSNorm,
// SwiGLU or no MLP, product widths in whole 16-byte rows, every product's weights 16-byte aligned,
// and a device that keeps one block per SM resident.
template <typename Impl>
bool persistent_step_fits(const ModelConfig& cfg, const Impl& m) {
    const Widths w(cfg);
    const bool mamba = cfg.count(LayerKind::Mamba) > 0, attn = cfg.count(LayerKind::Attention) > 0;
    if (mamba && (cfg.mamba.version != 2 || w.S % 4 != 0 || w.K > 4 || w.Din % 8 != 0 || w.H % w.G != 0 ||
                  w.Din % cfg.mamba_norm_groups() != 0))
        return false;
    if (attn && (w.Dh > 128 || (w.Hq * w.Dh) % 8 != 0 || cfg.attn_rotary_dim() > 128 ||
                 (cfg.attention.position == PositionKind::RoPE && cfg.attn_rotary_dim() % 2 != 0)))
        return false;
    if (cfg.norm != NormKind::RMSNorm || w.D % 8 != 0) return false;
    if (m.bf16_state) return false;  // its state stage reads fp32 states
    if (cfg.mlp.kind != MlpKind::None && (cfg.mlp.kind != MlpKind::SwiGLU || w.F % 8 != 0)) return false;
    auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    if (!aligned(m.lm_head)) return false;
    for (const auto& L : m.layers)
        if (!aligned(L.in_w) || !aligned(L.out_w) || !aligned(L.qkv_w) || !aligned(L.o_w) || !aligned(L.up_w) ||
            !aligned(L.down_w))
            return false;
    return cuda_decoder_detail::persistent_step_available();
}

// The step's tables on the device (layers, stages, attention partials, barrier) and its arguments.
template <typename Impl>
void prepare_persistent_step(const ModelConfig& cfg, Impl& m, int64_t cache_len) {
    namespace cd = cuda_decoder_detail;
    const Widths w(cfg);
    std::vector<cd::StepLayer> layers;
    std::vector<cd::StepStageEntry> stages;
    for (size_t l = 0; l < m.layers.size(); ++l) {
        const auto& L = m.layers[l];
        cd::StepLayer t;
        t.norm_w = L.norm_w;
        t.mlp_norm_w = L.mlp_norm_w;
        const auto li = static_cast<int32_t>(l);
        if (L.kind == LayerKind::Attention) {
            t.qkv_w = L.qkv_w, t.qkv_b = L.qkv_b, t.out_w = L.o_w, t.out_b = L.o_b, t.kc = L.kc, t.vc = L.vc;
            for (cd::StepStage st : {cd::StepStage::Qkv, cd::StepStage::Attention, cd::StepStage::AttnOut})
                stages.push_back({static_cast<int32_t>(st), li});
        } else {
            t.in_w = L.in_w, t.in_b = L.in_b, t.conv_w = L.conv_w, t.conv_b = L.conv_b, t.dt_bias = L.dt_bias;
            t.A_log = L.A_log, t.D = L.D, t.gnorm_w = L.gnorm_w, t.out_w = L.out_w, t.out_b = L.out_b;
            t.conv = L.conv, t.ssm = L.ssm;
            for (cd::StepStage st : {cd::StepStage::MambaIn, cd::StepStage::Ssd, cd::StepStage::MambaOut})
                stages.push_back({static_cast<int32_t>(st), li});
        }
        if (L.up_w) {
            t.up_w = L.up_w, t.up_b = L.up_b, t.down_w = L.down_w, t.down_b = L.down_b;
            stages.push_back({static_cast<int32_t>(cd::StepStage::MlpUp), li});
            stages.push_back({static_cast<int32_t>(cd::StepStage::MlpDown), li});
        }
        layers.push_back(t);
    }
    stages.push_back({static_cast<int32_t>(cd::StepStage::Head), 0});
    const bool attn = cfg.count(LayerKind::Attention) > 0;
    Carver cv;
    cd::StepLayer* dl = nullptr;
    cd::StepStageEntry* ds = nullptr;
    float* part = nullptr;
    unsigned* barrier = nullptr;
    unsigned long long* trace = nullptr;
    auto carve = [&](Carver& c) {
        c.take(dl, static_cast<int64_t>(layers.size()));
        c.take(ds, static_cast<int64_t>(stages.size()));
        c.take(part, attn ? static_cast<int64_t>(cd::persistent_step_part_floats(w.Hq, w.Dh)) : 0);
        c.take(barrier, 1);
        c.take(trace, m.trace ? 5 * static_cast<int64_t>(stages.size()) * cd::kStepMaxTraceBlocks : 0);
    };
    carve(cv);
    m.tables = static_cast<char*>(m.alloc->allocate(cv.offset));
    Carver place{m.tables};
    carve(place);
    check(cudaMemcpy(dl, layers.data(), sizeof(cd::StepLayer) * layers.size(), cudaMemcpyHostToDevice),
          "upload the step's layers");
    check(cudaMemcpy(ds, stages.data(), sizeof(cd::StepStageEntry) * stages.size(), cudaMemcpyHostToDevice),
          "upload the step's stages");
    cd::PersistentStep& a = m.pstep;
    a = cd::PersistentStep{};
    a.layers = dl;
    a.stages = ds;
    a.n_stages = static_cast<int32_t>(stages.size());
    a.n_layers = static_cast<int32_t>(layers.size());
    auto i32 = [](int64_t v) { return static_cast<int32_t>(v); };
    a.D = i32(w.D), a.Din = i32(w.Din), a.H = i32(w.H), a.P = i32(w.P), a.G = i32(w.G), a.N = i32(w.S);
    a.K = i32(w.K), a.C2 = i32(w.C2), a.F = i32(cfg.mlp.kind == MlpKind::None ? 0 : w.F), a.V = i32(w.V);
    a.Hq = i32(attn ? w.Hq : 0), a.Hkv = i32(attn ? w.Hkv : 1), a.Dh = i32(attn ? w.Dh : 0);
    a.rotary_dim = attn && cfg.attention.position == PositionKind::RoPE ? i32(cfg.attn_rotary_dim()) : 0;
    a.norm_groups = cfg.count(LayerKind::Mamba) ? i32(cfg.mamba_norm_groups()) : 1;
    a.rope_theta = cfg.attention.rope_theta;
    a.eps = static_cast<float>(cfg.norm_eps);
    a.dt_min = static_cast<float>(cfg.mamba.dt_limit_min);
    a.dt_max = static_cast<float>(cfg.mamba.dt_limit_max);
    const kc::AttentionOptions opt = attention_options(cfg, 0);
    a.attn_scale = opt.scale;
    a.alibi = opt.alibi;
    a.window = opt.window;
    a.cache_len = cache_len;
    a.embed = m.embed, a.final_w = m.final_w, a.lm_head = m.lm_head;
    a.slots = m.slots, a.pos = m.pos, a.ids = m.ids;
    a.res = m.res, a.proj = m.proj, a.conv_out = m.conv_out, a.y = m.y, a.a = m.a, a.hf = m.hf;
    a.logits = m.logits;
    a.part = part;
    a.barrier = barrier;
    a.trace = m.trace ? trace : nullptr;
    if (const char* ahead = std::getenv("MSLM_DECODE_STEP_PREFETCH")) a.prefetch_ahead = std::atoi(ahead);
    if (const char* staged = std::getenv("MSLM_DECODE_STEP_STAGE")) a.stage_weights = std::string(staged) != "0";
    m.trace_kind.clear();
    for (const auto& e : stages) m.trace_kind.push_back(e.stage);
    m.trace_sum.assign(stages.size(), {});
    int device = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&m.trace_blocks, cudaDevAttrMultiProcessorCount, device);
}

}  // namespace

namespace {

// The weights `p` holds packed as int8, w8a16, nf4 or fp4, in the GPU layout, in one block from the
// allocator; qparam maps their names to the views. Returns which parameters were quantized.
// Sizes the bf16 scratch that prefill expands one quantized weight into (any but the LM head).
template <typename Impl>
std::vector<bool> upload_quantized(Impl& m, const Parameters<float>& p,
                                   std::map<std::string, const kc::QuantWeight*>& qparam) {
    std::vector<bool> quantized(p.specs().size(), false);
    const ops::WeightFormat f = p.weight_format();
    if (f != ops::WeightFormat::Int8 && f != ops::WeightFormat::W8A16 && !ops::is_4bit_format(f)) return quantized;
    std::vector<kc::QuantHostWeight> host;
    std::vector<size_t> index;
    for (size_t i = 0; i < p.specs().size(); ++i)
        if (const ops::PackedWeight* pw = p.packed(i)) {
            host.push_back(kc::quant_weight_from_packed(*pw));
            index.push_back(i);
            quantized[i] = true;
        }
    if (host.empty()) return quantized;
    m.qweight_bytes = 0;
    for (const kc::QuantHostWeight& h : host) m.qweight_bytes += h.device_bytes();
    m.qweights = static_cast<char*>(m.alloc->allocate(m.qweight_bytes));
    m.quant.reserve(host.size());
    char* at = m.qweights;
    for (size_t k = 0; k < host.size(); ++k) {
        m.quant.push_back(kc::quant_weight_upload(host[k], at, m.stream));
        at += host[k].device_bytes();
        const std::string& name = p.specs()[index[k]].name;
        qparam[name] = &m.quant.back();
        if (name != "lm_head.weight" && name != "embed.weight")
            m.qscratch_elems = std::max(m.qscratch_elems, host[k].out * host[k].in);
    }
    if (m.qscratch_elems) m.qscratch = static_cast<bf16*>(m.alloc->allocate(sizeof(bf16) * m.qscratch_elems));
    check(cudaStreamSynchronize(m.stream), "upload quantized weights");  // the host copies go out of scope
    return quantized;
}

}  // namespace

CudaDecoderMemory CudaCausalLM::plan(const ModelConfig& cfg, int64_t slots, int64_t max_len) {
    CudaDecoderMemory mem;
    {
        HybridLM<float> layout(cfg);
        mem.weights = sizeof(bf16) * static_cast<size_t>(layout.params().total());
    }
    Impl probe;
    probe.bf16_state = bf16_ssm_state(cfg);
    mem.state = state_total(cfg, slots, max_len, probe.bf16_state);
    Carver cv;
    const int64_t rows = std::max<int64_t>(slots, std::min<int64_t>(kPrefillChunk, max_len));
    carve_scratch(cv, probe, cfg, rows, wrap_rows(cfg, max_len, rows), slots, max_len);
    mem.scratch = cv.offset;
    return mem;
}

CudaCausalLM::CudaCausalLM(const HybridLM<float>& model, int device)
    : cfg_(model.config()), impl_(std::make_unique<Impl>()), device_(device) {
    cfg_.validate();
    if (cfg_.count(LayerKind::Mamba) && cfg_.mamba.version == 1 && cfg_.mamba.d_state > kc::kScanMaxState)
        fail("not supported on CUDA yet: Mamba-1 d_state {} > {}", cfg_.mamba.d_state, kc::kScanMaxState);
    if (cfg_.count(LayerKind::Attention) && cfg_.attn_head_dim() > kc::kAttentionMaxHeadDim)
        fail("not supported on CUDA yet: head_dim {} > {}", cfg_.attn_head_dim(), kc::kAttentionMaxHeadDim);
    for (size_t i = 0; i < model.params().specs().size(); ++i)
        MSLM_CHECK(!model.params().released(i),
                   "CudaCausalLM: {} has no fp32 values (released after packing for the CPU); load the model "
                   "again for the GPU",
                   model.params().specs()[i].name);
    impl_->bf16_state = bf16_ssm_state(cfg_);
    CudaHybridLM::select_device(device);
    Impl& m = *impl_;
    m.alloc = &cuda_caching_allocator(device);
    const char* graphs = std::getenv("MSLM_CUDA_GRAPHS");
    m.graphs = !(graphs && std::string(graphs) == "0");
    const char* late = std::getenv("MSLM_DECODE_PDL_LATE");
    m.late_trigger = !(late && std::string(late) == "0");
    const char* fused = std::getenv("MSLM_DECODE_FUSED");
    m.fused = !(fused && std::string(fused) == "0");
    const char* attn_fused = std::getenv("MSLM_DECODE_ATTN_FUSED");
    m.attn_fused = !(attn_fused && std::string(attn_fused) == "0");
    if (const char* rows = std::getenv("MSLM_DECODE_ATTN_FUSED_MAX_ROWS"))
        m.attn_fused_max_rows = std::atoll(rows);
    m.fused_max_rows = cfg_.d_model <= 1024 ? 2 : 1;
    if (const char* rows = std::getenv("MSLM_DECODE_FUSED_MAX_ROWS")) m.fused_max_rows = std::atoll(rows);
    if (const char* rows = std::getenv("MSLM_QUANT_GEMV_MAX_ROWS")) m.quant_gemv_max_rows = std::atoll(rows);
    if (const char* rows = std::getenv("MSLM_ROWS_GEMM_MIN_ROWS")) m.rows_gemm_min_rows = std::atoll(rows);
    if (const char* v = std::getenv("MSLM_ROWS_GEMM_NORM")) m.rows_gemm_norm = std::string_view(v) == "1";
    if (const char* v = std::getenv("MSLM_ROWS_GEMM_CONV")) m.rows_gemm_conv = std::string_view(v) == "1";
    if (const char* v = std::getenv("MSLM_ROWS_GEMM_EPI")) {
        const std::string_view list(v);
        const char* names[3] = {"store", "residual", "swiglu"};
        for (int i = 0; i < 3; ++i) m.rows_gemm_epi[i] = list.find(names[i]) != std::string_view::npos;
    }
    const char* loop = std::getenv("MSLM_DECODE_LOOP");
    m.loop = !(loop && std::string(loop) == "0");
    const char* persistent = std::getenv("MSLM_DECODE_PERSISTENT");
    m.persistent = m.fused && persistent && std::string(persistent) == "1";
    const char* trace = std::getenv("MSLM_DECODE_STEP_TRACE");
    m.trace = trace && std::string(trace) == "1";
    check(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "cudaStreamCreate");

    const Parameters<float>& p = model.params();
    // Quantized weights: those the model packed to int8 / w8a16 / nf4 / fp4. They get no bf16 copy,
    // except the embedding (a tied LM head's lookup reads it).
    std::map<std::string, const kc::QuantWeight*> qparam;
    const std::vector<bool> quantized = upload_quantized(m, p, qparam);
    std::map<std::string, size_t> offsets;
    if (m.quant.empty()) {  // Parameters' own layout
        m.total = p.total();
        for (const ParamSpec& s : p.specs()) offsets[s.name] = s.offset;
    } else {  // the kept parameters only, 64-element aligned
        m.total = 0;
        for (size_t i = 0; i < p.specs().size(); ++i) {
            const ParamSpec& s = p.specs()[i];
            if (quantized[i] && s.name != "embed.weight") continue;
            offsets[s.name] = static_cast<size_t>(m.total);
            m.total += (s.numel + 63) / 64 * 64;
        }
    }
    std::vector<bf16> half(static_cast<size_t>(m.total));
    const float* values = const_cast<Parameters<float>&>(p).values();
    for (const ParamSpec& s : p.specs())
        if (auto it = offsets.find(s.name); it != offsets.end())
            for (int64_t i = 0; i < s.numel; ++i) half[it->second + i] = f32_to_bf16(values[s.offset + i]);
    m.weights = static_cast<bf16*>(m.alloc->allocate(sizeof(bf16) * m.total));
    check(cudaMemcpy(m.weights, half.data(), sizeof(bf16) * m.total, cudaMemcpyHostToDevice), "upload weights");

    auto param = [&](const std::string& name) -> const bf16* {
        auto it = offsets.find(name);
        return it == offsets.end() || qparam.count(name) ? nullptr : m.weights + it->second;
    };
    auto qp = [&](const std::string& name) -> const kc::QuantWeight* {
        auto it = qparam.find(name);
        return it == qparam.end() ? nullptr : it->second;
    };
    m.embed = m.weights + offsets.at("embed.weight");
    m.lm_head = cfg_.tie_embeddings ? param("embed.weight") : param("lm_head.weight");
    m.lm_head_q = qp(cfg_.tie_embeddings ? "embed.weight" : "lm_head.weight");
    m.final_w = param("final_norm.weight");
    m.final_b = param("final_norm.bias");
    for (int64_t l = 0; l < cfg_.n_layers; ++l) {
        const std::string pre = fmt::format("layers.{}", l), x = pre + ".mixer.";
        Impl::Layer L;
        L.kind = cfg_.layers[l];
        L.norm_w = param(pre + ".norm.weight");
        L.norm_b = param(pre + ".norm.bias");
        if (L.kind == LayerKind::Attention) {
            L.qkv_w = param(x + "qkv_proj.weight");
            L.qkv_b = param(x + "qkv_proj.bias");
            L.o_w = param(x + "o_proj.weight");
            L.o_b = param(x + "o_proj.bias");
            L.qkv_q = qp(x + "qkv_proj.weight");
            L.o_q = qp(x + "o_proj.weight");
        } else {
            L.in_w = param(x + "in_proj.weight");
            L.in_b = param(x + "in_proj.bias");
            L.conv_w = param(x + "conv1d.weight");
            L.conv_b = param(x + "conv1d.bias");
            L.A_log = param(x + "A_log");
            L.D = param(x + "D");
            L.out_w = param(x + "out_proj.weight");
            L.out_b = param(x + "out_proj.bias");
            L.x_w = param(x + "x_proj.weight");
            L.dtp_w = param(x + "dt_proj.weight");
            L.dtp_b = param(x + "dt_proj.bias");
            L.dt_norm_w = param(x + "dt_norm.weight");
            L.B_norm_w = param(x + "B_norm.weight");
            L.C_norm_w = param(x + "C_norm.weight");
            L.dt_bias = param(x + "dt_bias");
            L.gnorm_w = param(x + "norm.weight");
            L.in_q = qp(x + "in_proj.weight");
            L.out_q = qp(x + "out_proj.weight");
            L.x_q = qp(x + "x_proj.weight");
            L.dtp_q = qp(x + "dt_proj.weight");
        }
        if (cfg_.mlp.kind != MlpKind::None) {
            L.mlp_norm_w = param(pre + ".mlp_norm.weight");
            L.mlp_norm_b = param(pre + ".mlp_norm.bias");
            const bool gated = cfg_.mlp.kind == MlpKind::SwiGLU;
            const std::string up = pre + (gated ? ".mlp.gate_up_proj" : ".mlp.fc1");
            const std::string down = pre + (gated ? ".mlp.down_proj" : ".mlp.fc2");
            L.up_w = param(up + ".weight");
            L.up_b = param(up + ".bias");
            L.down_w = param(down + ".weight");
            L.down_b = param(down + ".bias");
            L.up_q = qp(up + ".weight");
            L.down_q = qp(down + ".weight");
        }
        m.layers.push_back(L);
    }
}

CudaCausalLM::~CudaCausalLM() {
    Impl& m = *impl_;
    if (m.stream) cudaStreamSynchronize(m.stream);  // errors at teardown are not actionable
    m.release();
    if (m.weights) m.alloc->deallocate(m.weights);
    if (m.qweights) m.alloc->deallocate(m.qweights);
    if (m.qscratch) m.alloc->deallocate(m.qscratch);
    if (m.stream) cudaStreamDestroy(m.stream);
}

int64_t CudaCausalLM::vocab_size() const {
    return cfg_.vocab_size;
}
int64_t CudaCausalLM::hidden_size() const {
    return cfg_.d_model;
}
int64_t CudaCausalLM::max_seq_len() const {
    return cfg_.max_seq_len;
}
int64_t CudaCausalLM::position(int64_t slot) const {
    check_slot(slot, "position");
    return pos_[slot];
}

CudaDecoderMemory CudaCausalLM::memory() const {
    const Impl& m = *impl_;
    return {sizeof(bf16) * static_cast<size_t>(m.total) + m.qweight_bytes, m.state_bytes,
            m.scratch_bytes + sizeof(bf16) * static_cast<size_t>(m.qscratch_elems)};
}

void CudaCausalLM::start(int64_t slots, int64_t max_len) {
    MSLM_CHECK(slots > 0 && slots <= 65535, "CudaCausalLM: {} slots (need 1 to 65535)", slots);
    MSLM_CHECK(max_len > 0 && max_len <= max_seq_len(), "CudaCausalLM: max_len {} outside [1, {}]", max_len,
               max_seq_len());
    Impl& m = *impl_;
    if (m.state && slots == slots_ && max_len == max_len_) {  // the same shape: zero the state, keep the rest
        check(cudaMemsetAsync(m.state, 0, m.state_bytes, m.stream), "zero state");
        pos_.assign(static_cast<size_t>(slots), 0);
        return;
    }
    check(cudaStreamSynchronize(m.stream), "start");
    m.release();
    slots_ = slots;
    max_len_ = max_len;
    cache_len_ = cache_len_for(cfg_, max_len);
    pos_.assign(static_cast<size_t>(slots), 0);

    // State: per layer, its blocks for every slot, zeroed (the empty sequence).
    const StateSizes sz = state_sizes(cfg_, max_len, m.bf16_state);
    m.conv_block = sz.conv;
    m.ssm_block = sz.ssm;
    m.kv_block = sz.kv;
    m.state_bytes = state_total(cfg_, slots, max_len, m.bf16_state);
    m.state = static_cast<char*>(m.alloc->allocate(m.state_bytes));
    check(cudaMemsetAsync(m.state, 0, m.state_bytes, m.stream), "zero state");
    Carver st{m.state};
    const auto S = static_cast<int64_t>(slots);
    for (Impl::Layer& L : m.layers) {
        if (L.kind == LayerKind::Attention) {
            st.take(L.kc, S * static_cast<int64_t>(sz.kv / sizeof(bf16)));
            st.take(L.vc, S * static_cast<int64_t>(sz.kv / sizeof(bf16)));
        } else {
            st.take(L.conv, S * static_cast<int64_t>(sz.conv / sizeof(bf16)));
            if (m.bf16_state) {
                st.take(L.ssm16, S * static_cast<int64_t>(sz.ssm / sizeof(bf16)));
            } else {
                st.take(L.ssm, S * static_cast<int64_t>(sz.ssm / sizeof(float)));
            }
        }
    }

    m.rows = std::max<int64_t>(slots, std::min<int64_t>(kPrefillChunk, max_len));
    const int64_t wrap = wrap_rows(cfg_, max_len, m.rows);
    Carver measure;
    carve_scratch(measure, m, cfg_, m.rows, wrap, slots, max_len);
    m.scratch_bytes = measure.offset;
    m.scratch = static_cast<char*>(m.alloc->allocate(m.scratch_bytes));
    Carver place{m.scratch};
    carve_scratch(place, m, cfg_, m.rows, wrap, slots, max_len);
    check(cudaMemsetAsync(m.pick_done, 0, sizeof(unsigned) * static_cast<size_t>(S), m.stream),
          "zero counters");
    if (m.attn_ws)  // the fused decode attention's counters (and its partials)
        check(
            cudaMemsetAsync(m.attn_ws, 0,
                            sizeof(float) * cuda_decoder_detail::attention_split_workspace_floats(
                                                S, Widths(cfg_).Hq, Widths(cfg_).Dh,
                                                cache_len_for(cfg_, max_len), cfg_.attention.sliding_window),
                            m.stream),
            "zero counters");

    // [staging | logits (S, V) fp32 | hidden (rows, D) bf16 | picks (S), 16-byte aligned]
    const size_t logits_at = staging_bytes(S, m.rows);
    const size_t hidden_at = logits_at + sizeof(float) * static_cast<size_t>(S * cfg_.vocab_size);
    const size_t picks_at = (hidden_at + sizeof(bf16) * static_cast<size_t>(m.rows * cfg_.d_model) + 15) / 16 * 16;
    // [… | loop control (int32, 16-byte rounded) | loop picks (kLoopChunk, S)]
    const size_t ctl_at = (picks_at + static_cast<size_t>(S * kPickBytes) + 15) / 16 * 16;
    const size_t loop_out_at =
        ctl_at + (sizeof(int32_t) * (3 + cuda_decoder_detail::kLoopMaxStops) + 15) / 16 * 16;
    m.host_bytes = loop_out_at + sizeof(cuda_decoder_detail::LoopPick) * static_cast<size_t>(kLoopChunk * S);
    void* host = nullptr;
    check(cudaMallocHost(&host, m.host_bytes), "cudaMallocHost");
    m.host = static_cast<char*>(host);
    m.host_logits = reinterpret_cast<float*>(m.host + logits_at);
    m.host_hidden = reinterpret_cast<bf16*>(m.host + hidden_at);
    m.host_picks = m.host + picks_at;
    m.host_loop_ctl = reinterpret_cast<int32_t*>(m.host + ctl_at);
    m.host_loop_out = reinterpret_cast<cuda_decoder_detail::LoopPick*>(m.host + loop_out_at);
    // The persistent step stages bf16 weights; a quantized model steps with the per-op kernels.
    if (m.persistent && m.quant.empty() && persistent_step_fits(cfg_, m))
        prepare_persistent_step(cfg_, m, cache_len_);
}

void CudaCausalLM::check_slot(int64_t slot, const char* what) const {
    MSLM_CHECK(slots_ > 0, "{} before start", what);
    MSLM_CHECK(slot >= 0 && slot < slots_, "{}: slot {} out of range [0, {})", what, slot, slots_);
}

namespace {

struct Run {
    const ModelConfig& cfg;
    CudaCausalLM::Impl& m;
    Widths w;
    cudaStream_t s;
    int64_t N;  // rows

    void norm(bf16* out, const bf16* x, const bf16* w_, const bf16* b_) const {
        const auto eps = static_cast<float>(cfg.norm_eps);
        if (cfg.norm == NormKind::RMSNorm)
            kc::rmsnorm_forward(out, m.rstd, x, w_, N, w.D, eps, s);
        else
            kc::layernorm_forward(out, m.mean, m.rstd, x, w_, b_, N, w.D, eps, s);
    }

    // a (N, F) = the MLP's activation of h (N, F): GELU, GELU-tanh or ReLU (plain MLPs).
    void activation(bf16* a, const bf16* h) const {
        switch (cfg.mlp.kind) {
            case MlpKind::GELU: kc::gelu_forward(a, h, N * w.F, s); break;
            case MlpKind::GELUTanh: kc::gelu_tanh_forward(a, h, N * w.F, s); break;
            case MlpKind::ReLU: kc::relu_forward(a, h, N * w.F, s); break;
            default: fail("CudaCausalLM: no activation for this MLP kind");
        }
    }

    // Whether a product of N rows with quantized weight q runs as the quantized GEMV (tiles of 16
    // rows, each decoding the weights once) rather than expanding q to bf16 for a cuBLASLt GEMM.
    // Measured on the H200 (docs/PERFORMANCE.md, "quantized products at batch 32 and 64"): the tiles'
    // decoding is CUDA-core work per tile, so past one tile int8 expands faster, and 4-bit past two
    // (130m / 1b at batch 64: NF4 1.35× / 1.48×, int8 1.69× / 2.51× faster expanded). A weight larger
    // than the scratch (the LM head) always takes the tiles.
    bool quant_gemv_rows(const kc::QuantWeight& q) const {
        const int64_t tiles = q.format == kc::QuantFormat::Int8 ? 1 : 2;
        const int64_t most = m.quant_gemv_max_rows > 0 ? m.quant_gemv_max_rows : tiles * kc::kQuantGemvMaxRows;
        return N <= most || q.out * q.in > m.qscratch_elems;
    }
    // The quantized weight q expanded to bf16 in the scratch, for a GEMM.
    const bf16* expand(const kc::QuantWeight& q) const {
        kc::quant_dequantize_bf16(m.qscratch, q, s);
        return m.qscratch;
    }

    // out (N, O) = x (N, I) · Wᵀ + b, W bf16 or quantized (q).
    void linear(bf16* out, const bf16* x, const bf16* W, const kc::QuantWeight* q, const bf16* b, int64_t I,
                int64_t O) const {
        if (q && quant_gemv_rows(*q)) {
            kc::QuantGemv g;
            g.x = x;
            g.ld_x = I;
            g.M = N;
            g.W = *q;
            g.bias = b;
            g.out = out;
            g.ld_out = O;
            kc::quant_gemv(g, s);
            return;
        }
        kc::linear_forward(out, x, q ? expand(*q) : W, b, N, I, O, s, q == nullptr);
    }

    // The residual stream m.res (N, D) += x (N, I) · Wᵀ + b: one cuBLASLt call accumulating into it
    // (beta = 1) for bf16 weights without a bias, else the product into m.tmp and an add.
    void residual_linear(const bf16* x, const bf16* W, const kc::QuantWeight* q, const bf16* b,
                         int64_t I) const {
        if (!b && !(q && quant_gemv_rows(*q))) {
            kc::linear_forward_accumulate(m.res, x, q ? expand(*q) : W, N, I, w.D, s, q == nullptr);
            return;
        }
        linear(m.tmp, x, W, q, b, I, w.D);
        kc::axpy(m.res, m.tmp, N * w.D, 1.0f, s);
    }

    // m.res += the MLP of m.ln.
    void mlp(const CudaCausalLM::Impl::Layer& L) const {
        if (cfg.mlp.kind == MlpKind::SwiGLU) {
            linear(m.h, m.ln, L.up_w, L.up_q, L.up_b, w.D, 2 * w.F);
            kc::swiglu_forward(m.a, m.h, N, w.F, s);
        } else {
            linear(m.h, m.ln, L.up_w, L.up_q, L.up_b, w.D, w.F);
            activation(m.a, m.h);
        }
        residual_linear(m.a, L.down_w, L.down_q, L.down_b, w.F);
    }

    // Mamba-1 dt_bc_norm (Jamba): RMSNorm of x_proj's dt, B and C column blocks, each gathered
    // contiguous first, into m.bc = [dt (N, R) | B (N, S) | C (N, S)].
    void dt_bc_norm(const CudaCausalLM::Impl::Layer& L) const {
        const auto eps = static_cast<float>(cfg.norm_eps);
        const struct {
            int64_t col, width;
            const bf16* weight;
            bf16* out;
        } blocks[3] = {{0, w.R, L.dt_norm_w, m.bc},
                       {w.R, w.S, L.B_norm_w, m.bc + N * w.R},
                       {w.R + w.S, w.S, L.C_norm_w, m.bc + N * (w.R + w.S)}};
        for (const auto& b : blocks) {
            copy2d(m.bc_in, b.width, m.xdbl + b.col, w.Wx, N, b.width, s);
            kc::rmsnorm_forward(b.out, m.rstd, m.bc_in, b.weight, N, b.width, eps, s);
        }
    }
    bool bc_norm() const { return cfg.mamba.version == 1 && cfg.mamba.dt_bc_norm; }

    kc::SsdInputs<bf16> ssd_in(const CudaCausalLM::Impl::Layer& L, const bf16* xbc) const {
        kc::SsdInputs<bf16> in{xbc,       w.C2, m.proj + w.Din + w.C2, w.W2, L.dt_bias, L.A_log,
                               xbc + w.Din, w.C2, xbc + w.Din + w.GS,   w.C2, L.D};
        in.dt_min = static_cast<float>(cfg.mamba.dt_limit_min);
        in.dt_max = static_cast<float>(cfg.mamba.dt_limit_max);
        return in;
    }
    kc::SsdDims ssd_dims(int64_t batch, int64_t T) const {
        return {batch, T, w.H, w.P, w.G, w.S, cfg.mamba.chunk_size};
    }
    // The scan reads B and C from x_proj's output [dt | B | C], or from the normed blocks.
    ops::SelectiveScanInputs<bf16> scan_in(const CudaCausalLM::Impl::Layer& L, const bf16* xc) const {
        if (bc_norm())
            return {xc, w.Din, m.dt_raw, w.Din, L.dtp_b, L.A_log, m.bc + N * w.R, w.S, m.bc + N * (w.R + w.S), w.S,
                    L.D, m.proj + w.Din, 2 * w.Din};
        return {xc,          w.Din, m.dt_raw, w.Din, L.dtp_b, L.A_log, m.xdbl + w.R, w.Wx,
                m.xdbl + w.R + w.S, w.Wx, L.D, m.proj + w.Din, 2 * w.Din};
    }
    // Mamba-1 after the conv: x_proj, (the dt/B/C norms,) dt_proj without its bias: the scan adds it.
    void mamba1_projections(const CudaCausalLM::Impl::Layer& L, const bf16* xc) const {
        linear(m.xdbl, xc, L.x_w, L.x_q, nullptr, w.Din, w.Wx);
        const bf16* dt = m.dt;
        if (bc_norm()) {
            dt_bc_norm(L);
            dt = m.bc;
        } else {
            copy2d(m.dt, w.R, m.xdbl, w.Wx, N, w.R, s);
        }
        linear(m.dt_raw, dt, L.dtp_w, L.dtp_q, nullptr, w.R, w.Din);
    }
    // Mamba-2 after the SSD: gated norm with z, out_proj.
    // m.res += out_proj(gated norm of m.y).
    void mamba2_output(const CudaCausalLM::Impl::Layer& L) const {
        kc::gated_rmsnorm_forward_strided_z(m.yn, m.g_rstd, m.y, m.proj, w.W2, L.gnorm_w, N, w.Din,
                                            cfg.mamba_norm_groups(), static_cast<float>(cfg.norm_eps), s);
        residual_linear(m.yn, L.out_w, L.out_q, L.out_b, w.Din);
    }

    // A decode-step product through the fused kernel (cuda_decoder_kernels.h) when it takes the
    // shape, MSLM_DECODE_FUSED is not 0 and the step has at most m.fused_max_rows rows (bf16);
    // otherwise the same function unfused: the norm kernel, cuBLASLt, then the epilogue's kernel.
    // A quantized weight q (a.W is then null) takes the fused kernel too (its quantized product);
    // unfused, the same prologue, then the quantized GEMV with the epilogue fused (or, for many rows,
    // the expanded weight through the cuBLASLt path below).
    // Returns whether the fused kernel ran: only it runs a.conv_state's causal conv (the caller runs
    // conv1d_causal_update otherwise).
    bool gemv(cuda_decoder_detail::DecodeGemv a, const kc::QuantWeight* q = nullptr) const {
        using cuda_decoder_detail::DecodeEpilogue;
        using cuda_decoder_detail::DecodeNorm;
        a.k = N;
        // bf16 weights at 1 (or 2) rows, or quantized ones at batch 1: one kernel with the prologue
        // and epilogue fused. Quantized products of more rows take quant_gemv's tiles (each weight
        // decoded once for all rows; 1.6× the fused kernel's speed at batch 8 on the H200) or, past
        // quant_gemv_rows, the expanded weight.
        if (m.fused && (q ? N == 1 : N <= m.fused_max_rows)) {
            a.q = q;
            a.late_trigger = m.late_trigger;
            if (cuda_decoder_detail::decode_gemv_supported(a)) {
                cuda_decoder_detail::decode_gemv(a, s);
                return true;
            }
            a.q = nullptr;
        }
        // rows_gemm runs the conv in its epilogue too (then gemv returns true, as the fused kernel).
        const cuda_decoder_detail::DecodeGemv with_conv = a;
        const bool conv_in_rows = rows_conv(a);
        a.conv_state = nullptr;
        if (!q && a.norm == DecodeNorm::RMS && !a.x_out && rows_product(with_conv, a.x, a.ld_x, a.norm_w))
            return conv_in_rows;
        const bf16* x = a.x;
        if (a.norm == DecodeNorm::RMS || a.norm == DecodeNorm::Layer) {
            MSLM_CHECK(a.ld_x == a.I && a.I == w.D, "decode gemv: a norm prologue reads the residual stream");
            bf16* ln = a.x_out ? a.x_out : m.ln;  // normalised straight into x_out when asked for
            norm(ln, a.x, a.norm_w, a.norm_b);
            x = ln;
        } else if (a.norm == DecodeNorm::Gated) {
            MSLM_CHECK(a.ld_x == a.I, "decode gemv: the gated norm reads contiguous rows");
            kc::gated_rmsnorm_forward_strided_z(m.yn, m.g_rstd, a.x, a.z, a.ld_z, a.norm_w, N, a.I, a.groups,
                                                a.eps, s);
            x = m.yn;
        } else if (a.ld_x != a.I) {  // only Mamba-1's dt columns of x_proj's output are strided
            MSLM_CHECK(a.I == w.R, "decode gemv: strided input of width {}", a.I);
            copy2d(m.dt, a.I, a.x, a.ld_x, N, a.I, s);
            x = m.dt;
        }
        if (q) {
            if (quant_gemv_rows(*q)) {
                quant_product(a, x, *q);
                return false;
            }
            a.W = expand(*q);
        }
        if (!q && rows_product(with_conv, x, a.I, nullptr)) return conv_in_rows;
        switch (a.epi) {
            case DecodeEpilogue::Store:
                MSLM_CHECK(a.ld_out == a.O, "decode gemv: contiguous output expected");
                kc::linear_forward(a.out, x, a.W, a.bias, N, a.I, a.O, s, q == nullptr);
                break;
            case DecodeEpilogue::Residual:
                MSLM_CHECK(a.ld_out == a.O, "decode gemv: contiguous output expected");
                if (a.bias) {
                    kc::linear_forward(m.tmp, x, a.W, a.bias, N, a.I, a.O, s, q == nullptr);
                    kc::axpy(a.out, m.tmp, N * a.O, 1.0f, s);
                } else {  // one cuBLASLt call (beta = 1): the pair's bits at the decode shapes measured
                    kc::linear_forward_accumulate(a.out, x, a.W, N, a.I, a.O, s, q == nullptr);
                }
                break;
            case DecodeEpilogue::SwiGLU:
                kc::linear_forward(m.h, x, a.W, a.bias, N, a.I, 2 * a.O, s, q == nullptr);
                kc::swiglu_forward(a.out, m.h, N, a.O, s);
                break;
            case DecodeEpilogue::F32:
                kc::linear_forward_f32_out(a.out32, x, a.W, N, a.I, a.O, s, q == nullptr);
                break;
        }
        return false;
    }

    // Whether rows_product runs a's causal conv in rows_gemm's epilogue (when it takes a).
    bool rows_conv(const cuda_decoder_detail::DecodeGemv& a) const {
        return a.conv_state && a.epi == cuda_decoder_detail::DecodeEpilogue::Store && m.rows_gemm_conv;
    }
    // The bf16 decode product a of rows x (row stride ld_x), RMS-normalised with norm_w first unless
    // it is null, through ops::cuda::rows_gemm when it takes the call and the step has enough rows
    // (with a's causal conv in its epilogue under MSLM_ROWS_GEMM_CONV=1); returns whether it ran.
    bool rows_product(const cuda_decoder_detail::DecodeGemv& a, const bf16* x, int64_t ld_x,
                      const bf16* norm_w) const {
#ifdef MSLM_HAVE_SM90A
        using cuda_decoder_detail::DecodeEpilogue;
        if (N < m.rows_gemm_min_rows || a.epi == DecodeEpilogue::F32 || (norm_w && !m.rows_gemm_norm))
            return false;
        const int epi = a.epi == DecodeEpilogue::Store ? 0 : a.epi == DecodeEpilogue::Residual ? 1 : 2;
        if (!m.rows_gemm_epi[epi]) return false;
        kc::RowsGemm g;
        g.x = x;
        g.ld_x = ld_x;
        g.W = a.W;
        g.bias = a.bias;
        g.norm_w = norm_w;
        g.eps = a.eps;
        g.epi = a.epi == DecodeEpilogue::Store      ? kc::RowsEpilogue::Store
                : a.epi == DecodeEpilogue::Residual ? kc::RowsEpilogue::Residual
                                                    : kc::RowsEpilogue::SwiGLU;
        g.out = a.out;
        g.ld_out = a.ld_out;
        g.M = N;
        g.I = a.I;
        g.O = a.O;
        g.w_constant = true;  // a model's bf16 weights
        if (rows_conv(a)) {
            g.conv_state = a.conv_state;
            g.conv_slots = a.conv_slots;
            g.conv_w = a.conv_w;
            g.conv_b = a.conv_b;
            g.conv_out = a.conv_out;
            g.conv_col0 = a.conv_col0;
            g.conv_C = a.conv_C;
            g.conv_K = a.conv_K;
        }
        if (!kc::rows_gemm_takes(g)) return false;
        kc::rows_gemm(g, s);
        return true;
#else
        (void)a, (void)x, (void)ld_x, (void)norm_w;
        return false;
#endif
    }

    // The decode product a on contiguous rows x (the prologue done) with quantized weights.
    void quant_product(const cuda_decoder_detail::DecodeGemv& a, const bf16* x, const kc::QuantWeight& q) const {
        using cuda_decoder_detail::DecodeEpilogue;
        kc::QuantGemv g;
        g.x = x;
        g.ld_x = a.I;
        g.M = N;
        g.W = q;
        g.bias = a.bias;
        g.out = a.out;
        g.out32 = a.out32;
        g.ld_out = a.ld_out;
        switch (a.epi) {
            case DecodeEpilogue::Store: g.epi = kc::QuantEpilogue::Store; break;
            case DecodeEpilogue::Residual: g.epi = kc::QuantEpilogue::Residual; break;
            case DecodeEpilogue::SwiGLU: g.epi = kc::QuantEpilogue::SwiGLU; break;
            case DecodeEpilogue::F32: g.epi = kc::QuantEpilogue::F32; break;
        }
        MSLM_CHECK(kc::quant_gemv_outputs(g) == a.O, "decode gemv: a quantized weight of {} rows for {} outputs", q.out,
                   a.O);
        kc::quant_gemv(g, s);
    }

    cuda_decoder_detail::DecodeGemv normed(const bf16* nw, const bf16* nb) const {
        cuda_decoder_detail::DecodeGemv a;
        a.x = m.res;
        a.ld_x = w.D;
        a.I = w.D;
        a.norm = cfg.norm == NormKind::RMSNorm ? cuda_decoder_detail::DecodeNorm::RMS
                                               : cuda_decoder_detail::DecodeNorm::Layer;
        a.norm_w = nw;
        a.norm_b = nb;
        a.eps = static_cast<float>(cfg.norm_eps);
        return a;
    }
    static cuda_decoder_detail::DecodeGemv plain(const bf16* x, int64_t ld_x, int64_t I) {
        cuda_decoder_detail::DecodeGemv a;
        a.x = x;
        a.ld_x = ld_x;
        a.I = I;
        return a;
    }
    static void store(cuda_decoder_detail::DecodeGemv& a, const bf16* W, const bf16* b, int64_t O, bf16* out) {
        a.W = W;
        a.bias = b;
        a.O = O;
        a.out = out;
        a.ld_out = O;
        a.epi = cuda_decoder_detail::DecodeEpilogue::Store;
    }
    void residual(cuda_decoder_detail::DecodeGemv& a, const bf16* W, const bf16* b) const {
        store(a, W, b, w.D, m.res);
        a.epi = cuda_decoder_detail::DecodeEpilogue::Residual;
    }

    // One decode step for N = k rows (slots and positions in m.slots / m.pos): embedding through
    // the logits (m.logits fp32, m.hf the final-norm rows).
    void step(int64_t cache_len) const {
        using cuda_decoder_detail::DecodeGemv;
        kc::embedding_forward(m.res, m.ids, m.embed, N, w.V, w.D, static_cast<kc::IndexStatus*>(nullptr), s);
        for (const CudaCausalLM::Impl::Layer& L : m.layers) {
            DecodeGemv in = normed(L.norm_w, L.norm_b);
            if (L.kind == LayerKind::Attention) {
                store(in, L.qkv_w, L.qkv_b, w.Wq, m.proj);
                gemv(in, L.qkv_q);
                bf16* q = m.proj;
                bf16* k = q + w.Hq * w.Dh;
                bf16* v = k + w.KVW;
                // RoPE (rotary_dim ≤ head_dim ≤ 128) fused with the KV append, and the attention:
                // one kernel, or (MSLM_DECODE_ATTN_FUSED=0, or more rows than
                // MSLM_DECODE_ATTN_FUSED_MAX_ROWS) three. (H200, 130m: the one kernel +9% at batch 1
                // and 8; since 2026-12-01 also +6–12% at batch 16–128, with 16- and 2048-token prompts.)
                const bool rope = cfg.attention.position == PositionKind::RoPE;
                const kc::AttentionOptions opt = attention_options(cfg, 0);
                if (m.attn_fused && N <= m.attn_fused_max_rows) {
                    cuda_decoder_detail::attention_decode_fused(
                        m.o, q, k, v, w.Wq, L.kc, L.vc, m.slots, m.pos, N, cache_len, w.Hq, w.Hkv, w.Dh,
                        rope ? cfg.attn_rotary_dim() : 0, cfg.attention.rope_theta, opt.scale, opt.window,
                        opt.alibi, m.attn_ws, m.attn_ws_rows, s);
                } else {
                    cuda_decoder_detail::rope_kv_append(
                        q, k, v, w.Wq, L.kc, L.vc, m.slots, m.pos, N, cache_len, w.Hq, w.Hkv, w.Dh,
                        rope ? cfg.attn_rotary_dim() : 0, cfg.attention.rope_theta, s);
                    cuda_decoder_detail::attention_decode_split(m.o, q, w.Wq, L.kc, L.vc, m.slots, m.pos, N,
                                                                cache_len, w.Hq, w.Hkv, w.Dh, opt.scale,
                                                                opt.window, opt.alibi, m.attn_ws, s);
                }
                DecodeGemv out = plain(m.o, w.Hq * w.Dh, w.Hq * w.Dh);
                residual(out, L.o_w, L.o_b);
                gemv(out, L.o_q);
            } else if (cfg.mamba.version == 1) {
                store(in, L.in_w, L.in_b, 2 * w.Din, m.proj);  // [x | z]
                gemv(in, L.in_q);
                kc::conv1d_causal_update(m.conv_out, L.conv, m.slots, m.proj, 2 * w.Din, L.conv_w, L.conv_b, N,
                                         w.Din, w.K, true, s);
                DecodeGemv xp = plain(m.conv_out, w.Din, w.Din);
                store(xp, L.x_w, nullptr, w.Wx, m.xdbl);  // [dt | B | C]
                gemv(xp, L.x_q);
                if (bc_norm()) dt_bc_norm(L);
                DecodeGemv dp = bc_norm() ? plain(m.bc, w.R, w.R)        // the normed dt
                                          : plain(m.xdbl, w.Wx, w.R);  // dt_proj without its bias: the scan adds it
                store(dp, L.dtp_w, nullptr, w.Din, m.dt_raw);
                gemv(dp, L.dtp_q);
                kc::selective_scan_update(m.y, L.ssm, m.slots, scan_in(L, m.conv_out), N, w.Din, w.S, s);
                DecodeGemv out = plain(m.y, w.Din, w.Din);
                residual(out, L.out_w, L.out_b);
                gemv(out, L.out_q);
            } else {
                store(in, L.in_w, L.in_b, w.W2, m.proj);  // [z | xBC | dt], the xBC conv in the epilogue
                in.conv_state = L.conv;
                in.conv_slots = m.slots;
                in.conv_w = L.conv_w;
                in.conv_b = L.conv_b;
                in.conv_out = m.conv_out;
                in.conv_col0 = w.Din;
                in.conv_C = w.C2;
                in.conv_K = w.K;
                if (!gemv(in, L.in_q))
                    kc::conv1d_causal_update(m.conv_out, L.conv, m.slots, m.proj + w.Din, w.W2, L.conv_w, L.conv_b, N,
                                             w.C2, w.K, true, s);
                // The states read before the wait (ssd.h); a trace slot under MSLM_DECODE_GEMV_TRACE.
                kc::KernelTrace* trace = cuda_decoder_detail::decode_trace_record(
                    cuda_decoder_detail::TraceKind::SsdUpdate, w.P, w.H);
                if (L.ssm16) {
                    kc::ssd_update_bf16_state(m.y, L.ssm16, m.slots, ssd_in(L, m.conv_out), ssd_dims(N, 1), s,
                                              true, trace);
                } else {
                    kc::ssd_update(m.y, L.ssm, m.slots, ssd_in(L, m.conv_out), ssd_dims(N, 1), s, true,
                                   trace);
                }
                DecodeGemv out = plain(m.y, w.Din, w.Din);  // gated norm with z, then out_proj
                out.norm = cuda_decoder_detail::DecodeNorm::Gated;
                out.z = m.proj;
                out.ld_z = w.W2;
                out.groups = cfg.mamba_norm_groups();
                out.norm_w = L.gnorm_w;
                out.eps = static_cast<float>(cfg.norm_eps);
                residual(out, L.out_w, L.out_b);
                gemv(out, L.out_q);
            }
            if (L.has_mlp()) {
                DecodeGemv up = normed(L.mlp_norm_w, L.mlp_norm_b);
                if (cfg.mlp.kind == MlpKind::SwiGLU) {
                    store(up, L.up_w, L.up_b, w.F, m.a);
                    up.epi = cuda_decoder_detail::DecodeEpilogue::SwiGLU;
                    gemv(up, L.up_q);
                } else {
                    store(up, L.up_w, L.up_b, w.F, m.h);
                    gemv(up, L.up_q);
                    activation(m.a, m.h);
                }
                DecodeGemv down = plain(m.a, w.F, w.F);
                residual(down, L.down_w, L.down_b);
                gemv(down, L.down_q);
            }
        }
        DecodeGemv head = normed(m.final_w, m.final_b);
        head.W = m.lm_head;
        head.O = w.V;
        head.epi = cuda_decoder_detail::DecodeEpilogue::F32;
        head.out32 = m.logits;
        head.ld_out = w.V;
        head.x_out = m.hf;
        gemv(head, m.lm_head_q);
    }

    // The causal conv over [slot's window | N new inputs (columns of m.proj from col0, C wide)],
    // leaving the last K − 1 inputs as the window. Returns the N outputs (row stride C).
    const bf16* conv_prefill(const CudaCausalLM::Impl::Layer& L, int64_t slot, int64_t col0, int64_t ld,
                             int64_t C) const {
        const int64_t K1 = w.K - 1;
        bf16* window = L.conv + slot * K1 * C;
        if (N >= K1) {  // the inputs read in place, the window as their history; its new rows copied after
            kc::conv1d_causal_forward(m.conv_out, static_cast<bf16*>(nullptr), m.proj + col0, ld,
                                      static_cast<const bf16*>(window), L.conv_w, L.conv_b, 1, N, C, w.K,
                                      true, s);
            copy2d(window, C, m.proj + col0 + (N - K1) * ld, ld, K1, C, s);
            return m.conv_out;
        }
        copy_bytes(m.xin, window, sizeof(bf16) * K1 * C, s);
        copy2d(m.xin + K1 * C, C, m.proj + col0, ld, N, C, s);
        kc::conv1d_causal_forward(m.conv_out, static_cast<bf16*>(nullptr), m.xin, C, L.conv_w, L.conv_b, 1,
                                  K1 + N, C, w.K, true, s);
        copy_bytes(window, m.xin + N * C, sizeof(bf16) * K1 * C, s);
        return m.conv_out + K1 * C;
    }

    // Ring rows of positions [first, first + n) <=> a contiguous (n, KVW) buffer.
    void ring_copy(bf16* ring, bf16* lin, int64_t first, int64_t n, int64_t Lc, bool to_ring) const {
        int64_t done = 0;
        while (done < n) {
            const int64_t row = (first + done) % Lc, run = std::min(n - done, Lc - row);
            if (to_ring)
                copy_bytes(ring + row * w.KVW, lin + done * w.KVW, sizeof(bf16) * run * w.KVW, s);
            else
                copy_bytes(lin + done * w.KVW, ring + row * w.KVW, sizeof(bf16) * run * w.KVW, s);
            done += run;
        }
    }

    // m.res += the layer's mixer of m.ln (N prompt tokens from position p0 of `slot`).
    void mixer_prefill(const CudaCausalLM::Impl::Layer& L, int64_t slot, int64_t p0, int64_t Lc) const {
        if (L.kind == LayerKind::Attention) {
            linear(m.proj, m.ln, L.qkv_w, L.qkv_q, L.qkv_b, w.D, w.Wq);
            bf16* q = m.proj;
            bf16* k = q + w.Hq * w.Dh;
            bf16* v = k + w.KVW;
            if (cfg.attention.position == PositionKind::RoPE) {
                // q's heads and k's follow each other in a row: one call rotates both.
                kc::rope_apply(q, w.Wq, 1, N, w.Hq + w.Hkv, w.Dh, cfg.attn_rotary_dim(),
                               cfg.attention.rope_theta, p0, false, s);
            }
            bf16* kr = L.kc + slot * Lc * w.KVW;
            bf16* vr = L.vc + slot * Lc * w.KVW;
            const ops::AttentionDims dims{1, N, w.Hq, w.Hkv, w.Dh};
            if (p0 + N <= Lc) {  // the ring holds positions 0 .. p0 + N − 1 in order
                copy2d(kr + p0 * w.KVW, w.KVW, k, w.Wq, N, w.KVW, s);
                copy2d(vr + p0 * w.KVW, w.KVW, v, w.Wq, N, w.KVW, s);
                kc::attention_forward(m.o, m.lse, q, w.Wq, kr, w.KVW, vr, w.KVW, dims, attention_options(cfg, p0), s);
            } else {  // wraps (sliding window): attend over an ordered copy of the window and the piece
                const int64_t prior = std::min(p0, cfg.attention.sliding_window - 1);
                ring_copy(kr, m.kt, p0 - prior, prior, Lc, false);
                ring_copy(vr, m.vt, p0 - prior, prior, Lc, false);
                copy2d(m.kt + prior * w.KVW, w.KVW, k, w.Wq, N, w.KVW, s);
                copy2d(m.vt + prior * w.KVW, w.KVW, v, w.Wq, N, w.KVW, s);
                kc::attention_forward(m.o, m.lse, q, w.Wq, m.kt, w.KVW, m.vt, w.KVW, dims,
                                      attention_options(cfg, prior), s);
                const int64_t keep = std::min(N, Lc);  // only the last Lc positions stay in the ring
                ring_copy(kr, m.kt + (prior + N - keep) * w.KVW, p0 + N - keep, keep, Lc, true);
                ring_copy(vr, m.vt + (prior + N - keep) * w.KVW, p0 + N - keep, keep, Lc, true);
            }
            residual_linear(m.o, L.o_w, L.o_q, L.o_b, w.Hq * w.Dh);
        } else if (cfg.mamba.version == 1) {
            linear(m.proj, m.ln, L.in_w, L.in_q, L.in_b, w.D, 2 * w.Din);
            const bf16* xc = conv_prefill(L, slot, 0, 2 * w.Din, w.Din);
            mamba1_projections(L, xc);
            float* h = L.ssm + slot * w.Din * w.S;
            kc::selective_scan_forward(m.y, h, scan_in(L, xc), h, ops::ScanDims{1, N, w.Din, w.S}, nullptr, s);
            residual_linear(m.y, L.out_w, L.out_q, L.out_b, w.Din);
        } else {
            linear(m.proj, m.ln, L.in_w, L.in_q, L.in_b, w.D, w.W2);
            const bf16* xbc = conv_prefill(L, slot, w.Din, w.W2, w.C2);
            const int64_t n_state = w.H * w.P * w.S;
            if (L.ssm16) {  // the SSD runs on an fp32 copy, rounded back once at the end
                cuda_decoder_detail::widen_bf16(m.h32, L.ssm16 + slot * n_state, n_state, s);
                kc::ssd_forward(m.y, m.h32, ssd_in(L, xbc), m.h32, ssd_dims(1, N), nullptr, m.ws, s);
                cuda_decoder_detail::narrow_bf16(L.ssm16 + slot * n_state, m.h32, n_state, s);
            } else {
                float* h = L.ssm + slot * n_state;
                kc::ssd_forward(m.y, h, ssd_in(L, xbc), h, ssd_dims(1, N), nullptr, m.ws, s);
            }
            mamba2_output(L);
        }
    }

    // Embedding through the final norm, with `mixer` adding each layer's mixer of m.ln into m.res.
    template <typename Mixer>
    void body(Mixer&& mixer) const {
        kc::embedding_forward(m.res, m.ids, m.embed, N, w.V, w.D, static_cast<kc::IndexStatus*>(nullptr), s);
        for (const CudaCausalLM::Impl::Layer& L : m.layers) {
            norm(m.ln, m.res, L.norm_w, L.norm_b);
            mixer(L);
            if (L.has_mlp()) {
                norm(m.ln, m.res, L.mlp_norm_w, L.mlp_norm_b);
                mlp(L);
            }
        }
        norm(m.hf, m.res, m.final_w, m.final_b);
    }
};

void check_ids(const ModelConfig& cfg, const int32_t* ids, int64_t n, const char* what) {
    for (int64_t i = 0; i < n; ++i)
        MSLM_CHECK(ids[i] >= 0 && ids[i] < cfg.vocab_size, "{}: token id {} outside the vocabulary [0, {})", what,
                   ids[i], cfg.vocab_size);
}

}  // namespace

void CudaCausalLM::download(int64_t logit_rows, float* logits, int64_t hidden_rows, float* hidden) {
    Impl& m = *impl_;
    const int64_t V = cfg_.vocab_size, D = cfg_.d_model;
    if (logits)
        check(cudaMemcpyAsync(m.host_logits, m.logits, sizeof(float) * logit_rows * V, cudaMemcpyDeviceToHost,
                              m.stream),
              "download logits");
    if (hidden)
        check(cudaMemcpyAsync(m.host_hidden, m.hf, sizeof(bf16) * hidden_rows * D, cudaMemcpyDeviceToHost, m.stream),
              "download hidden");
    check(cudaStreamSynchronize(m.stream), "decode");
    if (logits) std::memcpy(logits, m.host_logits, sizeof(float) * logit_rows * V);
    if (hidden)
        for (int64_t i = 0; i < hidden_rows * D; ++i) hidden[i] = bf16_to_f32(m.host_hidden[i]);
}

void CudaCausalLM::prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) {
    check_slot(slot, "prefill");
    MSLM_CHECK(!ids.empty(), "prefill: empty prompt");
    const auto n = static_cast<int64_t>(ids.size());
    MSLM_CHECK(pos_[slot] + n <= max_len_, "prefill: slot {} holds {} tokens; {} more exceed the state's max_len {}",
               slot, pos_[slot], n, max_len_);
    check_ids(cfg_, ids.data(), n, "prefill");
    for (int64_t done = 0; done < n;) {
        const int64_t piece = std::min(n - done, impl_->rows);
        const bool last = done + piece == n;
        prefill_piece(slot, ids.data() + done, piece, last ? logits : nullptr,
                      hidden ? hidden + done * cfg_.d_model : nullptr);
        done += piece;
    }
}

void CudaCausalLM::prefill_piece(int64_t slot, const int32_t* ids, int64_t n, float* logits, float* hidden) {
    Impl& m = *impl_;
    const int64_t p0 = pos_[slot];
    auto* host_ids = reinterpret_cast<int32_t*>(m.host + 2 * sizeof(int64_t) * slots_);
    std::memcpy(host_ids, ids, sizeof(int32_t) * n);
    check(cudaMemcpyAsync(m.ids, host_ids, sizeof(int32_t) * n, cudaMemcpyHostToDevice, m.stream), "upload ids");
    // MSLM_PREFILL_TRACE=1: the host's time to enqueue the piece and the GPU's span over it, to stderr.
    static const bool trace = [] {
        const char* v = std::getenv("MSLM_PREFILL_TRACE");
        return v != nullptr && std::string_view(v) == "1";
    }();
    cudaEvent_t ev[2] = {nullptr, nullptr};
    const auto host0 = std::chrono::steady_clock::now();
    if (trace) {
        for (cudaEvent_t& e : ev) check(cudaEventCreate(&e), "trace event");
        check(cudaEventRecord(ev[0], m.stream), "trace event");
    }
    const Run r{cfg_, m, Widths(cfg_), m.stream, n};
    r.body([&](const Impl::Layer& L) { r.mixer_prefill(L, slot, p0, cache_len_); });
    if (trace) {
        check(cudaEventRecord(ev[1], m.stream), "trace event");
        const double host_us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - host0).count();
        check(cudaEventSynchronize(ev[1]), "trace event");
        float gpu_ms = 0.0f;
        check(cudaEventElapsedTime(&gpu_ms, ev[0], ev[1]), "trace event");
        std::fprintf(stderr, "prefill trace: %lld tokens, host enqueue %.1f us, GPU span %.1f us\n",
                     static_cast<long long>(n), host_us, 1e3 * gpu_ms);
        for (cudaEvent_t e : ev) cudaEventDestroy(e);
    }
    if (logits && m.lm_head_q) {
        kc::QuantGemv g;
        g.x = m.hf + (n - 1) * cfg_.d_model;
        g.ld_x = cfg_.d_model;
        g.M = 1;
        g.W = *m.lm_head_q;
        g.epi = kc::QuantEpilogue::F32;
        g.out32 = m.logits;
        g.ld_out = cfg_.vocab_size;
        kc::quant_gemv(g, m.stream);
    } else if (logits) {
        kc::linear_forward_f32_out(m.logits, m.hf + (n - 1) * cfg_.d_model, m.lm_head, 1, cfg_.d_model,
                                   cfg_.vocab_size, m.stream);
    }
    download(1, logits, n, hidden);  // waits for the stream
    pos_[slot] += n;
}

void CudaCausalLM::run_step(int64_t k) {
    Impl& m = *impl_;
    const Run r{cfg_, m, Widths(cfg_), m.stream, k};
    r.step(cache_len_);
}

void CudaCausalLM::step(std::span<const int64_t> slots, std::span<const int32_t> tokens, float* logits,
                        float* hidden) {
    if (slots.empty() && tokens.empty()) return;
    const int64_t k = enqueue_step(slots, tokens);
    download(k, logits, k, hidden);
    for (int64_t i = 0; i < k; ++i) ++pos_[slots[i]];
}

void CudaCausalLM::step_greedy(std::span<const int64_t> slots, std::span<const int32_t> tokens,
                               GreedyPick* picks) {
    if (slots.empty() && tokens.empty()) return;
    Impl& m = *impl_;
    const int64_t k = enqueue_step(slots, tokens);
    auto* lp = reinterpret_cast<double*>(m.picks);
    auto* logit = reinterpret_cast<float*>(lp + k);
    auto* token = reinterpret_cast<int32_t*>(logit + k);
    cuda_decoder_detail::greedy_pick(m.logits, k, cfg_.vocab_size, m.pick_part, m.pick_done, lp, logit, token,
                                     m.stream);
    check(cudaMemcpyAsync(m.host_picks, m.picks, static_cast<size_t>(k * kPickBytes), cudaMemcpyDeviceToHost,
                          m.stream),
          "download greedy picks");
    check(cudaStreamSynchronize(m.stream), "decode");
    const auto* hlp = reinterpret_cast<const double*>(m.host_picks);
    const auto* hlogit = reinterpret_cast<const float*>(hlp + k);
    const auto* htoken = reinterpret_cast<const int32_t*>(hlogit + k);
    for (int64_t i = 0; i < k; ++i) {
        picks[i].token = htoken[i];
        picks[i].logit = hlogit[i];
        picks[i].log_prob = hlp[i];
        ++pos_[slots[i]];
    }
}

int64_t CudaCausalLM::upload_step(std::span<const int64_t> slots, std::span<const int32_t> tokens,
                                  int64_t steps) {
    MSLM_CHECK(slots.size() == tokens.size(), "step: {} slots but {} tokens", slots.size(), tokens.size());
    Impl& m = *impl_;
    const auto k = static_cast<int64_t>(slots.size());
    MSLM_CHECK(k <= slots_, "step: {} slots listed, {} exist", k, slots_);
    check_ids(cfg_, tokens.data(), k, "step");
    auto* host_slots = reinterpret_cast<int64_t*>(m.host);
    int64_t* host_pos = host_slots + slots_;
    auto* host_ids = reinterpret_cast<int32_t*>(host_pos + slots_);
    for (int64_t i = 0; i < k; ++i) {
        check_slot(slots[i], "step");
        for (int64_t j = 0; j < i; ++j) MSLM_CHECK(slots[j] != slots[i], "step: slot {} listed twice", slots[i]);
        MSLM_CHECK(pos_[slots[i]] + steps <= max_len_, "step: slot {} is full ({} tokens)", slots[i],
                   max_len_);
        host_slots[i] = slots[i];
        host_pos[i] = pos_[slots[i]];
        host_ids[i] = tokens[i];
    }
    // One upload: [slots | pos | ids] are laid out alike on both sides.
    check(cudaMemcpyAsync(m.slots, host_slots, 2 * sizeof(int64_t) * slots_ + sizeof(int32_t) * k,
                          cudaMemcpyHostToDevice, m.stream),
          "upload step");
    return k;
}

int64_t CudaCausalLM::enqueue_step(std::span<const int64_t> slots, std::span<const int32_t> tokens) {
    Impl& m = *impl_;
    const int64_t k = upload_step(slots, tokens, 1);
    if (k == 1 && m.tables) {
        cuda_decoder_detail::persistent_step(m.pstep, m.stream);
        if (m.trace) {
            std::vector<unsigned long long> t(m.trace_kind.size() * static_cast<size_t>(m.trace_blocks) * 5);
            check(cudaMemcpyAsync(t.data(), m.pstep.trace, sizeof(unsigned long long) * t.size(),
                                  cudaMemcpyDeviceToHost, m.stream),
                  "download the step trace");
            check(cudaStreamSynchronize(m.stream), "step trace");
            m.add_trace(t);
        }
    } else if (!m.graphs) {
        run_step(k);
    } else if (auto it = m.graph.find(k); it != m.graph.end()) {
        check(cudaGraphLaunch(it->second, m.stream), "cudaGraphLaunch");
    } else if (!m.warmed.count(k)) {
        run_step(k);  // the first step of this size runs eagerly: cuBLASLt picks its algorithms
        m.warmed.insert(k);
    } else {
        cudaGraph_t graph = nullptr;
        check(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        try {
            run_step(k);
        } catch (...) {
            cudaStreamEndCapture(m.stream, &graph);
            if (graph) cudaGraphDestroy(graph);
            throw;
        }
        check(cudaStreamEndCapture(m.stream, &graph), "cudaStreamEndCapture");
        cudaGraphExec_t exec = nullptr;
        const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
        check(err, "cudaGraphInstantiate");
        m.graph.emplace(k, exec);
        check(cudaGraphLaunch(exec, m.stream), "cudaGraphLaunch");
    }
    return k;
}

void* CudaCausalLM::loop_graph(int64_t k) {
    Impl& m = *impl_;
    if (auto it = m.loop_graph.find(k); it != m.loop_graph.end()) return it->second;
    // The graph: one while node (its condition 1 at each launch, so the body runs at least once)
    // whose body is the step, the pick and greedy_loop_tail, captured from the stream.
    cudaGraph_t graph = nullptr;
    check(cudaGraphCreate(&graph, 0), "cudaGraphCreate");
    cudaGraphConditionalHandle handle{};
    cudaGraphNodeParams params{};
    cudaGraphNode_t node = nullptr;
    cudaError_t err = cudaGraphConditionalHandleCreate(&handle, graph, 1, cudaGraphCondAssignDefault);
    if (err == cudaSuccess) {
        params.type = cudaGraphNodeTypeConditional;
        params.conditional.handle = handle;
        params.conditional.type = cudaGraphCondTypeWhile;
        params.conditional.size = 1;
        err = cudaGraphAddNode(&node, graph, nullptr, nullptr, 0, &params);
    }
    if (err == cudaSuccess)
        err = cudaStreamBeginCaptureToGraph(m.stream, params.conditional.phGraph_out[0], nullptr, nullptr, 0,
                                            cudaStreamCaptureModeThreadLocal);
    if (err != cudaSuccess) {  // a device or driver without conditional nodes: the host loop
        cudaGetLastError();
        cudaGraphDestroy(graph);
        m.loop = false;
        return nullptr;
    }
    auto* lp = reinterpret_cast<double*>(m.picks);
    auto* logit = reinterpret_cast<float*>(lp + k);
    auto* token = reinterpret_cast<int32_t*>(logit + k);
    try {
        run_step(k);
        cuda_decoder_detail::greedy_pick(m.logits, k, cfg_.vocab_size, m.pick_part, m.pick_done, lp, logit,
                                         token, m.stream);
        cuda_decoder_detail::greedy_loop_tail(k, lp, logit, token, m.ids, m.pos, m.loop_out, m.loop_ctl,
                                              static_cast<unsigned long long>(handle), m.stream);
    } catch (...) {
        cudaGraph_t body = nullptr;
        cudaStreamEndCapture(m.stream, &body);
        cudaGraphDestroy(graph);
        throw;
    }
    cudaGraph_t body = nullptr;
    err = cudaStreamEndCapture(m.stream, &body);
    cudaGraphExec_t exec = nullptr;
    if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {  // e.g. a kernel the body cannot hold: the host loop
        cudaGetLastError();
        m.loop = false;
        return nullptr;
    }
    m.loop_graph.emplace(k, exec);
    return exec;
}

int64_t CudaCausalLM::step_greedy_n(std::span<const int64_t> slots, std::span<const int32_t> tokens,
                                    int64_t n, std::span<const int32_t> stop_ids, GreedyPick* picks) {
    Impl& m = *impl_;
    const auto k = static_cast<int64_t>(slots.size());
    if (n <= 0 || k == 0) return 0;
    const auto n_stop = static_cast<int64_t>(stop_ids.size());
    if (!m.loop || !m.graphs || m.tables || n_stop > cuda_decoder_detail::kLoopMaxStops)
        return step_greedy_loop(slots, tokens, n, stop_ids, picks);
    int64_t done = 0;
    std::vector<int32_t> fed(tokens.begin(), tokens.end());
    auto stopped = [&](const GreedyPick* row) {
        for (int64_t i = 0; i < k; ++i)
            if (std::find(stop_ids.begin(), stop_ids.end(), row[i].token) != stop_ids.end()) return true;
        return false;
    };
    // The step's first run at a row count is eager and the second captured (enqueue_step): cuBLASLt
    // chooses its algorithms and workspace outside any capture. Those steps go through step_greedy.
    while (done < n && !m.graph.count(k)) {
        step_greedy(slots, fed, picks + done * k);
        for (int64_t i = 0; i < k; ++i) fed[i] = picks[done * k + i].token;
        if (stopped(picks + done++ * k)) return done;
    }
    while (done < n) {
        const int64_t chunk = std::min(n - done, kLoopChunk);
        upload_step(slots, fed, chunk);
        void* exec = loop_graph(k);
        if (!exec) return done + step_greedy_loop(slots, fed, n - done, stop_ids, picks + done * k);
        int32_t* ctl = m.host_loop_ctl;
        ctl[0] = 0;
        ctl[1] = static_cast<int32_t>(chunk);
        ctl[2] = static_cast<int32_t>(n_stop);
        std::copy(stop_ids.begin(), stop_ids.end(), ctl + 3);
        const size_t ctl_bytes = sizeof(int32_t) * static_cast<size_t>(3 + n_stop);
        check(cudaMemcpyAsync(m.loop_ctl, ctl, ctl_bytes, cudaMemcpyHostToDevice, m.stream), "upload loop");
        check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), m.stream), "cudaGraphLaunch");
        check(cudaMemcpyAsync(ctl, m.loop_ctl, sizeof(int32_t), cudaMemcpyDeviceToHost, m.stream),
              "download loop");
        check(cudaMemcpyAsync(m.host_loop_out, m.loop_out,
                              sizeof(cuda_decoder_detail::LoopPick) * static_cast<size_t>(chunk * k),
                              cudaMemcpyDeviceToHost, m.stream),
              "download loop picks");
        check(cudaStreamSynchronize(m.stream), "decode loop");
        const int64_t ran = ctl[0];
        MSLM_CHECK(ran >= 1 && ran <= chunk, "decode loop: {} steps of {}", ran, chunk);
        for (int64_t j = 0; j < ran; ++j)
            for (int64_t i = 0; i < k; ++i) {
                const cuda_decoder_detail::LoopPick& p = m.host_loop_out[j * k + i];
                picks[(done + j) * k + i] = GreedyPick{p.token, p.logit, p.log_prob};
            }
        for (int64_t i = 0; i < k; ++i) {
            pos_[slots[i]] += ran;
            fed[i] = picks[(done + ran - 1) * k + i].token;
        }
        done += ran;
        if (ran < chunk || stopped(picks + (done - 1) * k)) break;
    }
    return done;
}

void CudaCausalLM::reorder(std::span<const int64_t> src) {
    MSLM_CHECK(slots_ > 0, "reorder before start");
    MSLM_CHECK(static_cast<int64_t>(src.size()) == slots_, "reorder with {} indices for {} slots", src.size(),
               slots_);
    for (int64_t s : src) MSLM_CHECK(s >= 0 && s < slots_, "reorder index {} out of range [0, {})", s, slots_);
    Impl& m = *impl_;
    bool identity = true;
    for (int64_t i = 0; i < slots_; ++i) identity = identity && src[i] == i;
    if (identity) return;
    auto* host_idx = reinterpret_cast<int64_t*>(m.host);   // the staging area's slots part
    check(cudaStreamSynchronize(m.stream), "reorder");     // the staging area may still be uploading
    std::copy(src.begin(), src.end(), host_idx);
    check(cudaMemcpyAsync(m.slots, host_idx, sizeof(int64_t) * slots_, cudaMemcpyHostToDevice, m.stream),
          "upload reorder");
    const size_t biggest = std::max({m.conv_block, m.ssm_block, m.kv_block});
    void* tmp = m.alloc->allocate(biggest * static_cast<size_t>(slots_));
    auto permute = [&](void* buf, size_t block) {
        if (!buf || !block) return;
        cuda_decoder_detail::gather_blocks(tmp, buf, m.slots, slots_, block, m.stream);
        copy_bytes(buf, tmp, block * static_cast<size_t>(slots_), m.stream);
    };
    for (Impl::Layer& L : m.layers) {
        permute(L.conv, m.conv_block);
        permute(L.ssm_state(), m.ssm_block);
        permute(L.kc, m.kv_block);
        permute(L.vc, m.kv_block);
    }
    check(cudaStreamSynchronize(m.stream), "reorder");
    m.alloc->deallocate(tmp);
    std::vector<int64_t> pos(slots_);
    for (int64_t i = 0; i < slots_; ++i) pos[i] = pos_[src[i]];
    pos_ = std::move(pos);
}

void CudaCausalLM::copy(int64_t src_slot, int64_t dst_slot) {
    check_slot(src_slot, "copy");
    check_slot(dst_slot, "copy");
    if (src_slot == dst_slot) return;
    Impl& m = *impl_;
    auto block = [&](void* buf, size_t bytes) {
        if (!buf || !bytes) return;
        char* b = static_cast<char*>(buf);
        copy_bytes(b + dst_slot * bytes, b + src_slot * bytes, bytes, m.stream);
    };
    for (Impl::Layer& L : m.layers) {
        block(L.conv, m.conv_block);
        block(L.ssm_state(), m.ssm_block);
        block(L.kc, m.kv_block);
        block(L.vc, m.kv_block);
    }
    pos_[dst_slot] = pos_[src_slot];
}

void CudaCausalLM::clear(int64_t slot) {
    check_slot(slot, "clear");
    Impl& m = *impl_;
    auto zero = [&](void* buf, size_t bytes) {
        if (buf && bytes)
            check(cudaMemsetAsync(static_cast<char*>(buf) + slot * bytes, 0, bytes, m.stream), "clear slot");
    };
    for (Impl::Layer& L : m.layers) {
        zero(L.conv, m.conv_block);
        zero(L.ssm_state(), m.ssm_block);
        zero(L.kc, m.kv_block);
        zero(L.vc, m.kv_block);
    }
    pos_[slot] = 0;
}

#endif  // MSLM_HAVE_CUDA

}  // namespace mslm
