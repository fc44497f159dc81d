#include "model/cuda_model.h"

#ifdef MSLM_HAVE_CUDA

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <utility>

#include "core/dtype.h"
#include "core/error.h"
#include "lora/lora.h"
#include "model/cuda_model_kernels.h"
#include "model/hybrid_lm.h"
#include "ops/cuda/adamw.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/conv1d.h"
#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/nf4_dequant.h"
#include "ops/cuda/norm.h"
#include "ops/cuda/selective_scan.h"
#include "ops/cuda/ssd.h"
#include "quant/fake_quant.h"
#include "quant/qlora.h"
#include "train/optimizer.h"

namespace mslm {

namespace {

namespace kc = ops::cuda;
using bf16 = uint16_t;  // bf16 bits, as in core/dtype.h

void check(cudaError_t err, const char* what) {
    MSLM_CHECK(err == cudaSuccess, "CudaHybridLM: {}: {}", what, cudaGetErrorString(err));
}

void zero(void* p, size_t bytes) {
    if (bytes) check(cudaMemsetAsync(p, 0, bytes, nullptr), "cudaMemsetAsync");
}

// Columns [0, cols) of the (N, ld_src) matrix src into the (N, ld_dst) matrix dst.
void copy_cols(bf16* dst, int64_t ld_dst, const bf16* src, int64_t ld_src, int64_t N, int64_t cols) {
    check(cudaMemcpy2DAsync(dst, sizeof(bf16) * ld_dst, src, sizeof(bf16) * ld_src, sizeof(bf16) * cols, N,
                            cudaMemcpyDeviceToDevice, nullptr),
          "cudaMemcpy2DAsync");
}

// The MLP's up projection width: SwiGLU's fused gate_up (2F), a plain MLP's fc1 (F).
int64_t mlp_up_width(const ModelConfig& cfg) {
    return cfg.mlp.kind == MlpKind::SwiGLU ? 2 * cfg.mlp.d_ff : cfg.mlp.d_ff;
}

void copy(bf16* dst, const bf16* src, int64_t n) {
    check(cudaMemcpyAsync(dst, src, sizeof(bf16) * n, cudaMemcpyDeviceToDevice, nullptr), "cudaMemcpyAsync");
}

// One activation plan: run once without a base to measure, then with the allocation to place.
struct Planner {
    char* base = nullptr;
    size_t offset = 0;
    template <typename P>
    void take(P*& p, int64_t n) {
        offset = (offset + 255) / 256 * 256;
        p = base ? reinterpret_cast<P*>(base + offset) : nullptr;
        offset += sizeof(P) * static_cast<size_t>(std::max<int64_t>(n, 0));
    }
};

// Stage timing (MSLM_MODEL_STAGE_TIMES=1, or set_stage_timing): CUDA events on the default
// stream at every boundary between kernel families of a step. A mark closes the interval since
// the previous event and books it to a stage label (summed by label, printed to stderr at the end
// of each backward and optimizer step when the variable is set) and to a kernel family (the
// training profile, bench/bench_cuda_profile.cpp). begin() opens a segment: the time since the
// previous event is not booked (the host between calls). Finishing a record synchronises on its
// last event: for profiling, not for training runs. Off, every call returns at its first test.
class StageTimer {
public:
    StageTimer() {
        const char* env = std::getenv("MSLM_MODEL_STAGE_TIMES");
        print_ = env && std::string(env) == "1";
        on_ = print_;
    }
    ~StageTimer() {
        for (cudaEvent_t e : events_) cudaEventDestroy(e);
    }
    bool on() const { return on_; }
    void set_on(bool on) {
        on_ = on || print_;
        used_ = 0;
        marks_.clear();
    }
    void begin() {
        if (!on_) return;
        marks_.push_back({nullptr, KernelFamily::Other});
        record();
    }
    // The time since the previous event is `label`'s, and its family's.
    void mark(const char* label, KernelFamily family) {
        if (!on_) return;
        marks_.push_back({label, family});
        record();
    }
    // Books the record's intervals into the totals; prints them, headed by `title` (and B x T when
    // given), when the variable is set.
    void finish(const char* title, int64_t B = 0, int64_t T = 0) {
        if (!on_ || used_ == 0) return;
        check(cudaEventSynchronize(events_[used_ - 1]), "stage timer");
        std::vector<std::pair<std::string, double>> stages;
        double all = 0;
        for (size_t i = 1; i < marks_.size(); ++i) {
            if (!marks_[i].label) continue;
            float ms = 0;
            check(cudaEventElapsedTime(&ms, events_[i - 1], events_[i]), "cudaEventElapsedTime");
            all += ms;
            add(stages, marks_[i].label, ms);
            add(totals_.stages, marks_[i].label, ms);
            totals_.family_ms[static_cast<size_t>(marks_[i].family)] += ms;
        }
        totals_.total_ms += all;
        ++totals_.records;
        used_ = 0;
        marks_.clear();
        if (!print_) return;
        std::string line = B ? fmt::format("{}, {} x {}, ms:", title, B, T) : fmt::format("{}, ms:", title);
        for (const auto& [name, ms] : stages) line += fmt::format(" {} {:.2f} |", name, ms);
        fmt::print(stderr, "{} total {:.2f}\n", line, all);
    }
    CudaStageTimes take() { return std::exchange(totals_, CudaStageTimes{}); }

private:
    struct Mark {
        const char* label;  // null: a segment start
        KernelFamily family;
    };
    static void add(std::vector<std::pair<std::string, double>>& v, const char* label, double ms) {
        auto it = std::find_if(v.begin(), v.end(), [&](const auto& t) { return t.first == label; });
        if (it == v.end())
            v.emplace_back(label, ms);
        else
            it->second += ms;
    }
    void record() {
        if (used_ == events_.size()) {
            cudaEvent_t e = nullptr;
            check(cudaEventCreate(&e), "cudaEventCreate");
            events_.push_back(e);
        }
        check(cudaEventRecord(events_[used_++], nullptr), "cudaEventRecord");
    }
    bool print_ = false, on_ = false;
    std::vector<cudaEvent_t> events_;
    size_t used_ = 0;
    std::vector<Mark> marks_;  // marks_[i] ends at events_[i]
    CudaStageTimes totals_;
};

}  // namespace

// One LoRA module on a projection: rows [row_begin, row_begin + rows) of its output get
// scale · (x·Aᵀ)·Bᵀ. A (r, in) and B (rows, r) are the adapter's bf16 copies, gA and gB its fp32
// gradients.
struct CudaLoraModule {
    const bf16 *A = nullptr, *B = nullptr;
    float *gA = nullptr, *gB = nullptr;
    int64_t row_begin = 0, rows = 0, r = 0;
    float scale = 1;
};

// What a projection weight of a frozen base carries besides (or instead of) its bf16 copy.
struct CudaProj {
    struct Piece {
        int64_t offset = 0;  // first element of the piece in the (out, in) weight
        kc::Bnb4DeviceTensor t;
    };
    std::vector<Piece> pieces;  // QLoRA: the weight as 4-bit pieces (then it has no bf16 copy)
    std::vector<CudaLoraModule> lora;
};

// A parameter's bf16 copy (read by the kernels) and its bf16 staged gradient; null when absent.
// A frozen base has no gradients (g, g32 null: the kernels skip them).
struct CudaParam {
    bf16* w = nullptr;
    bf16* g = nullptr;
    float* g32 = nullptr;  // the fp32 gradient itself (matrix weights: linear_backward_dW_f32 adds into it)
    const CudaProj* proj = nullptr;  // frozen base: 4-bit pieces and LoRA modules, when it has any
};

struct CudaNormParams {
    CudaParam w, b;
};

struct CudaHybridLM::Impl {
    std::vector<int32_t> host_ids;  // the last forward's ids: backward zeroes the padding rows
    int64_t ssd_chunk = 0;          // the SSD's chunk, fixed with the workspaces (layout_activations)
    struct Layer {
        LayerKind kind;
        CudaNormParams norm, mlp_norm;
        // Mamba (both versions) and projections of every mixer.
        CudaParam in_w, in_b, conv_w, conv_b, dt_bias, A_log, D, gnorm_w, out_w, out_b;
        CudaParam x_w, dtp_w, dtp_b;           // Mamba-1
        CudaParam dt_norm_w, B_norm_w, C_norm_w;  // Mamba-1 dt_bc_norm (RMSNorm weights)
        CudaParam qkv_w, qkv_b, o_w, o_b;      // attention
        CudaParam up_w, up_b, down_w, down_b;  // MLP
        // Saved activations (N = B·T rows).
        bf16 *ln1 = nullptr, *ln2 = nullptr, *mid = nullptr;                                // (N, D)
        float *mean1 = nullptr, *rstd1 = nullptr, *mean2 = nullptr, *rstd2 = nullptr;       // (N)
        bf16 *zxbcdt = nullptr, *xbc = nullptr, *y = nullptr, *yn = nullptr;                // Mamba-2
        float* g_rstd = nullptr;  // (N, norm groups)
        float* states = nullptr;  // chunk states of the scan / SSD
        bf16 *xz = nullptr, *xc = nullptr, *xdbl = nullptr, *dt = nullptr, *dt_raw = nullptr;  // Mamba-1
        // Mamba-1 dt_bc_norm: x_proj's dt, B, C columns gathered into three contiguous blocks
        // (N, R), (N, S), (N, S) (the norms' inputs); normed B and C as two (N, S) blocks (normed dt
        // is `dt`); the three norms' rstd (3, N).
        bf16 *dbc_in = nullptr, *bc = nullptr;
        float* dbc_rstd = nullptr;
        bf16* qkv = nullptr;              // attention (N, (Hq + 2·Hkv)·Dh), q and k rotated
        bf16* o = nullptr;                // (N, Hq·Dh)
        float* lse = nullptr;             // (B, Hq, T)
        bf16 *h = nullptr, *a = nullptr;  // MLP (N, up width), (N, F)
    };

    float* params = nullptr;  // (total) fp32 master values
    bf16* params_bf16 = nullptr;
    float* grads = nullptr;             // (total) fp32
    // One backward's bf16 gradients of the parameters that stage them (cuda_model_detail::StagedRange:
    // all but the matrix weights, whose gradients go to `grads` directly), staged_total elements, and
    // the device table of their ranges.
    bf16* staged = nullptr;
    int64_t staged_total = 0;
    cuda_model_detail::StagedRange* staged_ranges = nullptr;
    int n_staged_ranges = 0;
    kc::IndexStatus* status = nullptr;  // [0] embedding, [1] cross-entropy
    // Optimizer: state (total) fp32, decay mask (total), the norm, clip factor and its scratch.
    float *opt_m = nullptr, *opt_v = nullptr;
    uint8_t* decay_mask = nullptr;
    double* norm = nullptr;         // (1)
    float* clip_scale = nullptr;    // (1)
    double* partials = nullptr;     // (kGradNormPartials)

    CudaParam embed, lm_head;
    CudaNormParams final_norm;
    std::vector<Layer> layers;

