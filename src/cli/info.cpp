#include "cli/commands.h"

#include <fmt/format.h>

namespace mslm::cli {

void register_info(CLI::App& app) {
    auto* cmd = app.add_subcommand("info", "Show a model's layers, parameter count and memory estimates");
    cmd->callback([] { fmt::print("mamba-slm\n"); });
}

}  // namespace mslm::cli
