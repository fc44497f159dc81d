// Helpers for the CUDA kernel tests that compare with a double-precision reference. The typed
// fixture base, DtypeNames and Dtypes exist in every build, so that every test is declared and
// skips, saying why, without CUDA or a GPU; bf16/f32 encoding, random inputs, device buffers and
// the tolerance checks are only for builds with CUDA.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "core/cuda_device.h"

namespace mslm::test {

// Base of the typed CUDA fixtures: skips, saying why, when there is no GPU (or no CUDA build).
class CudaTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    }
};

struct DtypeNames {
    template <typename T>
    static std::string GetName(int) {
        return std::is_same_v<T, float> ? "f32" : "bf16";
    }
};
using Dtypes = ::testing::Types<float, uint16_t>;  // uint16_t: bf16 bits, as in core/dtype.h

}  // namespace mslm::test

#ifdef MSLM_HAVE_CUDA
#include <cfloat>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"

namespace mslm::test {

template <typename T>
constexpr bool kBf16 = std::is_same_v<T, uint16_t>;  // uint16_t: bf16 bits, as in core/dtype.h

constexpr double kU = 0x1p-24;  // unit roundoff of fp32

template <typename T>
T encode(double v) {
    if constexpr (kBf16<T>) {
        return f32_to_bf16(static_cast<float>(v));
    } else {
        return static_cast<T>(v);
    }
}

template <typename T>
double decode(T v) {
    if constexpr (kBf16<T>) {
        return bf16_to_f32(v);
    } else {
        return static_cast<double>(v);
    }
}

template <typename T>
std::vector<double> decode_all(const std::vector<T>& v) {
    std::vector<double> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = decode(v[i]);
    return out;
}

template <typename T>
std::vector<T> random_values(Rng& rng, size_t n, double lo = -1.0, double hi = 1.0) {
    std::vector<T> v(n);
    for (auto& x : v) x = encode<T>(rng.uniform(lo, hi));
    return v;
}

// A device copy of `host` placed `offset` elements past a cudaMalloc base (256-byte aligned):
// offset 0 lets kernels take their 16-byte vector paths, offset 1 misaligns the pointer and forces
// the one-element paths.
template <typename T>
class DeviceBuffer {
public:
    DeviceBuffer(const std::vector<T>& host, size_t offset = 0)
        : base_(cuda_malloc((host.size() + offset) * sizeof(T) + 1)),
          data_(static_cast<T*>(base_) + offset),
          n_(host.size()) {
        upload(host);
    }
    // n zeros.
    explicit DeviceBuffer(size_t n) : DeviceBuffer(std::vector<T>(n)) {}
    ~DeviceBuffer() { cuda_free(base_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    T* get() const { return data_; }
    size_t size() const { return n_; }
    // `host` must hold size() elements.
    void upload(const std::vector<T>& host) {
        if (n_ > 0) cuda_copy(data_, host.data(), n_ * sizeof(T), CopyKind::HostToDevice);
    }
    std::vector<T> download() const {
        std::vector<T> host(n_);
        if (n_ > 0) cuda_copy(host.data(), data_, n_ * sizeof(T), CopyKind::DeviceToHost);
        return host;
    }

private:
    void* base_;
    T* data_;
    size_t n_;
};

// Untyped GPU scratch memory (workspaces, status words).
class DeviceBytes {
public:
    explicit DeviceBytes(size_t bytes) : p_(cuda_malloc(bytes + 1)) {}
    ~DeviceBytes() { cuda_free(p_); }
    DeviceBytes(const DeviceBytes&) = delete;
    DeviceBytes& operator=(const DeviceBytes&) = delete;
    void* get() const { return p_; }

private:
    void* p_;
};

// |got − ref| ≤ tol, element by element; reports the first few misses.
template <typename G>
::testing::AssertionResult all_within(const std::vector<G>& got, const std::vector<double>& ref,
                                      const std::vector<double>& tol) {
    if (got.size() != ref.size() || tol.size() != ref.size())
        return ::testing::AssertionFailure() << "size " << got.size() << " vs " << ref.size();
    size_t misses = 0;
    std::string first;
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = decode(got[i]);
        if (std::abs(g - ref[i]) <= tol[i]) continue;  // false for NaN
        if (++misses <= 5) {
            first += "\n  [" + std::to_string(i) + "] got " + std::to_string(g) + ", want " +
                     std::to_string(ref[i]) + " ± " + std::to_string(tol[i]);
        }
    }
    if (misses == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << misses << " of " << got.size() << " outside tolerance:" << first;
}

// |got − ref| ≤ rel · scale + floor, + 2^-8 · |ref| when `bf16_out` (one rounding to bf16 on
// store). `scale` is the sum of the magnitudes the result was built from, so that cancellation does
// not make a relative bound meaningless.
template <typename G>
::testing::AssertionResult all_close(const std::vector<G>& got, const std::vector<double>& ref,
                                     const std::vector<double>& scale, double rel, bool bf16_out,
                                     double floor = 0.0) {
    if (scale.size() != ref.size())
        return ::testing::AssertionFailure() << "size " << scale.size() << " vs " << ref.size();
    std::vector<double> tol(ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
        tol[i] = rel * scale[i] + floor;
        if (bf16_out) tol[i] += 0x1p-8 * std::abs(ref[i]);
    }
    return all_within(got, ref, tol);
}

template <typename T>
::testing::AssertionResult all_close(const std::vector<T>& got, const std::vector<double>& ref,
                                     const std::vector<double>& scale, double rel) {
    return all_close(got, ref, scale, rel, kBf16<T>);
}

}  // namespace mslm::test

#endif  // MSLM_HAVE_CUDA
