// Deterministic random numbers: xoshiro256** seeded through splitmix64. The same seed gives the
// same stream on every machine and thread count; the state is four words that a checkpoint can
// save and restore.
#pragma once
#include <array>
#include <cstdint>

namespace mslm {

class Rng {
public:
    explicit Rng(uint64_t seed = 0) { seed_with(seed); }
    void seed_with(uint64_t seed);

    uint64_t next_u64();
    double uniform();                        // [0, 1), 53 random bits
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    double normal();                         // N(0, 1), Box-Muller (both values used)
    double normal(double mean, double std) { return mean + std * normal(); }
    uint64_t below(uint64_t n);              // uniform integer in [0, n), unbiased
    // out[i] = T(normal(mean, std)) for i < n: the values, and the state after, of n calls in a
    // row — the uniform draws stay sequential, the Box–Muller transforms run on the thread pool.
    template <typename T>
    void fill_normal(T* out, int64_t n, double mean, double std);

    using State = std::array<uint64_t, 6>;   // 4 xoshiro words, spare-normal flag, its bits
    State state() const;
    void set_state(const State& s);

private:
    uint64_t s_[4];
    bool has_spare_ = false;
    double spare_ = 0.0;
};

}  // namespace mslm
