#include "quant/bnb_model.h"

#include <nlohmann/json.hpp>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>

#include "core/error.h"
#include "model/hf_import.h"
#include "model/hybrid_lm.h"
#include "model/model_io.h"

namespace mslm::quant {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string> kBnbDefaultSkip = {"lm_head", "dt_proj"};

const char* bnb_kind_name(BnbKind kind) {
    switch (kind) {
        case BnbKind::Int8: return "int8";
        case BnbKind::NF4: return "nf4";
        case BnbKind::FP4: return "fp4";
    }
    return "";
}

BnbKind parse_bnb_kind(const std::string& s) {
    if (s == "int8") return BnbKind::Int8;
    if (s == "nf4") return BnbKind::NF4;
    if (s == "fp4") return BnbKind::FP4;
    fail("quantization type \"{}\" is not one of int8, nf4, fp4", s);
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Matches the user's `pattern` followed by a module boundary, anchored at the start of `name`.
bool regex_match_start(const std::string& pattern, const std::string& name) {
    const std::string full = "(?:" + pattern + ")(?:(?<=\\.)|(?=\\.|$))";
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(full.data()), full.size(), PCRE2_ANCHORED, &err, &offset, nullptr);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fail("skip pattern \"{}\" is not a valid regular expression: {}", pattern, reinterpret_cast<const char*>(msg));
    }
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(name.data()), name.size(), 0, 0, md, nullptr);
    pcre2_match_data_free(md);
    pcre2_code_free(code);
    return rc >= 0;
}

// torch's str(dtype) without "torch.", as bitsandbytes writes it into the quant state.
std::string torch_dtype_name(DType t, const std::string& where) {
    switch (t) {
        case DType::F32: return "float32";
        case DType::BF16: return "bfloat16";
        case DType::F16: return "float16";
        default: fail("{}: dtype {}: bitsandbytes quantizes float32, bfloat16 and float16 weights only", where,
                      dtype_name(t));
    }
}

template <typename V>
Tensor vector_tensor(const std::vector<V>& v, const Shape& shape) {
    return Tensor::from_vector(v, shape);
}

Tensor f32_tensor(std::span<const float> v) {
    return Tensor::from_vector(std::vector<float>(v.begin(), v.end()), {static_cast<int64_t>(v.size())});
}

// The JSON of QuantState.as_dict(packed=True) as json.dumps writes it: keys in bitsandbytes'
// order, ", " and ": " separators, floats in Python's repr.
std::string quant_state_json(Bnb4Type type, int64_t blocksize, const std::string& dtype, const Shape& shape,
                             const DoubleQuantized* dq) {
    std::string s = fmt::format(R"({{"quant_type": "{}", "blocksize": {}, "dtype": "{}", "shape": [{}])",
                                type == Bnb4Type::NF4 ? "nf4" : "fp4", blocksize, dtype, fmt::join(shape, ", "));
    if (dq) {
        s += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})",
                         kBnbNestedBlocksize, python_float_repr(dq->offset));
    }
    return s + "}";
}

void write_json(const json& j, const fs::path& path) {
    const fs::path tmp = path.string() + ".tmp";
    {
        std::ofstream out(tmp);
        MSLM_CHECK(out.good(), "{}: cannot write", tmp.string());
        out << j.dump(2) << "\n";
        MSLM_CHECK(out.good(), "{}: write failed", tmp.string());
    }
    fs::rename(tmp, path);
}

void add_kind(BnbSizeReport::Kind& k, int64_t params, int64_t bytes) {
    k.tensors += 1;
    k.params += params;
    k.bytes += bytes;
}

}  // namespace

bool bnb_module_skipped(const std::string& name, const std::vector<std::string>& patterns) {
    for (const std::string& p : patterns) {
        if (ends_with(name, p)) return true;
        if (regex_match_start(p, name)) return true;
    }
    return false;
}

