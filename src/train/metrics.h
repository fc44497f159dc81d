// Training telemetry: metrics.jsonl (one JSON record per line, the durable log that curves are
// rebuilt from) and the progress line on stderr (for the person watching the run).
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <nlohmann/json.hpp>
#include <string>

namespace mslm {

// Appends records to run_dir/metrics.jsonl, one JSON object per line, flushed to the OS after each
// record so that a crash loses at most the line being written. A fresh run (append = false) starts
// the file empty; a resumed run (append = true) first cuts off a partial last line left by a crash.
// Records need "type" ("train" | "eval") and an integer "step"; the other fields are metrics.
// Non-finite numbers are written as null (JSON has no NaN); read_metric skips them.
class MetricsLog {
public:
    MetricsLog(const std::string& run_dir, bool append);
    ~MetricsLog();
    MetricsLog(const MetricsLog&) = delete;
    MetricsLog& operator=(const MetricsLog&) = delete;

    void write(const nlohmann::json& record);
    const std::string& path() const { return path_; }

private:
    std::string path_;
    std::FILE* file_ = nullptr;
};

// "1h02m", "3m05s", "42s"; "--" for a negative or non-finite duration.
std::string format_eta(double seconds);

// Progress on `out` (stderr by default). On a terminal: one line rewritten in place, cut to the
// terminal width by dropping the least useful fields first; eval lines stay on screen above it.
// Otherwise (or with force_plain): one full line per call, for logs. The ETA comes from a moving
// average of the wall time per step between train_line calls; time spent between a train line and
// the following eval line (the evaluation itself) is left out.
class ProgressPrinter {
public:
    ProgressPrinter(int64_t total_steps, bool force_plain = false, std::FILE* out = stderr);
    ~ProgressPrinter();
    ProgressPrinter(const ProgressPrinter&) = delete;
    ProgressPrinter& operator=(const ProgressPrinter&) = delete;

    void train_line(int64_t step, double loss, double lr, double grad_norm, double tokens_per_s);
    void eval_line(int64_t step, double loss, double ppl, double bpb);

private:
    using Clock = std::chrono::steady_clock;
    struct Sample {
        double seconds;
        int64_t steps;
    };

    int terminal_width() const;
    double eta_seconds(int64_t step) const;

    int64_t total_steps_;
    std::FILE* out_;
    bool live_;               // updating a line in place on a terminal
    bool line_open_ = false;  // a live line is on screen without its newline
    bool have_last_ = false;
    int64_t last_step_ = 0;
    Clock::time_point last_time_;
    std::deque<Sample> window_;  // the last few intervals between train lines
};

}  // namespace mslm
