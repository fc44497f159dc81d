// CUDA embedding and fused cross-entropy (ops/cuda/embedding.h, ops/cuda/cross_entropy.h) against the
// CPU reference ops run in double on the very values the kernels read. Every test exists in every
// build and skips, saying why, without CUDA or a GPU; the *Shapes suites need no GPU.
//
// Tolerances, with u = 2^-24 (fp32 unit roundoff):
// - Embedding forward is a copy: exact. Backward sums each table entry's run of c rows in fp32 onto
//   the starting value: ≤ (c + 1)·u of |dtable₀| + Σ|dout|, with c the longest run; + 2^-8·|result|
//   for bf16 (one rounding on store).
// - Cross-entropy forward sums exp(x − max) over a row in a block of ≤ 512 threads: each thread
//   adds ⌈V/512⌉ + 8 values at most (a 16-byte pack holds ≤ 8), then a tree of ≤ 9 levels merges
//   them; each step costs ≤ 4·u (expf's 2 ulp, a product, a sum). A relative error δ of the sum is
//   an absolute error δ of its log, so lse errs by ≤ 4·(⌈V/512⌉ + 18)·u + u·|lse| and the loss,
//   (max − logit) + log Σ, by that plus u·|max − logit|.
// - Backward: exp(x − lse)·dloss with x − lse rounded (u·|x − lse| in the exponent), expf (2 ulp)
//   and the product: (|x − lse| + 4)·u relative, one more u·|dloss| on the target's subtraction, a
//   floor of FLT_MIN·|dloss| where exp underflows to fp32 subnormals; + 2^-8·|result| for bf16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"

#ifdef MSLM_HAVE_CUDA
#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/embedding.h"
#endif

namespace {

using namespace mslm;

template <typename T>
class CudaEmbedding : public test::CudaTest {};
template <typename T>
class CudaCrossEntropy : public test::CudaTest {};

TYPED_TEST_SUITE(CudaEmbedding, test::Dtypes, test::DtypeNames);
TYPED_TEST_SUITE(CudaCrossEntropy, test::Dtypes, test::DtypeNames);

#ifdef MSLM_HAVE_CUDA

using namespace mslm::test;
using ops::cuda::IndexStatus;

const size_t kOffsets[] = {0, 1};

// (N, V, D): D = 1, 3 and 33 (and 33 for bf16) take the one-element path, 8 and 768 the vector one.
const int64_t kEmbeddingShapes[][3] = {{1, 1, 1},      {5, 7, 3},       {37, 100, 8},
                                       {300, 1000, 33}, {513, 1000, 768}, {4096, 50257, 64}};

std::string where3(int64_t N, int64_t V, int64_t D, size_t offset) {
    return "(N, V, D) = (" + std::to_string(N) + ", " + std::to_string(V) + ", " + std::to_string(D) +
           "), offset = " + std::to_string(offset);
}

// Ids with heavy repeats, as text has: a third from 5 frequent ids, one id repeated for a long run
// when N is large, the rest uniform over [0, V).
std::vector<int32_t> random_ids(Rng& rng, int64_t N, int64_t V) {
    std::vector<int32_t> ids(N);
    for (auto& id : ids) {
        const double u = rng.uniform();
        id = int32_t(u < 0.33 ? rng.below(std::min<uint64_t>(5, V)) : rng.below(V));
    }
    return ids;
}

template <typename T>
void expect_embedding_backward(Rng& rng, int64_t N, int64_t V, int64_t D, size_t offset) {
    const auto ids = random_ids(rng, N, V);
    const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
    const auto dtable0 = random_values<T>(rng, V * D, -1.0, 1.0);
    auto ref = decode_all(dtable0);
    const auto gd = decode_all(dout);
    ops::embedding_backward<double>(ref.data(), gd.data(), ids.data(), N, V, D);
    std::vector<double> scale(V * D);
    std::vector<int64_t> count(V);
    for (int64_t i = 0; i < V * D; ++i) scale[i] = std::abs(decode(dtable0[i]));
    for (int64_t n = 0; n < N; ++n) {
        ++count[ids[n]];
        for (int64_t d = 0; d < D; ++d) scale[ids[n] * D + d] += std::abs(gd[n * D + d]);
    }
    const int64_t longest = *std::max_element(count.begin(), count.end());

    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<T> d_dout(dout, offset), d_dtable(dtable0, offset);
    DeviceBytes workspace(ops::cuda::embedding_backward_workspace_bytes(N, V));
    DeviceBytes status(sizeof(IndexStatus));
    auto* st = static_cast<IndexStatus*>(status.get());
    ops::cuda::embedding_backward(d_dtable.get(), workspace.get(), d_dout.get(), d_ids.get(), N, V, D, st);
    EXPECT_NO_THROW(ops::cuda::embedding_check(st, V));
    EXPECT_TRUE(all_close(d_dtable.download(), ref, scale, double(longest + 1) * kU));
}

const int64_t kCeShapes[][2] = {{1, 1}, {3, 7}, {5, 33}, {17, 1000}, {64, 768}, {4, 50257}, {2, 131072}};

std::string where2(int64_t N, int64_t V, size_t offset) {
    return "(N, V) = (" + std::to_string(N) + ", " + std::to_string(V) + "), offset = " + std::to_string(offset);
}

// About a fifth of the rows ignored.
std::vector<int32_t> random_targets(Rng& rng, int64_t N, int64_t V) {
    std::vector<int32_t> t(N);
    for (auto& v : t) v = rng.uniform() < 0.2 ? ops::kIgnoreIndex : int32_t(rng.below(V));
    return t;
}

int64_t counted(const std::vector<int32_t>& targets) {
    return std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t != ops::kIgnoreIndex; });
}

