// QLoRA's frozen base (issue 8 must 5; Dettmers et al., arXiv 2305.14314): the linear weights that
// `mamba-slm quantize` would quantize (quant/fake_quant.h: qat_weights) live only as bitsandbytes
// 4-bit tensors — NF4 with double quantization by default — and their fp32 values are given back to
// the OS (Parameters::release_values). Every product of such a Linear runs on the weight
// dequantized on the fly into one fp32 scratch that all of them share: the forward's
// y = x · deq(W)ᵀ and the backward's dX = dY · deq(W). No weight gradient is ever formed (the base
// is frozen; the LoRA adapters on top, src/lora, are the only trained parameters). The weights
// reach Linear through its weight hook (nn/linear.h, WeightFakeQuant: "the products use this
// matrix instead of the fp32 values"), the same hook QAT uses, so no module knows about QLoRA.
//
// Compute is fp32 on the CPU, where the whole library computes in fp32 (DESIGN §3): the dequantized
// values are bitsandbytes' exactly (code · absmax in fp32, rounded to the quant state's dtype), and
// bf16 activations would cost the CPU conversions without any faster product to feed (OpenBLAS has
// no bf16 GEMM here). The GPU trainer computes in bf16 (model/cuda_model.h).
//
// The 4-bit CPU inference kernels (ops/packed_linear.h) are not used: at the row counts of training
// (B·T >= 16) they themselves dequantize panels to fp32 for an OpenBLAS product, they keep one fp32
// scale per group of columns where the base keeps bitsandbytes' double-quantized 8-bit absmax, and
// they have no transposed product for dX.
//
// A weight may be stored as several pieces of rows: a Hugging Face directory stores q/k/v (and
// gate/up) as separate tensors, each quantized on its own by bitsandbytes, which the native model
// fuses into one qkv_proj (gate_up_proj) weight; each piece keeps its own blocks and double
// quantization, as in the file.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model_io.h"
#include "nn/linear.h"
#include "nn/parameters.h"
#include "quant/bnb.h"

namespace mslm::quant {

struct QloraOptions {
    Bnb4Type type = Bnb4Type::NF4;
    bool double_quant = true;
    // Blocksize of the weights quantized here; a 4-bit file keeps its own.
    int64_t blocksize = kBnbDefaultBlocksize;
};

Bnb4Type parse_base_quant(const std::string& s);  // "nf4" | "fp4"; throws naming the accepted values
std::string describe(const QloraOptions& o);      // "nf4 + double quant"

// Rows [row_begin, row_begin + rows) of a weight (rows, in), as one 4-bit tensor.
struct Bnb4Piece {
    int64_t row_begin = 0, rows = 0;
    Bnb4Tensor t;
};

template <typename T>
class QloraBase {
public:
    // Takes over the qat_weights of `params` (which must outlive this object): those with pieces in
    // `stored` (by parameter index; together they must cover every row) keep them, the others are
    // quantized from their fp32 values here. Then every one of them has its values released and its
    // hook attached. Throws when `stored` names a weight that is not a target.
    QloraBase(Parameters<T>& params, const QloraOptions& opts,
              std::map<size_t, std::vector<Bnb4Piece>> stored = {});
    ~QloraBase();  // detaches the hooks
    QloraBase(const QloraBase&) = delete;
    QloraBase& operator=(const QloraBase&) = delete;

    const QloraOptions& options() const { return opts_; }
    size_t weights() const { return weights_.size(); }
    int64_t numel() const;  // parameters held in 4 bits
    size_t bytes() const;   // bytes of their codes and scales
    // "24 linear weights (1.23M parameters) in nf4 + double quant: 0.62 MiB, 4.13 bits per parameter
    // (fp32: 4.69 MiB)"
    std::string summary() const;
    // The weight (out, in) of parameter `param` dequantized into `out` (what the products use).
    void dequantize(size_t param, float* out) const;
    // The 4-bit pieces of parameter `param`, ordered by row and covering it; null when the base does
    // not hold that parameter (the GPU trainer uploads them, model/cuda_model.h).
    const std::vector<Bnb4Piece>* pieces(size_t param) const;

private:
    class Hook;
    struct Weight {
        size_t param = 0;
        int64_t out = 0, in = 0;
        std::vector<Bnb4Piece> pieces;  // ordered by row_begin, covering [0, out)
        std::unique_ptr<Hook> hook;
    };
    const T* apply(const Weight& w);

    Parameters<T>& params_;
    QloraOptions opts_;
    std::vector<Weight> weights_;
    std::vector<float> scratch_;  // the largest weight, fp32
    std::vector<T> widened_;      // double models: scratch_ widened
};

// A model directory (native or Hugging Face, fp32 / bf16 or bitsandbytes-quantized) as a QLoRA base.
// Each tensor of a target weight goes from the file straight into 4 bits, one tensor at a time, and
// the file's pages of it are dropped from the process once read, so the fp32 weights are never all
// in memory: a 4-bit file of the options' type keeps its codes (its absmax switched to the options'
// double quantization); any other is dequantized if needed and quantized with bitsandbytes' rules.
// A .gguf file loads in fp32 first and is quantized after.
template <typename T>
struct QloraLoaded {
    std::unique_ptr<HybridLM<T>> model;
    std::unique_ptr<QloraBase<T>> base;  // declared after the model: destroyed (detached) first
};
template <typename T>
QloraLoaded<T> load_qlora_base(const std::string& dir, const QloraOptions& opts,
                               LoadedModelInfo* info = nullptr);

// The process's peak resident set so far (getrusage ru_maxrss), in bytes.
size_t peak_rss_bytes();

}  // namespace mslm::quant
