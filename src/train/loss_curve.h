// Loss curves as a self-contained SVG, drawn from (step, value) points; read_metric rebuilds the
// points from a metrics.jsonl so that a plot can be made at any time, during or after a run.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mslm {

using CurvePoints = std::vector<std::pair<int64_t, double>>;

// Writes the SVG at `path` atomically (a temporary file renamed into place). Axes with 1-2-5 ticks,
// the train curve as a thin line plus an EMA-smoothed line, the val curve with markers, a legend
// and the title. Non-finite points are skipped; an empty val curve is left out of the plot.
void write_loss_curve_svg(const std::string& path, const CurvePoints& train, const CurvePoints& val,
                          const std::string& title);

// The (step, record[field]) points of the records of `type` in a metrics.jsonl, in file order.
// Lines that do not parse (a partial last line) and records without a finite number are skipped.
// When a step is not after the previous one (a run resumed from an earlier checkpoint), the points
// at that step and later are dropped first, so the result is the history of the latest run.
CurvePoints read_metric(const std::string& metrics_jsonl, const std::string& type, const std::string& field);

// Tick values covering [lo, hi] at a spacing of 1, 2 or 5 times a power of ten, about `target`
// of them; the first tick is <= lo and the last >= hi. With `integer` the spacing is at least 1.
std::vector<double> nice_ticks(double lo, double hi, int target, bool integer = false);

}  // namespace mslm