    // LoRA / QLoRA (the second constructor): the frozen base's bf16 values (every parameter not
    // held in 4 bits, each 256-byte aligned), the device arrays of the 4-bit pieces, the
    // dequantization scratch (the largest 4-bit weight) and the projections' extras (by base
    // parameter index).
    bool frozen = false;
    bf16* base = nullptr;
    size_t base_bytes = 0, q4_bytes = 0;
    std::vector<void*> q4;
    bf16* deq = nullptr;
    size_t deq_bytes = 0;
    std::vector<CudaProj> projs;
    int64_t lora_r = 0;                           // the largest rank: the plan's u and gu
    bf16 *lora_u = nullptr, *lora_gu = nullptr;  // (N, lora_r)

    // The activation plan.
    char* act = nullptr;
    int32_t *ids = nullptr, *targets = nullptr;  // (N)
    bf16* res = nullptr;  // (L + 1, N, D) residual stream entering each layer, and the output
    bf16* hf = nullptr;   // (N, D) final norm output
    float *final_mean = nullptr, *final_rstd = nullptr;
    bf16* logits = nullptr;                   // (N, V); backward turns them into their gradient
    float *losses = nullptr, *lse = nullptr;  // (N)
    bf16* tmp = nullptr;                      // (N, D) a sublayer's output
    bf16 *g_res = nullptr, *g_ln = nullptr;   // (N, D)
    std::array<bf16*, 8> scratch{};           // a sublayer's backward buffers, shared by all layers
    void* ws = nullptr;                       // kernels' workspace, shared
    size_t ws_bytes = 0;
    StageTimer timer;
};

namespace {

void malloc_into(void** p, size_t bytes) {
    check(cudaMalloc(p, std::max<size_t>(bytes, 256)), "cudaMalloc");
}

}  // namespace

namespace {

void check_supported(const ModelConfig& cfg) {
    cfg.validate();
    if (cfg.count(LayerKind::Mamba) && cfg.mamba.version == 1 && cfg.mamba.d_state > kc::kScanMaxState)
        fail("not supported on CUDA yet: Mamba-1 d_state {} > {}", cfg.mamba.d_state, kc::kScanMaxState);
    if (cfg.count(LayerKind::Mamba) && cfg.mamba.version == 1 && cfg.mamba.d_conv > kc::kConv1dBackwardMaxK)
        fail("not supported on CUDA yet: d_conv {} > {}", cfg.mamba.d_conv, kc::kConv1dBackwardMaxK);
    if (cfg.count(LayerKind::Attention) && cfg.attn_head_dim() > kc::kAttentionMaxHeadDim)
        fail("not supported on CUDA yet: head_dim {} > {}", cfg.attn_head_dim(), kc::kAttentionMaxHeadDim);
}

// Points m's parameters (embedding, layers, head) at what `param` gives for each native name (a
// null CudaParam for names the config does not have).
void wire(const ModelConfig& cfg, CudaHybridLM::Impl& m, const std::function<CudaParam(const std::string&)>& param) {
    auto norm = [&](const std::string& name) {
        return CudaNormParams{param(name + ".weight"), param(name + ".bias")};
    };

    m.embed = param("embed.weight");
    m.lm_head = cfg.tie_embeddings ? m.embed : param("lm_head.weight");
    m.final_norm = norm("final_norm");
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
        const std::string p = fmt::format("layers.{}", l), x = p + ".mixer.";
        CudaHybridLM::Impl::Layer L;
        L.kind = cfg.layers[l];
        L.norm = norm(p + ".norm");
        if (L.kind == LayerKind::Attention) {
            L.qkv_w = param(x + "qkv_proj.weight");
            L.qkv_b = param(x + "qkv_proj.bias");
            L.o_w = param(x + "o_proj.weight");
            L.o_b = param(x + "o_proj.bias");
        } else {
            L.in_w = param(x + "in_proj.weight");
            L.in_b = param(x + "in_proj.bias");
            L.conv_w = param(x + "conv1d.weight");
            L.conv_b = param(x + "conv1d.bias");
            L.A_log = param(x + "A_log");
            L.D = param(x + "D");
            L.out_w = param(x + "out_proj.weight");
            L.out_b = param(x + "out_proj.bias");
            if (cfg.mamba.version == 1) {
                L.x_w = param(x + "x_proj.weight");
                L.dtp_w = param(x + "dt_proj.weight");
                L.dtp_b = param(x + "dt_proj.bias");
                L.dt_norm_w = param(x + "dt_norm.weight");  // absent (null) without dt_bc_norm
                L.B_norm_w = param(x + "B_norm.weight");
                L.C_norm_w = param(x + "C_norm.weight");
            } else {
                L.dt_bias = param(x + "dt_bias");
                L.gnorm_w = param(x + "norm.weight");
            }
        }
        if (cfg.mlp.kind != MlpKind::None) {
            L.mlp_norm = norm(p + ".mlp_norm");
            const bool gated = cfg.mlp.kind == MlpKind::SwiGLU;  // nn/mlp.cpp's names
            const std::string up = p + (gated ? ".mlp.gate_up_proj" : ".mlp.fc1");
            const std::string down = p + (gated ? ".mlp.down_proj" : ".mlp.fc2");
            L.up_w = param(up + ".weight");
            L.up_b = param(up + ".bias");
            L.down_w = param(down + ".weight");
            L.down_b = param(down + ".bias");
        }
        m.layers.push_back(L);
    }
}

// Whether each parameter of `specs` stages its gradient in bf16 (folded into the fp32 one after the
// backward: norm weights, biases, the conv, A_log, D, dt_bias, the embedding) rather than having it
// added in fp32 directly (the matrix weights, linear_backward_dW_f32): found by wiring a scratch
// Impl whose fp32 gradient pointers name the parameters.
std::vector<bool> staged_params(const ModelConfig& cfg, const std::vector<ParamSpec>& specs) {
    CudaHybridLM::Impl probe;
    std::vector<float> tag(specs.size());
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < specs.size(); ++i) index[specs[i].name] = i;
    wire(cfg, probe, [&](const std::string& name) {
        auto it = index.find(name);
        return it == index.end() ? CudaParam{} : CudaParam{nullptr, nullptr, &tag[it->second]};
    });
    std::vector<bool> staged(specs.size(), true);
    auto matrix = [&](const CudaParam& p) {
        if (p.g32) staged[static_cast<size_t>(p.g32 - tag.data())] = false;
    };
    for (const CudaHybridLM::Impl::Layer& L : probe.layers)
        for (const CudaParam* p : {&L.in_w, &L.out_w, &L.x_w, &L.dtp_w, &L.qkv_w, &L.o_w, &L.up_w, &L.down_w})
            matrix(*p);
    if (!cfg.tie_embeddings) matrix(probe.lm_head);  // tied: the embedding's lookups stage
    return staged;
}

// A parameter's slot in the staged buffer: 256-byte aligned, as the parameter layout.
int64_t staged_slot(int64_t numel) {
    return (numel + 127) / 128 * 128;
}

}  // namespace

CudaHybridLM::CudaHybridLM(const ModelConfig& cfg) : cfg_(cfg), impl_(std::make_unique<Impl>()) {
    check_supported(cfg_);
    // The layout is HybridLM<float>'s, by construction: its constructor registers the parameters.
    {
        HybridLM<float> layout(cfg_);
        specs_ = layout.params().specs();
        total_ = layout.params().total();
    }
    Impl& m = *impl_;
    malloc_into(reinterpret_cast<void**>(&m.params), sizeof(float) * total_);
    malloc_into(reinterpret_cast<void**>(&m.params_bf16), sizeof(bf16) * total_);
    malloc_into(reinterpret_cast<void**>(&m.grads), sizeof(float) * total_);
    malloc_into(reinterpret_cast<void**>(&m.status), 2 * sizeof(kc::IndexStatus));
    zero(m.params, sizeof(float) * total_);
    zero(m.params_bf16, sizeof(bf16) * total_);
    zero(m.grads, sizeof(float) * total_);

    // The staged buffer holds only the parameters that stage their gradients (staged_params), so a
    // backward zeroes and folds only them, not every parameter, and the buffer is that much smaller
    // (docs/PERFORMANCE.md has the time saved).
    const std::vector<bool> staged = staged_params(cfg_, specs_);
    std::vector<cuda_model_detail::StagedRange> ranges;
    std::map<std::string, const ParamSpec*> by_name;
    std::map<std::string, int64_t> slot;
    for (size_t i = 0; i < specs_.size(); ++i) {
        const ParamSpec& s = specs_[i];
        by_name[s.name] = &s;
        if (!staged[i]) continue;
        slot[s.name] = m.staged_total;
        ranges.push_back({static_cast<int64_t>(s.offset), m.staged_total, s.numel});
        m.staged_total += staged_slot(s.numel);
    }
    malloc_into(reinterpret_cast<void**>(&m.staged), sizeof(bf16) * m.staged_total);
    m.n_staged_ranges = static_cast<int>(ranges.size());
    malloc_into(reinterpret_cast<void**>(&m.staged_ranges),
                sizeof(cuda_model_detail::StagedRange) * ranges.size());
    check(cudaMemcpy(m.staged_ranges, ranges.data(), sizeof(cuda_model_detail::StagedRange) * ranges.size(),
                     cudaMemcpyHostToDevice),
          "upload staged ranges");
    wire(cfg_, m, [&](const std::string& name) {
        auto it = by_name.find(name);
        if (it == by_name.end()) return CudaParam{};
        const size_t off = it->second->offset;
        auto st = slot.find(name);
        return CudaParam{m.params_bf16 + off, st == slot.end() ? nullptr : m.staged + st->second,
                         m.grads + off};
    });
}

namespace {

template <typename P>
P* upload_array(std::vector<void*>& allocs, size_t& bytes, const P* src, size_t n) {
    void* p = nullptr;
    malloc_into(&p, sizeof(P) * n);
    allocs.push_back(p);
    bytes += sizeof(P) * n;
    check(cudaMemcpy(p, src, sizeof(P) * n, cudaMemcpyHostToDevice), "upload 4-bit weights");
    return static_cast<P*>(p);
}

// Elements of the frozen base's bf16 copy of a parameter of n values: 256-byte aligned, as the
// Parameters layout aligns (cuBLASLt's fast paths want 16).
int64_t base_slot(int64_t n) { return (n + 127) / 128 * 128; }

}  // namespace

