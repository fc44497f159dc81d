#include "data/loader.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"
#include "data/manifest.h"

namespace mslm {

nlohmann::json LoaderState::to_json() const {
    // Generator words as hex strings: JSON readers other than ours (Python's included) may keep
    // numbers as doubles, which cannot hold 64 bits.
    nlohmann::json words = nlohmann::json::array();
    for (uint64_t w : rng) words.push_back(fmt::format("{:016x}", w));
    return {{"epoch", epoch}, {"position", position}, {"rng", words}, {"windows", windows}};
}

LoaderState LoaderState::from_json(const nlohmann::json& j) {
    LoaderState s;
    try {
        s.epoch = j.at("epoch").get<int64_t>();
        s.position = j.at("position").get<int64_t>();
        s.windows = j.at("windows").get<int64_t>();
        const auto& words = j.at("rng");
        MSLM_CHECK(words.is_array() && words.size() == s.rng.size(), "loader state: 'rng' must hold {} words",
                   s.rng.size());
        for (size_t i = 0; i < s.rng.size(); ++i) {
            std::string hex = words[i].get<std::string>();
            size_t used = 0;
            s.rng[i] = std::stoull(hex, &used, 16);
            MSLM_CHECK(used == hex.size() && !hex.empty(), "loader state: rng word '{}' is not hexadecimal",
                       hex);
        }
    } catch (const nlohmann::json::exception& e) {
        fail("loader state: {}", e.what());
    } catch (const std::logic_error& e) {  // stoull
        fail("loader state: rng word is not hexadecimal: {}", e.what());
    }
    MSLM_CHECK(s.epoch >= 0 && s.position >= 0, "loader state: negative epoch or position");
    return s;
}

DataLoader::DataLoader(const std::vector<std::string>& shard_paths, const LoaderOptions& opt)
    : opt_(opt), rng_(opt.seed) {
    MSLM_CHECK(opt.batch_size > 0 && opt.seq_len > 0,
               "loader: batch size {} and sequence length {} must be positive", opt.batch_size, opt.seq_len);
    MSLM_CHECK(opt.world_size > 0 && opt.rank >= 0 && opt.rank < opt.world_size,
               "loader: rank {} of world size {}", opt.rank, opt.world_size);
    MSLM_CHECK(!shard_paths.empty(), "loader: no shards");
    starts_.push_back(0);
    for (const auto& path : shard_paths) {
        shards_.push_back(ShardReader::open(path));
        starts_.push_back(starts_.back() + shards_.back().size());
    }
    total_tokens_ = starts_.back();
    const int64_t T = opt.seq_len;
    MSLM_CHECK(total_tokens_ >= T + 1,
               "loader: the shards ({} first) hold {} tokens, fewer than one window of {}",
               shard_paths.front(), total_tokens_, T + 1);
    windows_ = (total_tokens_ - 1) / T;
    if (opt.shuffle) {
        MSLM_CHECK(windows_ >= opt.world_size, "loader: {} windows of {} tokens cannot feed {} ranks",
                   windows_, T + 1, opt.world_size);
        MSLM_CHECK(windows_ <= int64_t{UINT32_MAX}, "loader: {} windows, more than the shuffler's 2^32 - 1",
                   windows_);
        draw_permutation();
    }
}

DataLoader DataLoader::from_manifest(const std::string& manifest_or_dir, const std::string& split,
                                     const LoaderOptions& opt) {
    SplitInfo info = manifest_split(manifest_or_dir, split);
    MSLM_CHECK(!info.shards.empty(), "{}: split '{}' has no shards", manifest_path(manifest_or_dir), split);
    DataLoader loader(info.shards, opt);
    MSLM_CHECK(loader.total_tokens() == info.tokens, "{}: split '{}' lists {} tokens, its shards hold {}",
               manifest_path(manifest_or_dir), split, info.tokens, loader.total_tokens());
    return loader;
}

int64_t DataLoader::rank_windows() const {
    const int64_t n = opt_.world_size, r = opt_.rank;
    if (opt_.shuffle) return windows_ / n;
    return windows_ > r ? (windows_ - r - 1) / n + 1 : 0;
}

void DataLoader::draw_permutation() {
    epoch_rng_ = rng_.state();
    perm_.resize(static_cast<size_t>(windows_));
    std::iota(perm_.begin(), perm_.end(), uint32_t{0});
    for (int64_t i = windows_ - 1; i > 0; --i) {
        auto j = static_cast<int64_t>(rng_.below(static_cast<uint64_t>(i + 1)));
        std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(j)]);
    }
}

int64_t DataLoader::window_at(int64_t position) const {
    int64_t slot = position * opt_.world_size + opt_.rank;
    return opt_.shuffle ? perm_[static_cast<size_t>(slot)] : slot;
}

bool DataLoader::next(Batch& batch) {
    const int64_t T = opt_.seq_len;
    const int64_t per_epoch = rank_windows();
    int64_t rows = opt_.batch_size;
    if (!opt_.shuffle) {
        rows = std::min(rows, per_epoch - position_);
        if (rows <= 0) return false;
    }
    batch.rows = rows;
    batch.seq_len = T;
    batch.inputs.resize(static_cast<size_t>(rows * T));
    batch.targets.resize(static_cast<size_t>(rows * T));
    batch.windows.resize(static_cast<size_t>(rows));
    for (int64_t b = 0; b < rows; ++b) {
        if (position_ == per_epoch) {  // shuffled mode only: the next epoch starts mid-batch
            ++epoch_;
            position_ = 0;
            draw_permutation();
        }
        int64_t k = window_at(position_++);
        batch.windows[static_cast<size_t>(b)] = k;
        read_tokens(k * T, T, batch.inputs.data() + b * T);       // (T,)
        read_tokens(k * T + 1, T, batch.targets.data() + b * T);  // (T,)
    }
    return true;
}

void DataLoader::read_tokens(int64_t begin, int64_t n, int32_t* out) const {
    MSLM_CHECK(begin >= 0 && n >= 0 && begin + n <= total_tokens_,
               "loader: tokens [{}, {}) outside the stream of {}", begin, begin + n, total_tokens_);
    const auto shard_end = starts_.begin() + static_cast<std::ptrdiff_t>(shards_.size());
    size_t i = static_cast<size_t>(std::upper_bound(starts_.begin(), shard_end, begin) - starts_.begin()) - 1;
    while (n > 0) {
        int64_t offset = begin - starts_[i];
        int64_t take = std::min(n, starts_[i + 1] - begin);
        shards_[i].read(offset, take, out);
        out += take;
        begin += take;
        n -= take;
        ++i;
    }
}

LoaderState DataLoader::state() const {
    LoaderState s;
    s.epoch = epoch_;
    s.position = position_;
    s.rng = opt_.shuffle ? epoch_rng_ : rng_.state();
    s.windows = windows_;
    return s;
}

void DataLoader::set_state(const LoaderState& s) {
    MSLM_CHECK(s.windows == windows_, "loader state is for {} windows an epoch, these shards give {}",
               s.windows, windows_);
    MSLM_CHECK(s.position >= 0 && s.position <= rank_windows(),
               "loader state: position {} outside an epoch of {}", s.position, rank_windows());
    epoch_ = s.epoch;
    rng_.set_state(s.rng);
    if (opt_.shuffle) draw_permutation();
    position_ = s.position;
}

void DataLoader::reset() {
    rng_.seed_with(opt_.seed);
    epoch_ = 0;
    position_ = 0;
    if (opt_.shuffle) draw_permutation();
}

}  // namespace mslm