std::string python_float_repr(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
    char buf[64];
    const auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);  // shortest
    const std::string s(buf, res.ptr);
    const size_t e = s.find('e');
    const int exp = std::stoi(s.substr(e + 1));
    std::string digits;
    for (char c : s.substr(0, e))
        if (c >= '0' && c <= '9') digits += c;
    const char* sign = s[0] == '-' ? "-" : "";
    const auto nd = static_cast<int>(digits.size());
    // float_repr_style 'short': positional for -4 <= exponent < 16, scientific otherwise.
    if (exp >= 16 || exp < -4) {
        return fmt::format("{}{}{}{}e{}{:02d}", sign, digits[0], nd > 1 ? "." : "", std::string_view(digits).substr(1),
                           exp < 0 ? '-' : '+', std::abs(exp));
    }
    if (exp < 0) return fmt::format("{}0.{}{}", sign, std::string(static_cast<size_t>(-exp - 1), '0'), digits);
    if (nd <= exp + 1) return fmt::format("{}{}{}.0", sign, digits, std::string(static_cast<size_t>(exp + 1 - nd), '0'));
    const auto point = static_cast<size_t>(exp + 1);
    return fmt::format("{}{}.{}", sign, std::string_view(digits).substr(0, point), std::string_view(digits).substr(point));
}

json bnb_quantization_config(const BnbQuantizeOptions& opts) {
    const bool four = opts.kind != BnbKind::Int8;
    std::vector<std::string> skip = kBnbDefaultSkip;
    skip.insert(skip.end(), opts.skip.begin(), opts.skip.end());
    return json{{"_load_in_4bit", four},
                {"_load_in_8bit", !four},
                {"bnb_4bit_compute_dtype", opts.compute_dtype},
                {"bnb_4bit_quant_storage", "uint8"},
                {"bnb_4bit_quant_type", opts.kind == BnbKind::NF4 ? "nf4" : "fp4"},
                {"bnb_4bit_use_double_quant", four && opts.double_quant},
                {"llm_int8_enable_fp32_cpu_offload", false},
                {"llm_int8_has_fp16_weight", false},
                {"llm_int8_skip_modules", skip},
                {"llm_int8_threshold", 6.0},
                {"load_in_4bit", four},
                {"load_in_8bit", !four},
                {"quant_method", "bitsandbytes"}};
}

std::string check_quantization_config(const json& qc, const std::string& source) {
    MSLM_CHECK(qc.is_object(), "{}: quantization_config must be an object", source);
    const std::string method = qc.value("quant_method", std::string());
    MSLM_CHECK(method == "bitsandbytes", "{}: quantization_config.quant_method \"{}\" is not supported (only "
               "bitsandbytes)", source, method);
    auto flag = [&](const char* key) { return qc.contains(key) && qc[key].is_boolean() && qc[key].get<bool>(); };
    if (flag("load_in_8bit")) return "bitsandbytes int8";
    MSLM_CHECK(flag("load_in_4bit"), "{}: quantization_config has neither load_in_4bit nor load_in_8bit set", source);
    return fmt::format("bitsandbytes {}{}", qc.value("bnb_4bit_quant_type", std::string("fp4")),
                       flag("bnb_4bit_use_double_quant") ? " + double quant" : "");
}

std::string BnbSizeReport::format() const {
    const double bf16_bytes = 2.0 * static_cast<double>(params());
    auto row = [&](const char* name, const Kind& k, bool show_params) {
        return fmt::format("  {:<26} {:>6} {:>14} {:>14}  {:>6.2f} bits/param\n", name, k.tensors,
                           show_params ? fmt::format("{}", k.params) : std::string("-"), k.bytes,
                           k.params > 0 ? 8.0 * static_cast<double>(k.bytes) / static_cast<double>(k.params) : 0.0);
    };
    std::string s = fmt::format("  {:<26} {:>6} {:>14} {:>14}\n", "tensor kind", "count", "parameters", "bytes");
    const std::string lin = fmt::format("linear weights ({})", kind == BnbKind::Int8 ? "int8" : "4-bit");
    s += row(lin.c_str(), linear, true);
    Kind state_per_linear = quant_state;
    state_per_linear.params = linear.params;  // overhead per quantized parameter
    s += row("quant state", state_per_linear, false);
    s += row("kept unquantized", kept, true);
    s += row("embeddings / LM head", embeddings, true);
    s += fmt::format("  {:<26} {:>6} {:>14} {:>14}  {:>6.2f} bits/param\n", "total",
                     linear.tensors + quant_state.tensors + kept.tensors + embeddings.tensors, params(), bytes(),
                     params() > 0 ? 8.0 * static_cast<double>(bytes()) / static_cast<double>(params()) : 0.0);
    s += fmt::format("  against bf16 ({} bytes, 16 bits/param): {:.1f}% of the size\n",
                     static_cast<int64_t>(bf16_bytes), 100.0 * static_cast<double>(bytes()) / bf16_bytes);
    return s;
}

