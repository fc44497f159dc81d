#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "model/model_io.h"

namespace mslm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFiles[] = {"optimizer.safetensors", "trainer_state.json"};
constexpr const char* kModelFiles[] = {"config.json", "model.safetensors"};
constexpr const char* kAdapterFiles[] = {"adapter_config.json", "adapter_model.safetensors"};

std::string step_dir_name(int64_t step) {
    return fmt::format("step_{:08d}", step);
}

// "step_<digits>" -> the step; anything else (including "step_00000100.tmp") -> nullopt.
std::optional<int64_t> parse_step_dir(const std::string& name) {
    const std::string prefix = "step_";
    if (name.size() <= prefix.size() || name.size() > prefix.size() + 18 ||
        name.compare(0, prefix.size(), prefix) != 0)
        return std::nullopt;
    int64_t step = 0;
    for (size_t i = prefix.size(); i < name.size(); ++i) {
        if (name[i] < '0' || name[i] > '9') return std::nullopt;
        step = step * 10 + (name[i] - '0');
    }
    return step;
}

bool all_files(const fs::path& dir, const char* const (&files)[2]) {
    std::error_code ec;
    for (const char* f : files)
        if (!fs::is_regular_file(dir / f, ec)) return false;
    return true;
}

bool is_complete(const fs::path& dir) {
    return all_files(dir, kFiles) && (all_files(dir, kModelFiles) || all_files(dir, kAdapterFiles));
}

void fsync_file(const fs::path& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MSLM_CHECK(fd >= 0, "{}: cannot open for fsync: {}", path.string(), std::strerror(errno));
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    MSLM_CHECK(rc == 0, "{}: fsync failed: {}", path.string(), std::strerror(err));
}

// Makes entries created or renamed in `dir` durable. Best effort: some file systems refuse fsync
// on directories, and the rename itself is what makes a checkpoint visible.
void fsync_dir(const fs::path& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

const char* non_finite_name(double v) {
    return std::isnan(v) ? "NaN" : "inf";
}

// The NaN/inf guard: a checkpoint that holds a non-finite value would be resumed from and poison
// every later step, so it is refused before anything is written.
void check_finite(int64_t step, const CheckpointContents& c) {
    const Parameters<float>& params = c.model ? c.model->params() : *c.adapter;
    for (size_t p = 0; p < params.specs().size(); ++p) {
        const float* v = params.value(p);
        for (int64_t i = 0; i < params.specs()[p].numel; ++i)
            if (!std::isfinite(v[i]))
                fail("checkpoint at step {}: parameter '{}' holds {}", step, params.specs()[p].name,
                     non_finite_name(v[i]));
    }
    std::set<std::string> names;
    for (const auto& [name, t] : c.optimizer) {
        MSLM_CHECK(names.insert(name).second, "checkpoint at step {}: optimizer tensor '{}' given twice",
                   step, name);
        MSLM_CHECK(t.device() == Device::CPU,
                   "checkpoint at step {}: optimizer tensor '{}' is not on the CPU", step, name);
        DType d = t.dtype();
        if (d != DType::F32 && d != DType::F64 && d != DType::BF16 && d != DType::F16) continue;
        Tensor f = d == DType::F32 ? t.contiguous() : t.to(DType::F32);
        const float* v = f.data<float>();
        for (int64_t i = 0; i < f.numel(); ++i)
            if (!std::isfinite(v[i]))
                fail("checkpoint at step {}: optimizer tensor '{}' holds {}", step, name,
                     non_finite_name(v[i]));
    }
}

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    MSLM_CHECK(out.good(), "{}: cannot write", path.string());
    out << text;
    out.flush();
    MSLM_CHECK(out.good(), "{}: write failed", path.string());
}

// Puts the finished `tmp` directory in place as `final_dir`. When `final_dir` already exists (the
// same step saved again) the two are exchanged in one step, so the name never points at nothing;
// the old contents end up under `tmp` and are deleted.
void publish(const fs::path& tmp, const fs::path& final_dir) {
    std::error_code ec;
    if (!fs::exists(final_dir, ec)) {
        fs::rename(tmp, final_dir);
        return;
    }
#ifdef RENAME_EXCHANGE
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
        fs::remove_all(tmp);
        return;
    }
#endif
    // No exchange on this system or file system: move the old one aside first. A crash in between
    // leaves the old contents under a *.tmp name (ignored) and the older checkpoints intact.
    fs::path old = final_dir;
    old += ".old.tmp";
    fs::remove_all(old);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old);
}

