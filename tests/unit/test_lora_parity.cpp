// Parity with PEFT: the adapters in tests/parity/fixtures/lora were made by PEFT on the committed HF
// fixture models (tests/parity/make_lora_fixtures.py, which documents each case). We load PEFT's
// adapter onto our import of the HF model and compare logits, merged weights, weighted
// combinations, and what our writer produces against what PEFT wrote.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "lora/lora.h"
#include "model/model_io.h"
#include "test_util.h"

using namespace mslm;
using nlohmann::json;

namespace {

const std::string kFixtures = MSLM_FIXTURE_DIR;
const std::string kLora = kFixtures + "/lora";

// Logit bounds are test_hf_parity.cpp's, argued there: HF's fp32 logits agree with a float64
// re-implementation to 7e-7 of the largest |logit|; our double model must match them to 1e-5 and our
// float model, which rounds as much as HF does, to 3e-5. An adapter adds a rank-r product per
// module, of the size of the base projections' rounding, not more. The fixture script checks that
// each case's fp32 logits are within 5e-6 of its float64 run, so these bounds test our arithmetic.
constexpr double kLogitTolF64 = 1e-5, kLogitTolF32 = 3e-5;

double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
    return m;
}

std::vector<int32_t> input_ids(const SafetensorsFile& f, int64_t* B, int64_t* T) {
    Tensor ids = f.get("input_ids").clone();
    *B = ids.size(0);
    *T = ids.size(1);
    return {ids.data<int32_t>(), ids.data<int32_t>() + ids.numel()};
}

template <typename T>
struct Loaded {
    std::unique_ptr<HybridLM<T>> model;
    std::unique_ptr<LoraModel<T>> lora;
};

template <typename T>
Loaded<T> load_base(const std::string& base_case) {
    Loaded<T> l;
    LoadedModelInfo info;
    l.model = load_model<T>(kFixtures + "/" + base_case, &info);
    l.lora = std::make_unique<LoraModel<T>>(*l.model, lora_naming_arch(l.model->config(), info.format));
    return l;
}

// Max |ours − want| over the logits of ids, as a fraction of max |want|.
template <typename T>
double logit_error(HybridLM<T>& model, const std::vector<int32_t>& ids, int64_t B, int64_t Tn,
                   const std::vector<float>& want) {
    model.forward(ids.data(), nullptr, B, Tn);
    EXPECT_EQ(static_cast<int64_t>(want.size()), B * Tn * model.config().vocab_size);
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i)
        worst = std::max(worst, std::fabs(double(model.logits()[i]) - want[i]));
    return worst / max_abs(want);
}

std::string base_of(const std::string& adapter_dir) {
    std::ifstream in(adapter_dir + "/adapter_config.json");
    const std::string path = json::parse(in).at("base_model_name_or_path");
    return path.substr(path.rfind('/') + 1);  // "tests/parity/fixtures/hybrid" -> "hybrid"
}

template <typename T>
void check_logits(const std::string& name, double tol) {
    const std::string dir = kLora + "/" + name;
    ASSERT_TRUE(std::filesystem::exists(dir + "/expected.safetensors")) << dir;
    SafetensorsFile ex = SafetensorsFile::open(dir + "/expected.safetensors");
    int64_t B = 0, Tn = 0;
    const auto ids = input_ids(ex, &B, &Tn);
    const std::string base = base_of(dir);
    Loaded<T> l = load_base<T>(base);
    // The adapter must move the logits well beyond the tolerance, or the comparison proves nothing.
    const auto base_logits = SafetensorsFile::open(kFixtures + "/" + base + "/expected.safetensors")
                                 .get_f32("logits")
                                 .to_float_vector();
    const auto want = ex.get_f32("logits").to_float_vector();
    double effect = 0;
    for (size_t i = 0; i < want.size(); ++i)
        effect = std::max(effect, std::fabs(double(want[i]) - base_logits[i]));
    EXPECT_GT(effect, 100 * tol * max_abs(want)) << name;

    l.lora->load_adapter(dir, "default");
    EXPECT_LT(logit_error(*l.model, ids, B, Tn, want), tol) << name;
    // Merged, the model computes the same function (PEFT's merge_and_unload).
    l.lora->merge();
    EXPECT_LT(logit_error(*l.model, ids, B, Tn, want), tol) << name << " (merged)";
}