double ce_rel(int64_t V) {
    return 4.0 * (std::ceil(double(V) / 512.0) + 18.0) * kU;
}

// Compares losses and lse of the kernel with the reference; logits decoded, (N, V).
::testing::AssertionResult ce_forward_close(const std::vector<float>& losses, const std::vector<float>& lse,
                                            const std::vector<double>& logits, const std::vector<int32_t>& targets,
                                            int64_t N, int64_t V) {
    std::vector<double> ref_loss(N), ref_lse(N), loss_scale(N), lse_scale(N);
    ops::cross_entropy_forward<double>(ref_loss.data(), ref_lse.data(), logits.data(), targets.data(), N, V);
    for (int64_t n = 0; n < N; ++n) {
        const double m = *std::max_element(logits.begin() + n * V, logits.begin() + (n + 1) * V);
        lse_scale[n] = 1.0 + std::abs(ref_lse[n]);
        loss_scale[n] = targets[n] == ops::kIgnoreIndex
                            ? 0.0
                            : 1.0 + std::abs(ref_lse[n] - m) + std::abs(m - logits[n * V + targets[n]]);
    }
    auto r = all_close(lse, ref_lse, lse_scale, ce_rel(V), false);
    if (!r) return r << " (lse)";
    r = all_close(losses, ref_loss, loss_scale, ce_rel(V), false);
    if (!r) return r << " (losses)";
    return ::testing::AssertionSuccess();
}

template <typename T>
::testing::AssertionResult ce_backward_close(const std::vector<T>& got, const std::vector<double>& logits,
                                             const std::vector<float>& lse, const std::vector<int32_t>& targets,
                                             int64_t N, int64_t V, float dloss) {
    std::vector<double> ref(N * V), scale(N * V, 0.0);
    const std::vector<double> lse_d(lse.begin(), lse.end());
    ops::cross_entropy_backward<double>(ref.data(), logits.data(), lse_d.data(), targets.data(), N, V,
                                        double(dloss));
    for (int64_t n = 0; n < N; ++n) {
        if (targets[n] == ops::kIgnoreIndex) continue;
        for (int64_t v = 0; v < V; ++v) {
            const double x = logits[n * V + v] - lse_d[n];
            scale[n * V + v] = (std::abs(x) + 4.0) * std::exp(x) * std::abs(dloss);
        }
        scale[n * V + targets[n]] += std::abs(dloss);
    }
    return all_close(got, ref, scale, kU, kBf16<T>, FLT_MIN * std::abs(dloss));
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaEmbedding, Forward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(1);
    for (const auto& shape : kEmbeddingShapes) {
        const int64_t N = shape[0], V = shape[1], D = shape[2];
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where3(N, V, D, offset));
            const auto ids = random_ids(rng, N, V);
            const auto table = random_values<T>(rng, V * D, -1.0, 1.0);
            std::vector<T> ref(N * D);
            for (int64_t n = 0; n < N; ++n) std::copy_n(table.begin() + ids[n] * D, D, ref.begin() + n * D);

            DeviceBuffer<int32_t> d_ids(ids);
            DeviceBuffer<T> d_table(table, offset), d_out(std::vector<T>(N * D), offset);
            DeviceBytes status(sizeof(IndexStatus));
            auto* st = static_cast<IndexStatus*>(status.get());
            ops::cuda::embedding_forward(d_out.get(), d_ids.get(), d_table.get(), N, V, D, st);
            EXPECT_NO_THROW(ops::cuda::embedding_check(st, V));
            EXPECT_EQ(d_out.download(), ref);
        }
    }
