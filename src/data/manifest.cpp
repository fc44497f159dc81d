#include "data/manifest.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace mslm {

namespace fs = std::filesystem;

std::string manifest_path(const std::string& manifest_or_dir) {
    std::error_code ec;
    if (fs::is_directory(manifest_or_dir, ec)) return (fs::path(manifest_or_dir) / "manifest.json").string();
    return manifest_or_dir;
}

nlohmann::json read_manifest(const std::string& manifest_or_dir) {
    std::string path = manifest_path(manifest_or_dir);
    std::ifstream in(path);
    MSLM_CHECK(in.good(), "{}: cannot open: {}", path, std::strerror(errno));
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        fail("{}: not valid JSON: {}", path, e.what());
    }
    MSLM_CHECK(j.is_object() && j.value("format", "") == kManifestFormat,
               "{}: not a token-shard manifest (format is not '{}')", path, kManifestFormat);
    int version = j.value("format_version", 0);
    MSLM_CHECK(version == kManifestVersion, "{}: manifest format version {}, this build reads version {}",
               path, version, kManifestVersion);
    return j;
}

void write_json_atomic(const std::string& path, const nlohmann::json& j) {
    std::string tmp = path + ".tmp";
    std::string text = j.dump(2) + "\n";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    MSLM_CHECK(fd >= 0, "{}: cannot create: {}", tmp, std::strerror(errno));
    const char* p = text.data();
    size_t left = text.size();
    while (left > 0) {
        ssize_t n = ::write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            fail("{}: write failed: {}", tmp, std::strerror(err));
        }
        p += n;
        left -= static_cast<size_t>(n);
    }
    bool ok = ::fsync(fd) == 0;
    int err = errno;
    ok = ::close(fd) == 0 && ok;
    if (!ok) {
        ::unlink(tmp.c_str());
        fail("{}: write failed: {}", tmp, std::strerror(err));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        err = errno;
        ::unlink(tmp.c_str());
        fail("{}: cannot rename to {}: {}", tmp, path, std::strerror(err));
    }
    // Make the renames in the directory durable (this one and the shards' before it). Best
    // effort: some file systems refuse fsync on directories.
    std::string dir = fs::path(path).parent_path().string();
    int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

SplitInfo manifest_split(const std::string& manifest_or_dir, const std::string& split) {
    std::string path = manifest_path(manifest_or_dir);
    nlohmann::json j = read_manifest(path);
    try {
        const auto& splits = j.at("splits");
        if (!splits.contains(split)) {
            std::string known;
            for (const auto& [name, _] : splits.items()) known += (known.empty() ? "" : ", ") + name;
            fail("{}: no split '{}' (the manifest has: {})", path, split, known);
        }
        const auto& s = splits.at(split);
        SplitInfo info;
        info.name = split;
        info.dtype = shard_dtype_from_name(j.at("dtype").get<std::string>());
        info.documents = s.at("documents").get<int64_t>();
        info.tokens = s.at("tokens").get<int64_t>();
        info.text_bytes = s.at("text_bytes").get<int64_t>();
        fs::path dir = fs::path(path).parent_path();
        for (const auto& shard : s.at("shards")) {
            info.shards.push_back((dir / shard.at("file").get<std::string>()).string());
            info.shard_tokens.push_back(shard.at("tokens").get<int64_t>());
        }
        return info;
    } catch (const nlohmann::json::exception& e) {
        fail("{}: malformed manifest: {}", path, e.what());
    }
}

}  // namespace mslm
