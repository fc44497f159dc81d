// AdamW against torch.optim.AdamW (fixture by tests/parity/make_adamw_fixture.py), checkpoint
// round trips, clip_grad_norm, and the learning-rate schedules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/thread_pool.h"
#include "nn/parameters.h"
#include "train/optimizer.h"
#include "train/schedule.h"

using namespace mslm;

namespace {

const char* kNames[] = {"w0", "b1", "w2"};

template <typename T>
void fill_from(Parameters<T>& p, size_t i, const Tensor& t) {
    std::vector<float> v = t.to_float_vector();
    ASSERT_EQ(static_cast<int64_t>(v.size()), p.specs()[i].numel);
    for (size_t k = 0; k < v.size(); ++k) p.value(i)[k] = static_cast<T>(v[k]);
}

std::vector<double> as_doubles(const Tensor& t) {
    Tensor d = t.clone().to(DType::F64);  // clone: file tensors may be unaligned
    return std::vector<double>(d.data<double>(), d.data<double>() + d.numel());
}

template <typename T>
void fixture_params(Parameters<T>& p, const SafetensorsFile& f) {
    for (const char* n : kNames) p.add(n, f.get(std::string("init.") + n).shape(), std::string(n) != "b1");
    p.allocate();
    for (size_t i = 0; i < 3; ++i) fill_from(p, i, f.get(std::string("init.") + kNames[i]));
}

// Per-element bound for 5 AdamW steps. Each step rounds p·(1 - lr·wd) (1 ulp of |p|) and the
// update lr_t·m̂/(sqrt(v̂)+eps), whose factors each carry a few ulps from m, v, sqrt and the
// divisions: <= ~8 ulps of the update, and |m̂/(sqrt(v̂)+eps)| <= 1/sqrt(1 - b2) < 4.5 for
// b1^2 < b2 at these step counts (|m̂| <= sqrt(v̂)·sqrt(bias ratio)). Errors add over 5 steps:
//   |ours - torch| <= 5·(|p| + 8·4.5·lr_max)·u  ->  5·(|p| + 40·lr_max)·u.
// u is the unit roundoff of T (fp32: 6e-8; the f64 reference run promotes the same fp32 inputs,
// so AdamW<double> must meet the same bound with u = 1.1e-16, i.e. ~1e-14 relative).
template <typename T>
void check_parity(const std::string& prefix) {
    SafetensorsFile f = SafetensorsFile::open(std::string(MSLM_FIXTURE_DIR) + "/adamw/adamw.safetensors");
    Parameters<T> p;
    fixture_params(p, f);
    AdamW<T> opt(p, {.lr = 0, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1});
    const std::vector<double> lrs = as_doubles(f.get("lr"));
    ASSERT_EQ(lrs.size(), 5u);
    const double lr_max = *std::max_element(lrs.begin(), lrs.end());
    const double u = std::numeric_limits<T>::epsilon() / 2;
    double worst = 0;  // largest error as a fraction of the bound
    for (int step = 1; step <= 5; ++step) {
        for (size_t i = 0; i < 3; ++i) {
            std::vector<float> g = f.get_f32(fmt::format("grad.{}.{}", step, kNames[i])).to_float_vector();
            for (size_t k = 0; k < g.size(); ++k) p.grad(i)[k] = static_cast<T>(g[k]);
        }
        opt.step(p, static_cast<T>(lrs[step - 1]));
        for (size_t i = 0; i < 3; ++i) {
            const std::vector<double> ref =
                as_doubles(f.get(fmt::format("{}.{}.{}", prefix, step, kNames[i])));
            for (size_t k = 0; k < ref.size(); ++k) {
                const double r = ref[k];
                const double ours = static_cast<double>(p.value(i)[k]);
                const double bound = 5 * (std::fabs(r) + 40 * lr_max) * u;
                ASSERT_LE(std::fabs(ours - r), bound) << prefix << " step " << step << " " << kNames[i] << "[" << k << "]";
                worst = std::max(worst, std::fabs(ours - r) / bound);
            }
        }
    }
    EXPECT_EQ(opt.step_count(), 5);
    std::printf("[ %s ] worst error: %.3f of the bound\n", prefix.c_str(), worst);
}

// A few parameters of assorted sizes (one spanning several optimizer chunks), random values.
template <typename T>
void random_params(Parameters<T>& p, uint64_t seed) {
    p.add("embed", {300, 257}, true);
    p.add("norm.weight", {257}, false);
    p.add("proj.weight", {33, 17}, true);
    p.add("A_log", {5, 3}, false);
    p.allocate();
    Rng rng(seed);
    for (size_t i = 0; i < p.specs().size(); ++i)
        for (int64_t k = 0; k < p.specs()[i].numel; ++k) {
            p.value(i)[k] = static_cast<T>(rng.normal());
            p.grad(i)[k] = static_cast<T>(rng.normal() * 0.01);
        }
}

template <typename T>
void new_grads(Parameters<T>& p, uint64_t seed) {
    Rng rng(seed);
    for (size_t i = 0; i < p.specs().size(); ++i)
        for (int64_t k = 0; k < p.specs()[i].numel; ++k) p.grad(i)[k] = static_cast<T>(rng.normal() * 0.01);
}

template <typename T>
std::vector<T> values_of(Parameters<T>& p) {
    return std::vector<T>(p.values(), p.values() + p.total());
}

struct ThreadsGuard {
    int saved = num_threads();
    ~ThreadsGuard() { set_num_threads(saved); }
};

}  // namespace