std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const fs::path& root,
                                                               std::vector<std::string>* skipped) {
    std::vector<std::pair<int64_t, fs::path>> found;
    std::error_code ec;
    if (!fs::is_directory(root, ec)) return found;
    for (const fs::directory_entry& e : fs::directory_iterator(root)) {
        if (!e.is_directory(ec)) continue;
        std::string name = e.path().filename().string();
        std::optional<int64_t> step = parse_step_dir(name);
        if (step && is_complete(e.path())) {
            found.emplace_back(*step, e.path());
        } else if (skipped && (step || (name.starts_with("step_") && name.ends_with(".tmp")))) {
            skipped->push_back(e.path().string());
        }
    }
    std::sort(found.begin(), found.end());
    return found;
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, int64_t step, const CheckpointContents& contents,
                            int keep_last) {
    MSLM_CHECK((contents.model != nullptr) != (contents.adapter != nullptr && contents.write_adapter),
               "checkpoint at step {}: give either a model or an adapter with its writer", step);
    MSLM_CHECK(step >= 0, "checkpoint: step {} is negative", step);
    MSLM_CHECK(keep_last >= 1, "checkpoint: keep_last must be at least 1, got {}", keep_last);
    MSLM_CHECK(contents.trainer_state.is_object(),
               "checkpoint at step {}: trainer_state must be a JSON object", step);
    if (contents.trainer_state.contains("step"))
        MSLM_CHECK(contents.trainer_state["step"] == step,
                   "checkpoint at step {}: trainer_state says step {}", step,
                   contents.trainer_state["step"].dump());
    check_finite(step, contents);

    const fs::path root = fs::path(run_dir) / "checkpoints";
    fs::create_directories(root);
    fsync_dir(fs::path(run_dir));
    fsync_dir(root);

    const fs::path final_dir = root / step_dir_name(step);
    fs::path tmp = final_dir;
    tmp += ".tmp";
    fs::remove_all(tmp);  // a leftover of a crashed save of this same step
    fs::create_directory(tmp);
    try {
        if (contents.model)
            save_model(*contents.model, tmp.string(), DType::F32);
        else
            contents.write_adapter(tmp.string());
        save_safetensors((tmp / "optimizer.safetensors").string(), contents.optimizer,
                         {{"format", "mamba_slm_optimizer"}});
        json state = contents.trainer_state;
        state["step"] = step;
        write_text(tmp / "trainer_state.json", state.dump(2) + "\n");
        for (const char* f : kFiles) fsync_file(tmp / f);
        for (const char* f : contents.model ? kModelFiles : kAdapterFiles) fsync_file(tmp / f);
        fsync_dir(tmp);
        publish(tmp, final_dir);
        fsync_dir(root);
    } catch (...) {
        std::error_code ec;
        fs::remove_all(tmp, ec);
        throw;
    }

    std::vector<std::pair<int64_t, fs::path>> all = complete_checkpoints(root, nullptr);
    size_t excess = all.size() > static_cast<size_t>(keep_last) ? all.size() - keep_last : 0;
    for (size_t i = 0; i < all.size() && excess > 0; ++i) {
        if (all[i].first == step) continue;
        fs::remove_all(all[i].second);
        --excess;
    }
    fsync_dir(root);
    return final_dir.string();
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir, std::vector<std::string>* skipped) {
    std::vector<std::pair<int64_t, fs::path>> all =
        complete_checkpoints(fs::path(run_dir) / "checkpoints", skipped);
    if (all.empty()) return std::nullopt;
    return all.back().second.string();
}

LoadedCheckpoint load_checkpoint(const std::string& dir) {
    const fs::path d(dir);
    MSLM_CHECK(fs::is_directory(d), "{}: checkpoint directory not found", dir);
    const bool adapter = all_files(d, kAdapterFiles) && !all_files(d, kModelFiles);
    for (const char* f : kFiles)
        MSLM_CHECK(fs::is_regular_file(d / f), "{}: missing (incomplete checkpoint)", (d / f).string());
    for (const char* f : adapter ? kAdapterFiles : kModelFiles)
        MSLM_CHECK(fs::is_regular_file(d / f), "{}: missing (incomplete checkpoint)", (d / f).string());

    const fs::path state_path = d / "trainer_state.json";
    json state;
    {
        std::ifstream in(state_path, std::ios::binary);
        MSLM_CHECK(in.good(), "{}: cannot read", state_path.string());
        std::stringstream text;
        text << in.rdbuf();
        try {
            state = json::parse(text.str());
        } catch (const json::exception& e) {
            fail("{}: invalid JSON: {}", state_path.string(), e.what());
        }
    }
    MSLM_CHECK(state.is_object() && state.contains("step") && state["step"].is_number_integer(),
               "{}: expected an object with an integer \"step\"", state_path.string());
    int64_t step = state["step"].get<int64_t>();
    std::optional<int64_t> dir_step = parse_step_dir(d.filename().string());
    MSLM_CHECK(!dir_step || *dir_step == step, "{}: says step {} but the directory is {}",
               state_path.string(), step, d.filename().string());

    std::unique_ptr<HybridLM<float>> model = adapter ? nullptr : load_model<float>(dir);
    SafetensorsFile optimizer = SafetensorsFile::open((d / "optimizer.safetensors").string());
    return LoadedCheckpoint{std::move(model), adapter, std::move(optimizer), std::move(state), step};
}

}  // namespace mslm