// merge_and_unload's weights against ours: both compute W + (B·A)·s in fp32, a sum of r products
// per element (their order may differ) and one addition. Each side rounds the product sum to within
// r·2^-24 of Σ|B||A|·s and the addition to half an ulp, so |ours − PEFT| ≤ 2^-23·|W'| +
// 2r·2^-24·s·Σₖ|Bᵢₖ||Aₖⱼ|; we allow 2^-22·(|W'| + r·s·Σₖ|Bᵢₖ||Aₖⱼ|), twice that.
void check_merged_weights(LoraModel<float>& lora, const std::vector<std::string>& adapters,
                          const SafetensorsFile& ex) {
    struct Bound {
        std::vector<double> abs_ba;  // s·Σ|B||A| per element of the module
        double r = 0;
    };
    std::map<std::string, Bound> bounds;  // by module
    for (const auto& name : adapters) {
        const LoraAdapter<float>& a = lora.adapter(name);
        const int64_t r = a.config().r;
        for (const auto& m : a.modules()) {
            const LoraTarget& tg = lora.targets()[m.target];
            Bound& b = bounds[tg.module];
            b.abs_ba.resize(static_cast<size_t>(tg.rows * tg.in), 0.0);
            b.r += static_cast<double>(r);
            for (int64_t o = 0; o < tg.rows; ++o)
                for (int64_t i = 0; i < tg.in; ++i)
                    for (int64_t k = 0; k < r; ++k)
                        b.abs_ba[o * tg.in + i] += std::fabs(a.scaling() * a.params().value(m.B)[o * r + k] *
                                                             a.params().value(m.A)[k * tg.in + i]);
        }
    }
    lora.set_active(adapters);
    lora.merge();
    const Parameters<float>& params = lora.model().params();
    int checked = 0;
    for (const LoraTarget& tg : lora.targets()) {
        const std::string key = "merged." + tg.module + ".weight";
        if (!ex.contains(key)) {
            EXPECT_FALSE(bounds.count(tg.module)) << key << " missing from the fixture";
            continue;
        }
        ASSERT_TRUE(bounds.count(tg.module)) << key << " is in the fixture but no adapter targets it";
        const auto want = ex.get_f32(key).to_float_vector();
        ASSERT_EQ(static_cast<int64_t>(want.size()), tg.rows * tg.in) << key;
        const float* got = params.value(tg.weight) + tg.row_begin * tg.in;
        const Bound& b = bounds.at(tg.module);
        int bad = 0;
        for (size_t i = 0; i < want.size(); ++i) {
            const double bound = 0x1.0p-22 * (std::fabs(want[i]) + b.r * b.abs_ba[i]);
            bad += std::fabs(double(got[i]) - want[i]) > bound;
        }
        EXPECT_EQ(bad, 0) << key << ": " << bad << " of " << want.size()
                          << " elements beyond the rounding bound";
        ++checked;
    }
    int in_file = 0;
    for (const auto& k : ex.names()) in_file += k.rfind("merged.", 0) == 0;
    EXPECT_EQ(checked, in_file);
    EXPECT_GT(checked, 0);
}

