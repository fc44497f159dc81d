#include "export/onnx.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/model_io.h"

#ifdef MSLM_HAVE_ONNX
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#endif

namespace mslm {

namespace fs = std::filesystem;

#ifndef MSLM_HAVE_ONNX

bool onnx_export_available() { return false; }

OnnxExportSummary export_onnx(const HybridLM<float>&, const std::string& out_dir, const OnnxExportOptions&,
                              const std::string&) {
    fail("{}: not built: ONNX export needs libonnx-dev (scripts/setup.sh installs it); reconfigure and rebuild",
         out_dir);
}

OnnxExportSummary export_onnx(const std::string&, const std::string& out_dir, const OnnxExportOptions&) {
    fail("{}: not built: ONNX export needs libonnx-dev (scripts/setup.sh installs it); reconfigure and rebuild",
         out_dir);
}

#else

bool onnx_export_available() { return true; }

namespace {

constexpr int kOpset = 17;      // LayerNormalization arrived in 17; axes are still attributes of ReduceMean
constexpr int kIrVersion = 8;   // the IR version that goes with opset 17

template <typename... Args>
[[noreturn]] void onnx_fail(fmt::format_string<Args...> format, Args&&... args) {
    fail("cannot export to ONNX: {}", fmt::format(format, std::forward<Args>(args)...));
}

// Appends nodes and initializers to one GraphProto; every value gets a fresh name.
class GraphBuilder {
public:
    // prefix: for the names of a subgraph, which must differ from the outer graph's.
    explicit GraphBuilder(onnx::GraphProto* g, std::string prefix = "") : g_(g), prefix_(std::move(prefix)) {}

    std::string fresh(const std::string& hint) { return fmt::format("{}{}_{}", prefix_, hint, counter_++); }

    // One node with a single output; returns the output's name.
    std::string op(const std::string& type, std::vector<std::string> inputs,
                   const std::vector<onnx::AttributeProto>& attrs = {}, const std::string& out = "") {
        onnx::NodeProto* n = g_->add_node();
        n->set_op_type(type);
        n->set_name(fresh(type));
        for (const std::string& in : inputs) n->add_input(in);
        const std::string name = out.empty() ? fresh(type) : out;
        n->add_output(name);
        for (const auto& a : attrs) *n->add_attribute() = a;
        return name;
    }

    static onnx::AttributeProto attr_i(const std::string& name, int64_t v) {
        onnx::AttributeProto a;
        a.set_name(name);
        a.set_type(onnx::AttributeProto::INT);
        a.set_i(v);
        return a;
    }
    static onnx::AttributeProto attr_f(const std::string& name, float v) {
        onnx::AttributeProto a;
        a.set_name(name);
        a.set_type(onnx::AttributeProto::FLOAT);
        a.set_f(v);
        return a;
    }
    static onnx::AttributeProto attr_ints(const std::string& name, const std::vector<int64_t>& v) {
        onnx::AttributeProto a;
        a.set_name(name);
        a.set_type(onnx::AttributeProto::INTS);
        for (int64_t x : v) a.add_ints(x);
        return a;
    }

    std::string init_f32(const std::string& name, const std::vector<int64_t>& dims, const float* data) {
        onnx::TensorProto* t = g_->add_initializer();
        t->set_name(name);
        t->set_data_type(onnx::TensorProto::FLOAT);
        int64_t n = 1;
        for (int64_t d : dims) {
            t->add_dims(d);
            n *= d;
        }
        t->set_raw_data(data, sizeof(float) * static_cast<size_t>(n));
        return name;
    }
    std::string const_f32(const std::vector<int64_t>& dims, const std::vector<float>& v) {
        return init_f32(fresh("const_f"), dims, v.data());
    }
    std::string scalar_f32(float v) { return const_f32({}, {v}); }
    std::string const_i64(const std::vector<int64_t>& v) {
        onnx::TensorProto* t = g_->add_initializer();
        const std::string name = fresh("const_i");
        t->set_name(name);
        t->set_data_type(onnx::TensorProto::INT64);
        t->add_dims(static_cast<int64_t>(v.size()));
        for (int64_t x : v) t->add_int64_data(x);
        return name;
    }

    std::string scalar_i64(int64_t v) {
        onnx::TensorProto* t = g_->add_initializer();
        const std::string name = fresh("const_i");
        t->set_name(name);
        t->set_data_type(onnx::TensorProto::INT64);
        t->add_int64_data(v);
        return name;
    }
    std::string scalar_bool(bool v) {
        onnx::TensorProto* t = g_->add_initializer();
        const std::string name = fresh("const_b");
        t->set_name(name);
        t->set_data_type(onnx::TensorProto::BOOL);
        t->add_int32_data(v ? 1 : 0);
        return name;
    }