TEST(Optim, AdamWMatchesTorchFloat) { check_parity<float>("f32"); }
TEST(Optim, AdamWMatchesTorchDouble) { check_parity<double>("f64"); }

// With only decay, no gradient: decay params shrink by exactly (1 - lr·wd) in the first term,
// no-decay params see only the Adam term, which is zero for a zero gradient.
TEST(Optim, NoDecayParamsUntouchedByDecay) {
    Parameters<double> p;
    random_params(p, 1);
    p.zero_grad();
    std::vector<double> before = values_of(p);
    AdamW<double> opt(p, {.lr = 0.1, .weight_decay = 0.5});
    opt.step(p);
    for (size_t i = 0; i < p.specs().size(); ++i) {
        const ParamSpec& s = p.specs()[i];
        for (int64_t k = 0; k < s.numel; ++k) {
            const double b = before[s.offset + static_cast<size_t>(k)];
            if (s.decay)
                EXPECT_EQ(p.value(i)[k], b * (1 - 0.1 * 0.5)) << s.name;
            else
                EXPECT_EQ(p.value(i)[k], b) << s.name;
        }
    }
}

// Saving after 3 steps and loading into a fresh optimizer must give bitwise the same next steps.
TEST(Optim, StateRoundTripIsBitwise) {
    Parameters<float> a, b;
    random_params(a, 2);
    random_params(b, 2);
    AdamW<float> oa(a, {.lr = 1e-2});
    for (int s = 0; s < 3; ++s) {
        new_grads(a, 10 + s);
        oa.step(a, 1e-2f * static_cast<float>(s + 1));
    }
    std::memcpy(b.values(), a.values(), sizeof(float) * static_cast<size_t>(a.total()));
    auto state = oa.state_tensors();
    ASSERT_EQ(state.size(), 2 * a.specs().size() + 1);
    std::map<std::string, Tensor> by_name(state.begin(), state.end());
    EXPECT_EQ(by_name.at("adamw.m.embed").shape(), (Shape{300, 257}));
    EXPECT_EQ(by_name.at("adamw.v.A_log").dtype(), DType::F32);
    EXPECT_EQ(by_name.at("adamw.step").dtype(), DType::I64);
    EXPECT_EQ(by_name.at("adamw.step").data<int64_t>()[0], 3);
    AdamW<float> ob(b, {.lr = 1e-2});
    ob.load_state([&](const std::string& n) { return by_name.at(n); });
    EXPECT_EQ(ob.step_count(), 3);
    for (int s = 3; s < 6; ++s) {
        new_grads(a, 10 + s);
        new_grads(b, 10 + s);
        oa.step(a, 1e-2f);
        ob.step(b, 1e-2f);
    }
    EXPECT_EQ(std::memcmp(a.values(), b.values(), sizeof(float) * static_cast<size_t>(a.total())), 0);
}

