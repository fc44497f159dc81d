// Causal multi-head attention with grouped KV heads, computed in tiles with an online softmax
// so memory is O(T · head_dim), never O(T²). Query head h reads KV head h / (Hq / Hkv).
//   score(i, j) = scale · q_i · k_j − slope_h · (i − j)   (ALiBi term only with alibi)
//   visible: j ≤ i, and i − j < window when window > 0 (the window counts the query itself)
#pragma once
#include <cstdint>
#include <vector>

namespace mslm::ops {

struct AttentionDims {
    int64_t batch, seqlen, n_heads, n_kv_heads, head_dim;
};

template <typename T>
struct AttentionOptions {
    T scale;              // usually 1 / sqrt(head_dim)
    int64_t window = 0;   // 0: no sliding window
    bool alibi = false;
};

// ALiBi slopes for n heads (Press et al.): 2^(−8i/n) for a power of two, and the standard
// interleaving of the next power of two otherwise.
std::vector<double> alibi_slopes(int64_t n_heads);

// q (B, T, Hq, Dh), k and v (B, T, Hkv, Dh), each with a row stride between tokens (they are
// usually slices of one fused projection). out (B, T, Hq, Dh) contiguous; lse (B, Hq, T) saves
// each row's logsumexp for the backward.
template <typename T>
void attention_forward(T* out, T* lse, const T* q, int64_t ld_q, const T* k, int64_t ld_k, const T* v, int64_t ld_v,
                       const AttentionDims& dims, const AttentionOptions<T>& opt);
// dq, dk, dv use the strides of q, k, v and are accumulated (+=).
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q, int64_t ld_q,
                        const T* k, int64_t ld_k, const T* v, int64_t ld_v, const AttentionDims& dims,
                        const AttentionOptions<T>& opt);

// Rotary position embedding in place, HF "rotate_half" layout: within the first rotary_dim
// channels of each head, channel i pairs with i + rotary_dim/2 and turns by angle
// pos · theta^(−2i / rotary_dim); the rest pass through. x (B, T, H, Dh) with row stride ld;
// positions are pos0 + t. `inverse` turns the other way, which is the backward of the rotation
// (apply it to the gradient).
template <typename T>
void rope_apply(T* x, int64_t ld, int64_t B, int64_t Tn, int64_t H, int64_t Dh, int64_t rotary_dim, double theta,
                int64_t pos0, bool inverse);

}  // namespace mslm::ops
