// Encode throughput of Tokenizer in MB/s of input text, one thread (encode of each line in turn)
// and all threads (encode_batch over the lines). Prints a markdown table for docs/PERFORMANCE.md;
// bench/reference/hf_tokenizer_speed.py prints the same rows for HF tokenizers.
//   bench_tokenizer [TEXT_FILE] [--tokenizers a.json,b.json] [--min-seconds 2]
// Defaults: ../shared/data/wikitext2-valid.txt and the parity fixtures gpt2.json, llama3.json
// (run from the repository root).
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/timing.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "tokenizer/tokenizer.h"

using namespace mslm;

int main(int argc, char** argv) {
    std::string text_path = "../shared/data/wikitext2-valid.txt";
    std::string tokenizers =
        "tests/parity/fixtures/tokenizers/gpt2.json,tests/parity/fixtures/tokenizers/llama3.json";
    double min_seconds = 2.0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--tokenizers" && i + 1 < argc) {
            tokenizers = argv[++i];
        } else if (a == "--min-seconds" && i + 1 < argc) {
            min_seconds = std::stod(argv[++i]);
        } else if (!a.empty() && a[0] != '-') {
            text_path = a;
        } else {
            fmt::print(stderr,
                       "usage: bench_tokenizer [TEXT_FILE] [--tokenizers a.json,b.json] [--min-seconds S]\n");
            return 2;
        }
    }
    try {
        std::ifstream f(text_path, std::ios::binary);
        MSLM_CHECK(f, "{}: cannot open", text_path);
        std::stringstream ss;
        ss << f.rdbuf();
        const std::string text = ss.str();
        std::vector<std::string_view> lines;
        for (size_t i = 0, j; i < text.size(); i = j) {
            j = text.find('\n', i);
            j = j == std::string::npos ? text.size() : j + 1;
            lines.push_back(std::string_view(text).substr(i, j - i));
        }
        const double mb = static_cast<double>(text.size()) / 1e6;
        fmt::print("text: {} ({:.2f} MB, {} lines); threads: {}\n\n", text_path, mb, lines.size(),
                   num_threads());
        fmt::print("| tokenizer | implementation | 1 thread MB/s | {} threads MB/s | ids |\n", num_threads());
        fmt::print("| --- | --- | ---: | ---: | ---: |\n");
        std::stringstream names(tokenizers);
        for (std::string path; std::getline(names, path, ',');) {
            Tokenizer tok = Tokenizer::load(path);
            size_t n_ids = 0;
            double single = bench::time_per_call(
                [&] {
                    std::vector<int32_t> ids;
                    for (std::string_view line : lines) tok.encode_append(line, ids);
                    n_ids = ids.size();
                },
                min_seconds);
            double batch = bench::time_per_call([&] { tok.encode_batch(lines); }, min_seconds);
            std::string name = path.substr(path.find_last_of('/') + 1);
            fmt::print("| {} | mamba-slm | {:.1f} | {:.1f} | {} |\n", name, mb / single, mb / batch, n_ids);
        }
    } catch (const Error& e) {
        fmt::print(stderr, "bench_tokenizer: {}\n", e.what());
        return 1;
    }
    return 0;
}
