// Decoding products (x (M, in) · Wᵀ for M = 1 and 8) against fp32 (core/gemm), bf16, int8, W8A16 and
// 4-bit NF4 / FP4 weights (ops/packed_linear; 4-bit quantized by bitsandbytes' quantizer, blocks of
// 64, as `--dtype nf4` packs a model): µs per product and weight GB/s for the 130m shapes, for
// thread counts.
// The weights are a 130m model's worth: --layers layers of in_proj 3352×768, out_proj 768×1536 and an
// MLP 2048×768 + 768×2048, and the LM head 50280×768 (121M parameters at 12 layers: 486 MB in f32,
// 243 MB in bf16, 121 MB in int8). A pass runs every product in order, as a decoding step does, so
// a weight comes back only after all the others have streamed through the caches. Each figure is the
// median over passes. "read GB/s" is the yardstick: a streaming sum over a buffer of the same size
// with the same threads (bench_read_bandwidth's loop), the most a pass could reach, run after each
// pass so that both see the same load on a shared machine.
//   bench_packed_gemv [--formats f32,bf16,int8,w8a16,nf4,fp4] [--batch 1,8] [--threads 1,2] [--layers 12]
//                     [--min-seconds 1]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "bench/timing.h"
#include "core/blas_setup.h"
#include "core/error.h"
#include "core/gemm.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "ops/packed_linear.h"
#include "quant/bnb.h"

using namespace mslm;

namespace {

struct Shape {
    int64_t out, in;
};

// One layer's products, then the head.
const std::vector<Shape> kLayerShapes = {{3352, 768}, {768, 1536}, {2048, 768}, {768, 2048}};
const Shape kHead = {50280, 768};

using bench::seconds_since;

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// One weight of the model in the format under test.
struct Weight {
    Shape shape;
    int shape_index;
    std::vector<float> f32;
    ops::PackedWeight packed;
    size_t bytes;
};

// The result of one (format, M, threads) configuration.
struct Result {
    std::vector<double> us;   // per shape: median µs per product
    std::vector<double> gbs;  // per shape: weight GB/s
    double pass_gbs = 0, read_gbs = 0, ratio = 0;
    size_t pass_bytes = 0;
};

// Seconds to sum buf with the pool, each thread over its contiguous part with 64 independent
// accumulators (bench_read_bandwidth's loop): the loads bound it, not the latency of a running sum.
double read_seconds(const std::vector<float>& buf) {
    const int64_t n = static_cast<int64_t>(buf.size()), parts = num_threads();
    std::vector<float> partial(static_cast<size_t>(parts));
    const auto start = std::chrono::steady_clock::now();
    parallel_for(parts, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
            const float* x = buf.data() + n * p / parts;
            const int64_t len = n * (p + 1) / parts - n * p / parts;
            float acc[64] = {};
            int64_t i = 0;
            for (; i + 64 <= len; i += 64)
                for (int j = 0; j < 64; ++j) acc[j] += x[i + j];
            for (; i < len; ++i) acc[0] += x[i];
            for (float a : acc) partial[p] += a;
        }
    });
    const double t = seconds_since(start);
    if (partial[0] < 0) std::abort();  // keeps the sums alive
    return t;
}