// Tensors of two adapters: the same keys and shapes, values within `rel` of each tensor's largest.
void expect_same_tensors(const std::string& ours, const std::string& theirs, double rel) {
    SafetensorsFile a = SafetensorsFile::open(ours), b = SafetensorsFile::open(theirs);
    std::set<std::string> ka(a.names().begin(), a.names().end()), kb(b.names().begin(), b.names().end());
    EXPECT_EQ(ka, kb);
    for (const auto& k : kb) {
        if (!ka.count(k)) continue;
        EXPECT_EQ(a.entry(k).shape, b.entry(k).shape) << k;
        const auto va = a.get_f32(k).to_float_vector(), vb = b.get_f32(k).to_float_vector();
        if (va.size() != vb.size()) continue;
        const double scale = max_abs(vb);
        for (size_t i = 0; i < va.size(); ++i)
            ASSERT_LE(std::fabs(double(va[i]) - vb[i]), rel * scale) << k << "[" << i << "]";
    }
}

// adapter_config.json: every field we write is in PEFT's file with the same value (target_modules
// as a set), and every field of PEFT's that we leave out is null there (options of other PEFT
// methods) or PEFT's own version stamp.
void expect_same_config(const std::string& ours_path, const std::string& theirs_path) {
    std::ifstream a(ours_path), b(theirs_path);
    const json ours = json::parse(a), theirs = json::parse(b);
    for (auto it = ours.begin(); it != ours.end(); ++it) {
        ASSERT_TRUE(theirs.contains(it.key())) << "we write \"" << it.key() << "\", PEFT does not";
        if (it.key() == "target_modules" && it->is_array()) {
            std::set<std::string> x = *it, y = theirs.at(it.key());
            EXPECT_EQ(x, y);
        } else {
            EXPECT_EQ(*it, theirs.at(it.key())) << it.key();
        }
    }
    for (auto it = theirs.begin(); it != theirs.end(); ++it) {
        if (!ours.contains(it.key())) {
            EXPECT_TRUE(it->is_null() || it.key() == "peft_version") << it.key();
        }
    }
}

}  // namespace

TEST(LoraParity, HybridAttentionMlpFloat) {
    check_logits<float>("hybrid_attn_mlp", kLogitTolF32);
}
TEST(LoraParity, HybridAttentionMlpDouble) {
    check_logits<double>("hybrid_attn_mlp", kLogitTolF64);
}
TEST(LoraParity, HybridMambaRsLoraRegexFloat) {
    check_logits<float>("hybrid_mamba_rslora_regex", kLogitTolF32);
}
TEST(LoraParity, HybridMambaRsLoraRegexDouble) {
    check_logits<double>("hybrid_mamba_rslora_regex", kLogitTolF64);
}
TEST(LoraParity, Mamba2InProjFloat) {
    check_logits<float>("mamba2_in_proj", kLogitTolF32);
}
TEST(LoraParity, Mamba1DtProjFloat) {
    check_logits<float>("mamba1_dt_proj", kLogitTolF32);
}
TEST(LoraParity, Mamba1DtProjDouble) {
    check_logits<double>("mamba1_dt_proj", kLogitTolF64);
}
TEST(LoraParity, JambaRsLoraFloat) {
    check_logits<float>("jamba_rslora", kLogitTolF32);
}
TEST(LoraParity, JambaRsLoraDouble) {
    check_logits<double>("jamba_rslora", kLogitTolF64);
}

TEST(LoraParity, MergedWeightsEqualMergeAndUnload) {
    for (const char* name : {"hybrid_attn_mlp", "mamba1_dt_proj"}) {
        const std::string dir = kLora + "/" + name;
        Loaded<float> l = load_base<float>(base_of(dir));
        l.lora->load_adapter(dir, "default");
        check_merged_weights(*l.lora, {"default"}, SafetensorsFile::open(dir + "/expected.safetensors"));
    }
}

