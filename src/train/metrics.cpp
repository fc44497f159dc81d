#include "train/metrics.h"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "core/error.h"

namespace mslm {

namespace fs = std::filesystem;

namespace {

// Length of the file up to and including its last '\n' (0 when there is none).
uintmax_t complete_lines_size(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    MSLM_CHECK(f != nullptr, "{}: cannot open to resume the metrics log", path);
    const uintmax_t size = fs::file_size(path);
    char buf[4096];
    uintmax_t end = size;
    uintmax_t keep = 0;
    while (end > 0 && keep == 0) {
        const uintmax_t n = std::min<uintmax_t>(end, sizeof buf);
        std::fseek(f, static_cast<long>(end - n), SEEK_SET);
        const size_t got = std::fread(buf, 1, n, f);
        if (got != n) break;
        for (uintmax_t i = n; i > 0; --i) {
            if (buf[i - 1] == '\n') {
                keep = end - n + i;
                break;
            }
        }
        end -= n;
    }
    std::fclose(f);
    return keep;
}

std::string format_rate(double tokens_per_s) {
    if (!std::isfinite(tokens_per_s)) return "-";
    if (tokens_per_s >= 1e6) return fmt::format("{:.2f}M", tokens_per_s / 1e6);
    if (tokens_per_s >= 1e3) return fmt::format("{:.1f}k", tokens_per_s / 1e3);
    return fmt::format("{:.0f}", tokens_per_s);
}

// Visible width; our lines are ASCII.
std::string join_fields(const std::vector<std::string>& fields) {
    std::string line;
    for (const auto& f : fields) {
        if (!line.empty()) line += " | ";
        line += f;
    }
    return line;
}

}  // namespace

MetricsLog::MetricsLog(const std::string& run_dir, bool append)
    : path_((fs::path(run_dir) / "metrics.jsonl").string()) {
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    MSLM_CHECK(!ec, "{}: cannot create the run directory: {}", run_dir, ec.message());
    if (append && fs::exists(path_)) {
        // A crash mid-write leaves a line without its '\n'; appending after it would glue two
        // records into one unparseable line.
        const uintmax_t keep = complete_lines_size(path_);
        if (keep != fs::file_size(path_)) fs::resize_file(path_, keep);
    }
    file_ = std::fopen(path_.c_str(), append ? "ab" : "wb");
    MSLM_CHECK(file_ != nullptr, "{}: cannot open the metrics log for writing", path_);
}

MetricsLog::~MetricsLog() {
    if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::write(const nlohmann::json& record) {
    MSLM_CHECK(record.is_object(), "{}: a metrics record must be a JSON object", path_);
    const auto type = record.find("type");
    const std::string type_name = type != record.end() && type->is_string() ? type->get<std::string>() : "";
    MSLM_CHECK(type_name == "train" || type_name == "eval",
               "{}: a metrics record needs \"type\": \"train\" or \"eval\"", path_);
    const auto step = record.find("step");
    MSLM_CHECK(step != record.end() && step->is_number_integer(),
               "{}: a metrics record needs an integer \"step\"", path_);
    // One fwrite of the whole line, then a flush: the OS has every complete record even if the
    // process dies right after.
    const std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    const size_t written = std::fwrite(line.data(), 1, line.size(), file_);
    MSLM_CHECK(written == line.size() && std::fflush(file_) == 0, "{}: write failed", path_);
}

std::string format_eta(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "--";
    const auto s = static_cast<int64_t>(std::llround(seconds));
    if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
    if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
    return fmt::format("{}s", s);
}

ProgressPrinter::ProgressPrinter(int64_t total_steps, bool force_plain, std::FILE* out)
    : total_steps_(total_steps), out_(out), live_(!force_plain && isatty(fileno(out)) == 1) {}

ProgressPrinter::~ProgressPrinter() {
    if (line_open_) {
        std::fputc('\n', out_);
        std::fflush(out_);
    }
}

int ProgressPrinter::terminal_width() const {
    winsize ws{};
    if (ioctl(fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    if (const char* cols = std::getenv("COLUMNS")) {
        const int n = std::atoi(cols);
        if (n > 0) return n;
    }
    return 80;
}

double ProgressPrinter::eta_seconds(int64_t step) const {
    double seconds = 0;
    int64_t steps = 0;
    for (const auto& s : window_) {
        seconds += s.seconds;
        steps += s.steps;
    }
    if (steps <= 0) return -1;
    return seconds / static_cast<double>(steps) *
           static_cast<double>(std::max<int64_t>(total_steps_ - step, 0));
}

void ProgressPrinter::train_line(int64_t step, double loss, double lr, double grad_norm,
                                 double tokens_per_s) {
    const auto now = Clock::now();
    if (have_last_ && step > last_step_) {
        window_.push_back({std::chrono::duration<double>(now - last_time_).count(), step - last_step_});
        constexpr size_t kWindow = 20;
        if (window_.size() > kWindow) window_.pop_front();
    }
    have_last_ = true;
    last_step_ = step;
    last_time_ = now;

    std::vector<std::string> fields = {
        fmt::format("step {}/{}", step, total_steps_),
        fmt::format("loss {:.4f}", loss),
        fmt::format("lr {:.2e}", lr),
        fmt::format("gnorm {:.3f}", grad_norm),
        fmt::format("{} tok/s", format_rate(tokens_per_s)),
        fmt::format("ETA {}", format_eta(eta_seconds(step))),
    };
    if (!live_) {
        fmt::print(out_, "{}\n", join_fields(fields));
        std::fflush(out_);
        return;
    }
    const size_t width = static_cast<size_t>(std::max(terminal_width() - 1, 10));
    std::string line = join_fields(fields);
    for (size_t drop : {3u, 2u, 4u}) {  // too narrow: drop gnorm, then lr, then tok/s
        if (line.size() <= width) break;
        fields[drop].clear();
        std::vector<std::string> kept;
        for (const auto& f : fields)
            if (!f.empty()) kept.push_back(f);
        line = join_fields(kept);
    }
    if (line.size() > width) line.resize(width);
    fmt::print(out_, "\r{}\x1b[K", line);  // \x1b[K clears what a longer previous line left
    std::fflush(out_);
    line_open_ = true;
}

void ProgressPrinter::eval_line(int64_t step, double loss, double ppl, double bpb) {
    const std::string line = fmt::format("eval step {}/{} | loss {:.4f} | ppl {:.2f} | bpb {:.4f}", step,
                                         total_steps_, loss, ppl, bpb);
    if (live_) {
        fmt::print(out_, "\r{}\x1b[K\n", line);
        line_open_ = false;
    } else {
        fmt::print(out_, "{}\n", line);
    }
    std::fflush(out_);
    if (have_last_) last_time_ = Clock::now();  // the evaluation is not a training step
}

}  // namespace mslm
