// manifest.json: what a directory of token shards holds and what produced it (written by
// `data prepare`, docs in prepare.h). These helpers read it for the loader, the trainer and eval.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/shard.h"

namespace mslm {

inline constexpr const char* kManifestFormat = "mamba-slm-token-shards";
inline constexpr int kManifestVersion = 1;

// "dir" → "dir/manifest.json"; a path to a file is returned as it is.
std::string manifest_path(const std::string& manifest_or_dir);

// Parses and checks format and version; errors name the file.
nlohmann::json read_manifest(const std::string& manifest_or_dir);

// Writes `path.tmp`, syncs it and renames it over `path`.
void write_json_atomic(const std::string& path, const nlohmann::json& j);

struct SplitInfo {
    std::string name;
    ShardDtype dtype = ShardDtype::U16;
    int64_t documents = 0;
    int64_t tokens = 0;               // EOT tokens included
    int64_t text_bytes = 0;           // UTF-8 bytes of the documents' text
    std::vector<std::string> shards;  // full paths, in stream order
    std::vector<int64_t> shard_tokens;

    // Text bytes per token: bits per byte = loss per token (nats) / ln 2 / bytes_per_token.
    double bytes_per_token() const { return tokens > 0 ? static_cast<double>(text_bytes) / tokens : 0.0; }
};

// One split ("train", "val") of a manifest; an unknown split is an error listing the known ones.
SplitInfo manifest_split(const std::string& manifest_or_dir, const std::string& split);

}  // namespace mslm