BnbSizeReport quantize_model_dir(const std::string& in_dir, const std::string& out_dir,
                                 const BnbQuantizeOptions& opts) {
    const bool four = opts.kind != BnbKind::Int8;
    const int64_t blocksize = opts.blocksize ? opts.blocksize : kBnbDefaultBlocksize;
    if (four) {
        check_bnb4_blocksize(blocksize);
    } else {
        MSLM_CHECK(!opts.double_quant, "--double-quant applies to nf4 and fp4 only (int8 has one absmax per row)");
        MSLM_CHECK(opts.blocksize == 0, "--blocksize applies to nf4 and fp4 only (int8 scales whole rows)");
    }
    MSLM_CHECK(opts.compute_dtype == "float32" || opts.compute_dtype == "bfloat16",
               "compute dtype \"{}\" is not float32 or bfloat16", opts.compute_dtype);
    std::vector<std::string> patterns = kBnbDefaultSkip;
    patterns.insert(patterns.end(), opts.skip.begin(), opts.skip.end());
    bnb_module_skipped("", opts.skip);  // reports an invalid pattern before any work

    MSLM_CHECK(fs::is_directory(in_dir), "{}: not a model directory", in_dir);
    const fs::path in_config = fs::path(in_dir) / "config.json", in_weights = fs::path(in_dir) / "model.safetensors";
    MSLM_CHECK(!fs::exists(out_dir) || !fs::equivalent(in_dir, out_dir),
               "--out {} is the input directory; write the quantized model to another one", out_dir);
    json config = read_json_file(in_config.string());
    MSLM_CHECK(config.is_object() && !config.contains("quantization_config"),
               "{}: the model is already quantized (it has a quantization_config); quantize the unquantized model",
               in_config.string());
    std::string format;
    const ModelConfig cfg = load_any_config(in_dir, &format);
    const HybridLM<float> layout(cfg, /*allocate=*/false);
    const Parameters<float>& params = layout.params();

    // File tensor name -> native parameter.
    std::map<std::string, size_t> native_of;
    if (format == "mamba_slm") {
        for (size_t i = 0; i < params.specs().size(); ++i) native_of[params.specs()[i].name] = i;
    } else {
        for (const HfTensorMap& m :
             hf_tensor_map(hf_arch_from_model_type(format, in_config.string()), cfg, params.specs()))
            native_of[m.hf_name] = params.find(m.native_name);
    }
    MSLM_CHECK(fs::exists(in_weights), "{}: no model.safetensors beside the config (sharded checkpoints are not "
               "supported yet)", in_weights.string());
    const SafetensorsFile file = SafetensorsFile::open(in_weights.string());
    for (const SafetensorsEntry& e : file.entries()) {
        MSLM_CHECK(e.dtype != DType::U8 && e.dtype != DType::I8,
                   "{}: tensor '{}' is {}: the model is already quantized; quantize the unquantized model",
                   file.name(), e.name, dtype_name(e.dtype));
    }
    for (const SafetensorsEntry& e : file.entries()) {
        MSLM_CHECK(native_of.count(e.name), "{}: unexpected tensor '{}' (not part of a {} model with this config)",
                   file.name(), e.name, format);
    }
    for (const auto& [name, idx] : native_of)
        MSLM_CHECK(file.contains(name), "{}: missing tensor '{}'", file.name(), name);

    const Bnb4Type type4 = opts.kind == BnbKind::FP4 ? Bnb4Type::FP4 : Bnb4Type::NF4;
    BnbSizeReport report;
    report.kind = opts.kind;
    std::vector<std::pair<std::string, Tensor>> out;
    for (const SafetensorsEntry& e : file.entries()) {
        const size_t idx = native_of.at(e.name);
        const std::string& native = params.specs()[idx].name;
        int64_t numel = 1;
        for (int64_t d : e.shape) numel *= d;
        const std::string module = ends_with(e.name, ".weight") ? e.name.substr(0, e.name.size() - 7) : e.name;
        // A tied LM head is marked linear (it is packed for inference) but is the embedding here.
        const bool linear = params.is_linear(idx) && native != "embed.weight" && ends_with(e.name, ".weight") &&
                            e.shape.size() == 2;
        if (!linear || bnb_module_skipped(module, patterns)) {
            const bool embedding = native == "embed.weight" || native == "lm_head.weight";
            const Tensor t = file.get(e.name);
            add_kind(embedding ? report.embeddings : report.kept, numel, static_cast<int64_t>(t.nbytes()));
            out.emplace_back(e.name, t);
            continue;
        }
        const std::string dtype = torch_dtype_name(e.dtype, fmt::format("{}: tensor '{}'", file.name(), e.name));
        const Tensor w = file.get_f32(e.name);
        const std::span<const float> x(w.data<float>(), static_cast<size_t>(numel));
        auto state = [&](const std::string& name, Tensor t) {
            add_kind(report.quant_state, 0, static_cast<int64_t>(t.nbytes()));
            out.emplace_back(name, std::move(t));
        };
        if (!four) {
            // bitsandbytes' Int8Params casts the weight to float16 before int8_vectorwise_quant.
            std::vector<float> h(x.size());
            for (size_t i = 0; i < x.size(); ++i) h[i] = f16_to_f32(f32_to_f16(x[i]));
            Int8Rows r = int8_quantize_rows(h, e.shape[0], e.shape[1]);
            Tensor q = vector_tensor(r.q, e.shape);
            add_kind(report.linear, numel, static_cast<int64_t>(q.nbytes()));
            out.emplace_back(e.name, std::move(q));
            state(module + ".SCB", f32_tensor(r.absmax));
            state(module + ".weight_format", vector_tensor(std::vector<uint8_t>{0}, Shape{}));
            continue;
        }
        Bnb4Quantized q = bnb4_quantize(x, type4, blocksize);
        Tensor packed = vector_tensor(q.packed, {static_cast<int64_t>(q.packed.size()), 1});
        add_kind(report.linear, numel, static_cast<int64_t>(packed.nbytes()));
        out.emplace_back(e.name, std::move(packed));
        std::unique_ptr<DoubleQuantized> dq;
        if (opts.double_quant) {
            dq = std::make_unique<DoubleQuantized>(double_quantize_absmax(q.absmax));
            state(e.name + ".absmax", vector_tensor(dq->q, {static_cast<int64_t>(dq->q.size())}));
        } else {
            state(e.name + ".absmax", f32_tensor(q.absmax));
        }
        state(e.name + ".quant_map", f32_tensor(bnb4_code(type4)));
        if (dq) {
            state(e.name + ".nested_absmax", f32_tensor(dq->nested_absmax));
            state(e.name + ".nested_quant_map", f32_tensor(bnb_dynamic_map()));
        }
        const std::string js = quant_state_json(type4, blocksize, dtype, e.shape, dq.get());
        state(e.name + ".quant_state.bitsandbytes__" + bnb_kind_name(opts.kind),
              vector_tensor(std::vector<uint8_t>(js.begin(), js.end()), {static_cast<int64_t>(js.size())}));
    }

    fs::create_directories(out_dir);
    for (const auto& entry : fs::directory_iterator(in_dir)) {
        const std::string fname = entry.path().filename().string();
        // Tokenizer and generation files travel with the model; other weights (*.safetensors) do not.
        if (!entry.is_regular_file() || fname == "config.json" || entry.path().extension() == ".safetensors")
            continue;
        fs::copy_file(entry.path(), fs::path(out_dir) / fname, fs::copy_options::overwrite_existing);
    }
    save_safetensors((fs::path(out_dir) / "model.safetensors").string(), out, file.metadata());
    config["quantization_config"] = bnb_quantization_config(opts);
    write_json(config, fs::path(out_dir) / "config.json");
    return report;
}

