#include "train/loss_curve.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mslm {

namespace {

constexpr double kWidth = 800, kHeight = 500;
constexpr double kLeft = 80, kRight = 24, kTop = 48, kBottom = 56;
constexpr double kPlotW = kWidth - kLeft - kRight, kPlotH = kHeight - kTop - kBottom;

std::vector<std::pair<double, double>> finite_points(const CurvePoints& pts) {
    std::vector<std::pair<double, double>> out;
    out.reserve(pts.size());
    for (const auto& [step, v] : pts)
        if (std::isfinite(v)) out.emplace_back(static_cast<double>(step), v);
    return out;
}

// TensorBoard-style EMA, debiased so the first points are not pulled toward zero.
std::vector<std::pair<double, double>> ema(const std::vector<std::pair<double, double>>& pts, double beta) {
    std::vector<std::pair<double, double>> out;
    out.reserve(pts.size());
    double acc = 0, weight = 0;
    for (const auto& [x, y] : pts) {
        acc = beta * acc + (1 - beta) * y;
        weight = beta * weight + (1 - beta);
        out.emplace_back(x, acc / weight);
    }
    return out;
}

std::string escape_xml(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            case '\'':
                out += "&apos;";
                break;
            default:
                // Control characters other than tab/newline are not allowed in XML 1.0.
                if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') out += c;
        }
    }
    return out;
}

// Tick label with as many decimals as the spacing needs (0.05 -> 2), exact for 1-2-5 spacings.
std::string tick_label(double v, double spacing) {
    if (std::abs(v) >= 1e15 || spacing >= 1e15) return fmt::format("{:.6g}", v);
    const int decimals = spacing >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(spacing) - 1e-9));
    const std::string s = fmt::format("{:.{}f}", v, std::min(decimals, 15));
    return s.find_first_not_of("-0.") == std::string::npos ? std::string("0") : s;  // never "-0.00"
}

struct Axis {
    std::vector<double> ticks;
    double lo, hi;
    double map(double v, double from, double len) const { return from + (v - lo) / (hi - lo) * len; }
};

Axis make_axis(double lo, double hi, bool integer) {
    Axis a;
    a.ticks = nice_ticks(lo, hi, 6, integer);
    a.lo = a.ticks.front();
    a.hi = a.ticks.back();
    return a;
}

// At most two points (the low and the high, in step order) per pixel column: a curve of a million
// steps draws like the full one at a fraction of the file size.
std::vector<std::pair<double, double>> decimate(const std::vector<std::pair<double, double>>& pts,
                                                const Axis& x) {
    if (pts.size() <= 2 * static_cast<size_t>(kPlotW)) return pts;
    std::vector<std::pair<double, double>> out;
    size_t i = 0;
    while (i < pts.size()) {
        const long column = std::lround(x.map(pts[i].first, 0, kPlotW));
        size_t lo = i, hi = i, j = i;
        for (; j < pts.size() && std::lround(x.map(pts[j].first, 0, kPlotW)) == column; ++j) {
            if (pts[j].second < pts[lo].second) lo = j;
            if (pts[j].second > pts[hi].second) hi = j;
        }
        out.push_back(pts[std::min(lo, hi)]);
        if (lo != hi) out.push_back(pts[std::max(lo, hi)]);
        i = j;
    }
    return out;
}

std::string polyline_points(const std::vector<std::pair<double, double>>& pts, const Axis& x, const Axis& y) {
    std::string s;
    for (const auto& [px, py] : pts) {
        if (!s.empty()) s += ' ';
        s += fmt::format("{:.1f},{:.1f}", x.map(px, kLeft, kPlotW), y.map(py, kTop + kPlotH, -kPlotH));
    }
    return s;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target, bool integer) {
    if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
    if (lo > hi) std::swap(lo, hi);
    if (hi - lo <= std::abs(hi) * 1e-12 || hi - lo <= 0) {  // one value: a range around it
        const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
        lo -= pad;
        hi += pad;
    }
    // hi/t - lo/t rather than (hi - lo)/t: the difference of two huge values overflows.
    const double raw = hi / std::max(target, 1) - lo / std::max(target, 1);
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double norm = raw / mag;
    double spacing = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
    if (integer) spacing = std::max(spacing, 1.0);
    const double first = std::floor(lo / spacing);
    const double last = std::ceil(hi / spacing);
    std::vector<double> ticks;
    for (double k = first; k <= last && ticks.size() < 1000; k += 1) ticks.push_back(k * spacing);
    return ticks;
}