CudaHybridLM::CudaHybridLM(LoraModel<float>& lora, const std::string& adapter,
                           const quant::QloraBase<float>* qlora)
    : cfg_(lora.model().config()), impl_(std::make_unique<Impl>()) {
    check_supported(cfg_);
    const LoraAdapter<float>& a = lora.adapter(adapter);
    MSLM_CHECK(a.trainable(), "CudaHybridLM: LoRA adapter \"{}\" is frozen; CUDA training needs a trainable one",
               adapter);
    MSLM_CHECK(lora.active() == std::vector<std::string>{adapter} && !lora.merged(),
               "CudaHybridLM: LoRA training on CUDA needs adapter \"{}\" as the only active one, unmerged",
               adapter);
    MSLM_CHECK(a.config().dropout == 0,
               "not supported on CUDA yet: lora_dropout {} > 0 (train with dropout 0, or on the CPU)",
               a.config().dropout);
    Impl& m = *impl_;
    m.frozen = true;
    const Parameters<float>& base = lora.model().params();
    const std::vector<ParamSpec>& bspecs = base.specs();

    // The base: bf16 values of every parameter not held in 4 bits, 4-bit pieces of the others.
    std::vector<int64_t> slot(bspecs.size(), -1);
    int64_t n_base = 0;
    for (size_t i = 0; i < bspecs.size(); ++i)
        if (!(qlora && qlora->pieces(i))) {
            MSLM_CHECK(!base.released(i), "CudaHybridLM: base parameter {} has no values (released)", bspecs[i].name);
            slot[i] = n_base;
            n_base += base_slot(bspecs[i].numel);
        }
    {
        std::vector<bf16> half(static_cast<size_t>(n_base), 0);
        for (size_t i = 0; i < bspecs.size(); ++i)
            if (slot[i] >= 0)
                for (int64_t k = 0; k < bspecs[i].numel; ++k) half[slot[i] + k] = f32_to_bf16(base.value(i)[k]);
        m.base_bytes = sizeof(bf16) * static_cast<size_t>(n_base);
        malloc_into(reinterpret_cast<void**>(&m.base), m.base_bytes);
        check(cudaMemcpy(m.base, half.data(), m.base_bytes, cudaMemcpyHostToDevice), "upload base");
    }
    m.projs.resize(bspecs.size());
    int64_t largest = 0;
    for (size_t i = 0; i < bspecs.size() && qlora; ++i) {
        const std::vector<quant::Bnb4Piece>* pieces = qlora->pieces(i);
        if (!pieces) continue;
        largest = std::max(largest, bspecs[i].numel);
        for (const quant::Bnb4Piece& p : *pieces) {
            const quant::Bnb4Tensor& t = p.t;
            CudaProj::Piece d;
            d.offset = p.row_begin * bspecs[i].shape[1];
            d.t.codes = upload_array(m.q4, m.q4_bytes, t.codes.data(), t.codes.size());
            if (t.double_quant) {
                d.t.absmax_q = upload_array(m.q4, m.q4_bytes, t.nested.q.data(), t.nested.q.size());
                d.t.nested_absmax =
                    upload_array(m.q4, m.q4_bytes, t.nested.nested_absmax.data(), t.nested.nested_absmax.size());
                d.t.offset = t.nested.offset;
                m.q4_bytes += sizeof(float);  // the offset, as Bnb4Tensor::bytes counts it
            } else {
                d.t.absmax = upload_array(m.q4, m.q4_bytes, t.absmax.data(), t.absmax.size());
            }
            d.t.n = t.n;
            d.t.blocksize = t.blocksize;
            d.t.round_f16 = t.dtype == "float16";
            d.t.code = quant::bnb4_code(t.type);
            d.t.dynamic_map = quant::bnb_dynamic_map();
            m.projs[i].pieces.push_back(d);
        }
    }
    if (largest > 0) {
        m.deq_bytes = sizeof(bf16) * static_cast<size_t>(largest);
        malloc_into(reinterpret_cast<void**>(&m.deq), m.deq_bytes);
    }

    // The adapter: the trained parameters, in its own Parameters layout.
    const Parameters<float>& ap = a.params();
    specs_ = ap.specs();
    total_ = ap.total();
    malloc_into(reinterpret_cast<void**>(&m.params), sizeof(float) * total_);
    malloc_into(reinterpret_cast<void**>(&m.params_bf16), sizeof(bf16) * total_);
    malloc_into(reinterpret_cast<void**>(&m.grads), sizeof(float) * total_);
    malloc_into(reinterpret_cast<void**>(&m.status), 2 * sizeof(kc::IndexStatus));
    zero(m.grads, sizeof(float) * total_);
    {
        const float* values = const_cast<Parameters<float>&>(ap).values();
        std::vector<bf16> half(static_cast<size_t>(total_));
        for (int64_t i = 0; i < total_; ++i) half[i] = f32_to_bf16(values[i]);
        check(cudaMemcpy(m.params, values, sizeof(float) * total_, cudaMemcpyHostToDevice), "upload adapter");
        check(cudaMemcpy(m.params_bf16, half.data(), sizeof(bf16) * total_, cudaMemcpyHostToDevice),
              "upload adapter bf16");
    }
    for (const auto& mod : a.modules()) {
        const LoraTarget& tg = lora.targets()[mod.target];
        const size_t oA = specs_[mod.A].offset, oB = specs_[mod.B].offset;
        m.projs[tg.weight].lora.push_back(CudaLoraModule{m.params_bf16 + oA, m.params_bf16 + oB, m.grads + oA,
                                                         m.grads + oB, tg.row_begin, tg.rows, a.config().r,
                                                         static_cast<float>(a.scaling())});
        m.lora_r = std::max(m.lora_r, a.config().r);
    }

    std::map<std::string, size_t> index;
    for (size_t i = 0; i < bspecs.size(); ++i) index[bspecs[i].name] = i;
    wire(cfg_, m, [&](const std::string& name) {
        auto it = index.find(name);
        if (it == index.end()) return CudaParam{};
        const size_t i = it->second;
        CudaParam p;
        p.w = slot[i] >= 0 ? m.base + slot[i] : nullptr;
        const CudaProj& proj = m.projs[i];
        if (!proj.pieces.empty() || !proj.lora.empty()) p.proj = &proj;
        return p;
    });
}

bool CudaHybridLM::lora() const { return impl_->frozen; }

void CudaHybridLM::set_recompute(bool on) { recompute_ = on; }

CudaHybridLM::~CudaHybridLM() {
    Impl& m = *impl_;
    for (void* p :
         {static_cast<void*>(m.params), static_cast<void*>(m.params_bf16), static_cast<void*>(m.grads),
          static_cast<void*>(m.staged), static_cast<void*>(m.staged_ranges), static_cast<void*>(m.status),
          static_cast<void*>(m.act), static_cast<void*>(m.opt_m), static_cast<void*>(m.opt_v),
          static_cast<void*>(m.decay_mask), static_cast<void*>(m.norm), static_cast<void*>(m.clip_scale),
          static_cast<void*>(m.partials), static_cast<void*>(m.base), static_cast<void*>(m.deq)})
        if (p) cudaFree(p);  // errors at teardown are not actionable
    for (void* p : m.q4) cudaFree(p);
}

void CudaHybridLM::upload(const HybridLM<float>& cpu) {
    MSLM_CHECK(!impl_->frozen, "CudaHybridLM::upload: a LoRA model's base and adapter are uploaded by its constructor");
    const Parameters<float>& p = cpu.params();
    MSLM_CHECK(
        p.total() == total_ && p.specs().size() == specs_.size(),
        "CudaHybridLM::upload: the CPU model's parameters ({} elements) do not match this config's ({})",
        p.total(), total_);
    const float* values = const_cast<Parameters<float>&>(p).values();
    std::vector<bf16> half(static_cast<size_t>(total_));
    for (int64_t i = 0; i < total_; ++i) half[i] = f32_to_bf16(values[i]);
    check(cudaMemcpy(impl_->params, values, sizeof(float) * total_, cudaMemcpyHostToDevice), "upload values");
    check(cudaMemcpy(impl_->params_bf16, half.data(), sizeof(bf16) * total_, cudaMemcpyHostToDevice),
          "upload bf16 values");
}

void CudaHybridLM::zero_grad() {
    impl_->timer.begin();
    zero(impl_->grads, sizeof(float) * total_);
    impl_->timer.mark("zero grad", KernelFamily::Optimizer);
    clip_pending_ = false;
}

void CudaHybridLM::upload_grads(const std::vector<float>& flat) {
    MSLM_CHECK(static_cast<int64_t>(flat.size()) == total_, "CudaHybridLM::upload_grads: {} values for {}",
               flat.size(), total_);
    check(cudaMemcpy(impl_->grads, flat.data(), sizeof(float) * total_, cudaMemcpyHostToDevice), "upload grads");
}

void CudaHybridLM::download_params(HybridLM<float>& cpu) const {
    MSLM_CHECK(!impl_->frozen,
               "CudaHybridLM::download_params: a LoRA model's base does not change; download the adapter");
    download_params(cpu.params());
}

void CudaHybridLM::download_params(Parameters<float>& p) const {
    MSLM_CHECK(p.total() == total_ && p.specs().size() == specs_.size(),
               "CudaHybridLM::download_params: the CPU parameters ({} elements) do not match the trained ones ({})",
               p.total(), total_);
    check(cudaMemcpy(p.values(), impl_->params, sizeof(float) * total_, cudaMemcpyDeviceToHost),
          "download values");
}

