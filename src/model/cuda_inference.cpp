#include "model/cuda_inference.h"

#include <algorithm>

#include "core/error.h"

#ifdef MSLM_HAVE_CUDA
#include "model/cuda_model.h"
#endif

namespace mslm {

int parse_inference_device(const std::string& device) {
    if (device == "cpu") return -1;
    if (device == "cuda") return 0;
    const std::string prefix = "cuda:";
    const std::string digits = device.rfind(prefix, 0) == 0 ? device.substr(prefix.size()) : "";
    MSLM_CHECK(
        !digits.empty() && digits.size() <= 4 && digits.find_first_not_of("0123456789") == std::string::npos,
        "--device must be \"cpu\", \"cuda\" or \"cuda:N\" (got \"{}\")", device);
    return std::stoi(digits);
}

int64_t CudaCausalLM::padded_length(int64_t n, int64_t max_seq_len) {
    MSLM_CHECK(n > 0 && n <= max_seq_len, "CudaCausalLM: sequence of {} tokens (max_seq_len {})", n,
               max_seq_len);
    return std::min(max_seq_len, (n + kPadTo - 1) / kPadTo * kPadTo);
}

std::unique_ptr<CausalLM> make_causal_lm(HybridLM<float>& model, const std::string& device) {
    const int gpu = parse_inference_device(device);
    if (gpu < 0) return std::make_unique<HybridCausalLM>(model);
#ifdef MSLM_HAVE_CUDA
    return std::make_unique<CudaCausalLM>(model, gpu);
#else
    fail(
        "--device {}: this build of mamba-slm has no CUDA support; use --device cpu, or build with CUDA "
        "(cmake --preset cuda)",
        device);
#endif
}

#ifdef MSLM_HAVE_CUDA

CudaCausalLM::CudaCausalLM(const HybridLM<float>& model, int device) {
    CudaHybridLM::select_device(device);
    gpu_ = std::make_unique<CudaHybridLM>(model.config());
    gpu_->upload(model);
}

CudaCausalLM::~CudaCausalLM() = default;

int64_t CudaCausalLM::vocab_size() const {
    return gpu_->config().vocab_size;
}
int64_t CudaCausalLM::hidden_size() const {
    return gpu_->config().d_model;
}
int64_t CudaCausalLM::max_seq_len() const {
    return gpu_->config().max_seq_len;
}

void CudaCausalLM::start(int64_t slots, int64_t max_len) {
    MSLM_CHECK(slots > 0, "CudaCausalLM: {} slots (need at least 1)", slots);
    MSLM_CHECK(max_len > 0 && max_len <= max_seq_len(), "CudaCausalLM: max_len {} outside [1, {}]", max_len,
               max_seq_len());
    history_.assign(static_cast<size_t>(slots), {});
    max_len_ = max_len;
}

void CudaCausalLM::check_slot(int64_t slot, const char* what) const {
    MSLM_CHECK(!history_.empty(), "{} before start", what);
    MSLM_CHECK(slot >= 0 && slot < static_cast<int64_t>(history_.size()), "{}: slot {} out of range [0, {})",
               what, slot, history_.size());
}

void CudaCausalLM::run(int64_t slot, int64_t first, float* logits, float* hidden) {
    const std::vector<int32_t>& h = history_[slot];
    const auto n = static_cast<int64_t>(h.size());
    const int64_t T = padded_length(n, max_seq_len());
    padded_.assign(static_cast<size_t>(T), 0);
    std::copy(h.begin(), h.end(), padded_.begin());
    gpu_->forward(padded_.data(), nullptr, 1, T);
    gpu_->download_rows(first, n - first, logits, hidden);
}

void CudaCausalLM::prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) {
    check_slot(slot, "prefill");
    MSLM_CHECK(!ids.empty(), "prefill: empty prompt");
    std::vector<int32_t>& h = history_[slot];
    MSLM_CHECK(static_cast<int64_t>(h.size() + ids.size()) <= max_len_,
               "prefill: slot {} holds {} tokens; {} more exceed the state's max_len {}", slot, h.size(),
               ids.size(), max_len_);
    const auto first = static_cast<int64_t>(h.size());
    h.insert(h.end(), ids.begin(), ids.end());
    const auto n = static_cast<int64_t>(h.size());
    if (!hidden) {
        run(slot, n - 1, logits, nullptr);
        return;
    }
    // Every fed position's hidden state, the last position's logits.
    std::vector<float> all(static_cast<size_t>((n - first) * vocab_size()));
    run(slot, first, all.data(), hidden);
    std::copy_n(all.data() + (n - first - 1) * vocab_size(), vocab_size(), logits);
}

void CudaCausalLM::step(std::span<const int64_t> slots, std::span<const int32_t> tokens, float* logits,
                        float* hidden) {
    MSLM_CHECK(slots.size() == tokens.size(), "step: {} slots but {} tokens", slots.size(), tokens.size());
    if (slots.empty()) return;
    const int64_t V = vocab_size(), D = hidden_size(), k = static_cast<int64_t>(slots.size());
    int64_t longest = 0;
    for (size_t i = 0; i < slots.size(); ++i) {
        check_slot(slots[i], "step");
        for (size_t j = 0; j < i; ++j)
            MSLM_CHECK(slots[j] != slots[i], "step: slot {} listed twice", slots[i]);
        const std::vector<int32_t>& h = history_[slots[i]];
        MSLM_CHECK(static_cast<int64_t>(h.size()) < max_len_, "step: slot {} is full ({} tokens)", slots[i],
                   max_len_);
        longest = std::max(longest, static_cast<int64_t>(h.size()) + 1);
    }
    // One forward for the k slots: row b holds slot b's history (with the new token), padded with 0
    // to the common length T; its logits are read at its own last position.
    const int64_t T = padded_length(longest, max_seq_len());
    padded_.assign(static_cast<size_t>(k * T), 0);
    for (int64_t b = 0; b < k; ++b) {
        std::vector<int32_t>& h = history_[slots[b]];
        h.push_back(tokens[b]);
        std::copy(h.begin(), h.end(), padded_.begin() + b * T);
    }
    gpu_->forward(padded_.data(), nullptr, k, T);
    for (int64_t b = 0; b < k; ++b) {
        const auto n = static_cast<int64_t>(history_[slots[b]].size());
        gpu_->download_rows(b * T + n - 1, 1, logits + b * V, hidden ? hidden + b * D : nullptr);
    }
}

void CudaCausalLM::reorder(std::span<const int64_t> src) {
    MSLM_CHECK(!history_.empty(), "reorder before start");
    MSLM_CHECK(src.size() == history_.size(), "reorder with {} indices for {} slots", src.size(),
               history_.size());
    for (int64_t s : src)
        MSLM_CHECK(s >= 0 && s < static_cast<int64_t>(history_.size()),
                   "reorder index {} out of range [0, {})", s, history_.size());
    std::vector<std::vector<int32_t>> next(history_.size());
    for (size_t i = 0; i < src.size(); ++i) next[i] = history_[src[i]];
    history_ = std::move(next);
}

void CudaCausalLM::copy(int64_t src_slot, int64_t dst_slot) {
    check_slot(src_slot, "copy");
    check_slot(dst_slot, "copy");
    if (src_slot != dst_slot) history_[dst_slot] = history_[src_slot];
}

#endif  // MSLM_HAVE_CUDA

}  // namespace mslm