bool bnb_is_quantized(const SafetensorsFile& file, const std::string& weight_name) {
    if (file.contains(weight_name + ".quant_state.bitsandbytes__nf4") ||
        file.contains(weight_name + ".quant_state.bitsandbytes__fp4"))
        return true;
    return ends_with(weight_name, ".weight") && file.contains(weight_name.substr(0, weight_name.size() - 7) + ".SCB");
}

namespace {

// A 4-bit weight as stored: codes, absmax restored to fp32, and its quant state.
struct Stored4bit {
    Bnb4Type type;
    int64_t bs = 0, n = 0;
    Shape shape;
    std::string dtype;
    std::span<const uint8_t> packed;
    std::vector<float> absmax;  // restored from double quantization when the file has it
    bool double_quant = false;
    DoubleQuantized nested;  // as stored, with double quantization
};

// 4-bit: the quant state JSON names the type, blocksize, dtype and logical shape.
Stored4bit read_4bit(const SafetensorsFile& file, const std::string& w, std::vector<std::string>* used) {
    const bool nf4 = file.contains(w + ".quant_state.bitsandbytes__nf4");
    const std::string state_key = w + ".quant_state.bitsandbytes__" + (nf4 ? "nf4" : "fp4");
    const Bnb4Type type = nf4 ? Bnb4Type::NF4 : Bnb4Type::FP4;
    const std::string where = fmt::format("{}: tensor '{}'", file.name(), state_key);
    const std::span<const uint8_t> state_bytes = file.bytes(state_key);
    json st;
    try {
        st = json::parse(state_bytes.begin(), state_bytes.end());
    } catch (const json::parse_error& e) {
        fail("{}: the quant state is not valid JSON: {}", where, e.what());
    }
    MSLM_CHECK(st.is_object(), "{}: the quant state is not a JSON object", where);
    auto field = [&](const char* key) -> const json& {
        MSLM_CHECK(st.contains(key), "{}: the quant state has no \"{}\"", where, key);
        return st[key];
    };
    MSLM_CHECK(field("quant_type") == (nf4 ? "nf4" : "fp4"), "{}: quant_type {} does not match the key", where,
               field("quant_type").dump());
    MSLM_CHECK(field("blocksize").is_number_integer(), "{}: blocksize must be an integer", where);
    const int64_t bs = field("blocksize").get<int64_t>();
    check_bnb4_blocksize(bs);
    const json& jshape = field("shape");
    MSLM_CHECK(jshape.is_array() && !jshape.empty() && jshape.size() <= static_cast<size_t>(kMaxDims),
               "{}: shape must be a list of 1 to {} sizes", where, kMaxDims);
    Shape shape;
    int64_t n = 1;
    for (const json& d : jshape) {
        MSLM_CHECK(d.is_number_integer() && d.get<int64_t>() > 0 && d.get<int64_t>() < (int64_t{1} << 40),
                   "{}: shape {} holds a size that is not a positive integer", where, jshape.dump());
        shape.push_back(d.get<int64_t>());
        n *= shape.back();
        MSLM_CHECK(n < (int64_t{1} << 40), "{}: shape {} is too large", where, jshape.dump());
    }
    const std::string dtype = field("dtype").is_string() ? field("dtype").get<std::string>() : "";
    MSLM_CHECK(dtype == "float32" || dtype == "bfloat16" || dtype == "float16",
               "{}: dtype {} is not float32, bfloat16 or float16", where, field("dtype").dump());

    const std::span<const uint8_t> packed = file.bytes(w);
    MSLM_CHECK(static_cast<int64_t>(packed.size()) == (n + 1) / 2, "{}: tensor '{}' holds {} bytes; shape {} needs {}",
               file.name(), w, packed.size(), jshape.dump(), (n + 1) / 2);
    const std::string qmap_key = w + ".quant_map", absmax_key = w + ".absmax";
    MSLM_CHECK(file.contains(qmap_key), "{}: missing tensor '{}'", file.name(), qmap_key);
    MSLM_CHECK(file.contains(absmax_key), "{}: missing tensor '{}'", file.name(), absmax_key);
    const std::vector<float> qmap = file.get_f32(qmap_key).to_float_vector();
    const std::array<float, 16>& code = bnb4_code(type);
    MSLM_CHECK(qmap.size() == 16 && std::memcmp(qmap.data(), code.data(), sizeof(float) * 16) == 0,
               "{}: tensor '{}' is not bitsandbytes' {} code book", file.name(), qmap_key, nf4 ? "nf4" : "fp4");
    const int64_t blocks = (n + bs - 1) / bs;
    std::vector<float> absmax;
    used->insert(used->end(), {w, absmax_key, qmap_key, state_key});
    if (st.contains("nested_offset")) {
        const std::string nabs_key = w + ".nested_absmax", nmap_key = w + ".nested_quant_map";
        MSLM_CHECK(file.contains(nabs_key), "{}: missing tensor '{}'", file.name(), nabs_key);
        MSLM_CHECK(file.contains(nmap_key), "{}: missing tensor '{}'", file.name(), nmap_key);
        MSLM_CHECK(st.value("nested_blocksize", json()) == kBnbNestedBlocksize,
                   "{}: nested_blocksize {} is not {}", where, st.value("nested_blocksize", json()).dump(),
                   kBnbNestedBlocksize);
        MSLM_CHECK(st["nested_offset"].is_number(), "{}: nested_offset must be a number", where);
        const std::vector<float> nmap = file.get_f32(nmap_key).to_float_vector();
        MSLM_CHECK(nmap.size() == 256 && std::memcmp(nmap.data(), bnb_dynamic_map().data(), sizeof(float) * 256) == 0,
                   "{}: tensor '{}' is not bitsandbytes' dynamic map", file.name(), nmap_key);
        const std::span<const uint8_t> q = file.bytes(absmax_key);
        MSLM_CHECK(file.entry(absmax_key).dtype == DType::U8 && static_cast<int64_t>(q.size()) == blocks,
                   "{}: tensor '{}' must be U8 with {} values (one per block of {})", file.name(), absmax_key, blocks,
                   bs);
        DoubleQuantized d;
        d.q.assign(q.begin(), q.end());
        d.nested_absmax = file.get_f32(nabs_key).to_float_vector();
        MSLM_CHECK(static_cast<int64_t>(d.nested_absmax.size()) == (blocks + kBnbNestedBlocksize - 1) / kBnbNestedBlocksize,
                   "{}: tensor '{}' has {} values; {} absmax values need {}", file.name(), nabs_key,
                   d.nested_absmax.size(), blocks, (blocks + kBnbNestedBlocksize - 1) / kBnbNestedBlocksize);
        d.offset = st["nested_offset"].get<float>();
        absmax = double_dequantize_absmax(d);
        used->insert(used->end(), {nabs_key, nmap_key});
        return {type, bs, n, shape, dtype, packed, std::move(absmax), true, std::move(d)};
    }
    absmax = file.get_f32(absmax_key).to_float_vector();
    MSLM_CHECK(static_cast<int64_t>(absmax.size()) == blocks, "{}: tensor '{}' has {} values; shape {} in blocks "
               "of {} needs {}", file.name(), absmax_key, absmax.size(), jshape.dump(), bs, blocks);
    return {type, bs, n, shape, dtype, packed, std::move(absmax), false, {}};
}

Tensor dequantize_4bit(const SafetensorsFile& file, const std::string& w, std::vector<std::string>* used) {
    const Stored4bit s4 = read_4bit(file, w, used);
    const Bnb4Type type = s4.type;
    const int64_t n = s4.n, bs = s4.bs;
    const std::string& dtype = s4.dtype;
    const std::span<const uint8_t> packed = s4.packed;
    const std::vector<float>& absmax = s4.absmax;
    const Shape& shape = s4.shape;
    Tensor out = Tensor::empty(shape, DType::F32);
    const std::span<float> o(out.data<float>(), static_cast<size_t>(n));
    bnb4_dequantize(packed, absmax, type, bs, o);
    // bitsandbytes returns the weight in the quant state's dtype.
    if (dtype == "bfloat16") {
        for (float& v : o) v = bf16_to_f32(f32_to_bf16(v));
    } else if (dtype == "float16") {
        for (float& v : o) v = f16_to_f32(f32_to_f16(v));
    }
    return out;
}

Tensor dequantize_int8(const SafetensorsFile& file, const std::string& w, std::vector<std::string>* used) {
    const std::string module = w.substr(0, w.size() - 7), scb_key = module + ".SCB", fmt_key = module + ".weight_format";
    const SafetensorsEntry& e = file.entry(w);
    MSLM_CHECK(e.dtype == DType::I8 && e.shape.size() == 2, "{}: tensor '{}' must be a 2-D I8 matrix beside '{}' "
               "(it is {} {})", file.name(), w, scb_key, dtype_name(e.dtype), shape_str(e.shape));
    Int8Rows r;
    r.absmax = file.get_f32(scb_key).to_float_vector();
    MSLM_CHECK(static_cast<int64_t>(r.absmax.size()) == e.shape[0], "{}: tensor '{}' has {} values for {} rows",
               file.name(), scb_key, r.absmax.size(), e.shape[0]);
    if (file.contains(fmt_key)) {
        const std::span<const uint8_t> f = file.bytes(fmt_key);
        MSLM_CHECK(file.entry(fmt_key).dtype == DType::U8 && f.size() == 1 && f[0] == 0,
                   "{}: tensor '{}' must be a U8 0 (row-major; bitsandbytes' other layouts are not supported)",
                   file.name(), fmt_key);
        used->push_back(fmt_key);
    }
    const std::span<const uint8_t> bytes = file.bytes(w);
    r.q.resize(bytes.size());
    std::memcpy(r.q.data(), bytes.data(), bytes.size());
    Tensor out = Tensor::empty(e.shape, DType::F32);
    int8_dequantize_rows(r, e.shape[0], e.shape[1], std::span<float>(out.data<float>(), bytes.size()));
    used->insert(used->end(), {w, scb_key});
    return out;
}

}  // namespace

