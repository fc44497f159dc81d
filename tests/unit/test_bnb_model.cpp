// bitsandbytes model directories (quant/bnb_model.h) against the ones transformers + bitsandbytes
// save (tests/parity/fixtures/bnb_models, made by tests/parity/make_bnb_model_fixtures.py from the
// HF fixture models): `quantize` writes the same tensors byte for byte, the loader reproduces the
// reference logits, and bad input is refused in one line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
#include "model/model_io.h"
#include "quant/bnb_model.h"
#include "test_util.h"

using namespace mslm;
using namespace mslm::quant;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = MSLM_FIXTURE_DIR;

struct BnbCase {
    const char* name;  // directory under fixtures/bnb_models
    const char* base;  // the HF fixture it quantizes
    BnbKind kind;
    bool double_quant;
    bool four_bit() const { return kind != BnbKind::Int8; }
};

const BnbCase kCases[] = {
    {"hybrid_nf4_dq", "hybrid", BnbKind::NF4, true},  {"mamba2_fp4", "mamba2", BnbKind::FP4, false},
    {"jamba_fp4_dq", "jamba", BnbKind::FP4, true},    {"mamba1_int8", "mamba1", BnbKind::Int8, false},
    {"hybrid_int8", "hybrid", BnbKind::Int8, false},
};

std::string case_dir(const BnbCase& c) { return kFixtures + "/bnb_models/" + c.name; }

nlohmann::json read_json(const std::string& path) {
    std::ifstream in(path);
    return nlohmann::json::parse(in);
}

// Runs f, expects an mslm::Error whose message holds `needle` and is one line.
template <typename F>
void expect_error(F f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(needle), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    }
}

template <typename T>
double max_rel_error(const T* got, const std::vector<float>& want) {
    double scale = 0, worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        scale = std::max(scale, std::fabs(double(want[i])));
        worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    }
    return worst / scale;
}

}  // namespace

// Our quantizer on the unquantized fixture writes exactly what transformers wrote: the same keys,
// and per key the same dtype, shape and bytes (quant_state JSON included); the config's
// quantization_config and every other field are equal as JSON.
TEST(BnbModel, QuantizeWritesTransformersBytes) {
    const std::string tmp = test::fresh_test_dir("bnb_quantize");
    for (const BnbCase& c : kCases) {
        SCOPED_TRACE(c.name);
        BnbQuantizeOptions opts;
        opts.kind = c.kind;
        opts.double_quant = c.double_quant;
        const std::string out = tmp + "/" + c.name;
        quantize_model_dir(kFixtures + "/" + c.base, out, opts);
        const SafetensorsFile ref = SafetensorsFile::open(case_dir(c) + "/model.safetensors");
        const SafetensorsFile ours = SafetensorsFile::open(out + "/model.safetensors");
        std::vector<std::string> a = ref.names(), b = ours.names();
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        ASSERT_EQ(a, b);
        int quant_states = 0;
        for (const std::string& k : a) {
            const SafetensorsEntry &x = ref.entry(k), &y = ours.entry(k);
            EXPECT_EQ(dtype_name(x.dtype), dtype_name(y.dtype)) << k;
            EXPECT_EQ(x.shape, y.shape) << k;
            const auto bx = ref.bytes(k), by = ours.bytes(k);
            EXPECT_TRUE(bx.size() == by.size() && std::memcmp(bx.data(), by.data(), bx.size()) == 0) << k;
            quant_states += k.find(".quant_state.bitsandbytes__") != std::string::npos;
        }
        // The fixture really holds quantized modules of the expected type.
        EXPECT_EQ(quant_states > 4, c.four_bit());
        nlohmann::json cref = read_json(case_dir(c) + "/config.json"), cours = read_json(out + "/config.json");
        EXPECT_EQ(cref["quantization_config"], cours["quantization_config"]);
        cref.erase("quantization_config");
        cours.erase("quantization_config");
        EXPECT_EQ(cref, cours);
    }
}

