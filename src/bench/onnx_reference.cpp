#include "bench/onnx_reference.h"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"

namespace mslm::bench {

namespace fs = std::filesystem;

namespace {

// Single-quoted for /bin/sh.
std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// The last non-empty line of the script's output (errors and the JSON result come last).
std::string last_line(const std::string& out) {
    size_t end = out.find_last_not_of("\n\r ");
    if (end == std::string::npos) return "";
    const size_t start = out.find_last_of('\n', end);
    return out.substr(start == std::string::npos ? 0 : start + 1,
                      end - (start == std::string::npos ? 0 : start + 1) + 1);
}

}  // namespace

std::string find_onnx_bench_script() {
    if (const char* env = std::getenv("MSLM_ONNX_BENCH_SCRIPT"); env && *env) return env;
    const fs::path rel = fs::path("bench") / "bench_onnx_decode.py";
    std::error_code ec;
    if (fs::exists(rel, ec)) return fs::absolute(rel, ec).string();
    fs::path dir = fs::read_symlink("/proc/self/exe", ec).parent_path();
    for (int up = 0; !ec && up < 4 && !dir.empty(); ++up, dir = dir.parent_path()) {
        if (fs::exists(dir / rel, ec)) return (dir / rel).string();
        if (dir == dir.parent_path()) break;
    }
    return "";
}

std::string onnx_bench_python() {
    const char* p = std::getenv("MSLM_PYTHON");
    return p && *p ? p : "python3";
}

OnnxReferenceResult run_onnx_reference(const std::string& export_dir, const OnnxReferenceOptions& o) {
    OnnxReferenceResult r;
    std::error_code ec;
    MSLM_CHECK(fs::exists(fs::path(export_dir) / "model.onnx", ec),
               "bench --onnx {}: no model.onnx there (expected a `mamba-slm export --format onnx` directory)",
               export_dir);
    const std::string script = o.script.empty() ? find_onnx_bench_script() : o.script;
    if (script.empty()) {
        r.reason = "bench/bench_onnx_decode.py not found (set MSLM_ONNX_BENCH_SCRIPT to its path)";
        return r;
    }
    const std::string python = o.python.empty() ? onnx_bench_python() : o.python;
    const int threads = o.threads > 0 ? o.threads : num_threads();
    const std::string cmd = fmt::format(
        "{} {} {} --threads {} --prompt {} --decode-prompt {} --tokens {} --repeats {} --json 2>&1",
        shell_quote(python), shell_quote(script), shell_quote(export_dir), threads, o.prompt, o.decode_prompt,
        o.decode_tokens, o.repeats);
    FILE* pipe = popen(cmd.c_str(), "r");
    MSLM_CHECK(pipe, "bench --onnx: cannot run {}", cmd);
    std::string out;
    std::array<char, 4096> buf;
    while (size_t n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
    const int status = pclose(pipe);
    const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    const std::string line = last_line(out);
    if (rc == 77) {
        r.reason = fmt::format(
            "onnxruntime is not importable by {} ({}); pip install onnxruntime, or set "
            "MSLM_PYTHON to an interpreter that has it",
            python, line);
        return r;
    }
    if (rc == 127) {
        r.reason = fmt::format("{} not found; set MSLM_PYTHON to a Python with onnxruntime", python);
        return r;
    }
    MSLM_CHECK(rc == 0, "bench --onnx {}: {} failed (exit {}): {}", export_dir, script, rc, line);
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    MSLM_CHECK(j.is_object() && j.contains("decode_tokens_per_s"),
               "bench --onnx {}: {} printed no JSON result: {}", export_dir, script, line);
    r.available = true;
    r.runtime = j.at("runtime").get<std::string>();
    r.weights = j.at("weights").get<std::string>();
    r.threads = j.at("threads").get<int>();
    r.prefill_tokens = j.at("prefill_tokens").get<int64_t>();
    r.decode_prompt = j.at("decode_prompt").get<int64_t>();
    r.decode_tokens = j.at("decode_tokens").get<int64_t>();
    r.prefill_tokens_per_s = j.at("prefill_tokens_per_s").get<double>();
    r.decode_tokens_per_s = j.at("decode_tokens_per_s").get<double>();
    return r;
}

std::string format_onnx_reference(const OnnxReferenceResult& r, double our_prefill_tokens_per_s,
                                  double our_decode_tokens_per_s, int our_threads) {
    std::string s = "\n## ONNX Runtime (CPU, the same model exported; an anchor, not a product path)\n\n";
    if (!r.available) return s + fmt::format("onnxruntime: not measured: {}\n", r.reason);
    s += fmt::format(
        "| runtime | weights | threads | prefill tokens/s ({} tokens) | decode tokens/s (batch 1, "
        "after {}) |\n|---|---|---|---|---|\n",
        r.prefill_tokens, r.decode_prompt);
    const auto rate = [](double v) { return std::isnan(v) ? std::string("—") : fmt::format("{:.0f}", v); };
    s += fmt::format("| mamba-slm | f32 | {} | {} | {} |\n", our_threads, rate(our_prefill_tokens_per_s),
                     rate(our_decode_tokens_per_s));
    s += fmt::format("| {} | {} | {} | {:.0f} | {:.0f} |\n", r.runtime, r.weights, r.threads,
                     r.prefill_tokens_per_s, r.decode_tokens_per_s);
    return s;
}

nlohmann::json onnx_reference_json(const OnnxReferenceResult& r) {
    if (!r.available) return {{"available", false}, {"reason", r.reason}};
    return {{"available", true},
            {"runtime", r.runtime},
            {"weights", r.weights},
            {"threads", r.threads},
            {"prefill_tokens", r.prefill_tokens},
            {"prefill_tokens_per_s", r.prefill_tokens_per_s},
            {"decode_prompt", r.decode_prompt},
            {"decode_tokens", r.decode_tokens},
            {"decode_tokens_per_s", r.decode_tokens_per_s}};
}

}  // namespace mslm::bench
