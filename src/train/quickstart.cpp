#include "train/quickstart.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <iterator>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/hybrid_lm.h"
#include "model/info.h"

namespace mslm {

namespace {

std::vector<int32_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    MSLM_CHECK(in.good(), "{}: cannot open the quickstart text (pass --data FILE)", path);
    std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<int32_t> ids(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) ids[i] = static_cast<unsigned char>(raw[i]);
    return ids;
}

// Fills ids/targets (B, T) with random windows of `tokens` (targets = ids shifted by one).
void sample_batch(Rng& rng, const std::vector<int32_t>& tokens, size_t begin, size_t end, int64_t B,
                  int64_t Tn, std::vector<int32_t>& ids, std::vector<int32_t>& targets) {
    ids.resize(B * Tn);
    targets.resize(B * Tn);
    for (int64_t b = 0; b < B; ++b) {
        size_t start = begin + rng.below(end - begin - static_cast<size_t>(Tn) - 1);
        for (int64_t t = 0; t < Tn; ++t) {
            ids[b * Tn + t] = tokens[start + t];
            targets[b * Tn + t] = tokens[start + t + 1];
        }
    }
}

}  // namespace

QuickstartResult run_quickstart(const QuickstartOptions& opt) {
    std::vector<int32_t> tokens = read_bytes(opt.data);
    const size_t split = tokens.size() * 9 / 10;  // last 10% held out
    MSLM_CHECK(split > static_cast<size_t>(opt.seq_len) * 4 &&
                   tokens.size() - split > static_cast<size_t>(opt.seq_len) * 4,
               "{}: {} bytes is too short for sequences of {}", opt.data, tokens.size(), opt.seq_len);

    ModelConfig cfg = preset(opt.preset);
    cfg.vocab_size = 256;  // bytes
    cfg.max_seq_len = std::max(cfg.max_seq_len, opt.seq_len);
    HybridLM<float> model(cfg);
    model.init(opt.seed);
    fmt::print("quickstart: byte-level '{}' model, {} parameters, {} layers {}\n", opt.preset,
               format_count(model.num_params()), cfg.n_layers, cfg.layer_pattern());
    fmt::print("quickstart: {} ({} bytes: {} train / {} held out), batch {} x {}, SGD lr {}\n", opt.data,
               tokens.size(), split, tokens.size() - split, opt.batch, opt.seq_len, opt.lr);

    Rng val_rng(12345);
    std::vector<int32_t> ids, targets;
    auto held_out_loss = [&] {
        Rng r = val_rng;  // the same held-out windows every time
        double sum = 0;
        for (int i = 0; i < 4; ++i) {
            sample_batch(r, tokens, split, tokens.size(), opt.batch, opt.seq_len, ids, targets);
            sum += model.forward(ids.data(), targets.data(), opt.batch, opt.seq_len);
        }
        return sum / 4;
    };

    QuickstartResult res{};
    res.val_before = held_out_loss();
    fmt::print("quickstart: held-out loss before training {:.4f} (uniform over bytes: {:.4f})\n",
               res.val_before, std::log(256.0));
    Rng rng(opt.seed + 1);
    auto& params = model.params();
    auto start = std::chrono::steady_clock::now();
    for (int64_t step = 1; step <= opt.steps; ++step) {
        sample_batch(rng, tokens, 0, split, opt.batch, opt.seq_len, ids, targets);
        params.zero_grad();
        double loss = model.forward(ids.data(), targets.data(), opt.batch, opt.seq_len);
        MSLM_CHECK(std::isfinite(loss), "step {}: loss is {}", step, loss);
        model.backward();
        double sq = 0;
        for (int64_t i = 0; i < params.total(); ++i) sq += double(params.grads()[i]) * params.grads()[i];
        double norm = std::sqrt(sq);
        double scale = norm > opt.clip ? opt.clip / norm : 1.0;
        float step_size = static_cast<float>(opt.lr * scale);
        for (int64_t i = 0; i < params.total(); ++i) params.values()[i] -= step_size * params.grads()[i];
        if (step == 1) res.first_loss = loss;
        res.last_loss = loss;
        if (step % opt.log_every == 0 || step == 1 || step == opt.steps) {
            double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            double tps = static_cast<double>(step * opt.batch * opt.seq_len) / secs;
            double eta = secs / static_cast<double>(step) * static_cast<double>(opt.steps - step);
            fmt::print("step {:>5}/{}  loss {:.4f}  grad norm {:.3f}  {:.0f} tok/s  ETA {:.0f}s\n", step,
                       opt.steps, loss, norm, tps, eta);
            std::fflush(stdout);
            res.tokens_per_second = tps;
        }
    }
    res.val_after = held_out_loss();
    fmt::print("quickstart: held-out loss after {} steps {:.4f} (was {:.4f})\n", opt.steps, res.val_after,
               res.val_before);
    return res;
}

}  // namespace mslm
