// `mamba-slm plot RUN_DIR`: draws loss_curve.svg from a run directory's metrics.jsonl, for a run
// that is still going or one that ended (the trainer also rewrites it at every evaluation).
#include <fmt/format.h>

#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "train/loss_curve.h"

namespace mslm::cli {

void register_plot(CLI::App& app) {
    auto run_dir = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand("plot", "Draw the train / validation loss curve of a run directory as SVG");
    cmd->add_option("run_dir", *run_dir, "A `train` run directory (with metrics.jsonl)")->required();
    cmd->add_option("--out", *out, "Where to write the SVG (default: RUN_DIR/loss_curve.svg)");
    cmd->callback([run_dir, out] {
        namespace fs = std::filesystem;
        const std::string metrics = (fs::path(*run_dir) / "metrics.jsonl").string();
        MSLM_CHECK(fs::exists(metrics), "{}: no metrics.jsonl (not a train run directory?)", *run_dir);
        const CurvePoints train = read_metric(metrics, "train", "loss");
        const CurvePoints val = read_metric(metrics, "eval", "loss");
        const std::string path = out->empty() ? (fs::path(*run_dir) / "loss_curve.svg").string() : *out;
        write_loss_curve_svg(path, train, val, fs::path(*run_dir).filename().string());
        fmt::print("{}: {} train and {} validation points\n", path, train.size(), val.size());
    });
}

}  // namespace mslm::cli
