// Finite-difference gradient checking in double precision, shared by the op and model tests.
//
// Central differences with step h have truncation error O(h² · f''') and rounding error
// O(ε · |L| / h) with ε = 2^-52 ≈ 2.2e-16. With h = 1e-5 and losses of order 1–10 both are
// below ~1e-9 in absolute terms, so an analytic gradient that is right agrees to a relative error
// of about 1e-7 or better on entries that are not tiny; a wrong formula is off by O(1). The
// tests use 1e-6 relative (with an absolute floor for near-zero entries) unless they argue
// otherwise next to the call.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace mslm::test {

inline std::vector<double> random_vector(Rng& rng, size_t n, double scale = 1.0) {
    std::vector<double> v(n);
    for (auto& x : v) x = scale * rng.normal();
    return v;
}

inline std::vector<double> random_uniform(Rng& rng, size_t n, double lo, double hi) {
    std::vector<double> v(n);
    for (auto& x : v) x = rng.uniform(lo, hi);
    return v;
}

// d loss / d x by central differences, perturbing x in place (restored afterwards).
inline std::vector<double> numeric_gradient(std::vector<double>& x, const std::function<double()>& loss,
                                            double h = 1e-5) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        double saved = x[i];
        x[i] = saved + h;
        double lp = loss();
        x[i] = saved - h;
        double lm = loss();
        x[i] = saved;
        g[i] = (lp - lm) / (2 * h);
    }
    return g;
}

// Largest |a − n| / max(|a|, |n|, floor) over the entries.
inline double max_relative_error(const std::vector<double>& analytic, const std::vector<double>& numeric,
                                 double floor = 1e-6) {
    double worst = 0;
    for (size_t i = 0; i < analytic.size(); ++i) {
        double denom = std::max({std::fabs(analytic[i]), std::fabs(numeric[i]), floor});
        worst = std::max(worst, std::fabs(analytic[i] - numeric[i]) / denom);
    }
    return worst;
}

inline void expect_gradient_close(const std::string& name, const std::vector<double>& analytic,
                                  const std::vector<double>& numeric, double tol = 1e-6, double floor = 1e-6) {
    ASSERT_EQ(analytic.size(), numeric.size()) << name;
    double err = max_relative_error(analytic, numeric, floor);
    EXPECT_LT(err, tol) << "gradient of " << name << ": max relative error " << err;
    // A gradient check on an all-zero gradient proves nothing: make sure something flows.
    double norm = 0;
    for (double v : numeric) norm = std::max(norm, std::fabs(v));
    EXPECT_GT(norm, 0.0) << "gradient of " << name << " is identically zero: the check would be vacuous";
}

// Sum of out[i] · probe[i]: a scalar loss whose gradient with respect to out is `probe`, so a
// random probe exercises every output entry.
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

}  // namespace mslm::test
