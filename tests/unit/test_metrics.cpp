#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "train/loss_curve.h"
#include "train/metrics.h"

using namespace mslm;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// One directory per test and process: tests of several worktrees share /tmp.
class TempDirTest : public testing::Test {
protected:
    void SetUp() override {
        const auto* info = testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::path(testing::TempDir()) / fmt::format("mslm_metrics_{}_{}", info->name(), getpid());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    std::string path(const std::string& name) const { return (dir_ / name).string(); }

    fs::path dir_;
};

class MetricsTest : public TempDirTest {};
class LossCurveTest : public TempDirTest {};

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::stringstream ss(text);
    for (std::string l; std::getline(ss, l);) lines.push_back(l);
    return lines;
}

bool have_program(const char* name) {
    return std::system(fmt::format("command -v {} >/dev/null 2>&1", name).c_str()) == 0;
}

// Everything written to a ProgressPrinter aimed at a temporary file.
template <typename F>
std::string capture_progress(int64_t total, F&& body) {
    std::FILE* f = std::tmpfile();
    {
        ProgressPrinter p(total, false, f);  // a file is not a terminal: plain lines
        body(p);
    }
    std::rewind(f);
    std::string out;
    char buf[1024];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
    std::fclose(f);
    return out;
}

std::vector<std::string> attribute_values(const std::string& svg, const std::string& pattern) {
    std::vector<std::string> out;
    const std::regex re(pattern);
    for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it)
        out.push_back((*it)[1].str());
    return out;
}

size_t polyline_point_count(const std::string& svg, const std::string& cls) {
    const auto pts = attribute_values(svg, "<polyline class=\"" + cls + "\" points=\"([^\"]*)\"");
    if (pts.size() != 1) return 0;
    return static_cast<size_t>(std::count(pts[0].begin(), pts[0].end(), ','));
}

CurvePoints falling_curve(int n, int64_t every) {
    CurvePoints c;
    for (int i = 0; i < n; ++i)
        c.emplace_back(i * every, 5.5 * std::exp(-0.02 * i) + 2.0 + 0.1 * std::sin(i));
    return c;
}

}  // namespace

TEST_F(MetricsTest, LinesParseBack) {
    {
        MetricsLog log(dir_.string(), false);
        log.write({{"type", "train"}, {"step", 1}, {"loss", 5.25}, {"lr", 3e-4}});
        log.write({{"type", "eval"}, {"step", 1}, {"loss", 5.5}, {"ppl", 244.7}});
        log.write({{"type", "train"}, {"step", 2}, {"loss", std::nan("")}});
    }
    const auto lines = lines_of(read_text(path("metrics.jsonl")));
    ASSERT_EQ(lines.size(), 3u);
    const auto a = json::parse(lines[0]), b = json::parse(lines[1]), c = json::parse(lines[2]);
    EXPECT_EQ(a["type"], "train");
    EXPECT_EQ(a["step"], 1);
    EXPECT_DOUBLE_EQ(a["loss"].get<double>(), 5.25);
    EXPECT_DOUBLE_EQ(a["lr"].get<double>(), 3e-4);
    EXPECT_EQ(b["type"], "eval");
    EXPECT_DOUBLE_EQ(b["ppl"].get<double>(), 244.7);
    EXPECT_TRUE(c["loss"].is_null());  // JSON has no NaN
}

TEST_F(MetricsTest, EachRecordIsOnDiskBeforeTheNextWrite) {
    MetricsLog log(dir_.string(), false);
    log.write({{"type", "train"}, {"step", 7}, {"loss", 1.0}});
    // Read while the log is still open: the record was flushed, not left in a buffer.
    EXPECT_EQ(lines_of(read_text(path("metrics.jsonl"))).size(), 1u);
}

TEST_F(MetricsTest, FreshRunStartsEmptyAndResumeAppends) {
    { MetricsLog(dir_.string(), false).write({{"type", "train"}, {"step", 1}, {"loss", 1.0}}); }
    { MetricsLog(dir_.string(), true).write({{"type", "train"}, {"step", 2}, {"loss", 0.9}}); }
    EXPECT_EQ(lines_of(read_text(path("metrics.jsonl"))).size(), 2u);
    { MetricsLog(dir_.string(), false).write({{"type", "train"}, {"step", 1}, {"loss", 1.0}}); }
    EXPECT_EQ(lines_of(read_text(path("metrics.jsonl"))).size(), 1u);
}

