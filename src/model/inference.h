// Decoding state of a HybridLM for a batch of sequence slots (DESIGN §5): per Mamba layer a
// conv_state (d_conv − 1 rows of conv channels) and an ssm_state, per attention layer a KV cache
// (a ring buffer of `window` rows when the config sets a sliding window, else max_len rows).
// Slots are independent sequences, each at its own position, so one batch holds prompts of
// different lengths. Beam search reorders slots by index; prefix reuse copies one slot to another.
// With MSLM_DECODE_STATE=bf16 (InferenceState<float>, Mamba-2) the SSM states are stored in bf16 —
// half their bytes, which a batched decode step reads and writes once per token — and advanced in
// fp32 (ops::ssd_update_bf16_state); the GPU decoder reads the same switch.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"

namespace mslm {

// MSLM_DECODE_STATE: bf16 → true; unset or f32 → false; anything else is an error. The CPU and GPU
// decoders each add what their bf16-state kernels need.
bool bf16_decode_state_requested();
// Whether InferenceState<float> keeps cfg's Mamba-2 SSM states in bf16: requested, Mamba-2 layers,
// and a d_state the bf16 kernel takes (a multiple of 8 on an AVX2 / AVX-512 CPU).
bool cpu_bf16_ssm_state(const ModelConfig& cfg);

template <typename T>
class InferenceState {
public:
    // slots: batch capacity. max_len: the most tokens one slot may hold (prompt + generated),
    // at most the model's max_seq_len; it sizes the KV caches.
    InferenceState(const ModelConfig& cfg, int64_t slots, int64_t max_len);

    int64_t slots() const { return slots_; }
    int64_t max_len() const { return max_len_; }
    int64_t position(int64_t slot) const { return pos_[slot]; }  // tokens consumed so far

    void clear();                // every slot back to the empty sequence
    void clear(int64_t slot);
    // After the call slot i holds what slot src[i] held before (src.size() == slots(); repeats
    // allowed — that is how beams fork).
    void reorder(std::span<const int64_t> src);
    void copy(int64_t src_slot, int64_t dst_slot);
    size_t bytes() const;        // memory held by the caches

    // Layer l's buffers (layout documented where they are defined; used by the mixers' step code).
    struct LayerState {
        std::vector<T> conv;     // Mamba: (slots, d_conv − 1, conv channels)
        std::vector<T> ssm;      // Mamba-1: (slots, d_inner, d_state); Mamba-2: (slots, H, head_dim, d_state)
        std::vector<uint16_t> ssm16;  // instead of ssm: Mamba-2's states as bf16 (cpu_bf16_ssm_state)
        std::vector<T> k, v;     // attention: (slots, cache_len, Hkv, head_dim) ring buffers
    };
    LayerState& layer(int64_t l) { return layers_[l]; }
    const LayerState& layer(int64_t l) const { return layers_[l]; }
    int64_t cache_len() const { return cache_len_; }
    void advance(int64_t slot, int64_t n) { pos_[slot] += n; }

private:
    // Calls fn(buffer, per-slot block size, KV row size or 0 for a recurrent state) for every
    // buffer of every layer (a std::vector<T>, or the bf16 states' std::vector<uint16_t>).
    template <typename Fn>
    void for_each_block(Fn&& fn);
    size_t used(size_t block, size_t kv_row, int64_t slot) const;  // elements of a slot's block in use

    int64_t slots_, max_len_, cache_len_;
    std::vector<int64_t> pos_;
    std::vector<LayerState> layers_;
    std::vector<T> scratch_;  // reorder's copies of source slots, kept to avoid reallocating
    std::vector<uint16_t> scratch16_;
    std::vector<char> needed_;  // reorder: slots that another slot copies from
    std::vector<int64_t> pos_scratch_;
};

}  // namespace mslm