void write_loss_curve_svg(const std::string& path, const CurvePoints& train, const CurvePoints& val,
                          const std::string& title) {
    const auto tr = finite_points(train);
    const auto va = finite_points(val);

    double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
    for (const auto* pts : {&tr, &va}) {
        for (const auto& [x, y] : *pts) {
            xmin = std::min(xmin, x), xmax = std::max(xmax, x);
            ymin = std::min(ymin, y), ymax = std::max(ymax, y);
        }
    }
    if (tr.empty() && va.empty()) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
    const Axis x = make_axis(xmin, xmax, true);
    const Axis y = make_axis(ymin, ymax, false);
    const double xspacing = x.ticks.size() > 1 ? x.ticks[1] - x.ticks[0] : 1;
    const double yspacing = y.ticks.size() > 1 ? y.ticks[1] - y.ticks[0] : 1;

    std::string svg;
    auto out = std::back_inserter(svg);
    fmt::format_to(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
        "font-family=\"sans-serif\" font-size=\"12\">\n"
        "<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
        "<defs><clipPath id=\"plot\"><rect x=\"{2}\" y=\"{3}\" width=\"{4}\" "
        "height=\"{5}\"/></clipPath></defs>\n",
        kWidth, kHeight, kLeft, kTop, kPlotW, kPlotH);
    fmt::format_to(out, "<text x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
                   kLeft + kPlotW / 2, escape_xml(title));

    // Grid, ticks and labels.
    for (double t : x.ticks) {
        const double px = x.map(t, kLeft, kPlotW);
        fmt::format_to(out,
                       "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#e5e5e5\"/>\n"
                       "<text class=\"xtick\" x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
                       px, kTop, kTop + kPlotH, kTop + kPlotH + 18, tick_label(t, xspacing));
    }
    for (double t : y.ticks) {
        const double py = y.map(t, kTop + kPlotH, -kPlotH);
        fmt::format_to(out,
                       "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#e5e5e5\"/>\n"
                       "<text class=\"ytick\" x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
                       kLeft, py, kLeft + kPlotW, kLeft - 6, py + 4, tick_label(t, yspacing));
    }
    fmt::format_to(
        out,
        "<rect x=\"{0}\" y=\"{1}\" width=\"{2}\" height=\"{3}\" fill=\"none\" stroke=\"#333\"/>\n"
        "<text x=\"{4}\" y=\"{5}\" text-anchor=\"middle\">step</text>\n"
        "<text x=\"18\" y=\"{6}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {6})\">loss</text>\n",
        kLeft, kTop, kPlotW, kPlotH, kLeft + kPlotW / 2, kHeight - 12, kTop + kPlotH / 2);

    // Curves.
    const char* train_color = "#1f77b4";
    const char* val_color = "#d62728";
    svg += "<g clip-path=\"url(#plot)\" fill=\"none\">\n";
    if (!tr.empty()) {
        fmt::format_to(out,
                       "<polyline class=\"train\" points=\"{}\" stroke=\"{}\" stroke-width=\"1\" "
                       "stroke-opacity=\"0.4\"/>\n",
                       polyline_points(decimate(tr, x), x, y), train_color);
        fmt::format_to(out,
                       "<polyline class=\"train-smooth\" points=\"{}\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                       polyline_points(decimate(ema(tr, 0.9), x), x, y), train_color);
        if (tr.size() == 1)
            fmt::format_to(out, "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n",
                           x.map(tr[0].first, kLeft, kPlotW), y.map(tr[0].second, kTop + kPlotH, -kPlotH),
                           train_color);
    }
    if (!va.empty()) {
        fmt::format_to(out, "<polyline class=\"val\" points=\"{}\" stroke=\"{}\" stroke-width=\"1.5\"/>\n",
                       polyline_points(va, x, y), val_color);
        for (const auto& [vx, vy] : va)
            fmt::format_to(out, "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n",
                           x.map(vx, kLeft, kPlotW), y.map(vy, kTop + kPlotH, -kPlotH), val_color);
    }
    svg += "</g>\n";

    // Legend, top right inside the plot.
    const double lx = kLeft + kPlotW - 150, ly = kTop + 10;
    const int entries = (tr.empty() ? 0 : 2) + (va.empty() ? 0 : 1);
    if (entries > 0) {
        fmt::format_to(
            out,
            "<g class=\"legend\"><rect x=\"{}\" y=\"{}\" width=\"140\" height=\"{}\" fill=\"white\" "
            "fill-opacity=\"0.85\" stroke=\"#999\"/>\n",
            lx, ly, 8 + 18 * entries);
        double ey = ly + 16;
        auto entry = [&](const char* color, double w, double opacity, bool marker, const char* label) {
            fmt::format_to(
                out,
                "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{3}\" stroke-width=\"{4}\" "
                "stroke-opacity=\"{5}\"/>\n",
                lx + 8, ey - 4, lx + 36, color, w, opacity);
            if (marker)
                fmt::format_to(out, "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/>\n", lx + 22, ey - 4,
                               color);
            fmt::format_to(out, "<text x=\"{}\" y=\"{}\">{}</text>\n", lx + 44, ey, label);
            ey += 18;
        };
        if (!tr.empty()) {
            entry(train_color, 1, 0.4, false, "train");
            entry(train_color, 2, 1, false, "train (EMA 0.9)");
        }
        if (!va.empty()) entry(val_color, 1.5, 1, true, "val");
        svg += "</g>\n";
    }
    svg += "</svg>\n";

    const std::string tmp = fmt::format("{}.tmp.{}", path, getpid());
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        MSLM_CHECK(f.good(), "{}: cannot open for writing", tmp);
        f.write(svg.data(), static_cast<std::streamsize>(svg.size()));
        f.close();
        MSLM_CHECK(!f.fail(), "{}: write failed", tmp);
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) std::filesystem::remove(tmp);
    MSLM_CHECK(!ec, "{}: cannot move the plot into place: {}", path, ec.message());
}

CurvePoints read_metric(const std::string& metrics_jsonl, const std::string& type, const std::string& field) {
    std::ifstream in(metrics_jsonl);
    MSLM_CHECK(in.good(), "{}: cannot open", metrics_jsonl);
    CurvePoints pts;
    std::string line;
    while (std::getline(in, line)) {
        const auto rec = nlohmann::json::parse(line, nullptr, false);
        if (rec.is_discarded() || !rec.is_object()) continue;
        const auto t = rec.find("type");
        const auto s = rec.find("step");
        const auto v = rec.find(field);
        if (t == rec.end() || *t != type || s == rec.end() || !s->is_number_integer()) continue;
        const auto step = s->get<int64_t>();
        while (!pts.empty() && pts.back().first >= step) pts.pop_back();
        if (v == rec.end() || !v->is_number()) continue;
        const auto value = v->get<double>();
        if (std::isfinite(value)) pts.emplace_back(step, value);
    }
    return pts;
}

}  // namespace mslm