TEST(Optim, LoadStateErrors) {
    Parameters<float> p;
    random_params(p, 3);
    AdamW<float> opt(p);
    auto state = opt.state_tensors();
    std::map<std::string, Tensor> by_name(state.begin(), state.end());
    auto get = [&](const std::string& n) { return by_name.count(n) ? by_name.at(n) : Tensor(); };

    by_name["adamw.v.proj.weight"] = Tensor::zeros({17, 33}, DType::F32);
    try {
        opt.load_state(get);
        FAIL() << "shape mismatch accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("adamw.v.proj.weight: shape (17, 33) in the checkpoint, (33, 17)"),
                  std::string::npos)
            << e.what();
    }
    by_name["adamw.v.proj.weight"] = Tensor::zeros({33, 17}, DType::F64);  // converted
    by_name.erase("adamw.m.A_log");
    try {
        opt.load_state(get);
        FAIL() << "missing tensor accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("adamw.m.A_log is missing"), std::string::npos) << e.what();
    }
    by_name["adamw.m.A_log"] = Tensor::zeros({5, 3}, DType::F32);
    by_name["adamw.step"] = Tensor::from_vector(std::vector<int64_t>{7}, Shape{});
    opt.load_state(get);
    EXPECT_EQ(opt.step_count(), 7);
}

TEST(Optim, ClipGradNormMatchesNaiveAndScales) {
    Parameters<float> p;
    random_params(p, 4);
    double naive = 0;
    for (size_t i = 0; i < p.specs().size(); ++i)
        for (int64_t k = 0; k < p.specs()[i].numel; ++k) naive += double(p.grad(i)[k]) * double(p.grad(i)[k]);
    naive = std::sqrt(naive);
    // Both sum the same float squares in double; only the association differs (~1e-16 each).
    const double norm = clip_grad_norm(p, 1e9);
    EXPECT_NEAR(norm, naive, 1e-12 * naive);
    EXPECT_EQ(grad_norm(p), norm) << "no scaling below max_norm";

    const double max_norm = norm / 4;
    EXPECT_EQ(clip_grad_norm(p, max_norm), norm);
    // New norm = max_norm·norm/(norm + 1e-6), up to fp32 rounding of each scaled gradient.
    EXPECT_NEAR(grad_norm(p), max_norm * norm / (norm + 1e-6), 1e-6 * max_norm);

    new_grads(p, 5);
    p.grad(2)[3] = std::numeric_limits<float>::quiet_NaN();
    const float kept = p.grad(0)[0];
    EXPECT_TRUE(std::isnan(clip_grad_norm(p, 1e-3)));
    EXPECT_EQ(p.grad(0)[0], kept) << "a non-finite norm leaves the gradients alone";
    p.grad(2)[3] = std::numeric_limits<float>::infinity();
    EXPECT_TRUE(std::isinf(clip_grad_norm(p, 1e-3)));
    EXPECT_THROW(clip_grad_norm(p, 0.0), Error);
}

TEST(Optim, ClipGradNormDeterministicAcrossThreads) {
    ThreadsGuard guard;
    Parameters<float> a, b;
    random_params(a, 6);
    random_params(b, 6);
    set_num_threads(1);
    const double na = clip_grad_norm(a, 0.1);
    set_num_threads(3);
    const double nb = clip_grad_norm(b, 0.1);
    EXPECT_EQ(na, nb);
    EXPECT_EQ(std::memcmp(a.grads(), b.grads(), sizeof(float) * static_cast<size_t>(a.total())), 0);
}

TEST(Optim, AdamWDeterministicAcrossThreads) {
    ThreadsGuard guard;
    Parameters<float> a, b;
    random_params(a, 7);
    random_params(b, 7);
    AdamW<float> oa(a), ob(b);
    set_num_threads(1);
    oa.step(a, 1e-3f);
    set_num_threads(3);
    ob.step(b, 1e-3f);
    EXPECT_EQ(std::memcmp(a.values(), b.values(), sizeof(float) * static_cast<size_t>(a.total())), 0);
}

TEST(Optim, RejectsForeignParameters) {
    Parameters<float> a, b;
    random_params(a, 8);
    b.add("x", {4}, true);
    b.allocate();
    AdamW<float> opt(a);
    EXPECT_THROW(opt.step(b, 1e-3f), Error);
    EXPECT_THROW(AdamW<float>(a, {.beta2 = 1.0}), Error);
}