// Loading transformers' directories gives its logits. Bound: the loader's dequantized weights are
// bitsandbytes' own to the bit (same code books, absmax restoration and products in fp32, and
// the bytes equal ours per the test above), so this is HfParity's comparison (test_hf_parity.cpp)
// with other weight values, and HfParity's bounds hold: 1e-5 (double model) and 3e-5 (float)
// relative to the largest logit. The reference is `logits_dequant`, the fp32 HF model on
// bitsandbytes' dequantized weights; for 4-bit it is also transformers' own quantized forward
// (`logits`; the fixture script asserts they agree). bitsandbytes' int8 forward quantizes the
// activations too, which the loader does not, so `logits` of the int8 cases is not compared.
template <typename T>
void check_load(double tol) {
    for (const BnbCase& c : kCases) {
        SCOPED_TRACE(c.name);
        const SafetensorsFile expected = SafetensorsFile::open(case_dir(c) + "/expected.safetensors");
        const Tensor ids_t = expected.get("input_ids").clone();
        const std::vector<int32_t> ids(ids_t.data<int32_t>(), ids_t.data<int32_t>() + ids_t.numel());
        LoadedModelInfo info;
        auto model = load_model<T>(case_dir(c), &info);
        EXPECT_NE(info.quantization.find(c.four_bit() ? bnb_kind_name(c.kind) : "int8"), std::string::npos)
            << info.quantization;
        model->forward(ids.data(), nullptr, ids_t.size(0), ids_t.size(1));
        const std::vector<float> dq = expected.get_f32("logits_dequant").to_float_vector();
        EXPECT_LT(max_rel_error(model->logits(), dq), tol);
        if (c.four_bit()) {
            EXPECT_LT(max_rel_error(model->logits(), expected.get_f32("logits").to_float_vector()), tol);
        }
        // The quantization is visible: the unquantized base model gives other logits.
        auto base = load_model<T>(kFixtures + "/" + c.base);
        base->forward(ids.data(), nullptr, ids_t.size(0), ids_t.size(1));
        EXPECT_GT(max_rel_error(base->logits(), dq), 100 * tol);
    }
}

TEST(BnbModel, LoadsTransformersDirectoriesDouble) { check_load<double>(1e-5); }
TEST(BnbModel, LoadsTransformersDirectoriesFloat) { check_load<float>(3e-5); }

// A native directory quantized in native names loads back to the same weights as the HF one
// (the trained fixture through save_model: native names, then nf4 + double quant).
TEST(BnbModel, NativeDirectoryRoundTrip) {
    const std::string tmp = test::fresh_test_dir("bnb_native");
    auto hf = load_model<float>(kFixtures + "/hybrid");
    save_model(*hf, tmp + "/native");
    BnbQuantizeOptions opts;
    opts.double_quant = true;
    quantize_model_dir(tmp + "/native", tmp + "/native_nf4", opts);
    const SafetensorsFile f = SafetensorsFile::open(tmp + "/native_nf4/model.safetensors");
    EXPECT_TRUE(f.contains("layers.0.mixer.in_proj.weight.quant_state.bitsandbytes__nf4"));
    EXPECT_FALSE(f.contains("embed.weight.absmax"));  // the embedding stays as it was
    auto ours = load_model<float>(tmp + "/native_nf4");
    auto ref = load_model<float>(kFixtures + "/bnb_models/hybrid_nf4_dq");
    // Same quantizer on the same values (q/k/v and gate/up are quantized as one fused tensor here,
    // separately there, so the blocks differ only where a fused tensor's rows do): compare the
    // modules whose native and HF tensors coincide.
    for (const char* name : {"layers.0.mixer.in_proj.weight", "layers.3.mixer.out_proj.weight",
                             "layers.1.mlp.down_proj.weight", "layers.2.mixer.o_proj.weight"}) {
        const size_t i = ours->params().find(name), j = ref->params().find(name);
        const int64_t n = ours->params().specs()[i].numel;
        EXPECT_EQ(std::memcmp(ours->params().value(i), ref->params().value(j), sizeof(float) * n), 0) << name;
    }
}

