#include "export/onnx.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "model/model_io.h"
#include "ops/attention.h"
#include "ops/packed_linear.h"

#ifdef MSLM_HAVE_ONNX
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#endif

namespace mslm {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kQ4Block = 32;  // MatMulNBits block_size: llama.cpp's Q4_0 block

// q4: the codes (0..15) and the block scales of one row of `in` weights, padded with zeros to whole
// blocks (the padding quantizes to 8, i.e. 0).
void quantize_q4_row(const float* w, int64_t in, uint8_t* codes, float* scales) {
    const int64_t blocks = (in + kQ4Block - 1) / kQ4Block;
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t c0 = b * kQ4Block, n = std::min(kQ4Block, in - c0);
        float m = 0;  // the value of largest magnitude, with its sign
        for (int64_t c = 0; c < n; ++c)
            if (std::fabs(w[c0 + c]) > std::fabs(m)) m = w[c0 + c];
        const float d = m / -8.f, inv = d != 0 ? 1.f / d : 0.f;
        scales[b] = d;
        for (int64_t c = 0; c < kQ4Block; ++c) {
            const float x = c < n ? w[c0 + c] : 0.f;
            codes[c0 + c] = static_cast<uint8_t>(std::clamp(std::lround(x * inv) + 8, 0L, 15L));
        }
    }
}

}  // namespace

OnnxWeights parse_onnx_weights(const std::string& name) {
    if (name == "f32") return OnnxWeights::F32;
    if (name == "int8") return OnnxWeights::Int8;
    if (name == "q4") return OnnxWeights::Q4;
    fail("onnx weights '{}': expected f32, int8 or q4", name);
}

const char* onnx_weights_name(OnnxWeights w) {
    switch (w) {
        case OnnxWeights::F32:
            return "f32";
        case OnnxWeights::Int8:
            return "int8";
        case OnnxWeights::Q4:
            return "q4";
    }
    return "?";
}

std::vector<float> onnx_dequantized_weight(const float* w, int64_t out, int64_t in, OnnxWeights type) {
    std::vector<float> r(static_cast<size_t>(out * in));
    if (type == OnnxWeights::F32) {
        std::copy_n(w, out * in, r.begin());
    } else if (type == OnnxWeights::Int8) {
        const ops::PackedWeight p = ops::pack_weight(w, out, in, ops::WeightFormat::W8A16);
        for (int64_t o = 0; o < out; ++o)
            for (int64_t c = 0; c < in; ++c)
                r[o * in + c] = static_cast<float>(p.int8()[o * p.ld + c]) * p.scale.get()[o];
    } else {
        const int64_t blocks = (in + kQ4Block - 1) / kQ4Block;
        std::vector<uint8_t> codes(static_cast<size_t>(blocks * kQ4Block));
        std::vector<float> scales(static_cast<size_t>(blocks));
        for (int64_t o = 0; o < out; ++o) {
            quantize_q4_row(w + o * in, in, codes.data(), scales.data());
            for (int64_t c = 0; c < in; ++c)
                r[o * in + c] = static_cast<float>(codes[c] - 8) * scales[c / kQ4Block];
        }
    }
    return r;
}

#ifndef MSLM_HAVE_ONNX

bool onnx_export_available() {
    return false;
}

OnnxExportSummary export_onnx(const HybridLM<float>&, const std::string& out_dir, const OnnxExportOptions&,
                              const std::string&) {
    fail(
        "{}: not built: ONNX export needs libonnx-dev (scripts/setup.sh installs it); reconfigure and "
        "rebuild",
        out_dir);
}

OnnxExportSummary export_onnx(const std::string&, const std::string& out_dir, const OnnxExportOptions&) {
    fail(
        "{}: not built: ONNX export needs libonnx-dev (scripts/setup.sh installs it); reconfigure and "
        "rebuild",
        out_dir);
}

#else

bool onnx_export_available() {
    return true;
}

