// Model directories in bitsandbytes' serialization, as transformers + bitsandbytes save them
// (`save_pretrained` of a model loaded with a BitsAndBytesConfig): `mamba-slm quantize` writes them,
// and the loader (model/model_io) reads them, ours and transformers' alike.
//
// Keys of one quantized linear module `<m>` (its weight `<m>.weight`), dtypes as transformers writes:
//   4-bit  <m>.weight                  U8  (ceil(n/2), 1)  two codes per byte, first in the high nibble
//          <m>.weight.absmax           F32 (blocks,)       or U8 (blocks,) with double quantization
//          <m>.weight.quant_map        F32 (16,)           the NF4 / FP4 code book
//          <m>.weight.nested_absmax    F32 (ceil(blocks/256),)   double quantization only
//          <m>.weight.nested_quant_map F32 (256,)          the dynamic map, double quantization only
//          <m>.weight.quant_state.bitsandbytes__nf4 (or __fp4)  U8: the JSON of bitsandbytes'
//              QuantState.as_dict(packed=True): quant_type, blocksize, dtype, shape, and
//              nested_blocksize, nested_dtype, nested_offset with double quantization
//   int8   <m>.weight I8 (out, in), <m>.SCB F32 (out,) (row absmax), <m>.weight_format U8 () = 0 (row)
// and config.json gains transformers' `quantization_config` block (quant_method "bitsandbytes").
// Every other tensor is written unchanged (same name, dtype and bytes).
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "ops/packed_linear.h"
#include "quant/bnb.h"

namespace mslm::quant {

enum class BnbKind { Int8, NF4, FP4 };

const char* bnb_kind_name(BnbKind kind);    // "int8", "nf4", "fp4"
BnbKind parse_bnb_kind(const std::string& s);  // throws naming the accepted values

// Modules (matched like transformers' llm_int8_skip_modules) that stay unquantized by default:
// - "lm_head": transformers' own default (get_keys_to_not_convert keeps the output embedding in
//   full precision); its logits feed sampling directly, and a tied head is the embedding anyway.
// - "dt_proj": the Mamba-1 time-step projection. It is tiny (d_inner x d_model/16, about 2% of a
//   Mamba-1 layer), its output goes through softplus and exp into the state decay, where errors
//   compound over the sequence; and transformers' MambaMixer multiplies `dt_proj.weight` as a plain
//   matrix, so a quantized one cannot run there.
// Modules that are not linear layers are never quantized: the embedding (a lookup, not a product;
// transformers' bnb integration only replaces nn.Linear), norms (a few thousand values each, and a
// scale on every activation), conv1d (a depthwise conv of d_conv taps per channel), A_log, D and
// dt_bias (per-head or per-channel vectors that set the recurrence's decay and skip path). They
// total a few percent of a model's parameters, so quantizing them would save little and cost
// precision where it is most sensitive.
extern const std::vector<std::string> kBnbDefaultSkip;

// transformers' should_convert_module: a pattern skips module `name` when it matches as a regular
// expression from the start up to a module boundary (".", or the end), or when `name` ends with it.
// Throws on a pattern that is not a valid regular expression.
bool bnb_module_skipped(const std::string& name, const std::vector<std::string>& patterns);

struct BnbQuantizeOptions {
    BnbKind kind = BnbKind::NF4;
    bool double_quant = false;                 // 4-bit only
    int64_t blocksize = 0;                     // 4-bit only: 32..4096, a power of two; 0 = 64
    std::vector<std::string> skip;             // patterns added to kBnbDefaultSkip
    std::string compute_dtype = "float32";     // bnb_4bit_compute_dtype: "float32" or "bfloat16"
};

// Bytes by tensor kind in the written file, and the parameters they hold.
struct BnbSizeReport {
    struct Kind {
        int64_t tensors = 0, params = 0, bytes = 0;
    };
    BnbKind kind = BnbKind::NF4;
    Kind linear;       // quantized linear weights (packed 4-bit codes or int8)
    Kind quant_state;  // absmax, code books, nested absmax, quant_state JSON, SCB, weight_format
    Kind kept;         // unquantized: norms, conv, biases, A_log, D, dt_bias, skipped linears
    Kind embeddings;   // the embedding and an untied LM head
    int64_t params() const { return linear.params + kept.params + embeddings.params; }
    int64_t bytes() const { return linear.bytes + quant_state.bytes + kept.bytes + embeddings.bytes; }
    std::string format() const;  // the table `mamba-slm quantize` prints
};

// Reads the model directory `in_dir` (native or Hugging Face, unquantized), quantizes its linear
// weights and writes `out_dir` (config.json, model.safetensors, and a copy of the other files of
// `in_dir` but *.safetensors, e.g. the tokenizer and generation_config.json). Tensor names stay those of the input. Refuses a directory that is
// already quantized, out_dir == in_dir, and options that do not fit the type.
BnbSizeReport quantize_model_dir(const std::string& in_dir, const std::string& out_dir,
                                 const BnbQuantizeOptions& opts);

// The quantization_config block transformers writes for these options.
nlohmann::json bnb_quantization_config(const BnbQuantizeOptions& opts);
// Checks a config.json's quantization_config: only bitsandbytes is supported. Returns a short
// description ("bitsandbytes nf4, double quant"). `source` names the file in errors.
std::string check_quantization_config(const nlohmann::json& qc, const std::string& source);

// True when `weight_name` (a linear module's "<m>.weight") is stored in bitsandbytes' layout.
bool bnb_is_quantized(const SafetensorsFile& file, const std::string& weight_name);
// The weight in fp32 and its logical shape, dequantized as bitsandbytes does (4-bit: code · absmax,
// the absmax first restored from double quantization, then rounded to the quant state's dtype;
// int8: q · SCB / 127). Appends the name of every file tensor it read to `used`.
Tensor bnb_dequantize(const SafetensorsFile& file, const std::string& weight_name, std::vector<std::string>* used);

// True when `weight_name` is a bitsandbytes 4-bit (NF4 / FP4) weight of the file.
bool bnb4_is_stored(const SafetensorsFile& file, const std::string& weight_name);
// That weight as stored (codes, absmax or its double quantization, quant state dtype), its logical
// shape into `shape`; throws naming the tensor on a malformed one. Appends the keys it read to `used`.
Bnb4Tensor bnb4_read(const SafetensorsFile& file, const std::string& weight_name, Shape* shape,
                     std::vector<std::string>* used);

// A 4-bit linear weight packed for the CPU kernels (ops::pack_weight_4bit) straight from the file's
// codes and absmax, never expanded to fp32. Returns false, reading nothing, unless `weight_name` is a
// 4-bit weight of `format` (NF4 / FP4) with a float32 quant state whose blocks fit the packed layout;
// the caller then dequantizes it as usual. Throws on a malformed one. Appends the keys it read to `used`.
bool bnb4_pack(const SafetensorsFile& file, const std::string& weight_name, const Shape& expected,
               ops::WeightFormat format, ops::PackedWeight* out, std::vector<std::string>* used);

// Python's repr() of a float (shortest round-trip digits, "1.0", "1e-05", "1e+16"), as json.dumps
// writes bitsandbytes' nested_offset.
std::string python_float_repr(double v);

}  // namespace mslm::quant
