#include "core/rng.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <vector>

#include "core/thread_pool.h"

namespace mslm {
namespace {

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

}  // namespace

void Rng::seed_with(uint64_t seed) {
    uint64_t x = seed;
    for (auto& w : s_) w = splitmix64(x);
    has_spare_ = false;
}

uint64_t Rng::next_u64() {
    uint64_t result = rotl(s_[1] * 5, 7) * 9;
    uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

double Rng::normal() {
    if (has_spare_) {
        has_spare_ = false;
        return spare_;
    }
    double u1 = uniform();
    double u2 = uniform();
    double r = std::sqrt(-2.0 * std::log(1.0 - u1));  // 1 - u1 in (0, 1]: log never sees 0
    double theta = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(theta);
    has_spare_ = true;
    return r * std::cos(theta);
}

template <typename T>
void Rng::fill_normal(T* out, int64_t n, double mean, double std) {
    int64_t i = 0;
    if (n > 0 && has_spare_) {
        has_spare_ = false;
        out[i++] = static_cast<T>(mean + std * spare_);
    }
    constexpr int64_t kChunk = int64_t(1) << 18;  // pairs drawn, then transformed, at a time
    std::vector<uint64_t> bits;
    while (i < n) {
        const int64_t left = n - i, pairs = std::min(kChunk, (left + 1) / 2);
        bits.resize(static_cast<size_t>(2 * pairs));
        for (auto& b : bits) b = next_u64();  // u1 then u2 of each pair, as normal() draws them
        T* dst = out + i;
        double last_sine = 0.0;  // the chunk's last pair's: normal() leaves it in spare_ either way
        parallel_for(
            pairs,
            [&](int64_t p0, int64_t p1) {
                for (int64_t p = p0; p < p1; ++p) {  // normal()'s arithmetic, expression for expression
                    const double u1 = static_cast<double>(bits[static_cast<size_t>(2 * p)] >> 11) * 0x1.0p-53;
                    const double u2 =
                        static_cast<double>(bits[static_cast<size_t>(2 * p + 1)] >> 11) * 0x1.0p-53;
                    const double r = std::sqrt(-2.0 * std::log(1.0 - u1));
                    const double theta = 2.0 * std::numbers::pi * u2;
                    const double sine = r * std::sin(theta), cosine = r * std::cos(theta);
                    dst[2 * p] = static_cast<T>(mean + std * cosine);
                    if (2 * p + 1 < left) dst[2 * p + 1] = static_cast<T>(mean + std * sine);
                    if (p == pairs - 1) last_sine = sine;
                }
            },
            4096);
        spare_ = last_sine;
        has_spare_ = 2 * pairs > left;  // the last pair's sine not used: the next call's
        i += std::min(2 * pairs, left);
    }
}
template void Rng::fill_normal<float>(float*, int64_t, double, double);
template void Rng::fill_normal<double>(double*, int64_t, double, double);

uint64_t Rng::below(uint64_t n) {
    if (n == 0) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // reject the biased tail
    uint64_t x;
    do x = next_u64();
    while (x >= limit);
    return x % n;
}

Rng::State Rng::state() const {
    uint64_t spare_bits;
    std::memcpy(&spare_bits, &spare_, sizeof spare_bits);
    return {s_[0], s_[1], s_[2], s_[3], has_spare_ ? 1u : 0u, spare_bits};
}

void Rng::set_state(const State& st) {
    for (int i = 0; i < 4; ++i) s_[i] = st[i];
    has_spare_ = st[4] != 0;
    std::memcpy(&spare_, &st[5], sizeof spare_);
}

}  // namespace mslm