namespace {

constexpr int kOpset = 17;     // LayerNormalization arrived in 17; axes are still attributes of ReduceMean
constexpr int kIrVersion = 8;  // the IR version that goes with opset 17

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
                   const std::vector<onnx::AttributeProto>& attrs = {}, const std::string& out = "",
                   const std::string& domain = "") {
        onnx::NodeProto* n = g_->add_node();
        n->set_op_type(type);
        if (!domain.empty()) n->set_domain(domain);
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
    // An int8 / uint8 initializer from raw bytes.
    std::string init_bytes(const std::string& name, int elem, const std::vector<int64_t>& dims,
                           const void* data, size_t bytes) {
        onnx::TensorProto* t = g_->add_initializer();
        t->set_name(name);
        t->set_data_type(elem);
        for (int64_t d : dims) t->add_dims(d);
        t->set_raw_data(data, bytes);
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
    OnnxWeights weights;
    std::vector<std::string> inputs, outputs;  // public names, in the graph's order
    // Empty: the decoding-step graph. Otherwise the body of the prefill graph's Loop: state inputs /
    // outputs and logits carry this prefix (a subgraph may not shadow the outer graph's names), and
    // the token, position and mask of iteration `iter` are read from the outer graph's inputs.
    std::string pfx;
    int64_t quantized = 0;  // matrices written as int8 / 4-bit

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

    // y = x · Wᵀ (+ bias) for x (batch, in) and the (out, in) weight `w`: Gemm on the weight as stored,
    // or on its int8 form through DequantizeLinear, or MatMulNBits on its 4-bit form.
    std::string matmul(const std::string& x, const std::string& w, const std::string& bias) {
        const auto& p = m.params();
        if (weights == OnnxWeights::F32 || !p.is_linear(p.find(w))) {
            std::vector<std::string> in = {x, weight(w)};
            if (!bias.empty()) in.push_back(weight(bias));
            return b.op("Gemm", in, {GraphBuilder::attr_i("transB", 1)});
        }
        const ParamSpec& s = spec(w);
        const int64_t out = s.shape[0], in = s.shape[1];
        const std::string q = w + (weights == OnnxWeights::Int8 ? ".int8" : ".q4"), sc = w + ".scales";
        if (!written_.count(q)) {
            write_quantized(w, q, sc, out, in);
            written_.insert(q);
            ++quantized;
        }
        if (weights == OnnxWeights::Int8) {
            const std::string deq = b.op("DequantizeLinear", {q, sc}, {GraphBuilder::attr_i("axis", 0)});
            std::vector<std::string> ins = {x, deq};
            if (!bias.empty()) ins.push_back(weight(bias));
            return b.op("Gemm", ins, {GraphBuilder::attr_i("transB", 1)});
        }
        const std::string y =
            b.op("MatMulNBits", {x, q, sc},
                 {GraphBuilder::attr_i("K", in), GraphBuilder::attr_i("N", out),
                  GraphBuilder::attr_i("bits", 4), GraphBuilder::attr_i("block_size", kQ4Block)},
                 "", "com.microsoft");
        return bias.empty() ? y : b.op("Add", {y, weight(bias)});
    }

    // The int8 or 4-bit initializers of the (out, in) weight `w`.
    //   int8: q (out, in) int8, scales (out) f32 — the engine's W8A16 rows (ops::pack_weight).
    //   q4:   q (out, blocks, 16) uint8, element 2j of a block in the low nibble of byte j and 2j + 1 in
    //         the high one; scales (out · blocks) f32 (MatMulNBits' layouts).
    void write_quantized(const std::string& w, const std::string& q, const std::string& sc, int64_t out,
                         int64_t in) {
        if (weights == OnnxWeights::Int8) {
            const ops::PackedWeight pw = ops::pack_weight(value(w), out, in, ops::WeightFormat::W8A16);
            std::vector<int8_t> data(static_cast<size_t>(out * in));
            for (int64_t o = 0; o < out; ++o) std::copy_n(pw.int8() + o * pw.ld, in, data.begin() + o * in);
            b.init_bytes(q, onnx::TensorProto::INT8, {out, in}, data.data(), data.size());
            b.init_f32(sc, {out}, pw.scale.get());
            return;
        }
        const int64_t blocks = (in + kQ4Block - 1) / kQ4Block, blob = kQ4Block / 2;
        std::vector<uint8_t> packed(static_cast<size_t>(out * blocks * blob)),
            codes(static_cast<size_t>(blocks * kQ4Block));
        std::vector<float> scales(static_cast<size_t>(out * blocks));
        for (int64_t o = 0; o < out; ++o) {
            quantize_q4_row(value(w) + o * in, in, codes.data(), scales.data() + o * blocks);
            uint8_t* row = packed.data() + o * blocks * blob;
            for (int64_t j = 0; j < blocks * blob; ++j)
                row[j] = static_cast<uint8_t>(codes[2 * j] | codes[2 * j + 1] << 4);
        }
        b.init_bytes(q, onnx::TensorProto::UINT8, {out, blocks, blob}, packed.data(), packed.size());
        b.init_f32(sc, {out * blocks}, scales.data());
    }

    std::string linear(const std::string& x, const std::string& prefix) {
        return matmul(x, prefix + ".weight", has(prefix + ".bias") ? prefix + ".bias" : "");
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
        const std::string ms =
            b.op("ReduceMean", {b.op("Mul", {x, x})},
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
                const std::string e =
                    b.op("Erf", {b.op("Mul", {h, b.scalar_f32(static_cast<float>(M_SQRT1_2))})});
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
            case MlpKind::ReLU:
                return linear(b.op("Relu", {linear(x, prefix + ".fc1")}), prefix + ".fc2");
            case MlpKind::None:
                break;
        }
        return x;
    }

    // Layer l's conv / SSM state inputs and outputs (names with the subgraph prefix); returns
    // {conv in, ssm in, conv out, ssm out}. The outputs are declared after the graph computes them.
    struct StateNames {
        std::string conv_in, ssm_in, conv_out, ssm_out;
        std::vector<std::string> conv_dims, ssm_dims;
    };
    StateNames mamba_state(int64_t l, std::vector<std::string> conv_dims, std::vector<std::string> ssm_dims) {
        StateNames n{pfx + fmt::format("past_key_values.{}.conv_state", l),
                     pfx + fmt::format("past_key_values.{}.ssm_state", l),
                     pfx + fmt::format("present.{}.conv_state", l),
                     pfx + fmt::format("present.{}.ssm_state", l),
                     std::move(conv_dims),
                     std::move(ssm_dims)};
        b.io(true, n.conv_in, onnx::TensorProto::FLOAT, n.conv_dims);
        b.io(true, n.ssm_in, onnx::TensorProto::FLOAT, n.ssm_dims);
        inputs.push_back(n.conv_in.substr(pfx.size()));
        inputs.push_back(n.ssm_in.substr(pfx.size()));
        return n;
    }
    void mamba_state_outputs(const StateNames& n) {
        outputs.push_back(n.conv_out.substr(pfx.size()));
        outputs.push_back(n.ssm_out.substr(pfx.size()));
        b.io(false, n.conv_out, onnx::TensorProto::FLOAT, n.conv_dims);
        b.io(false, n.ssm_out, onnx::TensorProto::FLOAT, n.ssm_dims);
    }

    // One step of the depthwise causal conv: over [state (b, K − 1, C) | xin (b, C)] it computes
    // Σ_k w[c, k]·window[k, c] (+ bias), then SiLU; the last K − 1 rows become the new state.
    std::string conv_step(const std::string& p, const std::string& xin, const StateNames& n, int64_t C,
                          int64_t K) {
        const std::string window = b.op("Concat", {n.conv_in, b.unsqueeze(xin, {1})},
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
        b.op("Slice", {window, b.const_i64({1}), b.const_i64({K}), b.const_i64({1})}, {}, n.conv_out);
        return b.silu(conv);
    }

    // One Mamba-1 (S6) step. x (batch, D) → (batch, D); conv state (batch, K − 1, Din), SSM state
    // (batch, Din, N). Jamba's RMSNorms on dt, B and C when the config has them.
    std::string mamba1(const std::string& x, int64_t l) {
        const std::string p = fmt::format("layers.{}.mixer", l);
        const int64_t Din = cfg.mamba_d_inner(), N = cfg.mamba.d_state, K = cfg.mamba.d_conv;
        const int64_t R = cfg.mamba_dt_rank();
        const StateNames st = mamba_state(l, {"batch_size", std::to_string(K - 1), std::to_string(Din)},
                                          {"batch_size", std::to_string(Din), std::to_string(N)});
        const std::string xz = linear(x, p + ".in_proj");  // (b, 2·Din) = [x | z]
        const std::string z = b.slice(xz, Din, 2 * Din, 1);
        const std::string u = conv_step(p, b.slice(xz, 0, Din, 1), st, Din, K);  // (b, Din)

        const std::string dbc = linear(u, p + ".x_proj");  // (b, R + 2N) = [dt | B | C]
        std::string dt = b.slice(dbc, 0, R, 1), Bm = b.slice(dbc, R, R + N, 1),
                    Cm = b.slice(dbc, R + N, R + 2 * N, 1);
        if (cfg.mamba.dt_bc_norm) {
            const float eps = static_cast<float>(cfg.norm_eps);
            dt = rms(dt, weight(p + ".dt_norm.weight"), eps);
            Bm = rms(Bm, weight(p + ".B_norm.weight"), eps);
            Cm = rms(Cm, weight(p + ".C_norm.weight"), eps);
        }
        // delta = softplus(dt · dt_projᵀ + dt_proj.bias) (b, Din); A = −exp(A_log) (Din, N).
        const std::string delta = b.op("Softplus", {linear(dt, p + ".dt_proj")});
        const std::string A = b.op("Neg", {b.op("Exp", {weight(p + ".A_log")})});
        const std::string dA = b.op("Exp", {b.op("Mul", {b.unsqueeze(delta, {2}), A})});  // (b, Din, N)
        // h ← exp(delta·A)·h + (delta·u) ⊗ B
        const std::string dBu =
            b.op("Mul", {b.unsqueeze(b.op("Mul", {delta, u}), {2}), b.unsqueeze(Bm, {1})});  // (b, Din, N)
        const std::string h = b.op("Add", {b.op("Mul", {st.ssm_in, dA}), dBu}, {}, st.ssm_out);
        // y = (h·C + D·u) · silu(z)
        std::string y = b.reshape(b.op("MatMul", {h, b.unsqueeze(Cm, {2})}), {-1, Din});
        y = b.op("Add", {y, b.op("Mul", {u, weight(p + ".D")})});
        y = b.op("Mul", {y, b.silu(z)});
        mamba_state_outputs(st);
        return linear(y, p + ".out_proj");
    }

    // One Mamba-2 step. x (batch, D) → (batch, D); conv state (batch, K − 1, C) holds the last K − 1
    // inputs of the causal conv (oldest first), SSM state (batch, H, P, N).
    std::string mamba2(const std::string& x, int64_t l) {
        const std::string p = fmt::format("layers.{}.mixer", l);
        const int64_t Din = cfg.mamba_d_inner(), N = cfg.mamba.d_state, G = cfg.mamba.n_groups;
        const int64_t H = cfg.mamba_n_heads(), P = cfg.mamba.head_dim, K = cfg.mamba.d_conv;
        const int64_t C = Din + 2 * G * N, W = 2 * Din + 2 * G * N + H, NG = cfg.mamba_norm_groups();
        const StateNames st =
            mamba_state(l, {"batch_size", std::to_string(K - 1), std::to_string(C)},
                        {"batch_size", std::to_string(H), std::to_string(P), std::to_string(N)});

        const std::string zxbcdt = linear(x, p + ".in_proj");  // (b, W) = [z | xBC | dt]
        const std::string z = b.slice(zxbcdt, 0, Din, 1);
        const std::string xbc_raw = b.slice(zxbcdt, Din, Din + C, 1);
        const std::string dt_raw = b.slice(zxbcdt, Din + C, W, 1);
        const std::string xbc = conv_step(p, xbc_raw, st, C, K);

        const std::string xs = b.reshape(b.slice(xbc, 0, Din, 1), {-1, H, P});  // (b, H, P)
        // B and C per head: head h reads group h / (H / G).
        std::vector<int64_t> group_of(static_cast<size_t>(H));
        for (int64_t h = 0; h < H; ++h) group_of[h] = h / (H / G);
        const std::string heads = b.const_i64(group_of);
        const std::string Bh =
            b.op("Gather", {b.reshape(b.slice(xbc, Din, Din + G * N, 1), {-1, G, N}), heads},
                 {GraphBuilder::attr_i("axis", 1)});  // (b, H, N)
        const std::string Ch =
            b.op("Gather", {b.reshape(b.slice(xbc, Din + G * N, Din + 2 * G * N, 1), {-1, G, N}), heads},
                 {GraphBuilder::attr_i("axis", 1)});

        // dt = clamp(softplus(dt_raw + dt_bias)); A = −exp(A_log).
        std::string dt = b.op("Softplus", {b.op("Add", {dt_raw, weight(p + ".dt_bias")})});  // (b, H)
        const bool clamp_lo = cfg.mamba.dt_limit_min > 0, clamp_hi = std::isfinite(cfg.mamba.dt_limit_max);
        if (clamp_lo || clamp_hi) {
            const float lo = clamp_lo ? static_cast<float>(cfg.mamba.dt_limit_min) : 0.f;
            const float hi =
                clamp_hi ? static_cast<float>(cfg.mamba.dt_limit_max) : std::numeric_limits<float>::max();
            dt = b.op("Clip", {dt, b.scalar_f32(lo), b.scalar_f32(hi)});
        }
        const std::string A = b.op("Neg", {b.op("Exp", {weight(p + ".A_log")})});
        const std::string dA = b.reshape(b.op("Exp", {b.op("Mul", {dt, A})}), {-1, H, 1, 1});
        // S ← exp(dt·A)·S + (dt·x) ⊗ B
        const std::string dtx = b.op("Mul", {xs, b.unsqueeze(dt, {2})});  // (b, H, P)
        const std::string outer = b.op("Mul", {b.unsqueeze(dtx, {3}), b.unsqueeze(Bh, {2})});
        const std::string S =
            b.op("Add", {b.op("Mul", {st.ssm_in, dA}), outer}, {}, st.ssm_out);  // (b, H, P, N)
        // y = S·C + D·x
        std::string y = b.reshape(b.op("MatMul", {S, b.unsqueeze(Ch, {3})}), {-1, H, P});
        y = b.op("Add", {y, b.op("Mul", {xs, b.reshape(weight(p + ".D"), {H, 1})})});
        y = b.reshape(y, {-1, Din});

        // Gated RMSNorm in NG groups: g = y·silu(z), normalised per group, times the weight.
        const std::string g = b.reshape(b.op("Mul", {y, b.silu(z)}), {-1, NG, Din / NG});
        const std::string yn = b.reshape(
            rms(g, b.reshape(weight(p + ".norm.weight"), {NG, Din / NG}), static_cast<float>(cfg.norm_eps)),
            {-1, Din});
        mamba_state_outputs(st);
        return linear(yn, p + ".out_proj");
    }

    // One attention step: RoPE at position_ids, the new key / value appended to the cache (with a
    // sliding window W only the last W rows kept: the engine's ring buffer in order, oldest first),
    // grouped heads (query head h reads kv head h / (Hq / Hkv)), scaled dot products, ALiBi's
    // −slope·distance, the padding mask (b, 1, 1, cache rows).
    std::string attention(const std::string& x, int64_t l, const std::string& mask_bias,
                          const std::string& cos, const std::string& sin) {
        const std::string p = fmt::format("layers.{}.mixer", l);
        const int64_t Hq = cfg.attention.n_heads, Hkv = cfg.attn_kv_heads(), Dh = cfg.attn_head_dim();
        const int64_t R = cfg.attn_rotary_dim(), rep = Hq / Hkv, window = cfg.attention.sliding_window;
        const std::vector<std::string> kv_dims = {"batch_size", std::to_string(Hkv), "past_sequence_length",
                                                  std::to_string(Dh)};
        const std::vector<std::string> present_dims = {
            "batch_size", std::to_string(Hkv),
            window > 0 ? "present_sequence_length" : "total_sequence_length", std::to_string(Dh)};
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
        const std::string v =
            b.reshape(b.slice(qkv, (Hq + Hkv) * Dh, (Hq + 2 * Hkv) * Dh, 1), {-1, Hkv, 1, Dh});
        if (!cos.empty()) {
            q = rope(q, R, Dh, cos, sin);
            k = rope(k, R, Dh, cos, sin);
        }
        k = b.reshape(k, {-1, Hkv, 1, Dh});
        std::string K, V;  // (b, Hkv, rows, Dh)
        if (window > 0) {
            const auto last_rows = [&](const std::string& t, const std::string& out) {
                return b.op("Slice",
                            {t, b.const_i64({-window}), b.const_i64({std::numeric_limits<int64_t>::max()}),
                             b.const_i64({2})},
                            {}, out);
            };
            K = last_rows(b.op("Concat", {names[0], k}, {GraphBuilder::attr_i("axis", 2)}), names[2]);
            V = last_rows(b.op("Concat", {names[1], v}, {GraphBuilder::attr_i("axis", 2)}), names[3]);
        } else {
            K = b.op("Concat", {names[0], k}, {GraphBuilder::attr_i("axis", 2)}, names[2]);
            V = b.op("Concat", {names[1], v}, {GraphBuilder::attr_i("axis", 2)}, names[3]);
        }
        for (int j = 2; j < 4; ++j) {
            b.io(false, names[j], onnx::TensorProto::FLOAT, present_dims);
            outputs.push_back(names[j].substr(pfx.size()));
        }

        const std::string qg = b.reshape(q, {-1, Hkv, rep, Dh});
        const std::string kt = b.op("Transpose", {K}, {GraphBuilder::attr_ints("perm", {0, 1, 3, 2})});
        const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dh)));
        std::string scores =
            b.op("Mul", {b.op("MatMul", {qg, kt}), b.scalar_f32(scale)});  // (b, Hkv, rep, T)
        if (cfg.attention.position == PositionKind::ALiBi) {
            // Row j of T cache rows is T − 1 − j positions behind the query (the last row).
            const std::string rows =
                b.op("Shape", {K}, {GraphBuilder::attr_i("start", 2), GraphBuilder::attr_i("end", 3)});
            const std::string j =
                b.op("Range", {b.scalar_i64(0), b.op("Squeeze", {rows, b.const_i64({0})}), b.scalar_i64(1)});
            const std::string dist = b.op("Cast", {b.op("Sub", {b.op("Sub", {rows, b.const_i64({1})}), j})},
                                          {GraphBuilder::attr_i("to", onnx::TensorProto::FLOAT)});  // (T)
            const std::vector<double> sl = ops::alibi_slopes(Hq);
            const std::vector<float> slopes(sl.begin(), sl.end());
            scores = b.op("Sub", {scores, b.op("Mul", {b.const_f32({Hkv, rep, 1}, slopes), dist})});
        }
        scores = b.op("Add", {scores, mask_bias});
        const std::string probs = b.op("Softmax", {scores}, {GraphBuilder::attr_i("axis", -1)});
        const std::string o = b.reshape(b.op("MatMul", {probs, V}), {-1, Hq * Dh});
        return linear(o, p + ".o_proj");
    }

    // HF rotate_half over the first R channels of each head: x1·cos − x2·sin, x2·cos + x1·sin.
    std::string rope(const std::string& x, int64_t R, int64_t Dh, const std::string& cos,
                     const std::string& sin) {
        const int64_t half = R / 2;
        const std::string x1 = b.slice(x, 0, half, 2), x2 = b.slice(x, half, R, 2);
        const std::string o1 = b.op("Sub", {b.op("Mul", {x1, cos}), b.op("Mul", {x2, sin})});
        const std::string o2 = b.op("Add", {b.op("Mul", {x2, cos}), b.op("Mul", {x1, sin})});
        std::vector<std::string> parts = {o1, o2};
        if (R < Dh) parts.push_back(b.slice(x, R, Dh, 2));
        return b.op("Concat", parts, {GraphBuilder::attr_i("axis", 2)});
    }

    void build() {
        const int64_t V = cfg.vocab_size;
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
            // attention_mask (b, total): 1 for real tokens, 0 for padding; the columns of the cache
            // rows this step attends to become an additive −1e30 bias.
            std::string mask = "attention_mask";
            const int64_t window = cfg.attention.sliding_window;
            if (loop) {
                // Columns [start, end): end = past positions + iter + 1, past = total − sequence length
                // (both read from the outer graph's inputs); start = end − window, at least 0.
                const auto dim1 = [&](const std::string& t) {
                    return b.op("Shape", {t},
                                {GraphBuilder::attr_i("start", 1), GraphBuilder::attr_i("end", 2)});
                };
                const std::string end =
                    b.op("Add", {b.op("Sub", {dim1(mask), dim1("input_ids")}),
                                 b.op("Add", {b.unsqueeze(iter, {0}), b.const_i64({1})})});
                const std::string start =
                    window > 0 ? b.op("Max", {b.op("Sub", {end, b.const_i64({window})}), b.const_i64({0})})
                               : b.const_i64({0});
                mask = b.op("Slice", {mask, start, end, b.const_i64({1})});
            } else {
                b.io(true, "attention_mask", onnx::TensorProto::INT64,
                     {"batch_size", "total_sequence_length"});
                if (window > 0)  // the last min(window, total) columns, as the cache keeps the last rows
                    mask =
                        b.op("Slice", {mask, b.const_i64({-window}),
                                       b.const_i64({std::numeric_limits<int64_t>::max()}), b.const_i64({1})});
            }
            inputs.push_back("attention_mask");
            const std::string m =
                b.op("Cast", {mask}, {GraphBuilder::attr_i("to", onnx::TensorProto::FLOAT)});
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
                const double inv = std::pow(cfg.attention.rope_theta,
                                            -2.0 * static_cast<double>(i) / static_cast<double>(R));
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

        std::string x =
            b.op("Gather", {weight("embed.weight"), ids}, {GraphBuilder::attr_i("axis", 0)});  // (b, D)
        for (int64_t l = 0; l < cfg.n_layers; ++l) {
            const std::string p = fmt::format("layers.{}", l);
            const std::string h = norm(x, p + ".norm");
            const std::string mix = cfg.layers[l] == LayerKind::Attention
                                        ? attention(h, l, mask_bias, cos, sin)
                                    : cfg.mamba.version == 1 ? mamba1(h, l)
                                                             : mamba2(h, l);
            x = b.op("Add", {x, mix});
            if (cfg.mlp.kind != MlpKind::None)
                x = b.op("Add", {x, mlp(norm(x, p + ".mlp_norm"), p + ".mlp")});
        }
        const std::string hf = norm(x, "final_norm");
        const std::string head = cfg.tie_embeddings ? "embed.weight" : "lm_head.weight";
        const std::string logits2 = matmul(hf, head, "");
        b.op("Reshape", {logits2, b.const_i64({-1, 1, V})}, {}, pfx + "logits");
        b.io(false, pfx + "logits", onnx::TensorProto::FLOAT, {"batch_size", "1", std::to_string(V)});
        outputs.insert(outputs.begin(), "logits");
    }

    std::set<std::string> written_;
};