void CudaHybridLM::select_device(int index) {
    int n = 0;
    check(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    MSLM_CHECK(index >= 0 && index < n, "CUDA device {} does not exist ({} visible)", index, n);
    check(cudaSetDevice(index), "cudaSetDevice");
}

// ---------------------------------------------------------------------------------------------
// Optimizer

void CudaHybridLM::upload_optimizer_state(const AdamW<float>& cpu) {
    Impl& m = *impl_;
    const size_t n = static_cast<size_t>(total_);
    std::vector<float> mv(2 * n, 0.0f);  // [m | v] in the flat layout, padding zero
    std::map<std::string, const Tensor*> by_name;
    const auto tensors = cpu.state_tensors();
    for (const auto& [name, t] : tensors) by_name[name] = &t;
    for (size_t which = 0; which < 2; ++which)
        for (const ParamSpec& s : specs_) {
            const std::string name = fmt::format("adamw.{}.{}", which == 0 ? "m" : "v", s.name);
            auto it = by_name.find(name);
            MSLM_CHECK(it != by_name.end() && it->second->dtype() == DType::F32 && it->second->numel() == s.numel,
                       "CudaHybridLM::upload_optimizer_state: the optimizer has no fp32 {} of {} elements",
                       name, s.numel);
            std::memcpy(mv.data() + which * n + s.offset, it->second->raw(), sizeof(float) * s.numel);
        }
    if (!m.opt_m) {
        malloc_into(reinterpret_cast<void**>(&m.opt_m), sizeof(float) * n);
        malloc_into(reinterpret_cast<void**>(&m.opt_v), sizeof(float) * n);
        malloc_into(reinterpret_cast<void**>(&m.decay_mask), n);
        malloc_into(reinterpret_cast<void**>(&m.norm), sizeof(double));
        malloc_into(reinterpret_cast<void**>(&m.clip_scale), sizeof(float));
        malloc_into(reinterpret_cast<void**>(&m.partials), sizeof(double) * kc::kGradNormPartials);
        const std::vector<uint8_t> mask = kc::adamw_decay_mask(specs_, total_);
        check(cudaMemcpy(m.decay_mask, mask.data(), n, cudaMemcpyHostToDevice), "upload decay mask");
    }
    check(cudaMemcpy(m.opt_m, mv.data(), sizeof(float) * n, cudaMemcpyHostToDevice), "upload adamw.m");
    check(cudaMemcpy(m.opt_v, mv.data() + n, sizeof(float) * n, cudaMemcpyHostToDevice), "upload adamw.v");
    const AdamWOptions& o = cpu.options();
    beta1_ = o.beta1;
    beta2_ = o.beta2;
    eps_ = o.eps;
    weight_decay_ = o.weight_decay;
    opt_step_ = cpu.step_count();
}

void CudaHybridLM::download_optimizer_state(AdamW<float>& cpu) const {
    const Impl& m = *impl_;
    MSLM_CHECK(m.opt_m, "CudaHybridLM::download_optimizer_state: no optimizer state (upload_optimizer_state first)");
    const size_t n = static_cast<size_t>(total_);
    std::vector<float> mv(2 * n);
    check(cudaMemcpy(mv.data(), m.opt_m, sizeof(float) * n, cudaMemcpyDeviceToHost), "download adamw.m");
    check(cudaMemcpy(mv.data() + n, m.opt_v, sizeof(float) * n, cudaMemcpyDeviceToHost), "download adamw.v");
    std::map<std::string, Tensor> tensors;
    for (size_t which = 0; which < 2; ++which)
        for (const ParamSpec& s : specs_) {
            Tensor t = Tensor::empty(s.shape, DType::F32);
            std::memcpy(t.raw(), mv.data() + which * n + s.offset, sizeof(float) * s.numel);
            tensors.emplace(fmt::format("adamw.{}.{}", which == 0 ? "m" : "v", s.name), std::move(t));
        }
    tensors.emplace("adamw.step", Tensor::from_vector(std::vector<int64_t>{opt_step_}, Shape{}));
    cpu.load_state([&](const std::string& name) {
        auto it = tensors.find(name);
        return it == tensors.end() ? Tensor() : it->second;
    });
}

void CudaHybridLM::scale_grads(float s) {
    impl_->timer.begin();
    cuda_model_detail::scale_f32(impl_->grads, s, total_, nullptr);
    impl_->timer.mark("scale grads", KernelFamily::Optimizer);
}

void CudaHybridLM::set_stage_timing(bool on) { impl_->timer.set_on(on); }

bool CudaHybridLM::stage_timing() const { return impl_->timer.on(); }

CudaStageTimes CudaHybridLM::take_stage_times() { return impl_->timer.take(); }

double CudaHybridLM::clip_grad_norm(double max_norm) {
    Impl& m = *impl_;
    MSLM_CHECK(m.norm, "CudaHybridLM::clip_grad_norm: no optimizer (upload_optimizer_state first)");
    m.timer.begin();
    if (max_norm > 0)
        kc::clip_grad_norm(m.norm, m.clip_scale, m.grads, total_, max_norm, m.partials);
    else
        kc::grad_norm(m.norm, m.grads, total_, m.partials);
    clip_pending_ = max_norm > 0;
    double norm = 0;
    check(cudaMemcpy(&norm, m.norm, sizeof(double), cudaMemcpyDeviceToHost), "download grad norm");
    m.timer.mark("grad norm", KernelFamily::Optimizer);
    return norm;
}

void CudaHybridLM::optimizer_step(float lr) {
    Impl& m = *impl_;
    MSLM_CHECK(m.opt_m, "CudaHybridLM::optimizer_step: no optimizer state (upload_optimizer_state first)");
    MSLM_CHECK(std::isfinite(lr) && lr >= 0, "AdamW: learning rate {} is invalid", lr);
    ++opt_step_;
    m.timer.begin();
    const kc::AdamWScalars s = kc::adamw_scalars(lr, beta1_, beta2_, eps_, weight_decay_, opt_step_);
    kc::adamw_step<float>(m.params, m.params_bf16, m.opt_m, m.opt_v, m.grads, m.decay_mask, total_, s,
                          clip_pending_ ? m.clip_scale : nullptr);
    check(cudaDeviceSynchronize(), "optimizer step");
    m.timer.mark("adamw", KernelFamily::Optimizer);
    m.timer.finish("optimizer stages");
}

void CudaHybridLM::download_grads(std::vector<float>& flat) const {
    flat.resize(static_cast<size_t>(total_));
    check(cudaMemcpy(flat.data(), impl_->grads, sizeof(float) * total_, cudaMemcpyDeviceToHost),
          "download grads");
}

void CudaHybridLM::download_logits(std::vector<float>& out) const {
    const int64_t n = B_ * T_ * cfg_.vocab_size;
    std::vector<bf16> half(static_cast<size_t>(n));
    check(cudaMemcpy(half.data(), impl_->logits, sizeof(bf16) * n, cudaMemcpyDeviceToHost),
          "download logits");
    out.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(half[i]);
}

void CudaHybridLM::download_rows(int64_t row, int64_t n, float* out, float* hidden) const {
    MSLM_CHECK(row >= 0 && n >= 0 && row + n <= B_ * T_, "CudaHybridLM::download_rows: rows [{}, {}) of {}", row,
               row + n, B_ * T_);
    auto rows = [&](const bf16* src, int64_t width, float* dst, const char* what) {
        std::vector<bf16> half(static_cast<size_t>(n * width));
        check(cudaMemcpy(half.data(), src + row * width, sizeof(bf16) * n * width, cudaMemcpyDeviceToHost), what);
        for (size_t i = 0; i < half.size(); ++i) dst[i] = bf16_to_f32(half[i]);
    };
    rows(impl_->logits, cfg_.vocab_size, out, "download logits rows");
    if (hidden) rows(impl_->hf, cfg_.d_model, hidden, "download hidden rows");
}

size_t CudaHybridLM::memory_bytes() const {
    const Impl& m = *impl_;
    const auto n = static_cast<size_t>(total_);
    const size_t optimizer = m.opt_m ? n * (2 * sizeof(float) + 1) : 0;
    const size_t staged =
        m.staged ? static_cast<size_t>(m.staged_total) * sizeof(bf16) +
                       static_cast<size_t>(m.n_staged_ranges) * sizeof(cuda_model_detail::StagedRange)
                 : 0;
    return n * (2 * sizeof(float) + sizeof(bf16)) + staged + act_bytes_ + 2 * sizeof(kc::IndexStatus) + optimizer +
           m.base_bytes + m.q4_bytes + m.deq_bytes;
}

std::string describe(const CudaTrainingMemory& m) {
    const double mib = 1024.0 * 1024.0;
    auto f = [&](size_t b) { return static_cast<double>(b) / mib; };
    return fmt::format("{:.1f} MiB: base {:.1f}, params {:.1f}, grads {:.1f}, optimizer {:.1f}, activations {:.1f} (MiB)",
                       f(m.total()), f(m.base), f(m.params), f(m.grads), f(m.optimizer), f(m.activations));
}

size_t CudaHybridLM::device_used_bytes() {
    size_t free = 0, total = 0;
    check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    return total - free;
}

// Every activation and scratch buffer of a (B, T) step, sized up front and carved out of one
// allocation.
namespace {

// Activation recompute: layer d uses the saved activations of layer s (the norms' and MLP's, or
// the mixer's, which s and d then have of the same kind).
void share_common(CudaHybridLM::Impl::Layer& d, const CudaHybridLM::Impl::Layer& s) {
    d.ln1 = s.ln1, d.mean1 = s.mean1, d.rstd1 = s.rstd1, d.mid = s.mid, d.ln2 = s.ln2, d.mean2 = s.mean2;
    d.rstd2 = s.rstd2, d.h = s.h, d.a = s.a;
}
void share_mixer(CudaHybridLM::Impl::Layer& d, const CudaHybridLM::Impl::Layer& s) {
    d.zxbcdt = s.zxbcdt, d.xbc = s.xbc, d.y = s.y, d.yn = s.yn, d.g_rstd = s.g_rstd, d.states = s.states;
    d.xz = s.xz, d.xc = s.xc, d.xdbl = s.xdbl, d.dt = s.dt, d.dt_raw = s.dt_raw, d.dbc_in = s.dbc_in, d.bc = s.bc;
    d.dbc_rstd = s.dbc_rstd, d.qkv = s.qkv, d.o = s.o, d.lse = s.lse;
}

}  // namespace

size_t CudaHybridLM::layout_activations(const ModelConfig& cfg, Impl& m, int64_t B, int64_t T, char* base,
                                        bool recompute) {
    const int64_t N = B * T, D = cfg.d_model, V = cfg.vocab_size, L = cfg.n_layers;
    const bool has_mlp = cfg.mlp.kind != MlpKind::None, layernorm = cfg.norm == NormKind::LayerNorm;
    const int64_t F = cfg.mlp.d_ff, U = mlp_up_width(cfg), K = cfg.mamba.d_conv;
    const int64_t Din = cfg.mamba_d_inner(), S = cfg.mamba.d_state, GS = cfg.mamba.n_groups * S;
    const int64_t W2 = 2 * Din + 2 * GS + cfg.mamba_n_heads(), C2 = Din + 2 * GS;  // Mamba-2 widths
    const int64_t R = cfg.mamba_dt_rank(), Wx = R + 2 * S;                         // Mamba-1
    const bool bc_norm = cfg.mamba.version == 1 && cfg.mamba.dt_bc_norm;
    const int64_t Hq = cfg.attention.n_heads, Dh = cfg.attn_head_dim();
    const int64_t Wq = (Hq + 2 * cfg.attn_kv_heads()) * Dh;
    m.ssd_chunk = cuda_training_ssd_chunk(cfg);
    const int64_t H2 = cfg.mamba_n_heads(), P2 = cfg.mamba.head_dim, G2 = cfg.mamba.n_groups;
    const kc::SsdDims ssd_dims{B, T, H2, P2, G2, S, m.ssd_chunk};
    const ops::ScanDims scan_dims{B, T, Din, S};

    // Backward scratch per sublayer kind; the shared buffers take the largest.
    std::array<int64_t, 8> scratch{};
    auto need = [&](std::array<int64_t, 8> n) {
        for (size_t i = 0; i < n.size(); ++i) scratch[i] = std::max(scratch[i], n[i]);
    };
    size_t ws =
        std::max(kc::norm_backward_workspace_bytes(N, D), kc::embedding_backward_workspace_bytes(N, V));
    for (const Impl::Layer& layer : m.layers) {
        if (layer.kind == LayerKind::Attention) {
            need({N * Hq * Dh, N * Wq, 0, 0, 0, 0, 0, 0});  // g_o, g_qkv
        } else if (cfg.mamba.version == 1) {
            // g_y, g_dt_raw, g_xdbl, g_xc, g_xz, g_dt; with dt_bc_norm also g_bc, g_norm_in
            need({N * Din, N * Din, N * Wx, N * Din, N * 2 * Din, N * R, bc_norm ? N * 2 * S : 0,
                  bc_norm ? N * std::max(R, S) : 0});
            ws = std::max({ws, kc::selective_scan_backward_workspace_bytes(scan_dims),
                           kc::conv1d_causal_backward_workspace_bytes(B, T, Din, K)});
            if (bc_norm)
                ws = std::max(
                    {ws, kc::norm_backward_workspace_bytes(N, R), kc::norm_backward_workspace_bytes(N, S)});
        } else {
            need({N * Din, N * Din, N * Din, N * C2, N * W2, 0, 0, 0});  // g_yn, g_y, g_z, g_xbc, g_zxbcdt
            ws = std::max({ws, kc::norm_backward_workspace_bytes(N, Din),
                           kc::ssd_backward_workspace_bytes(ssd_dims),
                           kc::ssd_forward_workspace_bytes(ssd_dims),
                           kc::conv1d_causal_backward_workspace_bytes(B, T, C2, K)});
        }
    }
    if (has_mlp) need({N * F, N * U, 0, 0, 0, 0, 0, 0});  // g_a, g_h
    m.ws_bytes = ws;

    auto place = [&](Planner& p) {
        p.take(m.ids, N);
        p.take(m.targets, N);
        p.take(m.res, (L + 1) * N * D);
        p.take(m.hf, N * D);
        p.take(m.final_mean, layernorm ? N : 0);
        p.take(m.final_rstd, N);
        p.take(m.logits, N * V);
        p.take(m.losses, N);
        p.take(m.lse, N);
        p.take(m.tmp, N * D);
        p.take(m.g_res, N * D);
        p.take(m.g_ln, N * D);
        for (size_t i = 0; i < scratch.size(); ++i) p.take(m.scratch[i], scratch[i]);
        char* w = nullptr;
        p.take(w, static_cast<int64_t>(ws));
        m.ws = w;
        p.take(m.lora_u, N * m.lora_r);
        p.take(m.lora_gu, N * m.lora_r);
        const Impl::Layer* first = nullptr;  // recompute: the layer whose norm and MLP buffers all share
        std::map<LayerKind, const Impl::Layer*> of_kind;  // and the first of each mixer kind
        for (Impl::Layer& layer : m.layers) {
            if (recompute && first) {
                share_common(layer, *first);
            } else {
                if (!first) first = &layer;
                p.take(layer.ln1, N * D);
                p.take(layer.mean1, layernorm ? N : 0);
                p.take(layer.rstd1, N);
                if (has_mlp) {
                    p.take(layer.mid, N * D);
                    p.take(layer.ln2, N * D);
                    p.take(layer.mean2, layernorm ? N : 0);
                    p.take(layer.rstd2, N);
                    p.take(layer.h, N * U);
                    p.take(layer.a, N * F);
                }
            }
            if (recompute && of_kind.count(layer.kind)) {
                share_mixer(layer, *of_kind[layer.kind]);
                continue;
            }
            of_kind[layer.kind] = &layer;
            if (layer.kind == LayerKind::Attention) {
                p.take(layer.qkv, N * Wq);
                p.take(layer.o, N * Hq * Dh);
                p.take(layer.lse, B * Hq * T);
            } else if (cfg.mamba.version == 1) {
                p.take(layer.xz, N * 2 * Din);
                p.take(layer.xc, N * Din);
                p.take(layer.xdbl, N * Wx);
                p.take(layer.dt, N * R);
                p.take(layer.dt_raw, N * Din);
                p.take(layer.y, N * Din);
                p.take(layer.states, static_cast<int64_t>(kc::selective_scan_chunk_states_size(scan_dims)));
                if (bc_norm) {
                    p.take(layer.dbc_in, N * Wx);
                    p.take(layer.bc, N * 2 * S);
                    p.take(layer.dbc_rstd, 3 * N);
                }
            } else {
                p.take(layer.zxbcdt, N * W2);
                p.take(layer.xbc, N * C2);
                p.take(layer.y, N * Din);
                p.take(layer.yn, N * Din);
                p.take(layer.g_rstd, N * cfg.mamba_norm_groups());
                p.take(layer.states, kc::ssd_chunk_states_numel(ssd_dims));
            }
        }
    };
    Planner planner{base};
    place(planner);
    return planner.offset;
}

void CudaHybridLM::plan(int64_t B, int64_t T) {
    if (B == B_ && T == T_ && impl_->act && planned_recompute_ == recompute_) return;
    Impl& m = *impl_;
    if (m.act) check(cudaFree(m.act), "cudaFree");
    m.act = nullptr;
    B_ = B;
    T_ = T;
    planned_recompute_ = recompute_;
    act_bytes_ = layout_activations(cfg_, m, B, T, nullptr, recompute_);
    malloc_into(reinterpret_cast<void**>(&m.act), act_bytes_);
    layout_activations(cfg_, m, B, T, m.act, recompute_);
}

namespace {

// Bytes of a 4-bit weight of n values as the LoRA constructor uploads it (blocksize 64, double
// quantization): codes, 8-bit absmax, nested fp32 absmax and the offset.
size_t bnb4_double_quant_bytes(int64_t n) {
    const int64_t blocks = (n + quant::kBnbDefaultBlocksize - 1) / quant::kBnbDefaultBlocksize;
    return static_cast<size_t>((n + 1) / 2 + blocks + 4 * ((blocks + 255) / 256) + 4);
}

}  // namespace

CudaTrainingMemory CudaHybridLM::training_memory(const ModelConfig& cfg, int64_t B, int64_t T,
                                                 const CudaMemoryPlan& plan) {
    CudaTrainingMemory mem;
    HybridLM<float> layout(cfg, /*allocate=*/false);
    const Parameters<float>& bp = layout.params();
    Impl probe;  // the plan's arithmetic only: no allocation, every pointer stays null
    for (LayerKind kind : cfg.layers) {
        Impl::Layer L;
        L.kind = kind;
        probe.layers.push_back(L);
    }
    const size_t status = 2 * sizeof(kc::IndexStatus);
    if (plan.lora_r <= 0) {
        const auto n = static_cast<size_t>(bp.total());
        mem.params = n * (sizeof(float) + sizeof(bf16)) + status;
        const std::vector<bool> staged = staged_params(cfg, bp.specs());
        size_t staged_n = 0, ranges = 0;  // the staged buffer and its table, as the constructor allocates
        for (size_t i = 0; i < staged.size(); ++i)
            if (staged[i]) {
                staged_n += static_cast<size_t>(staged_slot(bp.specs()[i].numel));
                ++ranges;
            }
        mem.grads =
            n * sizeof(float) + staged_n * sizeof(bf16) + ranges * sizeof(cuda_model_detail::StagedRange);
        mem.optimizer = n * (2 * sizeof(float) + 1);
    } else {
        LoraConfig lc;
        lc.r = plan.lora_r;
        set_lora_targets(lc, plan.lora_targets);
        LoraModel<float> lora(layout, lora_naming_arch(cfg, "mamba_slm"));
        const auto n = static_cast<size_t>(lora.add_adapter("plan", lc, 0).params().total());
        mem.params = n * (sizeof(float) + sizeof(bf16)) + status;
        mem.grads = n * sizeof(float);
        mem.optimizer = n * (2 * sizeof(float) + 1);
        probe.lora_r = plan.lora_r;
        std::vector<bool> q4(bp.specs().size(), false);
        if (plan.qlora)
            for (size_t i : quant::qat_weights(bp)) q4[i] = true;
        int64_t largest = 0;
        for (size_t i = 0; i < bp.specs().size(); ++i) {
            const int64_t numel = bp.specs()[i].numel;
            if (q4[i]) {
                mem.base += bnb4_double_quant_bytes(numel);
                largest = std::max(largest, numel);
            } else {
                mem.base += sizeof(bf16) * static_cast<size_t>(base_slot(numel));
            }
        }
        mem.base += sizeof(bf16) * static_cast<size_t>(largest);  // the dequantization scratch
    }
    mem.activations = layout_activations(cfg, probe, B, T, nullptr, plan.recompute);
    return mem;
}

namespace {

struct Ctx {
    const ModelConfig& cfg;
    CudaHybridLM::Impl& m;
    int64_t B, T, N;
    void mark(const char* stage, KernelFamily family) const { m.timer.mark(stage, family); }
};

// dx += (Accumulate) or = (Overwrite: a dx buffer nothing else writes, which then needs no zeroing
// and takes cuBLASLt's bf16 output directly) dout · W.
enum class Dx { Accumulate, Overwrite };

// The weight a product reads: its bf16 copy, or (QLoRA) its 4-bit pieces dequantized into the
// scratch that every weight shares (the next product overwrites it; the stream orders them).
const bf16* base_weight(const Ctx& c, const CudaParam& w) {
    if (!w.proj || w.proj->pieces.empty()) return w.w;
    for (const CudaProj::Piece& p : w.proj->pieces) kc::bnb4_dequantize_bf16(c.m.deq + p.offset, p.t);
    return c.m.deq;
}

// The LoRA modules of projection w: out (N, O), rows [row_begin, row_begin + rows) of each
// module's += scale · u · Bᵀ with u (N, r) = x (N, I) · Aᵀ.
void lora_forward(const Ctx& c, const CudaParam& w, bf16* out, const bf16* x, int64_t N, int64_t I, int64_t O) {
    if (!w.proj) return;
    for (const CudaLoraModule& l : w.proj->lora) {
        kc::linear_forward(c.m.lora_u, x, l.A, static_cast<const bf16*>(nullptr), N, I, l.r);
        cuda_model_detail::gemm_bf16(false, true, N, l.rows, l.r, l.scale, c.m.lora_u, l.r, l.B, l.r, 1.0f,
                                     out + l.row_begin, O, false);
    }
}

// Their backward, g = dout's columns of the module (N, rows): u = x·Aᵀ recomputed, gu (N, r) =
// scale · g · B; dB += scale · gᵀ · u and dA += guᵀ · x in fp32; dx (N, I) += gu · A.
void lora_backward(const Ctx& c, const CudaParam& w, bf16* dx, const bf16* dout, const bf16* x, int64_t N,
                   int64_t I, int64_t O) {
    if (!w.proj) return;
    using cuda_model_detail::gemm_bf16;
    bf16 *u = c.m.lora_u, *gu = c.m.lora_gu;
    for (const CudaLoraModule& l : w.proj->lora) {
        const bf16* g = dout + l.row_begin;  // row stride O
        kc::linear_forward(u, x, l.A, static_cast<const bf16*>(nullptr), N, I, l.r);
        gemm_bf16(false, false, N, l.r, l.rows, l.scale, g, O, l.B, l.r, 0.0f, gu, l.r, false);
        gemm_bf16(true, false, l.rows, l.r, N, l.scale, g, O, u, l.r, 1.0f, l.gB, l.r, true);
        gemm_bf16(true, false, l.r, I, N, 1.0f, gu, l.r, x, I, 1.0f, l.gA, I, true);
        gemm_bf16(false, false, N, I, l.r, 1.0f, gu, l.r, l.A, I, 1.0f, dx, I, false);
    }
}

// A projection: out (N, O) = x (N, I) · Wᵀ + b, plus its LoRA modules.
void proj_forward(const Ctx& c, bf16* out, const bf16* x, const CudaParam& w, const CudaParam& b, int64_t N,
                  int64_t I, int64_t O) {
    kc::linear_forward(out, x, base_weight(c, w), b.w, N, I, O);
    lora_forward(c, w, out, x, N, I, O);
}

// A projection's backward: dx += dout · W (or =, by mode), plus its LoRA modules'; the weight's
// gradient (when it has one: not in a frozen base) accumulates in fp32 straight into the fp32
// gradients (no bf16 staging); the bias's (if any) is staged.
void linear_backward(const Ctx& c, bf16* dx, const CudaParam& w, const CudaParam& b, const bf16* dout,
                     const bf16* x, int64_t N, int64_t I, int64_t O, Dx mode = Dx::Accumulate) {
    const bf16* W = base_weight(c, w);
    if (mode == Dx::Overwrite) {
        kc::linear_backward_dx(dx, dout, W, N, I, O);
        if (b.g)
            kc::linear_backward(static_cast<bf16*>(nullptr), static_cast<bf16*>(nullptr), b.g, dout, x, W, N, I, O);
    } else {
        kc::linear_backward(dx, static_cast<bf16*>(nullptr), b.g, dout, x, W, N, I, O);
    }
    if (w.g32) kc::linear_backward_dW_f32(w.g32, dout, x, N, I, O);
    lora_backward(c, w, dx, dout, x, N, I, O);
}

void norm_forward(const Ctx& c, const CudaNormParams& p, bf16* out, float* mean, float* rstd, const bf16* x) {
    const auto eps = static_cast<float>(c.cfg.norm_eps);
    if (c.cfg.norm == NormKind::RMSNorm)
        kc::rmsnorm_forward(out, rstd, x, p.w.w, c.N, c.cfg.d_model, eps);
    else
        kc::layernorm_forward(out, mean, rstd, x, p.w.w, p.b.w, c.N, c.cfg.d_model, eps);
}

// dx += norm's input gradient; the weight (and bias) gradients go to the staged buffer.
void norm_backward(const Ctx& c, const CudaNormParams& p, bf16* dx, const bf16* dout, const bf16* x,
                   const float* mean, const float* rstd) {
    if (c.cfg.norm == NormKind::RMSNorm)
        kc::rmsnorm_backward(dx, p.w.g, c.m.ws, dout, x, p.w.w, rstd, c.N, c.cfg.d_model);
    else
        kc::layernorm_backward(dx, p.w.g, p.b.g, c.m.ws, dout, x, p.w.w, mean, rstd, c.N, c.cfg.d_model);
}

kc::SsdDims ssd_dims(const Ctx& c) {
    return {c.B,
            c.T,
            c.cfg.mamba_n_heads(),
            c.cfg.mamba.head_dim,
            c.cfg.mamba.n_groups,
            c.cfg.mamba.d_state,
            c.m.ssd_chunk};
}

kc::SsdInputs<bf16> ssd_inputs(const Ctx& c, const CudaHybridLM::Impl::Layer& L) {
    // The SSD reads x, B, C from the conv output [x | B | C] and dt from the tail of in_proj's.
    const int64_t Din = c.cfg.mamba_d_inner(), GS = c.cfg.mamba.n_groups * c.cfg.mamba.d_state;
    const int64_t C = Din + 2 * GS, W = 2 * Din + 2 * GS + c.cfg.mamba_n_heads();
    kc::SsdInputs<bf16> in{L.xbc,       C, L.zxbcdt + Din + C, W, L.dt_bias.w, L.A_log.w,
                           L.xbc + Din, C, L.xbc + Din + GS,   C, L.D.w};
    in.dt_min = static_cast<float>(c.cfg.mamba.dt_limit_min);
    in.dt_max = static_cast<float>(c.cfg.mamba.dt_limit_max);
    return in;
}

void mamba2_forward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* out) {
    const int64_t N = c.N, D = c.cfg.d_model, Din = c.cfg.mamba_d_inner();
    const int64_t GS = c.cfg.mamba.n_groups * c.cfg.mamba.d_state, C = Din + 2 * GS;
    const int64_t W = 2 * Din + 2 * GS + c.cfg.mamba_n_heads();
    proj_forward(c, L.zxbcdt, L.ln1, L.in_w, L.in_b, N, D, W);  // (N, D) => (N, W) = [z | xBC | dt]
    c.mark("mamba proj fwd", KernelFamily::Gemm);
    kc::conv1d_causal_forward(L.xbc, static_cast<bf16*>(nullptr), L.zxbcdt + Din, W, L.conv_w.w, L.conv_b.w,
                              c.B, c.T, C, c.cfg.mamba.d_conv, true);
    c.mark("mamba conv fwd", KernelFamily::Conv);
    kc::ssd_forward(L.y, nullptr, ssd_inputs(c, L), nullptr, ssd_dims(c), L.states, c.m.ws);
    c.mark("mamba ssd fwd", KernelFamily::Ssd);
    // z read in place: the first Din columns of [z | xBC | dt].
    kc::gated_rmsnorm_forward_strided_z(L.yn, L.g_rstd, L.y, L.zxbcdt, W, L.gnorm_w.w, N, Din,
                                        c.cfg.mamba_norm_groups(), static_cast<float>(c.cfg.norm_eps));
    c.mark("mamba gate fwd", KernelFamily::Norm);
    proj_forward(c, out, L.yn, L.out_w, L.out_b, N, Din, D);  // (N, Din) => (N, D)
    c.mark("mamba proj fwd", KernelFamily::Gemm);
}

void mamba2_backward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* dx, const bf16* dout) {
    const int64_t N = c.N, D = c.cfg.d_model, Din = c.cfg.mamba_d_inner();
    const int64_t GS = c.cfg.mamba.n_groups * c.cfg.mamba.d_state, C = Din + 2 * GS;
    const int64_t W = 2 * Din + 2 * GS + c.cfg.mamba_n_heads();
    auto& s = c.m.scratch;
    bf16 *g_yn = s[0], *g_y = s[1], *g_xbc = s[3], *g_zxbcdt = s[4];
    // Each activation gradient below has one writer, which overwrites it: no buffer is zeroed first.
    // g_zxbcdt's columns: z (the gated norm's dz), xBC (the conv's dx), dt (the SSD's ddt).
    linear_backward(c, g_yn, L.out_w, L.out_b, dout, L.yn, N, Din, D, Dx::Overwrite);
    c.mark("mamba proj bwd", KernelFamily::Gemm);
    kc::gated_rmsnorm_backward_strided_z(g_y, g_zxbcdt, W, L.gnorm_w.g, c.m.ws, g_yn, L.y, L.zxbcdt, W,
                                         L.gnorm_w.w, L.g_rstd, N, Din, c.cfg.mamba_norm_groups(), nullptr,
                                         kc::GradStore::Overwrite);
    c.mark("mamba gate bwd", KernelFamily::Norm);
    const kc::SsdGrads<bf16> grads{g_xbc,       g_zxbcdt + Din + C, L.dt_bias.g, L.A_log.g,
                                   g_xbc + Din, g_xbc + Din + GS,   L.D.g,       true};
    kc::ssd_backward(grads, g_y, ssd_inputs(c, L), nullptr, L.states, ssd_dims(c), c.m.ws);
    c.mark("mamba ssd bwd", KernelFamily::Ssd);
    kc::conv1d_causal_backward(g_zxbcdt + Din, L.conv_w.g, L.conv_b.g, g_xbc, L.zxbcdt + Din, W, L.conv_w.w,
                               L.conv_b.w, c.B, c.T, C, c.cfg.mamba.d_conv, true, c.m.ws, c.m.ws_bytes,
                               nullptr, kc::GradStore::Overwrite);
    c.mark("mamba conv bwd", KernelFamily::Conv);
    linear_backward(c, dx, L.in_w, L.in_b, g_zxbcdt, L.ln1, N, D, W, Dx::Overwrite);
    c.mark("mamba proj bwd", KernelFamily::Gemm);
}