TEST(BnbModel, SizeReportAddsUp) {
    const std::string tmp = test::fresh_test_dir("bnb_report");
    BnbQuantizeOptions opts;
    opts.kind = BnbKind::NF4;
    const BnbSizeReport r = quantize_model_dir(kFixtures + "/mamba2", tmp + "/q", opts);
    const SafetensorsFile in = SafetensorsFile::open(kFixtures + "/mamba2/model.safetensors");
    const SafetensorsFile out = SafetensorsFile::open(tmp + "/q/model.safetensors");
    int64_t params = 0, bytes = 0;
    for (const auto& e : in.entries()) params += static_cast<int64_t>((e.end - e.begin) / 4);  // all F32
    for (const auto& e : out.entries()) bytes += static_cast<int64_t>(e.end - e.begin);
    EXPECT_EQ(r.params(), params);
    EXPECT_EQ(r.bytes(), bytes);
    EXPECT_EQ(r.linear.bytes, (r.linear.params + 1) / 2);  // even-sized tensors here: 4 bits each
    // mamba2: embedding and untied LM head.
    EXPECT_EQ(r.embeddings.tensors, 2);
    EXPECT_NE(r.format().find("bits/param"), std::string::npos);
}

TEST(BnbModel, SkipPatternsFollowTransformers) {
    // transformers' should_convert_module examples.
    EXPECT_TRUE(bnb_module_skipped("model.layers.1.attn", {"model.layers.1"}));
    EXPECT_FALSE(bnb_module_skipped("model.layers.11.attn", {"model.layers.1"}));
    EXPECT_TRUE(bnb_module_skipped("model.layers.11.attn", {"model.layers.*"}));
    EXPECT_FALSE(bnb_module_skipped("model.mlp.gate_proj", {"model.mlp.gate"}));
    EXPECT_TRUE(bnb_module_skipped("model.decoder.layers.23.fc1", {"fc1"}));
    EXPECT_TRUE(bnb_module_skipped("backbone.layers.0.mixer.dt_proj", kBnbDefaultSkip));
    EXPECT_TRUE(bnb_module_skipped("lm_head", kBnbDefaultSkip));
    EXPECT_FALSE(bnb_module_skipped("model.layers.0.mamba.in_proj", kBnbDefaultSkip));
    // --skip reaches the file: a skipped module keeps its float weight, and the config lists it.
    const std::string tmp = test::fresh_test_dir("bnb_skip");
    BnbQuantizeOptions opts;
    opts.skip = {"model.layers.2", "in_proj"};
    quantize_model_dir(kFixtures + "/hybrid", tmp + "/q", opts);
    const SafetensorsFile f = SafetensorsFile::open(tmp + "/q/model.safetensors");
    EXPECT_EQ(f.entry("model.layers.2.self_attn.q_proj.weight").dtype, DType::F32);
    EXPECT_EQ(f.entry("model.layers.0.mamba.in_proj.weight").dtype, DType::F32);
    EXPECT_EQ(f.entry("model.layers.0.mamba.out_proj.weight").dtype, DType::U8);
    const auto skip = read_json(tmp + "/q/config.json")["quantization_config"]["llm_int8_skip_modules"];
    EXPECT_EQ(skip, nlohmann::json({"lm_head", "dt_proj", "model.layers.2", "in_proj"}));
    expect_error([&] { bnb_module_skipped("x", {"(unclosed"}); }, "(unclosed");
}

TEST(BnbModel, PythonFloatRepr) {
    EXPECT_EQ(python_float_repr(static_cast<double>(0.30091947317123413f)), "0.30091947317123413");
    EXPECT_EQ(python_float_repr(0.0), "0.0");
    EXPECT_EQ(python_float_repr(-0.0), "-0.0");
    EXPECT_EQ(python_float_repr(100.0), "100.0");
    EXPECT_EQ(python_float_repr(-2.5), "-2.5");
    EXPECT_EQ(python_float_repr(1e-5), "1e-05");
    EXPECT_EQ(python_float_repr(0.0001), "0.0001");
    EXPECT_EQ(python_float_repr(1e16), "1e+16");
    EXPECT_EQ(python_float_repr(123456789012345678.0), "1.2345678901234568e+17");
    EXPECT_EQ(python_float_repr(1234567890123456.0), "1234567890123456.0");
    EXPECT_EQ(python_float_repr(1.5e-7), "1.5e-07");
}

