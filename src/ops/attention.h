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
    // Forward only: k and v hold q_offset + T rows per sequence and query i sits at position
    // q_offset + i, i.e. the queries continue a sequence whose earlier keys come first (prefill
    // after a cached prefix).
    int64_t q_offset = 0;
    // Backward only: false writes dq, dk and dv instead of adding to them (a caller whose gradient
    // slices hold nothing yet skips zeroing them, and the GPU kernels skip reading them).
    bool accumulate = true;
};

// ALiBi slopes for n heads (Press et al.): 2^(−8i/n) for a power of two, and the standard
// interleaving of the next power of two otherwise.
std::vector<double> alibi_slopes(int64_t n_heads);

// q (B, T, Hq, Dh), k and v (B, q_offset + T, Hkv, Dh), each with a row stride between tokens
// (they are usually slices of one fused projection). out (B, T, Hq, Dh) contiguous; lse
// (B, Hq, T) saves each row's logsumexp for the backward.
template <typename T>
void attention_forward(T* out, T* lse, const T* q, int64_t ld_q, const T* k, int64_t ld_k, const T* v, int64_t ld_v,
                       const AttentionDims& dims, const AttentionOptions<T>& opt);
// dq, dk, dv use the strides of q, k, v and are accumulated (+=), or written with accumulate = false.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q, int64_t ld_q,
                        const T* k, int64_t ld_k, const T* v, int64_t ld_v, const AttentionDims& dims,
                        const AttentionOptions<T>& opt);

// One new query per sequence against its KV cache, for decoding; dims.batch = k queries and
// dims.seqlen = L, the cache length. Row i of q (k, Hq, Dh; row stride ld_q) is the token at
// position pos[i] of the sequence in cache slot slots[i]. k_cache and v_cache are (S, L, Hkv, Dh)
// ring buffers holding position p at row p % L, the query's own key and value already written.
// The query sees positions max(0, pos − L + 1, pos − window + 1) .. pos with the scores of
// attention_forward (ALiBi by the distance pos − p). scores (k, Hq, L) is workspace; out
// (k, Hq, Dh).
template <typename T>
void attention_decode(T* out, T* scores, const T* q, int64_t ld_q, const T* k_cache, const T* v_cache,
                      const int64_t* slots, const int64_t* pos, const AttentionDims& dims,
                      const AttentionOptions<T>& opt);

// Rotary position embedding in place, HF "rotate_half" layout: within the first rotary_dim
// channels of each head, channel i pairs with i + rotary_dim/2 and turns by angle
// pos · theta^(−2i / rotary_dim); the rest pass through. x (B, T, H, Dh) with row stride ld;
// positions are pos0 + t. `inverse` turns the other way, which is the backward of the rotation
// (apply it to the gradient).
template <typename T>
void rope_apply(T* x, int64_t ld, int64_t B, int64_t Tn, int64_t H, int64_t Dh, int64_t rotary_dim, double theta,
                int64_t pos0, bool inverse);
// The same for N rows at their own positions pos (N), e.g. one new token of each sequence of a
// decoding batch.
template <typename T>
void rope_apply_at(T* x, int64_t ld, int64_t N, int64_t H, int64_t Dh, int64_t rotary_dim, double theta,
                   const int64_t* pos, bool inverse);

}  // namespace mslm::ops