bool bnb4_pack(const SafetensorsFile& file, const std::string& weight_name, const Shape& expected,
               ops::WeightFormat format, ops::PackedWeight* out, std::vector<std::string>* used) {
    const bool nf4 = format == ops::WeightFormat::NF4;
    if (!ops::is_4bit_format(format) ||
        !file.contains(weight_name + ".quant_state.bitsandbytes__" + (nf4 ? "nf4" : "fp4")))
        return false;
    std::vector<std::string> keys;
    const Stored4bit s4 = read_4bit(file, weight_name, &keys);
    MSLM_CHECK(s4.shape == expected, "{}: tensor '{}' has shape {}, the config needs {}", file.name(),
               weight_name, shape_str(s4.shape), shape_str(expected));
    // bitsandbytes rounds a bf16 / fp16 quant state's weights to that dtype; the kernels keep fp32.
    if (expected.size() != 2 || s4.dtype != "float32") return false;
    if (!ops::pack_weight_4bit(*out, s4.packed.data(), s4.absmax.data(), bnb4_code(s4.type).data(),
                               expected[0], expected[1], s4.bs, false, format))
        return false;
    used->insert(used->end(), keys.begin(), keys.end());
    return true;
}

bool bnb4_is_stored(const SafetensorsFile& file, const std::string& weight_name) {
    return file.contains(weight_name + ".quant_state.bitsandbytes__nf4") ||
           file.contains(weight_name + ".quant_state.bitsandbytes__fp4");
}