TEST_F(MetricsTest, AppendAfterTruncatedPartialLineRecovers) {
    {
        MetricsLog log(dir_.string(), false);
        log.write({{"type", "train"}, {"step", 1}, {"loss", 4.0}});
        log.write({{"type", "train"}, {"step", 2}, {"loss", 3.0}});
    }
    {  // a crash in the middle of the third record
        std::ofstream f(path("metrics.jsonl"), std::ios::app | std::ios::binary);
        f << R"({"type":"train","step":3,"lo)";
    }
    {
        MetricsLog log(dir_.string(), true);
        log.write({{"type", "train"}, {"step", 3}, {"loss", 2.5}});
    }
    const auto lines = lines_of(read_text(path("metrics.jsonl")));
    ASSERT_EQ(lines.size(), 3u);
    for (const auto& l : lines) EXPECT_TRUE(json::accept(l)) << l;
    EXPECT_EQ(json::parse(lines[2])["step"], 3);
    EXPECT_DOUBLE_EQ(json::parse(lines[2])["loss"].get<double>(), 2.5);
}

TEST_F(MetricsTest, ResumeOfAFileWithOnlyAPartialLine) {
    { std::ofstream(path("metrics.jsonl"), std::ios::binary) << R"({"type":"tr)"; }
    { MetricsLog(dir_.string(), true).write({{"type", "eval"}, {"step", 0}, {"loss", 6.0}}); }
    const auto lines = lines_of(read_text(path("metrics.jsonl")));
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(json::parse(lines[0])["type"], "eval");
}

TEST_F(MetricsTest, RecordsNeedTypeAndIntegerStep) {
    MetricsLog log(dir_.string(), false);
    EXPECT_THROW(log.write({{"step", 1}, {"loss", 1.0}}), Error);
    EXPECT_THROW(log.write({{"type", "bogus"}, {"step", 1}}), Error);
    EXPECT_THROW(log.write({{"type", "train"}, {"step", 1.5}}), Error);
    EXPECT_THROW(log.write(json::array({1, 2})), Error);
}

TEST(MetricsEta, Formatting) {
    EXPECT_EQ(format_eta(42), "42s");
    EXPECT_EQ(format_eta(0), "0s");
    EXPECT_EQ(format_eta(59.4), "59s");
    EXPECT_EQ(format_eta(60), "1m00s");
    EXPECT_EQ(format_eta(185), "3m05s");
    EXPECT_EQ(format_eta(3599), "59m59s");
    EXPECT_EQ(format_eta(3600), "1h00m");
    EXPECT_EQ(format_eta(3725), "1h02m");
    EXPECT_EQ(format_eta(100 * 3600 + 7 * 60), "100h07m");
    EXPECT_EQ(format_eta(-1), "--");
    EXPECT_EQ(format_eta(std::numeric_limits<double>::infinity()), "--");
    EXPECT_EQ(format_eta(std::nan("")), "--");
}

TEST(MetricsProgress, PlainLinesContainTheFields) {
    const auto out = capture_progress(1000, [](ProgressPrinter& p) {
        p.train_line(10, 3.14159, 3e-4, 0.8123, 12345.0);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        p.train_line(20, 3.0, 2.9e-4, 0.75, 2.5e6);
        p.eval_line(20, 3.1, 22.2, 1.234);
    });
    EXPECT_EQ(out.find('\r'), std::string::npos);
    EXPECT_EQ(out.find('\x1b'), std::string::npos);
    const auto lines = lines_of(out);
    ASSERT_EQ(lines.size(), 3u);
    for (const char* field :
         {"step 10/1000", "loss 3.1416", "lr 3.00e-04", "gnorm 0.812", "12.3k tok/s", "ETA --"})
        EXPECT_NE(lines[0].find(field), std::string::npos) << field << " in " << lines[0];
    // 20 ms per 10 steps, 980 steps left: about 2 s (a loaded machine may take longer).
    EXPECT_NE(lines[1].find("2.50M tok/s"), std::string::npos) << lines[1];
    EXPECT_TRUE(std::regex_search(lines[1], std::regex("ETA [0-9]+(s|m[0-9]{2}s)$"))) << lines[1];
    for (const char* field : {"eval", "step 20/1000", "loss 3.1000", "ppl 22.20", "bpb 1.2340"})
        EXPECT_NE(lines[2].find(field), std::string::npos) << field << " in " << lines[2];
}