#endif
}

TYPED_TEST(CudaEmbedding, BackwardAccumulates) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(2);
    for (const auto& shape : kEmbeddingShapes) {
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where3(shape[0], shape[1], shape[2], offset));
            expect_embedding_backward<TypeParam>(rng, shape[0], shape[1], shape[2], offset);
        }
    }
#endif
}

// One id everywhere: a single run of all N rows, summed by one block.
TYPED_TEST(CudaEmbedding, BackwardOneIdEverywhere) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(3);
    const int64_t N = 3000, V = 10, D = 40;
    const std::vector<int32_t> ids(N, 7);
    const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
    const auto dtable0 = random_values<T>(rng, V * D, -1.0, 1.0);
    auto ref = decode_all(dtable0);
    ops::embedding_backward<double>(ref.data(), decode_all(dout).data(), ids.data(), N, V, D);
    std::vector<double> scale = decode_all(dtable0);
    for (auto& s : scale) s = std::abs(s);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < D; ++d) scale[7 * D + d] += std::abs(decode(dout[n * D + d]));

    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<T> d_dout(dout), d_dtable(dtable0);
    DeviceBytes workspace(ops::cuda::embedding_backward_workspace_bytes(N, V));
    ops::cuda::embedding_backward(d_dtable.get(), workspace.get(), d_dout.get(), d_ids.get(), N, V, D, nullptr);
    EXPECT_TRUE(all_close(d_dtable.download(), ref, scale, double(N + 1) * kU));
#endif
}

TYPED_TEST(CudaEmbedding, BackwardIsDeterministic) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(4);
    const int64_t N = 8192, V = 50257, D = 128;
    const auto ids = random_ids(rng, N, V);
    const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<T> d_dout(dout);
    DeviceBytes workspace(ops::cuda::embedding_backward_workspace_bytes(N, V));
    std::vector<T> first;
    for (int run = 0; run < 2; ++run) {
        DeviceBuffer<T> d_dtable(std::vector<T>(V * D));
        ops::cuda::embedding_backward(d_dtable.get(), workspace.get(), d_dout.get(), d_ids.get(), N, V, D, nullptr);
        if (run == 0) {
            first = d_dtable.download();
        } else {
            EXPECT_EQ(d_dtable.download(), first);
        }
    }
#endif
}

