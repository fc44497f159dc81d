#include "train/schedule.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace mslm {

void LrSchedule::validate() const {
    const std::string_view name = kind_name(kind);
    MSLM_CHECK(std::isfinite(lr) && lr > 0, "{} schedule: lr must be positive, got {}", name, lr);
    MSLM_CHECK(min_lr >= 0 && min_lr <= lr, "{} schedule: min_lr must be in [0, lr = {}], got {}", name, lr,
               min_lr);
    MSLM_CHECK(warmup >= 0, "{} schedule: warmup must be non-negative, got {}", name, warmup);
    if (kind == Cosine)
        MSLM_CHECK(total > warmup, "cosine schedule: total steps ({}) must exceed warmup ({})", total, warmup);
    if (kind == WSD) {
        MSLM_CHECK(decay > 0, "wsd schedule: decay steps must be positive, got {}", decay);
        MSLM_CHECK(warmup + decay <= total, "wsd schedule: warmup ({}) + decay ({}) exceeds total steps ({})",
                   warmup, decay, total);
    }
}

double LrSchedule::lr_at(int64_t step) const {
    MSLM_CHECK(step >= 0, "learning-rate schedule: step {} is negative", step);
    if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
    switch (kind) {
        case Constant:
            return lr;
        case Cosine: {
            if (step >= total) return min_lr;
            const double r = static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
            return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * r));
        }
        case WSD: {
            const int64_t start = total - decay;
            if (step < start) return lr;
            if (step >= total) return min_lr;
            const double r = static_cast<double>(step - start) / static_cast<double>(decay);
            return lr * (1.0 - r) + min_lr * r;
        }
    }
    fail("learning-rate schedule: unknown kind {}", static_cast<int>(kind));
}

LrSchedule::Kind LrSchedule::parse_kind(std::string_view name) {
    if (name == "constant") return Constant;
    if (name == "cosine") return Cosine;
    if (name == "wsd") return WSD;
    fail("unknown learning-rate schedule '{}' (expected constant, cosine or wsd)", name);
}

std::string_view LrSchedule::kind_name(Kind kind) {
    switch (kind) {
        case Constant:
            return "constant";
        case Cosine:
            return "cosine";
        case WSD:
            return "wsd";
    }
    return "unknown";
}

}  // namespace mslm