// Every configuration field has a graph; what cannot be exported is weights without fp32 values
// (a bitsandbytes 4-bit file loaded packed) and side paths on the weights (LoRA adapters, QAT fake
// quantization), which the graph would silently drop.
void check_exportable(const HybridLM<float>& model) {
    const Parameters<float>& p = model.params();
    if (p.loaded_packed() > 0)
        onnx_fail(
            "{} linear weights were loaded packed as {} and have no fp32 values: load the model without "
            "packing (the default dequantizes) and export again",
            p.loaded_packed(), ops::weight_format_name(p.weight_format()));
    for (size_t i = 0; i < p.specs().size(); ++i) {
        if (p.adapter(i))
            onnx_fail("{} has a LoRA adapter attached: merge it into the weights first", p.specs()[i].name);
        if (p.fake_quant(i))
            onnx_fail(
                "{} has a QAT fake quantizer attached: export the trained fp32 weights (with --type int8 or "
                "q4 for quantized ones)",
                p.specs()[i].name);
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
            if (v.is_number_integer())
                ids[key] = v;
            else if (v.is_array() && !v.empty() && v[0].is_number_integer())
                ids[key] = v[0];
        }
    }
    if (ids["pad_token_id"] == -1) ids["pad_token_id"] = ids["eos_token_id"];
    return ids;
}

