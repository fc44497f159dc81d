// prepare_from_sources: the thin layer between the source mixture and prepare_shards.
#include <filesystem>

#include "core/error.h"
#include "data/manifest.h"
#include "data/prepare.h"

namespace mslm {

namespace fs = std::filesystem;

namespace {

const char* format_name(SourceFormat f) {
    switch (f) {
        case SourceFormat::Auto:
            return "auto";
        case SourceFormat::Txt:
            return "txt";
        case SourceFormat::Jsonl:
            return "jsonl";
        case SourceFormat::Json:
            return "json";
    }
    return "?";
}

const char* split_name(TxtSplit s) {
    switch (s) {
        case TxtSplit::File:
            return "file";
        case TxtSplit::Block:
            return "block";
        case TxtSplit::Line:
            return "line";
        case TxtSplit::Percent:
            return "fortune";
    }
    return "?";
}

nlohmann::json spec_json(const SourceSpec& s) {
    return {{"path", s.path},
            {"format", format_name(s.format)},
            {"split", split_name(s.txt_split)},
            {"field", s.field},
            {"weight", s.weight},
            {"name", s.name}};
}

nlohmann::json mixture_json(const MixtureOptions& m) {
    return {
        {"seed", m.seed},
        {"stopping", m.stopping == StoppingStrategy::FirstExhausted ? "first_exhausted" : "all_exhausted"},
        {"round_robin", m.round_robin},
        {"utf8", m.read.utf8 == Utf8Policy::Replace ? "replace" : "fail"},
        {"skip_bad", m.read.skip_bad}};
}

// The file records of an earlier manifest, so unchanged files (same path, size, mtime) are not
// hashed again. Anything unreadable just means no records.
std::vector<InputFile> known_files(const std::string& manifest_file) {
    std::vector<InputFile> known;
    std::error_code ec;
    if (!fs::exists(manifest_file, ec)) return known;
    try {
        nlohmann::json m = read_manifest(manifest_file);
        for (const auto& source : m.at("inputs").at("sources")) {
            for (const auto& f : source.at("files")) {
                known.push_back({f.at("path").get<std::string>(), f.at("size").get<int64_t>(),
                                 f.at("mtime_ns").get<int64_t>(), f.at("sha256").get<std::string>()});
            }
        }
    } catch (const std::exception&) {
        known.clear();
    }
    return known;
}

bool is_compressed(const std::string& path) {
    auto ext = fs::path(path).extension().string();
    return ext == ".gz" || ext == ".zst";
}

class MixtureStream final : public DocumentStream {
public:
    MixtureStream(std::vector<SourceSpec> specs, const MixtureOptions& opt)
        : mixture_(std::move(specs), opt) {}
    bool next(Document& doc) override { return mixture_.next(doc); }
    nlohmann::json summary() const override {
        nlohmann::json per_source = nlohmann::json::array();
        const auto& specs = mixture_.specs();
        for (size_t i = 0; i < specs.size(); ++i) {
            per_source.push_back({{"name", specs[i].name.empty() ? specs[i].path : specs[i].name},
                                  {"documents", mixture_.documents_from(static_cast<int>(i))}});
        }
        return {{"sources", per_source}, {"skipped", mixture_.skipped()}};
    }

private:
    Mixture mixture_;
};

}  // namespace

PrepareResult prepare_from_sources(const std::vector<SourceSpec>& specs, const MixtureOptions& mixture,
                                   const TextEncoder& encoder, PrepareOptions opt) {
    MSLM_CHECK(!specs.empty(), "data prepare: no sources");
    std::vector<InputFile> known;
    if (!opt.force) known = known_files((fs::path(opt.out_dir) / "manifest.json").string());

    nlohmann::json sources = nlohmann::json::array();
    int64_t total_size = 0;
    bool compressed = false;
    for (const auto& spec : specs) {
        std::vector<std::string> paths;
        auto reader = open_source(spec, mixture.read);
        for (const auto& f : reader->files()) {
            paths.push_back(fs::absolute(f).lexically_normal().string());
            compressed = compressed || is_compressed(f);
        }
        nlohmann::json files = nlohmann::json::array();
        for (const auto& f : describe_input_files(paths, known)) {
            files.push_back(input_file_json(f));
            total_size += f.size;
        }
        sources.push_back({{"spec", spec_json(spec)}, {"files", files}});
    }
    opt.inputs = {{"sources", sources}, {"mixture", mixture_json(mixture)}};
    // File sizes estimate the text only for one uncompressed source; a mixture may stop early
    // or oversample.
    opt.expected_text_bytes = specs.size() == 1 && !compressed ? total_size : 0;

    MixtureStream stream(specs, mixture);
    return prepare_shards(stream, encoder, opt);
}

}  // namespace mslm
