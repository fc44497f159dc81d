// `mamba-slm bench --onnx DIR`: ONNX Runtime's CPU prefill and batch-1 decode speed on an ONNX export
// of the model (export/onnx.h), as an anchor column beside ours. The measurement is
// bench/bench_onnx_decode.py, run with $MSLM_PYTHON or python3 when that interpreter can import
// onnxruntime; the product itself never needs Python, so without it the result says why in one line.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace mslm::bench {

struct OnnxReferenceOptions {
    int threads = 0;            // intra-op threads; 0: ours (num_threads())
    int64_t prompt = 0;         // prefill tokens
    int64_t decode_prompt = 0;  // tokens prefilled before the timed decode steps
    int64_t decode_tokens = 0;  // timed decode steps
    int repeats = 3;
    std::string script;  // empty: find bench/bench_onnx_decode.py (see find_onnx_bench_script)
    std::string python;  // empty: onnx_bench_python()
};

struct OnnxReferenceResult {
    bool available = false;
    std::string reason;  // when not available: one line
    std::string runtime, weights;
    int threads = 0;
    int64_t prefill_tokens = 0, decode_prompt = 0, decode_tokens = 0;
    double prefill_tokens_per_s = 0, decode_tokens_per_s = 0;
};

// $MSLM_ONNX_BENCH_SCRIPT, else bench/bench_onnx_decode.py in the current directory or beside / above
// the executable (a build tree inside the source tree); empty when none exists.
std::string find_onnx_bench_script();

// The interpreter: $MSLM_PYTHON, else python3.
std::string onnx_bench_python();

OnnxReferenceResult run_onnx_reference(const std::string& export_dir, const OnnxReferenceOptions& o);

// A markdown section: ours (prefill tokens/s, batch-1 decode tokens/s) beside ORT's, or the line
// saying why ORT was not measured. Our rates NaN (a table not run): shown as —.
std::string format_onnx_reference(const OnnxReferenceResult& r, double our_prefill_tokens_per_s,
                                  double our_decode_tokens_per_s, int our_threads);
nlohmann::json onnx_reference_json(const OnnxReferenceResult& r);

}  // namespace mslm::bench