// Bad ids: the first by position is reported with the CPU reference's message; the forward fills
// their rows with NaN, the backward skips them, and every good id is served as usual.
TYPED_TEST(CudaEmbedding, BadIdsAreReported) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(5);
    const int64_t N = 40, V = 50, D = 16;
    auto ids = random_ids(rng, N, V);
    ids[31] = -1;
    ids[12] = int32_t(V);
    ids[20] = 1 << 30;
    const auto table = random_values<T>(rng, V * D, -1.0, 1.0);
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<T> d_table(table), d_out(std::vector<T>(N * D));
    DeviceBytes status(sizeof(IndexStatus));
    auto* st = static_cast<IndexStatus*>(status.get());

    ops::cuda::embedding_forward(d_out.get(), d_ids.get(), d_table.get(), N, V, D, st);
    try {
        ops::cuda::embedding_check(st, V);
        ADD_FAILURE() << "no error for bad ids";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("token id 50 at position 12 is outside the vocabulary [0, 50)"),
                  std::string::npos)
            << e.what();
    }
    const auto out = d_out.download();
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t d = 0; d < D; ++d) {
            const bool bad = n == 12 || n == 20 || n == 31;
            if (bad) {
                EXPECT_TRUE(std::isnan(decode(out[n * D + d]))) << "position " << n;
            } else {
                EXPECT_EQ(out[n * D + d], table[ids[n] * D + d]) << "position " << n;
            }
        }
    }

    // Backward: the reference with the bad positions' gradients zeroed.
    const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
    auto good_ids = ids;
    auto good_dout = decode_all(dout);
    for (int64_t n : {12, 20, 31}) {
        good_ids[n] = 0;
        std::fill_n(good_dout.begin() + n * D, D, 0.0);
    }
    std::vector<double> ref(V * D, 0.0), scale(V * D, 0.0);
    ops::embedding_backward<double>(ref.data(), good_dout.data(), good_ids.data(), N, V, D);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < D; ++d) scale[good_ids[n] * D + d] += std::abs(good_dout[n * D + d]);
    DeviceBuffer<T> d_dout(dout), d_dtable(std::vector<T>(V * D));
    DeviceBytes workspace(ops::cuda::embedding_backward_workspace_bytes(N, V));
    ops::cuda::embedding_backward(d_dtable.get(), workspace.get(), d_dout.get(), d_ids.get(), N, V, D, st);
    EXPECT_THROW(ops::cuda::embedding_check(st, V), Error);
    EXPECT_TRUE(all_close(d_dtable.download(), ref, scale, double(N + 1) * kU));

    // A later good call clears the record.
    ops::cuda::embedding_forward(d_out.get(), d_ids.get(), d_table.get(), 12, V, D, st);
    EXPECT_NO_THROW(ops::cuda::embedding_check(st, V));
#endif
}

TEST(CudaEmbeddingShapes, ErrorsAndEmpty) {
#ifndef MSLM_HAVE_CUDA
    GTEST_SKIP() << "built without CUDA";
#else
    float* f = nullptr;
    EXPECT_THROW(ops::cuda::embedding_forward<float>(f, nullptr, f, -1, 10, 4, nullptr), Error);
    EXPECT_THROW(ops::cuda::embedding_backward<float>(f, nullptr, f, nullptr, 4, 10, -4, nullptr), Error);
    EXPECT_THROW(ops::cuda::embedding_forward<float>(f, nullptr, f, 4, int64_t(1) << 32, 4, nullptr), Error);
    EXPECT_NO_THROW(ops::cuda::embedding_forward<uint16_t>(nullptr, nullptr, nullptr, 0, 10, 4, nullptr));
    EXPECT_NO_THROW(ops::cuda::embedding_backward<float>(f, nullptr, f, nullptr, 0, 10, 4, nullptr));
#endif
}

