#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>

#include "cli/commands.h"
#include "core/blas_setup.h"
#include "core/error.h"
#include "core/thread_pool.h"

int main(int argc, char** argv) {
    mslm::select_blas_kernels(argc, argv);
    CLI::App app{"mamba-slm: train, run and export hybrid Mamba-Transformer small language models"};
    app.require_subcommand(1);
    int threads = 0;
    app.add_option("--threads", threads, "CPU threads for the kernels (default: all cores, or MSLM_THREADS)")
        ->check(CLI::PositiveNumber);
    mslm::cli::register_chat(app);
    mslm::cli::register_data(app);
    mslm::cli::register_eval(app);
    mslm::cli::register_export_gguf(app);
    mslm::cli::register_generate(app);
    mslm::cli::register_info(app);
    mslm::cli::register_plot(app);
    mslm::cli::register_quickstart(app);
    mslm::cli::register_tokenizer(app);
    mslm::cli::register_train(app);
    app.parse_complete_callback([&] {
        if (threads > 0) mslm::set_num_threads(threads);
    });
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const mslm::Error& e) {
        std::fprintf(stderr, "mamba-slm: error: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mamba-slm: internal error: %s\n", e.what());
        return 2;
    }
    return 0;
}