// The scan reads B and C from x_proj's output [dt | B | C], or, with dt_bc_norm, from the normed
// (N, S) blocks of L.bc.
ops::SelectiveScanInputs<bf16> scan_inputs(const Ctx& c, const CudaHybridLM::Impl::Layer& L) {
    const int64_t N = c.N, Din = c.cfg.mamba_d_inner(), S = c.cfg.mamba.d_state, R = c.cfg.mamba_dt_rank(),
                  W = R + 2 * S;
    if (c.cfg.mamba.dt_bc_norm)
        return {L.xc, Din,          L.dt_raw, Din,   L.dtp_b.w,  L.A_log.w, L.bc,
                S,    L.bc + N * S, S,        L.D.w, L.xz + Din, 2 * Din};
    return {L.xc,           Din, L.dt_raw, Din,        L.dtp_b.w, L.A_log.w, L.xdbl + R, W,
            L.xdbl + R + S, W,   L.D.w,    L.xz + Din, 2 * Din};
}

// Mamba-1 dt_bc_norm (Jamba): dt, B and C, the column blocks [0, R), [R, R + S), [R + S, W) of
// x_proj's output, each through its own RMSNorm. Block i of L.dbc_in (the norm's input, gathered
// contiguous) starts at N · start; its output is L.dt, L.bc or L.bc + N·S.
struct DtBcNorm {
    int64_t start, width;
    const CudaParam* w;
    bf16* in;
    bf16* out;
    float* rstd;
};