    // Graph inputs / outputs with symbolic (string) or fixed (number) dimensions.
    void io(bool input, const std::string& name, int elem, const std::vector<std::string>& dims) {
        onnx::ValueInfoProto* vi = input ? g_->add_input() : g_->add_output();
        vi->set_name(name);
        auto* tt = vi->mutable_type()->mutable_tensor_type();
        tt->set_elem_type(elem);
        auto* shape = tt->mutable_shape();
        for (const std::string& d : dims) {
            auto* dim = shape->add_dim();
            if (!d.empty() && std::isdigit(static_cast<unsigned char>(d[0])))
                dim->set_dim_value(std::stoll(d));
            else
                dim->set_dim_param(d);
        }
    }

    // Common compositions.
    std::string slice(const std::string& x, int64_t start, int64_t end, int64_t axis) {
        return op("Slice", {x, const_i64({start}), const_i64({end}), const_i64({axis})});
    }
    std::string reshape(const std::string& x, const std::vector<int64_t>& shape) {
        return op("Reshape", {x, const_i64(shape)});
    }
    std::string unsqueeze(const std::string& x, const std::vector<int64_t>& axes) {
        return op("Unsqueeze", {x, const_i64(axes)});
    }
    std::string silu(const std::string& x) { return op("Mul", {x, op("Sigmoid", {x})}); }

private:
    onnx::GraphProto* g_;
    std::string prefix_;
    int64_t counter_ = 0;
};

struct Exporter {
    const HybridLM<float>& m;
    const ModelConfig& cfg;
    GraphBuilder b;
    std::vector<std::string> inputs, outputs;  // public names, in the graph's order
    // Empty: the decoding-step graph. Otherwise the body of the prefill graph's Loop: state inputs /
    // outputs and logits carry this prefix (a subgraph may not shadow the outer graph's names), and
    // the token, position and mask of iteration `iter` are read from the outer graph's inputs.
    std::string pfx;

    const float* value(const std::string& name) const {
        const auto& p = m.params();
        return p.value(p.find(name));
    }
    const ParamSpec& spec(const std::string& name) const {
        const auto& p = m.params();
        return p.specs()[p.find(name)];
    }
    bool has(const std::string& name) const { return m.params().contains(name); }

    // The parameter as an initializer under its native name (each written once).
    std::string weight(const std::string& name) {
        if (!written_.count(name)) {
            const ParamSpec& s = spec(name);
            b.init_f32(name, std::vector<int64_t>(s.shape.begin(), s.shape.end()), value(name));
            written_.insert(name);
        }
        return name;
    }

    // y = x · Wᵀ + bias for x (batch, in): Gemm reads the (out, in) weight as stored.
    std::string linear(const std::string& x, const std::string& prefix) {
        std::vector<std::string> in = {x, weight(prefix + ".weight")};
        if (has(prefix + ".bias")) in.push_back(weight(prefix + ".bias"));
        return b.op("Gemm", in, {GraphBuilder::attr_i("transB", 1)});
    }

    // RMSNorm: x / sqrt(mean(x²) + eps) · w, over the last axis; LayerNorm: opset 17's op.
    std::string norm(const std::string& x, const std::string& prefix) {
        const float eps = static_cast<float>(cfg.norm_eps);
        if (cfg.norm == NormKind::LayerNorm)
            return b.op("LayerNormalization", {x, weight(prefix + ".weight"), weight(prefix + ".bias")},
                        {GraphBuilder::attr_i("axis", -1), GraphBuilder::attr_f("epsilon", eps)});
        return rms(x, weight(prefix + ".weight"), eps);
    }
    std::string rms(const std::string& x, const std::string& w, float eps) {
        const std::string ms = b.op("ReduceMean", {b.op("Mul", {x, x})},
                                    {GraphBuilder::attr_ints("axes", {-1}), GraphBuilder::attr_i("keepdims", 1)});
        const std::string rstd = b.op("Reciprocal", {b.op("Sqrt", {b.op("Add", {ms, b.scalar_f32(eps)})})});
        return b.op("Mul", {b.op("Mul", {x, rstd}), w});
    }