// add_weighted_adapter "linear" and "cat" on PEFT's own source adapters reproduce PEFT's combined
// adapters and their logits. Tensors: PEFT rounds the weight·scaling factor twice ((A·w)·s in fp32)
// where we round it once, and sums the two terms of "linear" in the same order, so elements differ
// by at most ~2 ulp of the largest term: 2^-21 of each tensor's largest entry.
TEST(LoraParity, WeightedCombinationLinearAndCat) {
    const std::string dir = kLora + "/combined";
    SafetensorsFile ex = SafetensorsFile::open(dir + "/expected.safetensors");
    int64_t B = 0, Tn = 0;
    const auto ids = input_ids(ex, &B, &Tn);
    Loaded<float> l = load_base<float>("hybrid");
    for (const char* a : {"one", "two", "three"}) l.lora->load_adapter(dir + "/" + a, a);
    l.lora->add_weighted_adapter({"one", "two"}, {0.6, -1.1}, "lin", "linear");
    l.lora->add_weighted_adapter({"one", "three"}, {0.8, 0.5}, "cat", "cat");
    EXPECT_EQ(l.lora->adapter("cat").config().r, 5);
    const std::string out = test::fresh_test_dir("lora_combined");
    for (const char* a : {"lin", "cat"}) {
        l.lora->save_adapter(a, out + "/" + a);
        expect_same_tensors(out + "/" + a + "/adapter_model.safetensors",
                            dir + "/" + a + "/adapter_model.safetensors", 0x1.0p-21);
        expect_same_config(out + "/" + a + "/adapter_config.json", dir + "/" + a + "/adapter_config.json");
        l.lora->set_active({a});
        EXPECT_LT(logit_error(*l.model, ids, B, Tn, ex.get_f32(std::string("logits_") + a).to_float_vector()),
                  kLogitTolF32)
            << a;
    }
    check_merged_weights(*l.lora, {"cat"}, ex);
}

// What we write is what PEFT writes: PEFT's adapter, loaded and saved again by us, has the same
// keys, shapes, values (bit for bit: fp32 in, fp32 out) and config.
TEST(LoraParity, OurFilesMatchPeftFiles) {
    const std::string out = test::fresh_test_dir("lora_resave");
    for (const char* name :
         {"hybrid_attn_mlp", "hybrid_mamba_rslora_regex", "mamba1_dt_proj", "jamba_rslora"}) {
        const std::string dir = kLora + "/" + name;
        Loaded<float> l = load_base<float>(base_of(dir));
        l.lora->load_adapter(dir, "x");
        l.lora->save_adapter("x", out + "/" + name);
        expect_same_tensors(out + "/" + name + "/adapter_model.safetensors",
                            dir + "/adapter_model.safetensors", 0.0);
        expect_same_config(out + "/" + name + "/adapter_config.json", dir + "/adapter_config.json");
    }
}

// The adapter `mamba-slm lora combine` wrote (committed as the fixture script made it with our
// binary), which PEFT loaded without warnings: PEFT's logits with it equal ours.
TEST(LoraParity, PeftLoadsOurAdapter) {
    const std::string dir = kLora + "/ours_cat";
    SafetensorsFile ex = SafetensorsFile::open(dir + "/expected.safetensors");
    int64_t B = 0, Tn = 0;
    const auto ids = input_ids(ex, &B, &Tn);
    Loaded<float> l = load_base<float>("hybrid");
    l.lora->load_adapter(dir, "ours");
    EXPECT_LT(logit_error(*l.model, ids, B, Tn, ex.get_f32("logits").to_float_vector()), kLogitTolF32);
    expect_same_config(dir + "/adapter_config.json", kLora + "/combined/cat/adapter_config.json");
}

// PEFT refuses LoRA on out_proj of Mamba / Mamba2 models; so do we, so that PEFT can load our files.
TEST(LoraParity, OutProjOnMambaIsRefusedLikePeft) {
    Loaded<float> l = load_base<float>("mamba2");
    LoraConfig c;
    c.r = 2;
    set_lora_targets(c, "in_proj,out_proj");
    EXPECT_THROW(l.lora->add_adapter("x", c, 0), Error);
    set_lora_targets(c, "all-linear");
    EXPECT_EQ(l.lora->add_adapter("y", c, 0).config().target_names, std::vector<std::string>{"in_proj"});
}