// onnxruntime-genai's genai_config.json: the decoder file, its input / output names (past / present
// patterns with %d for the layer index), the sizes of the attention layers, and greedy search
// defaults. model.type names our architecture; genai ships no built-in type for it.
nlohmann::json genai_config(const ModelConfig& cfg, const std::string& source_dir, bool attention,
                            bool rope) {
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
    nlohmann::json search = {{"max_length", cfg.max_seq_len},
                             {"min_length", 0},
                             {"do_sample", false},
                             {"num_beams", 1},
                             {"num_return_sequences", 1},
                             {"past_present_share_buffer", false},
                             {"temperature", 1.0},
                             {"top_k", 1},
                             {"top_p", 1.0},
                             {"repetition_penalty", 1.0},
                             {"length_penalty", 1.0},
                             {"early_stopping", true},
                             {"no_repeat_ngram_size", 0},
                             {"diversity_penalty", 0.0}};
    return {{"model", model}, {"search", search}};
}

onnx::ModelProto new_model(const std::string& graph_name, OnnxWeights weights) {
    onnx::ModelProto mp;
    mp.set_ir_version(kIrVersion);
    mp.set_producer_name("mamba-slm");
    mp.set_producer_version("0.1.0");
    auto* opset = mp.add_opset_import();
    opset->set_domain("");
    opset->set_version(kOpset);
    if (weights == OnnxWeights::Q4) {  // MatMulNBits
        auto* ms = mp.add_opset_import();
        ms->set_domain("com.microsoft");
        ms->set_version(1);
    }
    mp.mutable_graph()->set_name(graph_name);
    return mp;
}