    std::string mlp(const std::string& x, const std::string& prefix) {
        const int64_t F = cfg.mlp.d_ff;
        switch (cfg.mlp.kind) {
        case MlpKind::SwiGLU: {
            const std::string gu = linear(x, prefix + ".gate_up_proj");  // [gate | up]
            const std::string gate = b.slice(gu, 0, F, 1), up = b.slice(gu, F, 2 * F, 1);
            return linear(b.op("Mul", {b.silu(gate), up}), prefix + ".down_proj");
        }
        case MlpKind::GELU: {  // 0.5·x·(1 + erf(x/√2))
            const std::string h = linear(x, prefix + ".fc1");
            const std::string e = b.op("Erf", {b.op("Mul", {h, b.scalar_f32(static_cast<float>(M_SQRT1_2))})});
            const std::string a =
                b.op("Mul", {b.op("Mul", {h, b.scalar_f32(0.5f)}), b.op("Add", {e, b.scalar_f32(1.f)})});
            return linear(a, prefix + ".fc2");
        }
        case MlpKind::GELUTanh: {  // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            const std::string h = linear(x, prefix + ".fc1");
            const std::string x3 = b.op("Mul", {b.op("Mul", {h, h}), h});
            const std::string inner =
                b.op("Mul", {b.op("Add", {h, b.op("Mul", {x3, b.scalar_f32(0.044715f)})}),
                             b.scalar_f32(static_cast<float>(std::sqrt(2.0 / M_PI)))});
            const std::string a = b.op("Mul", {b.op("Mul", {h, b.scalar_f32(0.5f)}),
                                               b.op("Add", {b.op("Tanh", {inner}), b.scalar_f32(1.f)})});
            return linear(a, prefix + ".fc2");
        }
        case MlpKind::ReLU: return linear(b.op("Relu", {linear(x, prefix + ".fc1")}), prefix + ".fc2");
        case MlpKind::None: break;
        }
        return x;
    }

    // One Mamba-2 step. x (batch, D) → (batch, D); conv state (batch, K − 1, C) holds the last K − 1
    // inputs of the causal conv (oldest first), SSM state (batch, H, P, N).
    std::string mamba2(const std::string& x, int64_t l) {
        const std::string p = fmt::format("layers.{}.mixer", l);
        const int64_t Din = cfg.mamba_d_inner(), N = cfg.mamba.d_state, G = cfg.mamba.n_groups;
        const int64_t H = cfg.mamba_n_heads(), P = cfg.mamba.head_dim, K = cfg.mamba.d_conv;
        const int64_t C = Din + 2 * G * N, W = 2 * Din + 2 * G * N + H, NG = cfg.mamba_norm_groups();
        const std::string conv_in = pfx + fmt::format("past_key_values.{}.conv_state", l);
        const std::string ssm_in = pfx + fmt::format("past_key_values.{}.ssm_state", l);
        const std::string conv_out = pfx + fmt::format("present.{}.conv_state", l);
        const std::string ssm_out = pfx + fmt::format("present.{}.ssm_state", l);
        b.io(true, conv_in, onnx::TensorProto::FLOAT, {"batch_size", std::to_string(K - 1), std::to_string(C)});
        b.io(true, ssm_in, onnx::TensorProto::FLOAT,
             {"batch_size", std::to_string(H), std::to_string(P), std::to_string(N)});
        inputs.push_back(conv_in.substr(pfx.size()));
        inputs.push_back(ssm_in.substr(pfx.size()));

        const std::string zxbcdt = linear(x, p + ".in_proj");  // (b, W) = [z | xBC | dt]
        const std::string z = b.slice(zxbcdt, 0, Din, 1);
        const std::string xbc_raw = b.slice(zxbcdt, Din, Din + C, 1);
        const std::string dt_raw = b.slice(zxbcdt, Din + C, W, 1);

        // Causal conv over [state | new input]: Σ_k w[c, k]·window[k, c] (+ bias), then SiLU.
        const std::string window = b.op("Concat", {conv_in, b.unsqueeze(xbc_raw, {1})},
                                        {GraphBuilder::attr_i("axis", 1)});  // (b, K, C)
        const ParamSpec& cw = spec(p + ".conv1d.weight");                    // (C, K)
        std::vector<float> wt(static_cast<size_t>(K * C));
        const float* w = value(p + ".conv1d.weight");
        for (int64_t c = 0; c < C; ++c)
            for (int64_t k = 0; k < K; ++k) wt[k * C + c] = w[c * cw.shape[1] + k];
        const std::string wk = b.init_f32(p + ".conv1d.weight_kc", {K, C}, wt.data());
        std::string conv = b.op("ReduceSum", {b.op("Mul", {window, wk}), b.const_i64({1})},
                                {GraphBuilder::attr_i("keepdims", 0)});  // (b, C)
        if (has(p + ".conv1d.bias")) conv = b.op("Add", {conv, weight(p + ".conv1d.bias")});
        b.op("Slice", {window, b.const_i64({1}), b.const_i64({K}), b.const_i64({1})}, {}, conv_out);
        const std::string xbc = b.silu(conv);

        const std::string xs = b.reshape(b.slice(xbc, 0, Din, 1), {-1, H, P});  // (b, H, P)
        // B and C per head: head h reads group h / (H / G).
        std::vector<int64_t> group_of(static_cast<size_t>(H));
        for (int64_t h = 0; h < H; ++h) group_of[h] = h / (H / G);
        const std::string heads = b.const_i64(group_of);
        const std::string Bh = b.op("Gather", {b.reshape(b.slice(xbc, Din, Din + G * N, 1), {-1, G, N}), heads},
                                    {GraphBuilder::attr_i("axis", 1)});  // (b, H, N)
        const std::string Ch =
            b.op("Gather", {b.reshape(b.slice(xbc, Din + G * N, Din + 2 * G * N, 1), {-1, G, N}), heads},
                 {GraphBuilder::attr_i("axis", 1)});

        // dt = clamp(softplus(dt_raw + dt_bias)); A = −exp(A_log).
        std::string dt = b.op("Softplus", {b.op("Add", {dt_raw, weight(p + ".dt_bias")})});  // (b, H)
        const bool clamp_lo = cfg.mamba.dt_limit_min > 0, clamp_hi = std::isfinite(cfg.mamba.dt_limit_max);
        if (clamp_lo || clamp_hi) {
            const float lo = clamp_lo ? static_cast<float>(cfg.mamba.dt_limit_min) : 0.f;
            const float hi = clamp_hi ? static_cast<float>(cfg.mamba.dt_limit_max)
                                      : std::numeric_limits<float>::max();
            dt = b.op("Clip", {dt, b.scalar_f32(lo), b.scalar_f32(hi)});
        }
        const std::string A = b.op("Neg", {b.op("Exp", {weight(p + ".A_log")})});
        const std::string dA = b.reshape(b.op("Exp", {b.op("Mul", {dt, A})}), {-1, H, 1, 1});
        // S ← exp(dt·A)·S + (dt·x) ⊗ B
        const std::string dtx = b.op("Mul", {xs, b.unsqueeze(dt, {2})});  // (b, H, P)
        const std::string outer = b.op("Mul", {b.unsqueeze(dtx, {3}), b.unsqueeze(Bh, {2})});
        const std::string S = b.op("Add", {b.op("Mul", {ssm_in, dA}), outer}, {}, ssm_out);  // (b, H, P, N)
        // y = S·C + D·x
        std::string y = b.reshape(b.op("MatMul", {S, b.unsqueeze(Ch, {3})}), {-1, H, P});
        y = b.op("Add", {y, b.op("Mul", {xs, b.reshape(weight(p + ".D"), {H, 1})})});
        y = b.reshape(y, {-1, Din});

        // Gated RMSNorm in NG groups: g = y·silu(z), normalised per group, times the weight.
        const std::string g = b.reshape(b.op("Mul", {y, b.silu(z)}), {-1, NG, Din / NG});
        const std::string yn = b.reshape(rms(g, b.reshape(weight(p + ".norm.weight"), {NG, Din / NG}),
                                             static_cast<float>(cfg.norm_eps)),
                                         {-1, Din});
        outputs.push_back(conv_out.substr(pfx.size()));
        outputs.push_back(ssm_out.substr(pfx.size()));
        b.io(false, conv_out, onnx::TensorProto::FLOAT, {"batch_size", std::to_string(K - 1), std::to_string(C)});
        b.io(false, ssm_out, onnx::TensorProto::FLOAT,
             {"batch_size", std::to_string(H), std::to_string(P), std::to_string(N)});
        return linear(yn, p + ".out_proj");
    }