std::array<DtBcNorm, 3> dt_bc_norms(const Ctx& c, CudaHybridLM::Impl::Layer& L) {
    const int64_t N = c.N, S = c.cfg.mamba.d_state, R = c.cfg.mamba_dt_rank();
    return {DtBcNorm{0, R, &L.dt_norm_w, L.dbc_in, L.dt, L.dbc_rstd},
            DtBcNorm{R, S, &L.B_norm_w, L.dbc_in + N * R, L.bc, L.dbc_rstd + N},
            DtBcNorm{R + S, S, &L.C_norm_w, L.dbc_in + N * (R + S), L.bc + N * S, L.dbc_rstd + 2 * N}};
}

void mamba1_forward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* out) {
    const int64_t N = c.N, D = c.cfg.d_model, Din = c.cfg.mamba_d_inner(), S = c.cfg.mamba.d_state;
    const int64_t R = c.cfg.mamba_dt_rank(), W = R + 2 * S;
    proj_forward(c, L.xz, L.ln1, L.in_w, L.in_b, N, D, 2 * Din);  // (N, D) => (N, 2·Din) = [x | z]
    c.mark("mamba proj fwd", KernelFamily::Gemm);
    kc::conv1d_causal_forward(L.xc, static_cast<bf16*>(nullptr), L.xz, 2 * Din, L.conv_w.w, L.conv_b.w, c.B,
                              c.T, Din, c.cfg.mamba.d_conv, true);
    c.mark("mamba conv fwd", KernelFamily::Conv);
    proj_forward(c, L.xdbl, L.xc, L.x_w, CudaParam{}, N, Din,
                       W);  // => [dt | B | C]
    c.mark("mamba proj fwd", KernelFamily::Gemm);
    if (c.cfg.mamba.dt_bc_norm) {
        for (const DtBcNorm& n : dt_bc_norms(c, L)) {  // the norms need contiguous rows: gather first
            copy_cols(n.in, n.width, L.xdbl + n.start, W, N, n.width);
            c.mark("mamba dt fwd", KernelFamily::Elementwise);
            kc::rmsnorm_forward(n.out, n.rstd, n.in, n.w->w, N, n.width, static_cast<float>(c.cfg.norm_eps));
            c.mark("mamba dt fwd", KernelFamily::Norm);
        }
    } else {
        copy_cols(L.dt, R, L.xdbl, W, N, R);
        c.mark("mamba dt fwd", KernelFamily::Elementwise);
    }
    // dt_proj without its bias: the scan adds it (in fp32) before the softplus.
    proj_forward(c, L.dt_raw, L.dt, L.dtp_w, CudaParam{}, N, R, Din);
    c.mark("mamba proj fwd", KernelFamily::Gemm);
    kc::selective_scan_forward(L.y, nullptr, scan_inputs(c, L), nullptr, ops::ScanDims{c.B, c.T, Din, S},
                               L.states);
    c.mark("mamba scan fwd", KernelFamily::Ssd);
    proj_forward(c, out, L.y, L.out_w, L.out_b, N, Din, D);  // (N, Din) => (N, D)
    c.mark("mamba proj fwd", KernelFamily::Gemm);
}

