// One register_* per subcommand; each adds its options and a callback that calls the library.
#pragma once
#include <CLI/CLI.hpp>

namespace mslm::cli {

void register_data(CLI::App& app);
void register_info(CLI::App& app);
void register_quickstart(CLI::App& app);

}  // namespace mslm::cli