    // One attention step: RoPE at position_ids, the new key / value appended to the cache, grouped
    // heads (query head h reads kv head h / (Hq / Hkv)), scaled dot products, the padding mask.
    std::string attention(const std::string& x, int64_t l, const std::string& mask_bias, const std::string& cos,
                          const std::string& sin) {
        const std::string p = fmt::format("layers.{}.mixer", l);
        const int64_t Hq = cfg.attention.n_heads, Hkv = cfg.attn_kv_heads(), Dh = cfg.attn_head_dim();
        const int64_t R = cfg.attn_rotary_dim(), rep = Hq / Hkv;
        const std::vector<std::string> kv_dims = {"batch_size", std::to_string(Hkv), "past_sequence_length",
                                                  std::to_string(Dh)};
        const std::vector<std::string> present_dims = {"batch_size", std::to_string(Hkv), "total_sequence_length",
                                                       std::to_string(Dh)};
        std::string names[4];
        int i = 0;
        for (const char* kind : {"key", "value"}) {
            names[i] = pfx + fmt::format("past_key_values.{}.{}", l, kind);
            names[i + 2] = pfx + fmt::format("present.{}.{}", l, kind);
            b.io(true, names[i], onnx::TensorProto::FLOAT, kv_dims);
            inputs.push_back(names[i].substr(pfx.size()));
            ++i;
        }

        const std::string qkv = linear(x, p + ".qkv_proj");  // (b, (Hq + 2·Hkv)·Dh)
        std::string q = b.reshape(b.slice(qkv, 0, Hq * Dh, 1), {-1, Hq, Dh});
        std::string k = b.reshape(b.slice(qkv, Hq * Dh, (Hq + Hkv) * Dh, 1), {-1, Hkv, Dh});
        const std::string v = b.reshape(b.slice(qkv, (Hq + Hkv) * Dh, (Hq + 2 * Hkv) * Dh, 1), {-1, Hkv, 1, Dh});
        if (!cos.empty()) {
            q = rope(q, R, Dh, cos, sin);
            k = rope(k, R, Dh, cos, sin);
        }
        k = b.reshape(k, {-1, Hkv, 1, Dh});
        const std::string K = b.op("Concat", {names[0], k}, {GraphBuilder::attr_i("axis", 2)}, names[2]);
        const std::string V = b.op("Concat", {names[1], v}, {GraphBuilder::attr_i("axis", 2)}, names[3]);
        for (int j = 2; j < 4; ++j) {
            b.io(false, names[j], onnx::TensorProto::FLOAT, present_dims);
            outputs.push_back(names[j].substr(pfx.size()));
        }

        const std::string qg = b.reshape(q, {-1, Hkv, rep, Dh});
        const std::string kt = b.op("Transpose", {K}, {GraphBuilder::attr_ints("perm", {0, 1, 3, 2})});
        const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dh)));
        std::string scores = b.op("Mul", {b.op("MatMul", {qg, kt}), b.scalar_f32(scale)});  // (b, Hkv, rep, T)
        scores = b.op("Add", {scores, mask_bias});
        const std::string probs = b.op("Softmax", {scores}, {GraphBuilder::attr_i("axis", -1)});
        const std::string o = b.reshape(b.op("MatMul", {probs, V}), {-1, Hq * Dh});
        return linear(o, p + ".o_proj");
    }

    // HF rotate_half over the first R channels of each head: x1·cos − x2·sin, x2·cos + x1·sin.
    std::string rope(const std::string& x, int64_t R, int64_t Dh, const std::string& cos, const std::string& sin) {
        const int64_t half = R / 2;
        const std::string x1 = b.slice(x, 0, half, 2), x2 = b.slice(x, half, R, 2);
        const std::string o1 = b.op("Sub", {b.op("Mul", {x1, cos}), b.op("Mul", {x2, sin})});
        const std::string o2 = b.op("Add", {b.op("Mul", {x2, cos}), b.op("Mul", {x1, sin})});
        std::vector<std::string> parts = {o1, o2};
        if (R < Dh) parts.push_back(b.slice(x, R, Dh, 2));
        return b.op("Concat", parts, {GraphBuilder::attr_i("axis", 2)});
    }

    void build() {
        const int64_t D = cfg.d_model, V = cfg.vocab_size;
        const bool any_attention = cfg.count(LayerKind::Attention) > 0;
        const bool rope_on = any_attention && cfg.attention.position == PositionKind::RoPE;

        const bool loop = !pfx.empty();
        const std::string iter = pfx + "iter";
        std::string ids;  // (b)
        if (loop) {
            ids = b.op("Gather", {"input_ids", iter}, {GraphBuilder::attr_i("axis", 1)});
        } else {
            b.io(true, "input_ids", onnx::TensorProto::INT64, {"batch_size", "1"});
            ids = b.reshape("input_ids", {-1});
        }
        inputs.push_back("input_ids");
        std::string mask_bias, cos, sin;
        if (any_attention) {
            // attention_mask (b, past + 1): 1 for real tokens, 0 for padding → additive −1e30 bias.
            std::string mask = "attention_mask";
            if (loop) {  // the first past + iter + 1 columns, past + iter read from a KV input's length
                int64_t first = 0;
                while (cfg.layers[first] != LayerKind::Attention) ++first;
                const std::string len =
                    b.op("Shape", {pfx + fmt::format("past_key_values.{}.key", first)},
                         {GraphBuilder::attr_i("start", 2), GraphBuilder::attr_i("end", 3)});
                mask = b.op("Slice", {mask, b.const_i64({0}), b.op("Add", {len, b.const_i64({1})}), b.const_i64({1})});
            } else {
                b.io(true, "attention_mask", onnx::TensorProto::INT64, {"batch_size", "total_sequence_length"});
            }
            inputs.push_back("attention_mask");
            const std::string m = b.op("Cast", {mask}, {GraphBuilder::attr_i("to", onnx::TensorProto::FLOAT)});
            const std::string bias = b.op("Mul", {b.op("Sub", {b.scalar_f32(1.f), m}), b.scalar_f32(-1e30f)});
            mask_bias = b.unsqueeze(bias, {1, 2});  // (b, 1, 1, T)
        }
        if (rope_on) {
            std::string pos = "position_ids";  // (b, 1)
            if (loop)
                pos = b.unsqueeze(b.op("Gather", {pos, iter}, {GraphBuilder::attr_i("axis", 1)}), {1});
            else
                b.io(true, "position_ids", onnx::TensorProto::INT64, {"batch_size", "1"});
            inputs.push_back("position_ids");
            // cos / sin tables over max_seq_len positions, computed in double as the engine does
            // (ops/attention rope_rows), then gathered at position_ids.
            const int64_t R = cfg.attn_rotary_dim(), half = R / 2, L = cfg.max_seq_len;
            std::vector<float> tc(static_cast<size_t>(L * half)), ts(tc.size());
            for (int64_t i = 0; i < half; ++i) {
                const double inv = std::pow(cfg.attention.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(R));
                for (int64_t pos = 0; pos < L; ++pos) {
                    tc[pos * half + i] = static_cast<float>(std::cos(static_cast<double>(pos) * inv));
                    ts[pos * half + i] = static_cast<float>(std::sin(static_cast<double>(pos) * inv));
                }
            }
            const std::string tcos = b.init_f32("rope.cos", {L, half}, tc.data());
            const std::string tsin = b.init_f32("rope.sin", {L, half}, ts.data());
            cos = b.op("Gather", {tcos, pos}, {GraphBuilder::attr_i("axis", 0)});  // (b, 1, half)
            sin = b.op("Gather", {tsin, pos}, {GraphBuilder::attr_i("axis", 0)});
        }

        std::string x = b.op("Gather", {weight("embed.weight"), ids}, {GraphBuilder::attr_i("axis", 0)});  // (b, D)
        for (int64_t l = 0; l < cfg.n_layers; ++l) {
            const std::string p = fmt::format("layers.{}", l);
            const std::string h = norm(x, p + ".norm");
            const std::string mix = cfg.layers[l] == LayerKind::Attention ? attention(h, l, mask_bias, cos, sin)
                                                                          : mamba2(h, l);
            x = b.op("Add", {x, mix});
            if (cfg.mlp.kind != MlpKind::None) x = b.op("Add", {x, mlp(norm(x, p + ".mlp_norm"), p + ".mlp")});
        }
        const std::string hf = norm(x, "final_norm");
        const std::string head = cfg.tie_embeddings ? "embed.weight" : "lm_head.weight";
        const std::string logits2 = b.op("Gemm", {hf, weight(head)}, {GraphBuilder::attr_i("transB", 1)});
        b.op("Reshape", {logits2, b.const_i64({-1, 1, V})}, {}, pfx + "logits");
        b.io(false, pfx + "logits", onnx::TensorProto::FLOAT, {"batch_size", "1", std::to_string(V)});
        outputs.insert(outputs.begin(), "logits");
        (void)D;
    }

    std::set<std::string> written_;
};

