// What a training step costs, counted from the config: FLOPs and the least DRAM traffic, split by
// the kernel families of the GPU step (model/cuda_model.cpp). The MFU that benches and
// `mamba-slm bench` print and the per-family ceilings of the training profile
// (bench/bench_cuda_profile.cpp) both come from here; docs/PERFORMANCE.md states the formulas.
//
// FLOPs count the products only (2 per multiply-add), with the "model FLOPs" convention:
// backward = 2 × forward, no recomputation counted.
//   GEMM       every projection I → O (Mamba in/x/dt/out, attention qkv/o, MLP up/down, LM head):
//              6·N·I·O for N = B·T rows (forward, dx, dW);
//   SSD        Mamba-2's chunked products per token 3 · (2·Q·Ns·G + H·(2·Q·P + 4·P·Ns)), chunk
//              Q = min(chunk_size, T): C·Bᵀ per group, the masked Q×Q scores times X, the chunk
//              state and C·S per head. The Mamba-1 scan (elementwise on CUDA cores) counts none;
//   attention  causal QKᵀ and PV: per token 6 · 2 · keys · Hq·Dh, keys = T/2 on average
//              (w·(1 − w/2T) with a sliding window w < T);
//   conv       the depthwise causal conv, 6·K per element (forward, dx, dw) — not model FLOPs;
//   others     none (norms, elementwise, embedding and loss, optimizer are bandwidth work).
// Model FLOPs (the MFU numerator) = GEMM + SSD + attention.
//
// Bytes are the least traffic of the kernels as written: every input read once, every output
// written once, and every gradient a backward kernel accumulates into (they all do: +=) read and
// written; bf16 activations (2 bytes), fp32 statistics, SSM chunk states and weight gradients
// (cuBLASLt adds dW into the fp32 gradients: read + write), parameter vectors (norm weights,
// biases, conv taps) neglected. Per family:
//   GEMM       forward X, W, Y; dX = dY·W reads dY, W, writes dX; dW reads dY, X, read-writes dW
//              fp32: 2·(3·N·I + 3·N·O + 2·I·O) + 8·I·O;
//   SSD        forward reads x, B, C, dt, writes y and the fp32 chunk states (B·⌈T/Q⌉·H·P·Ns);
//              backward reads x, B, C, dt, dy, the states, read-writes dx, dB, dC, ddt.
//              Mamba-1 scan: forward reads u, delta, B, C, z, writes y; backward reads those and
//              dy, read-writes du, ddelta, dB, dC, dz (its fp32 chunk states not counted);
//   attention  forward reads q, k, v, writes o and the fp32 logsumexp (Hq per row); backward reads
//              q, k, v, o, do, lse, read-writes dq, dk, dv (K and V once: the least, not what the
//              tiles re-read);
//   norms      per (N, D) norm: forward x → y + statistics; backward reads dy, x, read-writes dx;
//              Mamba-2's gated norm reads y, z, writes the output (backward reads dout, y, z,
//              read-writes dy, dz); Mamba-1's dt/B/C norms (Jamba) likewise on their widths;
//   conv       forward x → y (C channels); backward reads dy, x, read-writes dx;
//   elementwise the residual adds (copy + axpy per sublayer: 5 element moves), the MLP activation
//              (forward reads the up projection, writes F; backward reads dF and it, read-writes
//              its gradient), RoPE in place on q, k (and dq, dk), the column copies of z / dt, the
//              backward's zeroing of its gradient buffers, and the fold of the bf16-staged
//              gradients into the fp32 ones (2 + 8 bytes per staged parameter: all but the
//              matrix weights);
//   embed+CE   lookup (ids, rows, output), cross-entropy forward (logits in, loss and lse out) and
//              backward (logits in, dlogits out), the embedding's scatter (dout, ids, read-write
//              of at most one row per token);
//   optimizer  zero_grad (4 bytes per parameter), the gradient norm (4) and AdamW (reads p, m, v,
//              g, the decay mask; writes p, its bf16 copy, m, v: 31) = 39 bytes per parameter.
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "model/config.h"

namespace mslm {

enum class KernelFamily : int { Gemm, Ssd, Attention, Norm, Conv, Elementwise, EmbedLoss, Optimizer, Other };
constexpr int kKernelFamilies = 9;
// "GEMM", "SSD/scan", "attention", "norms", "conv", "elementwise", "embed+CE", "optimizer", "other"
const char* kernel_family_name(KernelFamily f);

struct FamilyCost {
    double flops = 0, bytes = 0;
};
using StepCosts = std::array<FamilyCost, kKernelFamilies>;

// One training step over B × T tokens: forward + backward, plus (optimizer) zero_grad, the gradient
// norm and the AdamW step.
StepCosts training_step_costs(const ModelConfig& cfg, int64_t B, int64_t T, bool optimizer = true);

// Model FLOPs of forward + backward per token at sequence length T: (GEMM + SSD + attention) of a
// step over its tokens. MFU = this × tokens/s over the peak.
double training_flops_per_token(const ModelConfig& cfg, int64_t T);

// Σ I·O over the projections and the LM head (tied or not): the "6·P" of the GEMM term.
int64_t matmul_params(const ModelConfig& cfg);

// The MFU formula in words, for tables.
std::string training_flops_formula();

}  // namespace mslm
