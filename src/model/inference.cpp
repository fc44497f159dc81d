#include "model/inference.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "ops/ssd.h"

namespace mslm {

bool bf16_decode_state_requested() {
    const char* v = std::getenv("MSLM_DECODE_STATE");
    const std::string value = v ? v : "";
    MSLM_CHECK(value.empty() || value == "f32" || value == "bf16",
               "MSLM_DECODE_STATE={}: expected f32 (the default) or bf16", value);
    return value == "bf16";
}

bool cpu_bf16_ssm_state(const ModelConfig& cfg) {
    return bf16_decode_state_requested() && cfg.count(LayerKind::Mamba) > 0 && cfg.mamba.version == 2 &&
           ops::ssd_update_bf16_state_supported(cfg.mamba.d_state);
}

template <typename T>
InferenceState<T>::InferenceState(const ModelConfig& cfg, int64_t slots, int64_t max_len)
    : slots_(slots), max_len_(max_len) {
    cfg.validate();
    MSLM_CHECK(slots > 0, "inference state: {} slots (need at least 1)", slots);
    MSLM_CHECK(max_len > 0, "inference state: max_len {} (need at least 1)", max_len);
    MSLM_CHECK(max_len <= cfg.max_seq_len, "inference state: max_len {} is above the model's max_seq_len {}",
               max_len, cfg.max_seq_len);
    const int64_t window = cfg.attention.sliding_window;
    cache_len_ = window > 0 ? std::min(window, max_len) : max_len;
    pos_.assign(static_cast<size_t>(slots), 0);
    layers_.resize(cfg.layers.size());
    for (size_t l = 0; l < cfg.layers.size(); ++l) {
        LayerState& s = layers_[l];
        if (cfg.layers[l] == LayerKind::Attention) {
            const int64_t row = cfg.attn_kv_heads() * cfg.attn_head_dim();
            s.k.resize(static_cast<size_t>(slots * cache_len_ * row));
            s.v.resize(s.k.size());
            continue;
        }
        const int64_t Din = cfg.mamba_d_inner(), S = cfg.mamba.d_state;
        const int64_t conv_channels = cfg.mamba.version == 1 ? Din : Din + 2 * cfg.mamba.n_groups * S;
        s.conv.resize(static_cast<size_t>(slots * (cfg.mamba.d_conv - 1) * conv_channels));
        // Mamba-2's (H, P, N) per slot has the same size as Mamba-1's (Din, N): H · P = Din.
        if (std::is_same_v<T, float> && cpu_bf16_ssm_state(cfg))
            s.ssm16.resize(static_cast<size_t>(slots * Din * S));
        else
            s.ssm.resize(static_cast<size_t>(slots * Din * S));
    }
}

template <typename T>
void InferenceState<T>::clear() {
    std::fill(pos_.begin(), pos_.end(), 0);
    for (LayerState& s : layers_) {
        std::fill(s.conv.begin(), s.conv.end(), T(0));
        std::fill(s.ssm.begin(), s.ssm.end(), T(0));
        std::fill(s.ssm16.begin(), s.ssm16.end(), uint16_t(0));
    }
}

template <typename T>
void InferenceState<T>::clear(int64_t slot) {
    MSLM_CHECK(slot >= 0 && slot < slots_, "inference state: slot {} out of range [0, {})", slot, slots_);
    pos_[slot] = 0;
    // The recurrent states are read as the initial state, so they must be zero. KV rows at or past
    // a slot's position are never read: they need no clearing.
    for (LayerState& s : layers_) {
        const size_t conv = s.conv.size() / slots_, ssm = s.ssm.size() / slots_,
                     ssm16 = s.ssm16.size() / slots_;
        std::fill_n(s.conv.begin() + slot * conv, conv, T(0));
        std::fill_n(s.ssm.begin() + slot * ssm, ssm, T(0));
        std::fill_n(s.ssm16.begin() + slot * ssm16, ssm16, uint16_t(0));
    }
}

template <typename T>
template <typename Fn>
void InferenceState<T>::for_each_block(Fn&& fn) {
    for (LayerState& s : layers_) {
        if (!s.conv.empty()) fn(s.conv, s.conv.size() / slots_, 0);
        if (!s.ssm.empty()) fn(s.ssm, s.ssm.size() / slots_, 0);
        if (!s.ssm16.empty()) fn(s.ssm16, s.ssm16.size() / slots_, 0);
        if (!s.k.empty()) {
            const size_t row = s.k.size() / (slots_ * cache_len_);
            fn(s.k, row * cache_len_, row);
            fn(s.v, row * cache_len_, row);
        }
    }
}

template <typename T>
size_t InferenceState<T>::used(size_t block, size_t kv_row, int64_t slot) const {
    // A KV cache holds rows 0 .. min(position, cache_len) of a slot; the rest is never read.
    return kv_row ? std::min(block, static_cast<size_t>(std::min(pos_[slot], cache_len_)) * kv_row) : block;
}

template <typename T>
void InferenceState<T>::copy(int64_t src_slot, int64_t dst_slot) {
    MSLM_CHECK(src_slot >= 0 && src_slot < slots_ && dst_slot >= 0 && dst_slot < slots_,
               "inference state: copy from slot {} to slot {}: out of range [0, {})", src_slot, dst_slot,
               slots_);
    if (src_slot == dst_slot) return;
    for_each_block([&](auto& buf, size_t block, size_t kv_row) {
        std::copy_n(buf.begin() + src_slot * block, used(block, kv_row, src_slot),
                    buf.begin() + dst_slot * block);
    });
    pos_[dst_slot] = pos_[src_slot];
}

template <typename T>
void InferenceState<T>::reorder(std::span<const int64_t> src) {
    MSLM_CHECK(static_cast<int64_t>(src.size()) == slots_,
               "inference state: reorder with {} indices for {} slots", src.size(), slots_);
    for (int64_t s : src)
        MSLM_CHECK(s >= 0 && s < slots_, "inference state: reorder index {} out of range [0, {})", s, slots_);
    // Slots that some other slot copies from are saved first, so that a slot overwritten early can
    // still be a source (permutations, forks).
    needed_.assign(static_cast<size_t>(slots_), 0);
    for (int64_t i = 0; i < slots_; ++i)
        if (src[i] != i) needed_[src[i]] = 1;
    for_each_block([&](auto& buf, size_t block, size_t kv_row) {
        auto& scratch = [&]() -> auto& {
            if constexpr (std::is_same_v<typename std::decay_t<decltype(buf)>::value_type, uint16_t>)
                return scratch16_;
            else
                return scratch_;
        }
        ();
        scratch.resize(buf.size());
        for (int64_t s = 0; s < slots_; ++s)
            if (needed_[s])
                std::copy_n(buf.begin() + s * block, used(block, kv_row, s), scratch.begin() + s * block);
        for (int64_t i = 0; i < slots_; ++i)
            if (src[i] != i)
                std::copy_n(scratch.begin() + src[i] * block, used(block, kv_row, src[i]),
                            buf.begin() + i * block);
    });
    pos_scratch_.assign(pos_.begin(), pos_.end());
    for (int64_t i = 0; i < slots_; ++i) pos_[i] = pos_scratch_[src[i]];
}

template <typename T>
size_t InferenceState<T>::bytes() const {
    size_t n = 0;
    size_t n16 = 0;
    for (const LayerState& s : layers_) {
        n += s.conv.size() + s.ssm.size() + s.k.size() + s.v.size();
        n16 += s.ssm16.size();
    }
    return n * sizeof(T) + n16 * sizeof(uint16_t);
}

template class InferenceState<float>;
template class InferenceState<double>;

}  // namespace mslm