void mamba1_backward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* dx, const bf16* dout) {
    const int64_t N = c.N, D = c.cfg.d_model, Din = c.cfg.mamba_d_inner(), S = c.cfg.mamba.d_state;
    const int64_t R = c.cfg.mamba_dt_rank(), W = R + 2 * S;
    auto& s = c.m.scratch;
    const bool bc_norm = c.cfg.mamba.dt_bc_norm;
    bf16 *g_y = s[0], *g_dt_raw = s[1], *g_xdbl = s[2], *g_xc = s[3], *g_xz = s[4], *g_dt = s[5];
    bf16 *g_bc = s[6], *g_norm_in = s[7];  // dt_bc_norm: (N, 2S) as L.bc; (N, max(R, S))
    for (auto [p, n] : std::initializer_list<std::pair<bf16*, int64_t>>{{g_dt_raw, N * Din},
                                                                        {g_xdbl, N * W},
                                                                        {g_xc, N * Din},
                                                                        {g_xz, N * 2 * Din},
                                                                        {g_bc, bc_norm ? N * 2 * S : 0}})
        zero(p, sizeof(bf16) * n);
    c.mark("mamba zero bwd", KernelFamily::Elementwise);
    linear_backward(c, g_y, L.out_w, L.out_b, dout, L.y, N, Din, D, Dx::Overwrite);
    c.mark("mamba proj bwd", KernelFamily::Gemm);
    // dB and dC laid out like the scan's B and C (scan_inputs).
    bf16* g_B = bc_norm ? g_bc : g_xdbl + R;
    bf16* g_C = bc_norm ? g_bc + N * S : g_xdbl + R + S;
    const ops::SelectiveScanGrads<bf16> grads{g_xc, g_dt_raw, L.dtp_b.g, L.A_log.g,
                                              g_B,  g_C,      L.D.g,     g_xz + Din};
    const ops::ScanDims dims{c.B, c.T, Din, S};
    kc::selective_scan_backward(grads, g_y, scan_inputs(c, L), L.states, dims, c.m.ws, c.m.ws_bytes);
    c.mark("mamba scan bwd", KernelFamily::Ssd);
    linear_backward(c, g_dt, L.dtp_w, CudaParam{}, g_dt_raw, L.dt, N, R, Din, Dx::Overwrite);
    c.mark("mamba proj bwd", KernelFamily::Gemm);
    if (bc_norm) {
        // Each norm's input gradient fills its columns of g_xdbl, which receive nothing else.
        const std::array<const bf16*, 3> g_out{g_dt, g_bc, g_bc + N * S};  // as the norms' outputs
        const std::array<DtBcNorm, 3> norms = dt_bc_norms(c, L);
        for (size_t i = 0; i < norms.size(); ++i) {
            const DtBcNorm& n = norms[i];
            zero(g_norm_in, sizeof(bf16) * N * n.width);
            c.mark("mamba dt bwd", KernelFamily::Elementwise);
            kc::rmsnorm_backward(g_norm_in, n.w->g, c.m.ws, g_out[i], n.in, n.w->w, n.rstd, N, n.width);
            c.mark("mamba dt bwd", KernelFamily::Norm);
            copy_cols(g_xdbl + n.start, W, g_norm_in, n.width, N, n.width);
            c.mark("mamba dt bwd", KernelFamily::Elementwise);
        }
    } else {
        copy_cols(g_xdbl, W, g_dt, R, N, R);  // dt's columns receive nothing else
        c.mark("mamba dt bwd", KernelFamily::Elementwise);
    }
    linear_backward(c, g_xc, L.x_w, CudaParam{}, g_xdbl, L.xc, N, Din, W);
    c.mark("mamba proj bwd", KernelFamily::Gemm);
    kc::conv1d_causal_backward(g_xz, L.conv_w.g, L.conv_b.g, g_xc, L.xz, 2 * Din, L.conv_w.w, L.conv_b.w, c.B,
                               c.T, Din, c.cfg.mamba.d_conv, true, c.m.ws, c.m.ws_bytes);
    c.mark("mamba conv bwd", KernelFamily::Conv);
    linear_backward(c, dx, L.in_w, L.in_b, g_xz, L.ln1, N, D, 2 * Din, Dx::Overwrite);
    c.mark("mamba proj bwd", KernelFamily::Gemm);
}

kc::AttentionOptions attention_options(const ModelConfig& cfg) {
    kc::AttentionOptions opt{};
    opt.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg.attn_head_dim())));
    opt.window = cfg.attention.sliding_window;
    opt.alibi = cfg.attention.position == PositionKind::ALiBi;
    return opt;
}

void attention_forward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* out) {
    const ModelConfig& cfg = c.cfg;
    const int64_t N = c.N, D = cfg.d_model, Hq = cfg.attention.n_heads, Hkv = cfg.attn_kv_heads();
    const int64_t Dh = cfg.attn_head_dim(), W = (Hq + 2 * Hkv) * Dh;
    proj_forward(c, L.qkv, L.ln1, L.qkv_w, L.qkv_b, N, D, W);  // (N, D) => (N, (Hq + 2·Hkv)·Dh)
    c.mark("attn proj fwd", KernelFamily::Gemm);
    bf16* q = L.qkv;
    bf16* k = q + Hq * Dh;
    bf16* v = k + Hkv * Dh;
    if (cfg.attention.position == PositionKind::RoPE) {
        // q's heads and k's follow each other in a row: one call rotates both.
        kc::rope_apply(q, W, c.B, c.T, Hq + Hkv, Dh, cfg.attn_rotary_dim(), cfg.attention.rope_theta, 0,
                       false);
        c.mark("attn rope fwd", KernelFamily::Elementwise);
    }
    kc::attention_forward(L.o, L.lse, q, W, k, W, v, W, ops::AttentionDims{c.B, c.T, Hq, Hkv, Dh},
                          attention_options(cfg));
    c.mark("attn fwd", KernelFamily::Attention);
    proj_forward(c, out, L.o, L.o_w, L.o_b, N, Hq * Dh, D);
    c.mark("attn proj fwd", KernelFamily::Gemm);
}

void attention_backward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* dx, const bf16* dout) {
    const ModelConfig& cfg = c.cfg;
    const int64_t N = c.N, D = cfg.d_model, Hq = cfg.attention.n_heads, Hkv = cfg.attn_kv_heads();
    const int64_t Dh = cfg.attn_head_dim(), W = (Hq + 2 * Hkv) * Dh;
    bf16 *g_o = c.m.scratch[0], *g_qkv = c.m.scratch[1];
    linear_backward(c, g_o, L.o_w, L.o_b, dout, L.o, N, Hq * Dh, D, Dx::Overwrite);
    c.mark("attn proj bwd", KernelFamily::Gemm);
    const bf16* q = L.qkv;
    const bf16* k = q + Hq * Dh;
    const bf16* v = k + Hkv * Dh;
    bf16* dq = g_qkv;
    bf16* dk = dq + Hq * Dh;
    bf16* dv = dk + Hkv * Dh;
    kc::AttentionOptions opt = attention_options(cfg);
    opt.accumulate = false;  // g_qkv is written whole here: no zeroing, no read of it
    kc::attention_backward(dq, dk, dv, g_o, L.o, L.lse, q, W, k, W, v, W,
                           ops::AttentionDims{c.B, c.T, Hq, Hkv, Dh}, opt);
    c.mark("attn bwd", KernelFamily::Attention);
    if (cfg.attention.position == PositionKind::RoPE) {
        kc::rope_apply(dq, W, c.B, c.T, Hq + Hkv, Dh, cfg.attn_rotary_dim(), cfg.attention.rope_theta, 0,
                       true);
        c.mark("attn rope bwd", KernelFamily::Elementwise);
    }
    linear_backward(c, dx, L.qkv_w, L.qkv_b, g_qkv, L.ln1, N, D, W, Dx::Overwrite);
    c.mark("attn proj bwd", KernelFamily::Gemm);
}

void mixer_forward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* out) {
    if (L.kind == LayerKind::Attention)
        attention_forward(c, L, out);
    else if (c.cfg.mamba.version == 1)
        mamba1_forward(c, L, out);
    else
        mamba2_forward(c, L, out);
}

void mixer_backward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* dx, const bf16* dout) {
    if (L.kind == LayerKind::Attention)
        attention_backward(c, L, dx, dout);
    else if (c.cfg.mamba.version == 1)
        mamba1_backward(c, L, dx, dout);
    else
        mamba2_backward(c, L, dx, dout);
}

// SwiGLU: (N, D) => gate_up (N, 2F) => a (N, F) => (N, D); a plain MLP (GELU, GELU tanh, ReLU):
// (N, D) => fc1 h (N, F) => a (N, F) => fc2 (N, D). h and a are saved for backward.
void mlp_forward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* out) {
    const int64_t N = c.N, D = c.cfg.d_model, F = c.cfg.mlp.d_ff;
    proj_forward(c, L.h, L.ln2, L.up_w, L.up_b, N, D, mlp_up_width(c.cfg));
    c.mark("mlp fwd", KernelFamily::Gemm);
    switch (c.cfg.mlp.kind) {
        case MlpKind::SwiGLU:
            kc::swiglu_forward(L.a, L.h, N, F);
            break;
        case MlpKind::GELU:
            kc::gelu_forward(L.a, L.h, N * F);
            break;
        case MlpKind::GELUTanh:
            kc::gelu_tanh_forward(L.a, L.h, N * F);
            break;
        case MlpKind::ReLU:
            kc::relu_forward(L.a, L.h, N * F);
            break;
        case MlpKind::None:
            break;
    }
    c.mark("mlp fwd", KernelFamily::Elementwise);
    proj_forward(c, out, L.a, L.down_w, L.down_b, N, F, D);
    c.mark("mlp fwd", KernelFamily::Gemm);
}