TEST(LossCurveTicks, AreOneTwoFiveMultiplesCoveringTheRange) {
    EXPECT_EQ(nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
    EXPECT_EQ(nice_ticks(0, 1000, 5, true), (std::vector<double>{0, 200, 400, 600, 800, 1000}));
    const auto fine = nice_ticks(2.1, 2.9, 4);
    const std::vector<double> want = {2.0, 2.2, 2.4, 2.6, 2.8, 3.0};
    ASSERT_EQ(fine.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(fine[i], want[i], 1e-12);
    EXPECT_EQ(nice_ticks(5, 5, 5, true).front(), 4);  // one value: a range around it
    for (auto [lo, hi] :
         {std::pair{1.7, 10.83}, {0.0, 1e12}, {1e-3, 1e-3 + 1e-9}, {-3.0, 7e5}, {-1e300, 1e300}}) {
        const auto t = nice_ticks(lo, hi, 6);
        ASSERT_GE(t.size(), 2u);
        EXPECT_LE(t.size(), 16u);
        EXPECT_LE(t.front(), lo);
        EXPECT_GE(t.back(), hi);
        const double d = t[1] - t[0];
        const double mantissa = d / std::pow(10.0, std::floor(std::log10(d)));
        EXPECT_TRUE(std::abs(mantissa - 1) < 1e-9 || std::abs(mantissa - 2) < 1e-9 ||
                    std::abs(mantissa - 5) < 1e-9)
            << lo << ".." << hi << " spacing " << d;
    }
}

TEST_F(LossCurveTest, SvgIsWellFormedXmlWithBothCurves) {
    const auto train = falling_curve(200, 10);
    const CurvePoints val = {{0, 7.6}, {500, 4.1}, {1000, 3.2}, {1990, 2.9}};
    write_loss_curve_svg(path("loss.svg"), train, val, "tiny <hybrid> & friends");
    const auto svg = read_text(path("loss.svg"));
    EXPECT_EQ(polyline_point_count(svg, "train"), train.size());
    EXPECT_EQ(polyline_point_count(svg, "train-smooth"), train.size());
    EXPECT_EQ(polyline_point_count(svg, "val"), val.size());
    EXPECT_NE(svg.find("&lt;hybrid&gt; &amp; friends"), std::string::npos);
    EXPECT_NE(svg.find(">step</text>"), std::string::npos);
    EXPECT_NE(svg.find(">loss</text>"), std::string::npos);
    EXPECT_NE(svg.find("class=\"legend\""), std::string::npos);
    EXPECT_EQ(svg.find("href"), std::string::npos);  // self-contained
    EXPECT_FALSE(fs::exists(path("loss.svg") + fmt::format(".tmp.{}", getpid())));

    if (!have_program("python3")) GTEST_SKIP() << "python3 not found: XML well-formedness not checked";
    EXPECT_EQ(
        std::system(
            fmt::format("python3 -c \"import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])\" {}",
                        path("loss.svg"))
                .c_str()),
        0);
}

TEST_F(LossCurveTest, TickLabelsAreOneTwoFiveMultiples) {
    write_loss_curve_svg(path("loss.svg"), falling_curve(137, 7), {{0, 7.9}, {950, 2.2}}, "ticks");
    const auto svg = read_text(path("loss.svg"));
    for (const char* cls : {"xtick", "ytick"}) {
        std::vector<double> values;
        for (const auto& s : attribute_values(svg, std::string("class=\"") + cls + "\"[^>]*>([^<]*)<"))
            values.push_back(std::stod(s));
        ASSERT_GE(values.size(), 3u) << cls;
        const double d = values[1] - values[0];
        const double mantissa = d / std::pow(10.0, std::floor(std::log10(d)));
        EXPECT_TRUE(std::abs(mantissa - 1) < 1e-6 || std::abs(mantissa - 2) < 1e-6 ||
                    std::abs(mantissa - 5) < 1e-6)
            << cls << " spacing " << d;
        for (size_t i = 0; i < values.size(); ++i) {
            EXPECT_NEAR(values[i] / d, std::round(values[i] / d), 1e-6) << cls << " " << values[i];
            if (i > 0) {
                EXPECT_NEAR(values[i] - values[i - 1], d, d * 1e-6) << cls;
            }
        }
    }
}

TEST_F(LossCurveTest, NonFinitePointsAreSkipped) {
    const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
    const CurvePoints train = {{0, 5.0}, {1, nan}, {2, 4.0}, {3, inf}, {4, -inf}, {5, 3.5}};
    write_loss_curve_svg(path("loss.svg"), train, {{2, nan}, {4, 3.9}}, "nan");
    const auto svg = read_text(path("loss.svg"));
    EXPECT_EQ(polyline_point_count(svg, "train"), 3u);
    EXPECT_EQ(polyline_point_count(svg, "val"), 1u);
    EXPECT_EQ(svg.find("nan"), svg.find("nan</text>"));  // only the title says nan
    EXPECT_EQ(svg.find("inf"), std::string::npos);
}

TEST_F(LossCurveTest, EmptyValSinglePointAndNothingAtAll) {
    write_loss_curve_svg(path("a.svg"), falling_curve(50, 1), {}, "no val");
    const auto a = read_text(path("a.svg"));
    EXPECT_NE(a.find("class=\"train\""), std::string::npos);
    EXPECT_EQ(a.find("class=\"val\""), std::string::npos);
    EXPECT_EQ(a.find(">val</text>"), std::string::npos);

    write_loss_curve_svg(path("b.svg"), {{100, 4.2}}, {}, "one point");
    const auto b = read_text(path("b.svg"));
    EXPECT_EQ(polyline_point_count(b, "train"), 1u);
    EXPECT_NE(b.find("<circle"), std::string::npos);

    write_loss_curve_svg(path("c.svg"), {}, {}, "empty");
    EXPECT_NE(read_text(path("c.svg")).find("</svg>"), std::string::npos);
}

TEST_F(LossCurveTest, HugeRangesAndLongRunsStayBounded) {
    CurvePoints train;
    for (int64_t i = 0; i < 200000; ++i)
        train.emplace_back(i * 5'000'000, i == 3 ? 1e12 : 2.0 + 1e-6 * static_cast<double>(i % 97));
    write_loss_curve_svg(path("huge.svg"), train, {{0, 1e-3}}, "huge");
    const auto svg = read_text(path("huge.svg"));
    EXPECT_LE(polyline_point_count(svg, "train"), 2000u);  // two per pixel column at most
    EXPECT_LE(attribute_values(svg, "class=\"ytick\"[^>]*>([^<]*)<").size(), 16u);
    EXPECT_LE(attribute_values(svg, "class=\"xtick\"[^>]*>([^<]*)<").size(), 16u);
    EXPECT_LT(svg.size(), 200'000u);
}

TEST_F(LossCurveTest, ReadMetricRoundTrip) {
    {
        MetricsLog log(dir_.string(), false);
        for (int64_t s = 1; s <= 5; ++s) {
            log.write({{"type", "train"}, {"step", s}, {"loss", 6.0 - static_cast<double>(s)}});
            if (s % 2 == 0)
                log.write({{"type", "eval"}, {"step", s}, {"loss", 7.0 - static_cast<double>(s)}});
        }
        log.write({{"type", "train"}, {"step", 6}, {"loss", std::nan("")}});  // stored as null, skipped
    }
    const auto file = path("metrics.jsonl");
    EXPECT_EQ(read_metric(file, "train", "loss"),
              (CurvePoints{{1, 5.0}, {2, 4.0}, {3, 3.0}, {4, 2.0}, {5, 1.0}}));
    EXPECT_EQ(read_metric(file, "eval", "loss"), (CurvePoints{{2, 5.0}, {4, 3.0}}));
    EXPECT_TRUE(read_metric(file, "eval", "ppl").empty());
    EXPECT_THROW(read_metric(path("missing.jsonl"), "train", "loss"), Error);
}

TEST_F(LossCurveTest, ReadMetricKeepsTheLatestRunAfterAResume) {
    {  // steps 1..4 logged, then a crash mid-line; the run resumes from a checkpoint at step 2
        std::ofstream f(path("metrics.jsonl"), std::ios::binary);
        for (int s = 1; s <= 4; ++s)
            f << json{{"type", "train"}, {"step", s}, {"loss", 10.0 + s}}.dump() << "\n";
        f << R"({"type":"train","st)";
    }
    {
        MetricsLog log(dir_.string(), true);
        for (int64_t s = 3; s <= 5; ++s)
            log.write({{"type", "train"}, {"step", s}, {"loss", static_cast<double>(s)}});
    }
    EXPECT_EQ(read_metric(path("metrics.jsonl"), "train", "loss"),
              (CurvePoints{{1, 11.0}, {2, 12.0}, {3, 3.0}, {4, 4.0}, {5, 5.0}}));
}

TEST_F(LossCurveTest, RendersToPng) {
    write_loss_curve_svg(path("loss.svg"), falling_curve(300, 10), {{0, 7.6}, {1500, 3.0}, {2990, 2.6}},
                         "render");
    std::string cmd;
    if (have_program("rsvg-convert"))
        cmd = fmt::format("rsvg-convert -o {} {} 2>/dev/null", path("loss.png"), path("loss.svg"));
    else if (have_program("convert"))
        cmd = fmt::format("convert {} {} 2>/dev/null", path("loss.svg"), path("loss.png"));
    else
        GTEST_SKIP() << "neither rsvg-convert nor convert found";
    // A converter without an SVG reader (a stand-in, ImageMagick without librsvg) cannot tell us
    // anything; XML well-formedness is checked above either way.
    if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "the converter could not render SVG: " << cmd;
    EXPECT_GT(fs::file_size(path("loss.png")), 1000u);
}