// What the graph cannot express yet: a clear line naming the field.
void check_supported(const ModelConfig& cfg) {
    if (cfg.count(LayerKind::Mamba) > 0 && cfg.mamba.version != 2)
        onnx_fail("mamba.version 1 (Mamba-1 selective scan) is not supported yet; Mamba-2 layers are");
    if (cfg.count(LayerKind::Attention) > 0) {
        if (cfg.attention.position == PositionKind::ALiBi)
            onnx_fail("attention.position alibi is not supported yet; rope and none are");
        if (cfg.attention.sliding_window > 0)
            onnx_fail("attention.sliding_window {} is not supported yet; only full causal attention is",
                      cfg.attention.sliding_window);
    }
}

// bos / eos / pad ids from the source's generation_config.json or config.json (−1 when absent).
nlohmann::json token_ids(const std::string& source_dir) {
    nlohmann::json ids = {{"bos_token_id", -1}, {"eos_token_id", -1}, {"pad_token_id", -1}};
    if (source_dir.empty()) return ids;
    for (const char* file : {"config.json", "generation_config.json"}) {  // the latter wins
        const fs::path path = fs::path(source_dir) / file;
        if (!fs::exists(path)) continue;
        std::ifstream in(path);
        const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
        if (!j.is_object()) continue;
        for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
            if (!j.contains(key)) continue;
            const auto& v = j[key];
            if (v.is_number_integer()) ids[key] = v;
            else if (v.is_array() && !v.empty() && v[0].is_number_integer()) ids[key] = v[0];
        }
    }
    if (ids["pad_token_id"] == -1) ids["pad_token_id"] = ids["eos_token_id"];
    return ids;
}