TYPED_TEST(CudaCrossEntropy, ForwardAndBackward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(11);
    for (const auto& shape : kCeShapes) {
        const int64_t N = shape[0], V = shape[1];
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where2(N, V, offset));
            const auto logits = random_values<T>(rng, N * V, -8.0, 8.0);
            const auto targets = random_targets(rng, N, V);
            const auto xd = decode_all(logits);

            DeviceBuffer<T> d_logits(logits, offset), d_dlogits(std::vector<T>(N * V), offset);
            DeviceBuffer<int32_t> d_targets(targets);
            DeviceBuffer<float> d_losses{std::vector<float>(N)}, d_lse{std::vector<float>(N)};
            DeviceBytes status(sizeof(IndexStatus));
            auto* st = static_cast<IndexStatus*>(status.get());
            ops::cuda::cross_entropy_forward(d_losses.get(), d_lse.get(), d_logits.get(), d_targets.get(), N, V,
                                             st);
            EXPECT_EQ(ops::cuda::cross_entropy_check(st, V), counted(targets));
            const auto lse = d_lse.download();
            EXPECT_TRUE(ce_forward_close(d_losses.download(), lse, xd, targets, N, V));

            const float dloss = 1.0f / float(std::max<int64_t>(1, counted(targets)));
            ops::cuda::cross_entropy_backward(d_dlogits.get(), d_logits.get(), d_lse.get(), d_targets.get(), N, V,
                                              dloss, st);
            EXPECT_EQ(ops::cuda::cross_entropy_check(st, V), 0);  // the backward counts nothing
            EXPECT_TRUE(ce_backward_close(d_dlogits.download(), xd, lse, targets, N, V, dloss));

            // In place over the logits.
            ops::cuda::cross_entropy_backward(d_logits.get(), d_logits.get(), d_lse.get(), d_targets.get(), N, V,
                                              dloss, nullptr);
            EXPECT_TRUE(ce_backward_close(d_logits.download(), xd, lse, targets, N, V, dloss)) << "in place";
            const std::vector<T> two_calls = d_logits.download();
            const std::vector<float> losses = d_losses.download();

            // Both in one pass: the two calls' losses, lse, count and gradient, bit for bit.
            DeviceBuffer<T> d_fused(logits, offset);
            DeviceBuffer<float> d_losses2{std::vector<float>(N)}, d_lse2{std::vector<float>(N)};
            ops::cuda::cross_entropy_forward_backward(d_losses2.get(), d_lse2.get(), d_fused.get(),
                                                      d_targets.get(), N, V, dloss, st);
            EXPECT_EQ(ops::cuda::cross_entropy_check(st, V), counted(targets)) << "fused";
            EXPECT_EQ(d_losses2.download(), losses) << "fused losses";
            EXPECT_EQ(d_lse2.download(), lse) << "fused lse";
            EXPECT_EQ(d_fused.download(), two_calls) << "fused gradient";
        }
    }
#endif
}

// Logits of ±1e4: every exponential is of a value ≤ 0, so nothing overflows, and the loss is
// (max − logit) + log Σ, not the difference of two numbers of 1e4.
TYPED_TEST(CudaCrossEntropy, ExtremeLogits) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(12);
    const int64_t N = 6, V = 1000;
    std::vector<T> logits(N * V);
    for (int64_t i = 0; i < N * V; ++i) {
        const double u = rng.uniform();
        logits[i] = encode<T>(u < 0.3 ? -1e4 : u < 0.35 ? 1e4 : rng.uniform(-1e4, 1e4));
    }
    // Row 0: all −1e4 except one; row 1: all equal; row 2 targets a −1e4 logit (a loss of ~2e4).
    for (int64_t v = 0; v < V; ++v) logits[v] = encode<T>(-1e4);
    logits[17] = encode<T>(1e4);
    for (int64_t v = 0; v < V; ++v) logits[V + v] = encode<T>(1e4);
    logits[2 * V + 3] = encode<T>(-1e4);
    logits[2 * V + 4] = encode<T>(1e4);
    const std::vector<int32_t> targets = {17, 5, 3, ops::kIgnoreIndex, 999, 0};
    const auto xd = decode_all(logits);

    DeviceBuffer<T> d_logits(logits);
    DeviceBuffer<int32_t> d_targets(targets);
    DeviceBuffer<float> d_losses{std::vector<float>(N)}, d_lse{std::vector<float>(N)};
    ops::cuda::cross_entropy_forward(d_losses.get(), d_lse.get(), d_logits.get(), d_targets.get(), N, V, nullptr);
    const auto losses = d_losses.download(), lse = d_lse.download();
    for (int64_t n = 0; n < N; ++n) EXPECT_TRUE(std::isfinite(losses[n]) && std::isfinite(lse[n])) << "row " << n;
    EXPECT_TRUE(ce_forward_close(losses, lse, xd, targets, N, V));

    const float dloss = 0.2f;
    ops::cuda::cross_entropy_backward(d_logits.get(), d_logits.get(), d_lse.get(), d_targets.get(), N, V, dloss,
                                      nullptr);
    EXPECT_TRUE(ce_backward_close(d_logits.download(), xd, lse, targets, N, V, dloss));
#endif
}