Bnb4Tensor bnb4_read(const SafetensorsFile& file, const std::string& weight_name, Shape* shape,
                     std::vector<std::string>* used) {
    MSLM_CHECK(bnb4_is_stored(file, weight_name), "{}: tensor '{}' is not a bitsandbytes 4-bit weight",
               file.name(), weight_name);
    Stored4bit s4 = read_4bit(file, weight_name, used);
    Bnb4Tensor t;
    t.type = s4.type;
    t.blocksize = s4.bs;
    t.n = s4.n;
    t.codes.assign(s4.packed.begin(), s4.packed.end());
    t.double_quant = s4.double_quant;
    if (s4.double_quant)
        t.nested = std::move(s4.nested);
    else
        t.absmax = std::move(s4.absmax);
    t.dtype = s4.dtype;
    *shape = s4.shape;
    return t;
}

Tensor bnb_dequantize(const SafetensorsFile& file, const std::string& weight_name, std::vector<std::string>* used) {
    if (file.contains(weight_name + ".quant_state.bitsandbytes__nf4") ||
        file.contains(weight_name + ".quant_state.bitsandbytes__fp4"))
        return dequantize_4bit(file, weight_name, used);
    MSLM_CHECK(bnb_is_quantized(file, weight_name), "{}: tensor '{}' is not stored in a bitsandbytes layout",
               file.name(), weight_name);
    return dequantize_int8(file, weight_name, used);
}

}  // namespace mslm::quant