TEST(Schedule, Warmup) {
    for (auto kind : {LrSchedule::Constant, LrSchedule::Cosine, LrSchedule::WSD}) {
        LrSchedule s{.kind = kind, .lr = 1.0, .min_lr = 0.1, .warmup = 10, .total = 100, .decay = 20};
        s.validate();
        EXPECT_DOUBLE_EQ(s.lr_at(0), 0.1);
        EXPECT_DOUBLE_EQ(s.lr_at(4), 0.5);
        EXPECT_DOUBLE_EQ(s.lr_at(9), 1.0);
        EXPECT_DOUBLE_EQ(s.lr_at(10), 1.0);
        for (int64_t t = 1; t < 10; ++t) EXPECT_GT(s.lr_at(t), s.lr_at(t - 1));
    }
}

TEST(Schedule, Constant) {
    LrSchedule s{.kind = LrSchedule::Constant, .lr = 3e-4};
    s.validate();
    EXPECT_EQ(s.lr_at(0), 3e-4);
    EXPECT_EQ(s.lr_at(1'000'000), 3e-4);
}

TEST(Schedule, Cosine) {
    LrSchedule s{.kind = LrSchedule::Cosine, .lr = 1.0, .min_lr = 0.1, .warmup = 10, .total = 110};
    s.validate();
    EXPECT_DOUBLE_EQ(s.lr_at(60), 0.55);  // halfway: cos = 0
    EXPECT_DOUBLE_EQ(s.lr_at(35), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI / 4)));
    EXPECT_DOUBLE_EQ(s.lr_at(110), 0.1);
    EXPECT_DOUBLE_EQ(s.lr_at(500), 0.1);
    for (int64_t t = 11; t <= 110; ++t) EXPECT_LT(s.lr_at(t), s.lr_at(t - 1)) << t;
}

TEST(Schedule, WSD) {
    LrSchedule s{.kind = LrSchedule::WSD, .lr = 1.0, .min_lr = 0.0, .warmup = 10, .total = 100, .decay = 20};
    s.validate();
    for (int64_t t = 10; t <= 80; ++t) EXPECT_EQ(s.lr_at(t), 1.0) << t;
    EXPECT_DOUBLE_EQ(s.lr_at(90), 0.5);
    EXPECT_NEAR(s.lr_at(99), 0.05, 1e-15);  // 1 - 0.95 rounds
    EXPECT_EQ(s.lr_at(100), 0.0);
    EXPECT_EQ(s.lr_at(1000), 0.0);
    for (int64_t t = 81; t <= 100; ++t) EXPECT_LT(s.lr_at(t), s.lr_at(t - 1)) << t;
}

TEST(Schedule, NoWarmup) {
    LrSchedule s{.kind = LrSchedule::Cosine, .lr = 2.0, .min_lr = 0, .warmup = 0, .total = 10};
    s.validate();
    EXPECT_EQ(s.lr_at(0), 2.0);
}

TEST(Schedule, ParseAndErrors) {
    EXPECT_EQ(LrSchedule::parse_kind("constant"), LrSchedule::Constant);
    EXPECT_EQ(LrSchedule::parse_kind("cosine"), LrSchedule::Cosine);
    EXPECT_EQ(LrSchedule::parse_kind("wsd"), LrSchedule::WSD);
    try {
        LrSchedule::parse_kind("linear");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'linear' (expected constant, cosine or wsd)"), std::string::npos);
    }
    auto bad = [](LrSchedule s) { EXPECT_THROW(s.validate(), Error); };
    bad({.kind = LrSchedule::Constant, .lr = 0});
    bad({.kind = LrSchedule::Constant, .lr = 1, .min_lr = 2});
    bad({.kind = LrSchedule::Constant, .lr = 1, .warmup = -1});
    bad({.kind = LrSchedule::Cosine, .lr = 1, .warmup = 10, .total = 10});
    bad({.kind = LrSchedule::WSD, .lr = 1, .warmup = 0, .total = 10, .decay = 0});
    bad({.kind = LrSchedule::WSD, .lr = 1, .warmup = 5, .total = 10, .decay = 6});
    LrSchedule s{.kind = LrSchedule::Cosine, .lr = 1, .total = 10};
    EXPECT_THROW(s.lr_at(-1), Error);
}