// A target outside [0, V) that is not the ignore index: reported (the first by row, with the CPU
// reference's message), NaN loss and zero gradients on its row, every other row as usual.
TYPED_TEST(CudaCrossEntropy, BadTargetsAreReported) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(13);
    const int64_t N = 9, V = 100;
    const auto logits = random_values<T>(rng, N * V, -4.0, 4.0);
    std::vector<int32_t> targets = random_targets(rng, N, V);
    targets[2] = int32_t(V);
    targets[6] = -1;
    targets[0] = 1;
    DeviceBuffer<T> d_logits(logits), d_dlogits(std::vector<T>(N * V));
    DeviceBuffer<int32_t> d_targets(targets);
    DeviceBuffer<float> d_losses{std::vector<float>(N)}, d_lse{std::vector<float>(N)};
    DeviceBytes status(sizeof(IndexStatus));
    auto* st = static_cast<IndexStatus*>(status.get());
    ops::cuda::cross_entropy_forward(d_losses.get(), d_lse.get(), d_logits.get(), d_targets.get(), N, V, st);
    try {
        ops::cuda::cross_entropy_check(st, V);
        ADD_FAILURE() << "no error for bad targets";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("target 100 at row 2 is outside the vocabulary [0, 100)"),
                  std::string::npos)
            << e.what();
    }
    const auto losses = d_losses.download();
    EXPECT_TRUE(std::isnan(losses[2]) && std::isnan(losses[6]));

    auto good = targets;
    good[2] = good[6] = ops::kIgnoreIndex;  // the reference: those rows' gradients are zero
    const auto xd = decode_all(logits);
    std::vector<double> ref_loss(N), ref_lse(N);
    ops::cross_entropy_forward<double>(ref_loss.data(), ref_lse.data(), xd.data(), good.data(), N, V);
    for (int64_t n : {0, 1, 3, 4, 5, 7, 8}) EXPECT_NEAR(losses[n], ref_loss[n], 1e-5 * (1 + ref_loss[n]));

    const auto lse = d_lse.download();
    ops::cuda::cross_entropy_backward(d_dlogits.get(), d_logits.get(), d_lse.get(), d_targets.get(), N, V, 0.5f,
                                      st);
    EXPECT_THROW(ops::cuda::cross_entropy_check(st, V), Error);
    EXPECT_TRUE(ce_backward_close(d_dlogits.download(), xd, lse, good, N, V, 0.5f));
#endif
}

TYPED_TEST(CudaCrossEntropy, AllRowsIgnored) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(14);
    const int64_t N = 5, V = 64;
    const auto logits = random_values<T>(rng, N * V, -4.0, 4.0);
    const std::vector<int32_t> targets(N, ops::kIgnoreIndex);
    DeviceBuffer<T> d_logits(logits);
    DeviceBuffer<int32_t> d_targets(targets);
    DeviceBuffer<float> d_losses(std::vector<float>(N, 7.0f)), d_lse{std::vector<float>(N)};
    DeviceBytes status(sizeof(IndexStatus));
    auto* st = static_cast<IndexStatus*>(status.get());
    ops::cuda::cross_entropy_forward(d_losses.get(), d_lse.get(), d_logits.get(), d_targets.get(), N, V, st);
    EXPECT_EQ(ops::cuda::cross_entropy_check(st, V), 0);
    EXPECT_EQ(d_losses.download(), std::vector<float>(N, 0.0f));
    ops::cuda::cross_entropy_backward(d_logits.get(), d_logits.get(), d_lse.get(), d_targets.get(), N, V, 1.0f, st);
    EXPECT_EQ(d_logits.download(), std::vector<T>(N * V, encode<T>(0.0)));
#endif
}

TEST(CudaCrossEntropyShapes, ErrorsAndEmpty) {
#ifndef MSLM_HAVE_CUDA
    GTEST_SKIP() << "built without CUDA";
#else
    float* f = nullptr;
    EXPECT_THROW(ops::cuda::cross_entropy_forward<float>(f, f, f, nullptr, 4, 0, nullptr), Error);
    EXPECT_THROW(ops::cuda::cross_entropy_backward<float>(f, f, f, nullptr, -1, 10, 1.0f, nullptr), Error);
    EXPECT_NO_THROW(ops::cuda::cross_entropy_forward<uint16_t>(f, f, nullptr, nullptr, 0, 10, nullptr));
    EXPECT_NO_THROW(ops::cuda::cross_entropy_backward<float>(f, f, f, nullptr, 0, 10, 1.0f, nullptr));
#endif
}

}  // namespace