TEST(BnbModel, Refusals) {
    const std::string tmp = test::fresh_test_dir("bnb_refuse");
    const std::string hybrid = kFixtures + "/hybrid";
    BnbQuantizeOptions opts;
    opts.blocksize = 100;
    expect_error([&] { quantize_model_dir(hybrid, tmp + "/a", opts); }, "blocksize 100");
    opts.blocksize = 16;
    expect_error([&] { quantize_model_dir(hybrid, tmp + "/a", opts); }, "blocksize 16");
    expect_error([] { parse_bnb_kind("int4"); }, "\"int4\" is not one of int8, nf4, fp4");
    BnbQuantizeOptions int8;
    int8.kind = BnbKind::Int8;
    int8.double_quant = true;
    expect_error([&] { quantize_model_dir(hybrid, tmp + "/a", int8); }, "--double-quant");
    int8.double_quant = false;
    int8.blocksize = 128;
    expect_error([&] { quantize_model_dir(hybrid, tmp + "/a", int8); }, "--blocksize");
    // Already quantized: the config says so ...
    expect_error([&] { quantize_model_dir(kFixtures + "/bnb_models/hybrid_nf4_dq", tmp + "/a", {}); },
                 "already quantized");
    // ... or, with the block removed, the weights do.
    fs::create_directories(tmp + "/stripped");
    fs::copy_file(kFixtures + "/bnb_models/mamba1_int8/model.safetensors", tmp + "/stripped/model.safetensors");
    nlohmann::json cfg = read_json(kFixtures + "/bnb_models/mamba1_int8/config.json");
    cfg.erase("quantization_config");
    std::ofstream(tmp + "/stripped/config.json") << cfg.dump();
    expect_error([&] { quantize_model_dir(tmp + "/stripped", tmp + "/a", {}); }, "already quantized");
    expect_error([&] { quantize_model_dir(hybrid, hybrid, {}); }, "is the input directory");
    BnbQuantizeOptions bad_skip;
    bad_skip.skip = {"[a-"};
    expect_error([&] { quantize_model_dir(hybrid, tmp + "/a", bad_skip); }, "skip pattern \"[a-\"");
    EXPECT_FALSE(fs::exists(tmp + "/a/model.safetensors"));  // nothing written on refusal
    // Loading: another quantization method, and a damaged quant state.
    fs::create_directories(tmp + "/gptq");
    fs::copy_file(hybrid + "/model.safetensors", tmp + "/gptq/model.safetensors");
    cfg = read_json(hybrid + "/config.json");
    cfg["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
    std::ofstream(tmp + "/gptq/config.json") << cfg.dump();
    expect_error([&] { load_model<float>(tmp + "/gptq"); }, "quant_method \"gptq\" is not supported");
    const SafetensorsFile src = SafetensorsFile::open(kFixtures + "/bnb_models/mamba2_fp4/model.safetensors");
    std::vector<std::pair<std::string, Tensor>> tensors;
    const std::string state = "backbone.layers.1.mixer.out_proj.weight.quant_state.bitsandbytes__fp4";
    for (const std::string& k : src.names()) {
        if (k == state) {
            const std::string js = R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [36, 36]})";
            tensors.emplace_back(k, Tensor::from_vector(std::vector<uint8_t>(js.begin(), js.end()),
                                                        {static_cast<int64_t>(js.size())}));
        } else {
            tensors.emplace_back(k, src.get(k).clone());
        }
    }
    fs::create_directories(tmp + "/damaged");
    save_safetensors(tmp + "/damaged/model.safetensors", tensors);
    fs::copy_file(kFixtures + "/bnb_models/mamba2_fp4/config.json", tmp + "/damaged/config.json");
    expect_error([&] { load_model<float>(tmp + "/damaged"); }, "backbone.layers.1.mixer.out_proj.weight");
}