// onnxruntime-genai's genai_config.json: the decoder file, its input / output names (past / present
// patterns with %d for the layer index), the sizes of the attention layers, and greedy search
// defaults. model.type names our architecture; genai ships no built-in type for it.
nlohmann::json genai_config(const ModelConfig& cfg, const std::string& source_dir, bool attention, bool rope) {
    const nlohmann::json ids = token_ids(source_dir);
    nlohmann::json in = {{"input_ids", "input_ids"},
                         {"past_conv_state_names", "past_key_values.%d.conv_state"},
                         {"past_ssm_state_names", "past_key_values.%d.ssm_state"}};
    nlohmann::json out = {{"logits", "logits"},
                          {"present_conv_state_names", "present.%d.conv_state"},
                          {"present_ssm_state_names", "present.%d.ssm_state"}};
    if (attention) {
        in["attention_mask"] = "attention_mask";
        in["past_key_names"] = "past_key_values.%d.key";
        in["past_value_names"] = "past_key_values.%d.value";
        out["present_key_names"] = "present.%d.key";
        out["present_value_names"] = "present.%d.value";
    }
    if (rope) in["position_ids"] = "position_ids";
    nlohmann::json decoder = {{"filename", "model.onnx"},
                              {"session_options", {{"provider_options", nlohmann::json::array()}}},
                              {"hidden_size", cfg.d_model},
                              {"num_hidden_layers", cfg.n_layers},
                              {"num_attention_heads", attention ? cfg.attention.n_heads : 0},
                              {"num_key_value_heads", attention ? cfg.attn_kv_heads() : 0},
                              {"head_size", attention ? cfg.attn_head_dim() : 0},
                              {"layer_types", cfg.layer_pattern()},
                              {"inputs", in},
                              {"outputs", out}};
    nlohmann::json model = {{"type", "mamba_slm"},
                            {"bos_token_id", ids["bos_token_id"]},
                            {"eos_token_id", ids["eos_token_id"]},
                            {"pad_token_id", ids["pad_token_id"]},
                            {"vocab_size", cfg.vocab_size},
                            {"context_length", cfg.max_seq_len},
                            {"decoder", decoder}};
    nlohmann::json search = {{"max_length", cfg.max_seq_len}, {"min_length", 0},       {"do_sample", false},
                             {"num_beams", 1},                {"num_return_sequences", 1},
                             {"past_present_share_buffer", false},
                             {"temperature", 1.0},            {"top_k", 1},           {"top_p", 1.0},
                             {"repetition_penalty", 1.0},     {"length_penalty", 1.0},
                             {"early_stopping", true},        {"no_repeat_ngram_size", 0},
                             {"diversity_penalty", 0.0}};
    return {{"model", model}, {"search", search}};
}

