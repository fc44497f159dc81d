#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

using namespace mslm;

TEST(Tensor, ShapeStridesAndViews) {
    Tensor t = Tensor::empty({2, 3, 4}, DType::F32);
    EXPECT_EQ(t.numel(), 24);
    EXPECT_EQ(t.stride(0), 12);
    EXPECT_EQ(t.stride(-1), 1);
    EXPECT_TRUE(t.is_contiguous());
    float* p = t.data<float>();
    std::iota(p, p + 24, 0.0f);

    Tensor v = t.view({6, -1});
    EXPECT_EQ(v.shape(), (Shape{6, 4}));
    EXPECT_EQ(v.storage(), t.storage());

    Tensor s = t.slice(1, 1, 3);  // (2, 2, 4)
    EXPECT_FALSE(s.is_contiguous());
    int64_t idx[] = {1, 0, 2};
    EXPECT_EQ(s.item_at(idx), 12 + 4 + 2);

    Tensor tr = t.transpose(0, 2);  // (4, 3, 2)
    int64_t idx2[] = {3, 2, 1};
    EXPECT_EQ(tr.item_at(idx2), 1 * 12 + 2 * 4 + 3);
    Tensor c = tr.contiguous();
    EXPECT_TRUE(c.is_contiguous());
    EXPECT_EQ(c.item_at(idx2), tr.item_at(idx2));

    Tensor sel = t.select(0, 1);  // (3, 4)
    EXPECT_EQ(sel.shape(), (Shape{3, 4}));
    int64_t idx3[] = {2, 3};
    EXPECT_EQ(sel.item_at(idx3), 23);

    EXPECT_THROW(t.view({5, 5}), Error);
    EXPECT_THROW(tr.view({24}), Error);
    EXPECT_THROW(t.slice(1, 2, 5), Error);
    EXPECT_THROW(t.data<int32_t>(), Error);
}

TEST(Tensor, DtypeConversionsRoundTrip) {
    Tensor f = Tensor::from_vector<float>({0.0f, 1.0f, -2.5f, 3.140625f, 65504.0f, 1e-7f}, {6});
    Tensor h = f.to(DType::F16).to(DType::F32);
    Tensor b = f.to(DType::BF16).to(DType::F32);
    auto hv = h.to_float_vector();
    auto bv = b.to_float_vector();
    EXPECT_EQ(hv[2], -2.5f);
    EXPECT_EQ(hv[3], 3.140625f);
    EXPECT_EQ(hv[4], 65504.0f);
    EXPECT_NEAR(hv[5], 1e-7f, 6e-8f);  // f16 subnormal: spacing 2^-24 ≈ 6e-8
    EXPECT_EQ(bv[3], 3.140625f);        // 3.140625 = 0b11.001001 fits in bf16's 8 bits
    EXPECT_EQ(bv[1], 1.0f);
}

TEST(DType, HalfRoundingIsNearestEven) {
    // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 in f16: ties go to the even mantissa (1).
    EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 0x1.0p-11f)), 1.0f);
    EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 3 * 0x1.0p-11f)), 1.0f + 0x1.0p-9f);
    EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
    EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
    // Every f16 bit pattern survives f16 -> f32 -> f16 (NaNs excepted).
    for (uint32_t h = 0; h < 0x10000; ++h) {
        float f = f16_to_f32(static_cast<uint16_t>(h));
        if (std::isnan(f)) continue;
        ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
    }
}

// fill_normal gives the values of n calls to normal(mean, std), bit for bit, and leaves the same
// state (spare included): with and without a spare at the start, odd and even counts, across the
// chunk boundary (2^18 pairs), in float and double, on 1 and on 3 threads.
template <typename T>
void expect_fill_is_calls(int64_t n, bool spare_first, double mean, double std) {
    Rng a(11), b(11);
    if (spare_first) {
        (void)a.normal();
        (void)b.normal();
    }
    std::vector<T> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
    a.fill_normal(got.data(), n, mean, std);
    for (auto& v : want) v = static_cast<T>(b.normal(mean, std));
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += std::memcmp(&got[i], &want[i], sizeof(T)) != 0;
    EXPECT_EQ(differ, 0) << "n " << n << (spare_first ? " after a spare" : "");
    EXPECT_EQ(a.state(), b.state()) << "n " << n;
}

TEST(Rng, FillNormalIsTheCallsInARow) {
    const int saved = num_threads();
    for (int threads : {1, 3}) {
        set_num_threads(threads);
        for (int64_t n : {int64_t(0), int64_t(1), int64_t(2), int64_t(7), int64_t(4096 * 2 + 3),
                          int64_t(1) << 19, (int64_t(1) << 19) + 5})
            for (bool spare : {false, true}) {
                expect_fill_is_calls<float>(n, spare, 0.0, 0.02);
                expect_fill_is_calls<double>(n, spare, 0.5, 1.7);
            }
    }
    set_num_threads(saved);
}

TEST(Rng, DeterministicAndRestorable) {
    Rng a(42), b(42), c(43);
    EXPECT_EQ(a.next_u64(), b.next_u64());
    EXPECT_NE(a.next_u64(), c.next_u64());
    a.normal();  // leaves a spare normal cached
    Rng::State st = a.state();
    double x1 = a.normal(), x2 = a.normal();
    a.set_state(st);
    EXPECT_EQ(a.normal(), x1);
    EXPECT_EQ(a.normal(), x2);

    // Moments of 200k normals: mean within 5 sigma of 0 (sigma = 1/sqrt(n) ≈ 0.0022).
    Rng r(7);
    double sum = 0, sq = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
        double v = r.normal();
        sum += v;
        sq += v * v;
    }
    EXPECT_NEAR(sum / n, 0.0, 0.0112);
    EXPECT_NEAR(sq / n, 1.0, 0.016);  // var of x² is 2: sigma ≈ 0.0032, 5 sigma
}

TEST(ThreadPool, CoversRangeOnceAndPropagatesErrors) {
    std::vector<std::atomic<int>> hits(1000);
    parallel_for(1000, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);

    // Nested calls run inline instead of deadlocking.
    std::atomic<int> total{0};
    parallel_for(8, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
            parallel_for(10, [&](int64_t b2, int64_t e2) { total += static_cast<int>(e2 - b2); });
    });
    EXPECT_EQ(total.load(), 80);

    EXPECT_THROW(parallel_for(100, [](int64_t b, int64_t) {
                     if (b == 0) fail("boom");
                 }),
                 Error);
}

TEST(ThreadPool, ResizeTakesEffect) {
    int before = num_threads();
    set_num_threads(3);
    EXPECT_EQ(num_threads(), 3);
    set_num_threads(before);
    EXPECT_EQ(num_threads(), before);
    EXPECT_THROW(set_num_threads(0), Error);
}
