// The GPU's 4-bit dequantization (ops/cuda/nf4_dequant.h), QLoRA's frozen base on CUDA, against the
// CPU's bitsandbytes dequantization (quant::bnb4_tensor_dequantize) rounded to bf16. Both compute
// code · absmax (the absmax first restored as map[q] · nested_absmax + offset with double
// quantization) as the same fp32 operations in the same order, without fused multiply-adds, then
// round once to bf16 (a float16 quant state rounds to fp16 before): the results must be equal bit
// for bit, so the test asserts equality. Sizes cover odd counts (a half-filled last byte), partial
// last blocks, several nested blocks of 256 absmax values, and misaligned output.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "ops/cuda/nf4_dequant.h"
#include "quant/bnb.h"

namespace {

using namespace mslm;

using CudaNf4Dequant = test::CudaTest;

#ifdef MSLM_HAVE_CUDA
std::vector<uint16_t> cpu_reference(const quant::Bnb4Tensor& t) {
    std::vector<float> f(static_cast<size_t>(t.n));
    quant::bnb4_tensor_dequantize(t, f);
    std::vector<uint16_t> out(f.size());
    for (size_t i = 0; i < f.size(); ++i) out[i] = f32_to_bf16(f[i]);
    return out;
}

std::vector<uint16_t> gpu_dequantize(const quant::Bnb4Tensor& t, size_t out_offset) {
    test::DeviceBuffer<uint8_t> codes(t.codes);
    test::DeviceBuffer<float> absmax(t.double_quant ? std::vector<float>{0.0f} : t.absmax);
    test::DeviceBuffer<uint8_t> absmax_q(t.double_quant ? t.nested.q : std::vector<uint8_t>{0});
    test::DeviceBuffer<float> nested(t.double_quant ? t.nested.nested_absmax : std::vector<float>{0.0f});
    test::DeviceBuffer<uint16_t> out(std::vector<uint16_t>(static_cast<size_t>(t.n)), out_offset);
    ops::cuda::Bnb4DeviceTensor d;
    d.codes = codes.get();
    if (t.double_quant) {
        d.absmax_q = absmax_q.get();
        d.nested_absmax = nested.get();
        d.offset = t.nested.offset;
    } else {
        d.absmax = absmax.get();
    }
    d.n = t.n;
    d.blocksize = t.blocksize;
    d.round_f16 = t.dtype == "float16";
    d.code = quant::bnb4_code(t.type);
    d.dynamic_map = quant::bnb_dynamic_map();
    ops::cuda::bnb4_dequantize_bf16(out.get(), d);
    return out.download();
}
#endif

TEST_F(CudaNf4Dequant, EqualsTheCpuDequantizationRoundedToBf16) {
#ifdef MSLM_HAVE_CUDA
    struct Case {
        int64_t n, blocksize;
        quant::Bnb4Type type;
        bool double_quant;
        const char* dtype;
    };
    const Case cases[] = {
        {64 * 300 + 17, 64, quant::Bnb4Type::NF4, true, "float32"},  // 302 blocks: 2 nested blocks, odd n
        {64 * 300 + 17, 64, quant::Bnb4Type::NF4, false, "float32"},
        {128 * 40 + 64, 128, quant::Bnb4Type::FP4, true, "float32"},
        {4096 * 3 + 1, 4096, quant::Bnb4Type::FP4, false, "float32"},
        {64 * 520, 64, quant::Bnb4Type::NF4, true, "bfloat16"},
        {64 * 520 + 3, 64, quant::Bnb4Type::NF4, true, "float16"},
    };
    Rng rng(7);
    for (const Case& c : cases) {
        std::vector<float> x(static_cast<size_t>(c.n));
        // Per-block scales over three decades, as weights of different rows have.
        for (size_t i = 0; i < x.size(); ++i)
            x[i] =
                static_cast<float>(rng.normal(0.0, 1.0) * std::pow(10.0, -static_cast<double>(i / 64 % 3)));
        quant::Bnb4Tensor t = quant::bnb4_tensor_quantize(x, c.type, c.blocksize, c.double_quant);
        t.dtype = c.dtype;
        const std::vector<uint16_t> want = cpu_reference(t);
        for (size_t offset : {size_t{0}, size_t{1}}) {
            const std::vector<uint16_t> got = gpu_dequantize(t, offset);
            ASSERT_EQ(got.size(), want.size());
            size_t mismatches = 0, first = 0;
            for (size_t i = 0; i < got.size(); ++i)
                if (got[i] != want[i] && mismatches++ == 0) first = i;
            EXPECT_EQ(mismatches, 0u)
                << "n " << c.n << " blocksize " << c.blocksize << " dq " << c.double_quant << " dtype "
                << c.dtype << " offset " << offset << ": first at " << first;
        }
    }
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