onnx::ModelProto new_model(const std::string& graph_name) {
    onnx::ModelProto mp;
    mp.set_ir_version(kIrVersion);
    mp.set_producer_name("mamba-slm");
    mp.set_producer_version("0.1.0");
    auto* opset = mp.add_opset_import();
    opset->set_domain("");
    opset->set_version(kOpset);
    mp.mutable_graph()->set_name(graph_name);
    return mp;
}

// The prefill graph: a Loop over the sequence axis whose body is the decoding step, so a prompt of
// any length (and a continuation from a non-empty state) runs in one call; logits (b, S, V).
onnx::ModelProto prefill_model(const HybridLM<float>& model) {
    const ModelConfig& cfg = model.config();
    onnx::ModelProto mp = new_model("mamba_slm_decoder_prefill");
    onnx::GraphProto* g = mp.mutable_graph();
    onnx::GraphProto body;
    body.set_name("step");
    const std::string pfx = "loop.";
    GraphBuilder bb(&body, pfx);
    bb.io(true, pfx + "iter", onnx::TensorProto::INT64, {});
    bb.io(true, pfx + "cond_in", onnx::TensorProto::BOOL, {});
    bb.io(false, pfx + "cond_out", onnx::TensorProto::BOOL, {});
    bb.op("Identity", {pfx + "cond_in"}, {}, pfx + "cond_out");
    Exporter ex{model, cfg, bb, {}, {}, pfx, {}};
    ex.build();

    GraphBuilder ob(g);
    ob.io(true, "input_ids", onnx::TensorProto::INT64, {"batch_size", "sequence_length"});
    const bool attention = cfg.count(LayerKind::Attention) > 0;
    if (attention)
        ob.io(true, "attention_mask", onnx::TensorProto::INT64, {"batch_size", "total_sequence_length"});
    if (attention && cfg.attention.position == PositionKind::RoPE)
        ob.io(true, "position_ids", onnx::TensorProto::INT64, {"batch_size", "sequence_length"});
    std::vector<std::string> state_in, state_out;
    for (int i = 2; i < body.input_size(); ++i) {  // after iter and cond: the carried states
        onnx::ValueInfoProto* vi = g->add_input();
        *vi = body.input(i);
        vi->set_name(body.input(i).name().substr(pfx.size()));
        state_in.push_back(vi->name());
    }
    const std::string trip = ob.op("Gather", {ob.op("Shape", {"input_ids"}), ob.scalar_i64(1)});
    std::vector<std::string> loop_in = {trip, ob.scalar_bool(true)};
    loop_in.insert(loop_in.end(), state_in.begin(), state_in.end());
    onnx::NodeProto* n = g->add_node();
    n->set_op_type("Loop");
    n->set_name("sequence_loop");
    for (const std::string& in : loop_in) n->add_input(in);
    for (int i = 1; i + 1 < body.output_size(); ++i) {  // carried states, then the logits scan output
        state_out.push_back(body.output(i).name().substr(pfx.size()));
        n->add_output(state_out.back());
    }
    n->add_output("logits_steps");  // (S, b, 1, V)
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name("body");
    a->set_type(onnx::AttributeProto::GRAPH);
    *a->mutable_g() = body;
    ob.op("Transpose", {ob.op("Squeeze", {"logits_steps", ob.const_i64({2})})},
          {GraphBuilder::attr_ints("perm", {1, 0, 2})}, "logits");
    ob.io(false, "logits", onnx::TensorProto::FLOAT, {"batch_size", "sequence_length", std::to_string(cfg.vocab_size)});
    for (int i = 1; i + 1 < body.output_size(); ++i) {
        onnx::ValueInfoProto* vi = g->add_output();
        *vi = body.output(i);
        vi->set_name(state_out[i - 1]);
    }
    return mp;
}