// Passes over the model alternate with reads of a buffer as large, so that both see the same load
// on a shared machine; "pass / read" is the median of the per-pair ratios.
Result run(const std::vector<Weight>& model, ops::WeightFormat format, int64_t M, double min_seconds,
           const std::vector<float>& read_buf) {
    const size_t n_shapes = kLayerShapes.size() + 1;
    int64_t max_in = 0, max_out = 0;
    for (const auto& w : model) {
        max_in = std::max(max_in, w.shape.in);
        max_out = std::max(max_out, w.shape.out);
    }
    Rng rng(3);
    std::vector<float> x(static_cast<size_t>(M * max_in)), y(static_cast<size_t>(M * max_out));
    for (auto& v : x) v = static_cast<float>(rng.normal());
    auto product = [&](const Weight& w) {
        if (format == ops::WeightFormat::F32)
            gemm<float>(false, true, static_cast<int>(M), static_cast<int>(w.shape.out),
                        static_cast<int>(w.shape.in), 1.0f, x.data(), static_cast<int>(w.shape.in),
                        w.f32.data(), static_cast<int>(w.shape.in), 0.0f, y.data(),
                        static_cast<int>(w.shape.out));
        else
            ops::packed_linear_forward(y.data(), x.data(), w.packed, nullptr, M);
    };
    for (const auto& w : model) product(w);  // warm-up
    read_seconds(read_buf);
    std::vector<std::vector<double>> shape_us(n_shapes);  // per shape, per pass: mean µs per product
    std::vector<double> pass_seconds, read_secs, ratios;
    for (auto start = std::chrono::steady_clock::now();
         pass_seconds.size() < 5 || seconds_since(start) < min_seconds;) {
        std::vector<double> total(n_shapes, 0.0);
        std::vector<int> count(n_shapes, 0);
        const auto pass_start = std::chrono::steady_clock::now();
        for (const auto& w : model) {
            const auto t0 = std::chrono::steady_clock::now();
            product(w);
            total[w.shape_index] += seconds_since(t0);
            ++count[w.shape_index];
        }
        pass_seconds.push_back(seconds_since(pass_start));
        read_secs.push_back(read_seconds(read_buf));
        for (size_t s = 0; s < n_shapes; ++s) shape_us[s].push_back(1e6 * total[s] / count[s]);
    }
    Result r;
    for (const auto& w : model) r.pass_bytes += w.bytes;
    for (size_t s = 0; s < n_shapes; ++s) {
        r.us.push_back(median(shape_us[s]));
        const auto it = std::find_if(model.begin(), model.end(),
                                     [&](const Weight& w) { return w.shape_index == static_cast<int>(s); });
        r.gbs.push_back(static_cast<double>(it->bytes) / r.us.back() / 1e3);
    }
    const double read_bytes = static_cast<double>(read_buf.size() * sizeof(float));
    for (size_t i = 0; i < pass_seconds.size(); ++i)
        ratios.push_back(static_cast<double>(r.pass_bytes) / pass_seconds[i] / (read_bytes / read_secs[i]));
    r.pass_gbs = static_cast<double>(r.pass_bytes) / median(pass_seconds) / 1e9;
    r.read_gbs = read_bytes / median(read_secs) / 1e9;
    r.ratio = median(ratios);
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    select_blas_kernels(argc, argv);
    std::string formats = "f32,bf16,int8", batches = "1,8", threads = "1,2";
    int layers = 12;
    double min_seconds = 1.0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 < argc && a == "--formats")
            formats = argv[++i];
        else if (i + 1 < argc && a == "--batch")
            batches = argv[++i];
        else if (i + 1 < argc && a == "--threads")
            threads = argv[++i];
        else if (i + 1 < argc && a == "--layers")
            layers = std::max(1, std::atoi(argv[++i]));
        else if (i + 1 < argc && a == "--min-seconds")
            min_seconds = std::atof(argv[++i]);
        else {
            fmt::print(
                "usage: bench_packed_gemv [--formats f32,bf16,int8,w8a16,nf4,fp4] [--batch 1,8] [--threads 1,2] [--layers "
                "12] "
                "[--min-seconds 1]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }

    // The fp32 model, kept for the f32 rows and packed from for the others.
    std::vector<Weight> model;
    Rng rng(1);
    auto add = [&](const Shape& s, int index) {
        Weight w{s, index, std::vector<float>(static_cast<size_t>(s.out * s.in)), {}, 0};
        for (auto& v : w.f32) v = static_cast<float>(rng.uniform(-0.05, 0.05));
        model.push_back(std::move(w));
    };
    for (int l = 0; l < layers; ++l)
        for (size_t s = 0; s < kLayerShapes.size(); ++s) add(kLayerShapes[s], static_cast<int>(s));
    add(kHead, static_cast<int>(kLayerShapes.size()));

    fmt::print("# mamba-slm bench_packed_gemv: {} layers + head, kernels: {}, OpenBLAS: {}\n", layers,
               ops::packed_kernels_description(), blas_core_name());
    std::map<std::string, Result> results;  // key: format/M/threads
    for (const auto& fname : bench::split_list(formats)) {
        const ops::WeightFormat format = ops::parse_weight_format(fname);
        for (auto& w : model) {
            if (ops::is_4bit_format(format)) {
                const quant::Bnb4Type type =
                    format == ops::WeightFormat::NF4 ? quant::Bnb4Type::NF4 : quant::Bnb4Type::FP4;
                const quant::Bnb4Quantized q = quant::bnb4_quantize(w.f32, type, 64);
                w.packed = {};
                MSLM_CHECK(ops::pack_weight_4bit(w.packed, q.packed.data(), q.absmax.data(),
                                                 quant::bnb4_code(type).data(), w.shape.out, w.shape.in, 64,
                                                 false, format),
                           "bench_packed_gemv: {}x{} does not pack as 4-bit", w.shape.out, w.shape.in);
            } else {
                w.packed = format == ops::WeightFormat::F32
                               ? ops::PackedWeight{}
                               : ops::pack_weight(w.f32.data(), w.shape.out, w.shape.in, format);
            }
            w.bytes = format == ops::WeightFormat::F32 ? w.f32.size() * sizeof(float) : w.packed.bytes();
        }
        size_t total = 0;
        for (const auto& w : model) total += w.bytes;
        const std::vector<float> read_buf(total / sizeof(float), 1.0f);
        for (const auto& th : bench::split_list(threads)) {
            set_num_threads(std::stoi(th));
            for (const auto& b : bench::split_list(batches))
                results[fname + "/" + b + "/" + th] =
                    run(model, format, std::stoll(b), min_seconds, read_buf);
        }
    }
    for (auto& w : model) w.packed = {};

    const auto fmts = bench::split_list(formats);
    std::string header = "| out × in | M | threads |", rule = "|---|---|---|";
    for (const auto& f : fmts) {
        header += fmt::format(" {0} µs | {0} GB/s |", f);
        rule += "---|---|";
    }
    fmt::print("\n{}\n{}\n", header, rule);
    std::vector<Shape> shapes = kLayerShapes;
    shapes.push_back(kHead);
    for (size_t s = 0; s < shapes.size(); ++s)
        for (const auto& b : bench::split_list(batches))
            for (const auto& th : bench::split_list(threads)) {
                std::string line = fmt::format("| {}×{} | {} | {} |", shapes[s].out, shapes[s].in, b, th);
                for (const auto& f : fmts) {
                    const Result& r = results[f + "/" + b + "/" + th];
                    line += fmt::format(" {:.1f} | {:.1f} |", r.us[s], r.gbs[s]);
                }
                fmt::print("{}\n", line);
            }

    fmt::print("\n| format | MB per pass | M | threads | pass GB/s | read GB/s (same MB) | pass / read |\n");
    fmt::print("|---|---|---|---|---|---|---|\n");
    for (const auto& f : fmts)
        for (const auto& b : bench::split_list(batches))
            for (const auto& th : bench::split_list(threads)) {
                const Result& r = results[f + "/" + b + "/" + th];
                fmt::print("| {} | {:.0f} | {} | {} | {:.1f} | {:.1f} | {:.0f}% |\n", f, r.pass_bytes / 1e6,
                           b, th, r.pass_gbs, r.read_gbs, 100 * r.ratio);
            }
    return 0;
}