void mlp_backward(const Ctx& c, CudaHybridLM::Impl::Layer& L, bf16* dx, const bf16* dout) {
    const int64_t N = c.N, D = c.cfg.d_model, F = c.cfg.mlp.d_ff, U = mlp_up_width(c.cfg);
    bf16 *g_a = c.m.scratch[0], *g_h = c.m.scratch[1];
    if (c.cfg.mlp.kind != MlpKind::SwiGLU) {  // SwiGLU's backward writes g_h whole (overwrite form)
        zero(g_h, sizeof(bf16) * N * U);
        c.mark("mlp bwd", KernelFamily::Elementwise);
    }
    linear_backward(c, g_a, L.down_w, L.down_b, dout, L.a, N, F, D, Dx::Overwrite);
    c.mark("mlp bwd", KernelFamily::Gemm);
    switch (c.cfg.mlp.kind) {
        case MlpKind::SwiGLU:
            kc::swiglu_backward_overwrite(g_h, g_a, L.h, N, F);
            break;
        case MlpKind::GELU:
            kc::gelu_backward(g_h, g_a, L.h, N * F);
            break;
        case MlpKind::GELUTanh:
            kc::gelu_tanh_backward(g_h, g_a, L.h, N * F);
            break;
        case MlpKind::ReLU:
            kc::relu_backward(g_h, g_a, L.h, N * F);
            break;
        case MlpKind::None:
            break;
    }
    c.mark("mlp bwd", KernelFamily::Elementwise);
    linear_backward(c, dx, L.up_w, L.up_b, g_h, L.ln2, N, D, U, Dx::Overwrite);
    c.mark("mlp bwd", KernelFamily::Gemm);
}

// A block boundary: res (N, D) = res_in + delta (a sublayer's output), then out = the norm of res —
// one kernel for RMSNorm (residual_rmsnorm_forward), a copy, an add and the norm for LayerNorm; the
// same bits either way (res rounded to bf16, then normalised as stored).
void residual_norm_forward(const Ctx& c, const CudaNormParams& p, bf16* out, float* mean, float* rstd,
                           bf16* res, const bf16* res_in, const bf16* delta) {
    if (c.cfg.norm == NormKind::RMSNorm) {
        kc::residual_rmsnorm_forward(out, rstd, res, res_in, delta, p.w.w, c.N, c.cfg.d_model,
                                     static_cast<float>(c.cfg.norm_eps));
        return;
    }
    const int64_t ND = c.N * c.cfg.d_model;
    copy(res, res_in, ND);
    kc::axpy(res, delta, ND, 1.0f);
    c.mark("norm+res fwd", KernelFamily::Elementwise);
    norm_forward(c, p, out, mean, rstd, res);
}

// One layer's forward from its input x (N, D): the saved activations of the layer. With in_base, x
// is not formed yet: x = in_base + c.m.tmp (the previous layer's last sublayer output), formed by this
// layer's first norm. Returns the base of the residual leaving the layer — next = base + c.m.tmp —
// which the next norm forms (the next layer's, or the final one); an activation recompute (backward
// re-running a layer, in_base null) ignores it.
const bf16* layer_forward(const Ctx& c, CudaHybridLM::Impl::Layer& layer, bf16* x, const bf16* in_base) {
    bf16* tmp = c.m.tmp;
    if (in_base)
        residual_norm_forward(c, layer.norm, layer.ln1, layer.mean1, layer.rstd1, x, in_base, tmp);
    else
        norm_forward(c, layer.norm, layer.ln1, layer.mean1, layer.rstd1, x);
    c.mark("norm+res fwd", KernelFamily::Norm);
    mixer_forward(c, layer, tmp);
    if (!layer.mid) return x;  // next = x + the mixer's output
    residual_norm_forward(c, layer.mlp_norm, layer.ln2, layer.mean2, layer.rstd2, layer.mid, x, tmp);
    c.mark("norm+res fwd", KernelFamily::Norm);
    mlp_forward(c, layer, tmp);
    return layer.mid;  // next = mid + the MLP's output
}

}  // namespace

float CudaHybridLM::forward(const int32_t* ids, const int32_t* targets, int64_t B, int64_t T,
                            bool backward_follows) {
    MSLM_CHECK(B > 0 && T > 0, "forward: empty batch ({} x {})", B, T);
    MSLM_CHECK(T <= cfg_.max_seq_len, "sequence length {} exceeds the model's max_seq_len {}", T,
               cfg_.max_seq_len);
    plan(B, T);
    Impl& m = *impl_;
    const int64_t N = B * T, D = cfg_.d_model, V = cfg_.vocab_size, L = cfg_.n_layers;
    const Ctx c{cfg_, m, B, T, N};
    has_targets_ = targets != nullptr;
    loss_grad_ready_ = false;
    StageTimer& t = m.timer;
    t.begin();
    check(cudaMemcpy(m.ids, ids, sizeof(int32_t) * N, cudaMemcpyHostToDevice), "upload ids");
    m.host_ids.assign(ids, ids + N);
    if (targets)
        check(cudaMemcpy(m.targets, targets, sizeof(int32_t) * N, cudaMemcpyHostToDevice), "upload targets");
    t.mark("host", KernelFamily::Other);

    kc::embedding_forward(m.res, m.ids, m.embed.w, N, V, D, &m.status[0]);  // (N) => (N, D)
    kc::embedding_check(&m.status[0], V);
    t.mark("embed", KernelFamily::EmbedLoss);
    const bf16* base = nullptr;  // the residual stream leaving layer l − 1 is base + m.tmp, not yet formed
    for (int64_t l = 0; l < L; ++l) base = layer_forward(c, m.layers[l], m.res + l * N * D, base);
    if (base)
        residual_norm_forward(c, m.final_norm, m.hf, m.final_mean, m.final_rstd, m.res + L * N * D, base,
                              m.tmp);
    else
        norm_forward(c, m.final_norm, m.hf, m.final_mean, m.final_rstd, m.res + L * N * D);
    t.mark("norm+res fwd", KernelFamily::Norm);
    proj_forward(c, m.logits, m.hf, m.lm_head, CudaParam{}, N, D, V);  // => (N, V)
    t.mark("head+loss fwd", KernelFamily::Gemm);

    count_ = 0;
    if (!targets) {
        check(cudaDeviceSynchronize(), "forward");
        t.finish("model stages (forward only)", B, T);
        return 0.0f;
    }
    if (backward_follows) {
        // The gradient's scale, 1 / the counted rows, from the host's targets (a target outside the
        // vocabulary throws in the check below, as without the fusion).
        int64_t counted = 0;
        for (int64_t i = 0; i < N; ++i) counted += targets[i] != ops::kIgnoreIndex;
        kc::cross_entropy_forward_backward(m.losses, m.lse, m.logits, m.targets, N, V,
                                           counted ? 1.0f / static_cast<float>(counted) : 0.0f, &m.status[1]);
    } else {
        kc::cross_entropy_forward(m.losses, m.lse, m.logits, m.targets, N, V, &m.status[1]);
    }
    count_ = kc::cross_entropy_check(&m.status[1], V);
    loss_grad_ready_ = backward_follows;
    t.mark("head+loss fwd", KernelFamily::EmbedLoss);
    std::vector<float> losses(static_cast<size_t>(N));
    check(cudaMemcpy(losses.data(), m.losses, sizeof(float) * N, cudaMemcpyDeviceToHost), "download losses");
    double sum = 0;
    for (float x : losses) sum += x;
    return count_ ? static_cast<float>(sum / static_cast<double>(count_)) : 0.0f;
}

void CudaHybridLM::backward() {
    MSLM_CHECK(has_targets_, "backward needs a forward with targets");
    if (count_ == 0) return;
    Impl& m = *impl_;
    const int64_t N = B_ * T_, D = cfg_.d_model, V = cfg_.vocab_size, L = cfg_.n_layers;
    const Ctx c{cfg_, m, B_, T_, N};
    StageTimer& t = m.timer;
    t.mark("host", KernelFamily::Other);  // the loss's download and the caller, between forward and backward
    if (m.staged) zero(m.staged, sizeof(bf16) * static_cast<size_t>(m.staged_total));
    zero(m.g_res, sizeof(bf16) * N * D);
    t.mark("head+loss bwd", KernelFamily::Elementwise);

    bf16* dlogits = m.logits;  // in place: the logits are not needed any more
    if (!loss_grad_ready_)     // else the forward formed it (backward_follows)
        kc::cross_entropy_backward(dlogits, m.logits, m.lse, m.targets, N, V,
                                   1.0f / static_cast<float>(count_), &m.status[1]);
    loss_grad_ready_ = false;
    t.mark("head+loss bwd", KernelFamily::EmbedLoss);
    linear_backward(c, m.g_ln, m.lm_head, CudaParam{}, dlogits, m.hf, N, D, V, Dx::Overwrite);
    t.mark("head+loss bwd", KernelFamily::Gemm);
    norm_backward(c, m.final_norm, m.g_res, m.g_ln, m.res + L * N * D, m.final_mean, m.final_rstd);
    t.mark("norm bwd", KernelFamily::Norm);
    for (int64_t l = L - 1; l >= 0; --l) {
        Impl::Layer& layer = m.layers[l];
        // g_res holds d loss / d (residual leaving layer l); the skip connections pass it through
        // unchanged and each sublayer adds its input gradient on top.
        // Each sublayer's backward ends with its input projection, which overwrites g_ln.
        // Recompute: the layers share one set of saved activations, which hold the last layer's
        // after forward; the others run their forward again first (bit for bit the same values).
        if (planned_recompute_ && l != L - 1) layer_forward(c, layer, m.res + l * N * D, nullptr);
        if (layer.mid) {
            mlp_backward(c, layer, m.g_ln, m.g_res);
            norm_backward(c, layer.mlp_norm, m.g_res, m.g_ln, layer.mid, layer.mean2, layer.rstd2);
            t.mark("norm bwd", KernelFamily::Norm);
        }
        mixer_backward(c, layer, m.g_ln, m.g_res);
        norm_backward(c, layer.norm, m.g_res, m.g_ln, m.res + l * N * D, layer.mean1, layer.rstd1);
        t.mark("norm bwd", KernelFamily::Norm);
    }
    if (!m.frozen) {  // a frozen base's embedding has no gradient, nor do its other staged parameters
        if (cfg_.embed_padding_idx >= 0)  // padding_idx: that row's lookups contribute no gradient (as on the CPU)
            for (int64_t n = 0; n < N; ++n)
                if (m.host_ids[n] == cfg_.embed_padding_idx)
                    check(cudaMemsetAsync(m.g_res + n * D, 0, sizeof(bf16) * D), "zero padding rows");
        kc::embedding_backward(m.embed.g, m.ws, m.g_res, m.ids, N, V, D, &m.status[0]);
        t.mark("embed bwd+grads", KernelFamily::EmbedLoss);
        cuda_model_detail::accumulate_staged(m.grads, m.staged, m.staged_ranges, m.n_staged_ranges,
                                             m.staged_total, nullptr);
        t.mark("embed bwd+grads", KernelFamily::Elementwise);
    }
    check(cudaDeviceSynchronize(), "backward");
    t.finish("model stages", B_, T_);
}

}  // namespace mslm

#endif  // MSLM_HAVE_CUDA