void prepare_out_dir(const fs::path& out, const OnnxExportOptions& opts) {
    std::error_code ec;
    if (fs::exists(out, ec)) {
        MSLM_CHECK(fs::is_directory(out, ec), "{}: exists and is not a directory", out.string());
        MSLM_CHECK(opts.overwrite || fs::is_empty(out, ec),
                   "{}: exists and is not empty (pass --force to replace it)", out.string());
    }
    fs::create_directories(out, ec);
    MSLM_CHECK(!ec, "{}: cannot create the directory: {}", out.string(), ec.message());
}

}  // namespace

OnnxExportSummary export_onnx(const HybridLM<float>& model, const std::string& out_dir, const OnnxExportOptions& opts,
                              const std::string& source_dir) {
    const ModelConfig& cfg = model.config();
    check_supported(cfg);
    const fs::path out(out_dir);
    prepare_out_dir(out, opts);

    onnx::ModelProto mp = new_model("mamba_slm_decoder_step");
    onnx::GraphProto* g = mp.mutable_graph();
    Exporter ex{model, cfg, GraphBuilder(g), {}, {}, "", {}};
    ex.build();

    OnnxExportSummary s;
    const auto write = [&](const onnx::ModelProto& m, const char* file) {
        // protobuf refuses messages of 2 GiB and more; larger models need external data (not written yet).
        const size_t bytes = m.ByteSizeLong();
        MSLM_CHECK(bytes < (size_t{1} << 31) - (size_t{1} << 20),
                   "{}: {} would take {:.2f} GiB, beyond protobuf's 2 GiB limit for one ONNX file "
                   "(external data is not supported yet)",
                   out_dir, file, static_cast<double>(bytes) / (1 << 30));
        try {
            onnx::checker::check_model(m);
        } catch (const std::exception& e) {
            fail("{}: {} fails the ONNX checker: {}", out_dir, file, e.what());
        }
        const fs::path path = out / file;
        std::ofstream f(path, std::ios::binary | std::ios::trunc);
        MSLM_CHECK(f && m.SerializeToOstream(&f), "{}: cannot write the ONNX graph", path.string());
        s.files.push_back(file);
    };
    write(mp, "model.onnx");
    write(prefill_model(model), "model_prefill.onnx");
    const bool attention = cfg.count(LayerKind::Attention) > 0;
    const bool rope = attention && cfg.attention.position == PositionKind::RoPE;
    {
        std::ofstream f(out / "genai_config.json");
        f << genai_config(cfg, source_dir, attention, rope).dump(2) << "\n";
        MSLM_CHECK(f.good(), "{}: cannot write genai_config.json", out.string());
    }
    s.files.push_back("genai_config.json");
    if (!source_dir.empty()) {
        for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
            const fs::path src = fs::path(source_dir) / file;
            if (!fs::exists(src)) continue;
            std::error_code ec;
            fs::copy_file(src, out / file, fs::copy_options::overwrite_existing, ec);
            MSLM_CHECK(!ec, "{}: cannot copy to {}: {}", src.string(), out.string(), ec.message());
            s.files.push_back(file);
        }
    }
    s.nodes = g->node_size();
    s.initializers = g->initializer_size();
    s.opset = kOpset;
    s.inputs = ex.inputs;
    s.outputs = ex.outputs;
    return s;
}

OnnxExportSummary export_onnx(const std::string& model_dir, const std::string& out_dir,
                              const OnnxExportOptions& opts) {
    std::error_code ec;
    MSLM_CHECK(!fs::exists(out_dir, ec) || !fs::equivalent(out_dir, model_dir, ec),
               "{}: is the source model; export to another directory", out_dir);
    try {
        check_supported(load_any_config(model_dir));
    } catch (const Error& e) {
        fail("{}: {}", model_dir, e.what());
    }
    const std::unique_ptr<HybridLM<float>> model = load_model<float>(model_dir);
    return export_onnx(*model, out_dir, opts, model_dir);
}

#endif

}  // namespace mslm