// The prefill graph: a Loop over the sequence axis whose body is the decoding step, so a prompt of
// any length (and a continuation from a non-empty state) runs in one call; logits (b, S, V).
onnx::ModelProto prefill_model(const HybridLM<float>& model, OnnxWeights weights) {
    const ModelConfig& cfg = model.config();
    onnx::ModelProto mp = new_model("mamba_slm_decoder_prefill", weights);
    onnx::GraphProto* g = mp.mutable_graph();
    onnx::GraphProto body;
    body.set_name("step");
    const std::string pfx = "loop.";
    GraphBuilder bb(&body, pfx);
    bb.io(true, pfx + "iter", onnx::TensorProto::INT64, {});
    bb.io(true, pfx + "cond_in", onnx::TensorProto::BOOL, {});
    bb.io(false, pfx + "cond_out", onnx::TensorProto::BOOL, {});
    bb.op("Identity", {pfx + "cond_in"}, {}, pfx + "cond_out");
    Exporter ex{model, cfg, bb, weights, {}, {}, pfx, 0, {}};
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
    ob.io(false, "logits", onnx::TensorProto::FLOAT,
          {"batch_size", "sequence_length", std::to_string(cfg.vocab_size)});
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

OnnxExportSummary export_onnx(const HybridLM<float>& model, const std::string& out_dir,
                              const OnnxExportOptions& opts, const std::string& source_dir) {
    const ModelConfig& cfg = model.config();
    check_exportable(model);
    const fs::path out(out_dir);
    prepare_out_dir(out, opts);

    onnx::ModelProto mp = new_model("mamba_slm_decoder_step", opts.weights);
    onnx::GraphProto* g = mp.mutable_graph();
    Exporter ex{model, cfg, GraphBuilder(g), opts.weights, {}, {}, "", 0, {}};
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
    write(prefill_model(model, opts.weights), "model_prefill.onnx");
    const bool attention = cfg.count(LayerKind::Attention) > 0;
    const bool rope = attention && cfg.attention.position == PositionKind::RoPE;
    {
        std::ofstream f(out / "genai_config.json");
        f << genai_config(cfg, source_dir, attention, rope).dump(2) << "\n";
        MSLM_CHECK(f.good(), "{}: cannot write genai_config.json", out.string());
    }
    s.files.push_back("genai_config.json");
    {
        std::ofstream f(out / "mslm_config.json");
        f << config_to_json(cfg).dump(2) << "\n";
        MSLM_CHECK(f.good(), "{}: cannot write mslm_config.json", out.string());
    }
    s.files.push_back("mslm_config.json");
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
    s.quantized = ex.quantized;
    s.inputs = ex.inputs;
    s.outputs = ex.outputs;
    return s;
}

OnnxExportSummary export_onnx(const std::string& model_dir, const std::string& out_dir,
                              const OnnxExportOptions& opts) {
    std::error_code ec;
    MSLM_CHECK(!fs::exists(out_dir, ec) || !fs::equivalent(out_dir, model_dir, ec),
               "{}: is the source model; export to another directory", out_dir);
    const std::unique_ptr<HybridLM<float> > model = load_model<float>(model_dir);
    return export_onnx(*model, out_dir, opts, model_dir);
}

#endif

}  // namespace mslm
