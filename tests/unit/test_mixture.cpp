// Mixture: Hugging Face interleave_datasets semantics for streaming datasets (round robin and
// seeded sampling; first_exhausted and all_exhausted), determinism, weighted frequencies.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "data/mixture.h"
#include "test_util.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

std::string test_dir() { return test::fresh_test_dir("mslm_mix"); }

// Source `label` with n line documents "label0", "label1", ...
SourceSpec line_source(const std::string& dir, const std::string& label, int n, double weight = 1.0) {
    const std::string path = dir + "/" + label + ".txt";
    std::ofstream out(path);
    for (int i = 0; i < n; ++i) out << label << i << "\n";
    SourceSpec spec;
    spec.path = path;
    spec.txt_split = TxtSplit::Line;
    spec.weight = weight;
    spec.name = label;
    return spec;
}

std::vector<std::string> drain(Mixture& mix, size_t limit = 1000000) {
    std::vector<std::string> out;
    Document doc;
    while (out.size() < limit && mix.next(doc)) out.push_back(doc.text);
    return out;
}

using Strings = std::vector<std::string>;

MixtureOptions round_robin(StoppingStrategy stopping) {
    MixtureOptions opt;
    opt.round_robin = true;
    opt.stopping = stopping;
    return opt;
}

}  // namespace

// HF, probabilities=None on iterable datasets (CyclingMultiSourcesExamplesIterable): sources in
// order; with first_exhausted the output ends right after the first source's last example, so
// a round is cut short when the shortest source is not the last one.
TEST(MixtureRoundRobin, FirstExhaustedStopsMidRound) {
    const std::string dir = test_dir();
    Mixture mix({line_source(dir, "a", 3), line_source(dir, "b", 4), line_source(dir, "c", 5)},
                round_robin(StoppingStrategy::FirstExhausted));
    EXPECT_EQ(drain(mix), (Strings{"a0", "b0", "c0", "a1", "b1", "c1", "a2"}));
    Document doc;
    EXPECT_FALSE(mix.next(doc));
    EXPECT_FALSE(mix.next(doc));
    EXPECT_EQ(mix.documents_from(0), 3);
    EXPECT_EQ(mix.documents_from(2), 2);
}

TEST(MixtureRoundRobin, FirstExhaustedShortestLast) {
    const std::string dir = test_dir();
    Mixture mix({line_source(dir, "a", 5), line_source(dir, "b", 4), line_source(dir, "c", 3)},
                round_robin(StoppingStrategy::FirstExhausted));
    EXPECT_EQ(drain(mix), (Strings{"a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"}));
}

// all_exhausted: a source that runs out restarts from its start; the output ends right after
// the example that leaves every source exhausted at least once.
TEST(MixtureRoundRobin, AllExhaustedOversamples) {
    const std::string dir = test_dir();
    {
        Mixture mix({line_source(dir, "a", 3), line_source(dir, "b", 4), line_source(dir, "c", 5)},
                    round_robin(StoppingStrategy::AllExhausted));
        EXPECT_EQ(drain(mix), (Strings{"a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2", "a0", "b3", "c3",
                                       "a1", "b0", "c4"}));
    }
    {
        Mixture mix({line_source(dir, "a", 5), line_source(dir, "b", 4), line_source(dir, "c", 3)},
                    round_robin(StoppingStrategy::AllExhausted));
        EXPECT_EQ(drain(mix),
                  (Strings{"a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3", "c0", "a4"}));
        EXPECT_EQ(mix.documents_from(0), 5);
        EXPECT_EQ(mix.documents_from(1), 4);
        EXPECT_EQ(mix.documents_from(2), 4);
    }
}

TEST(MixtureRoundRobin, RejectsUnequalWeights) {
    const std::string dir = test_dir();
    try {
        Mixture mix({line_source(dir, "a", 3), line_source(dir, "b", 4, 2.0)},
                    round_robin(StoppingStrategy::FirstExhausted));
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("round robin takes no weights"), std::string::npos) << e.what();
    }
}

// With probabilities, first_exhausted: the last document out is the last of some source, taken
// when it was drawn; no other source has run out.
TEST(MixtureSampled, FirstExhaustedStopsAfterTheLastDocumentOfASource) {
    const std::string dir = test_dir();
    const std::vector<int> sizes = {6, 40, 40};
    for (uint64_t seed = 0; seed < 20; ++seed) {
        MixtureOptions opt;
        opt.seed = seed;
        Mixture mix({line_source(dir, "a", sizes[0]), line_source(dir, "b", sizes[1]),
                     line_source(dir, "c", sizes[2])},
                    opt);
        Document doc;
        int source = -1, last_source = -1;
        std::string last;
        int64_t total = 0;
        while (mix.next(doc, &source)) {
            last = doc.text;
            last_source = source;
            ++total;
        }
        ASSERT_GE(last_source, 0);
        EXPECT_EQ(mix.documents_from(last_source), sizes[static_cast<size_t>(last_source)])
            << "seed " << seed;
        EXPECT_EQ(last, fmt::format("{}{}", static_cast<char>('a' + last_source),
                                    sizes[static_cast<size_t>(last_source)] - 1));
        int64_t sum = 0;
        for (int i = 0; i < 3; ++i) {
            EXPECT_LE(mix.documents_from(i), sizes[static_cast<size_t>(i)]);
            sum += mix.documents_from(i);
        }
        EXPECT_EQ(sum, total);
        EXPECT_FALSE(mix.next(doc));
    }
}

// all_exhausted with probabilities: the short source cycles from its start again and again; the
// stream ends with the long source's last document (the last one to run out). Expected counts:
// with equal weights the long source's 40 draws come with about 40 of the short one.
TEST(MixtureSampled, AllExhaustedRestartsShortSources) {
    const std::string dir = test_dir();
    MixtureOptions opt;
    opt.seed = 11;
    opt.stopping = StoppingStrategy::AllExhausted;
    Mixture mix({line_source(dir, "a", 2), line_source(dir, "b", 40)}, opt);
    Document doc;
    int source = -1;
    int64_t a_seen = 0;
    std::string last;
    while (mix.next(doc, &source)) {
        if (source == 0) {
            EXPECT_EQ(doc.text, fmt::format("a{}", a_seen % 2)) << "a restarts from its first document";
            ++a_seen;
        }
        last = doc.text;
    }
    EXPECT_EQ(last, "b39");
    EXPECT_EQ(mix.documents_from(1), 40);
    EXPECT_EQ(mix.documents_from(0), a_seen);
    EXPECT_GT(a_seen, 10);  // ~40 expected; sd ~9 for the negative binomial, so >10 is beyond 3 sd
}

// Frequencies: 20,000 draws with weights 1:2:7 (unnormalised). Each count is binomial(n, p),
// sd = sqrt(n p (1-p)); a 5-sd band fails by chance with probability 6e-7 per source, and the
// seed is fixed, so a failure means the sampling is wrong, not unlucky.
TEST(MixtureSampled, WeightedFrequenciesWithinFiveSigma) {
    const std::string dir = test_dir();
    constexpr int kDraws = 20000;
    const std::vector<double> weights = {1, 2, 7};
    MixtureOptions opt;
    opt.seed = 1234;
    Mixture mix({line_source(dir, "a", kDraws, weights[0]), line_source(dir, "b", kDraws, weights[1]),
                 line_source(dir, "c", kDraws, weights[2])},
                opt);
    Document doc;
    for (int i = 0; i < kDraws; ++i) ASSERT_TRUE(mix.next(doc));
    for (int i = 0; i < 3; ++i) {
        const double p = weights[static_cast<size_t>(i)] / 10.0;
        const double mean = kDraws * p, sd = std::sqrt(kDraws * p * (1 - p));
        EXPECT_NEAR(static_cast<double>(mix.documents_from(i)), mean, 5 * sd) << "source " << i;
    }
}

TEST(MixtureSampled, SameSeedSameSequenceOtherSeedOther) {
    const std::string dir = test_dir();
    const std::vector<SourceSpec> specs = {line_source(dir, "a", 300), line_source(dir, "b", 300, 2.0),
                                           line_source(dir, "c", 300, 0.5)};
    const auto sequence = [&](uint64_t seed) {
        MixtureOptions opt;
        opt.seed = seed;
        Mixture mix(specs, opt);
        return drain(mix, 200);
    };
    const Strings first = sequence(42);
    EXPECT_EQ(first.size(), 200u);
    EXPECT_EQ(sequence(42), first);
    EXPECT_NE(sequence(43), first);
}

TEST(MixtureSampled, SkippedSumsOverSources) {
    const std::string dir = test_dir();
    {
        std::ofstream(dir + "/x.jsonl") << "{\"text\": \"x0\"}\nbroken\n{\"text\": \"x1\"}\n";
        std::ofstream(dir + "/y.jsonl") << "{\"no\": 1}\n{\"text\": \"y0\"}\n";
    }
    SourceSpec x, y;
    x.path = dir + "/x.jsonl";
    y.path = dir + "/y.jsonl";
    MixtureOptions opt = round_robin(StoppingStrategy::FirstExhausted);
    opt.read.skip_bad = true;
    Mixture mix({x, y}, opt);
    EXPECT_EQ(drain(mix), (Strings{"x0", "y0"}));
    EXPECT_EQ(mix.skipped(), 2);
}

TEST(MixtureErrors, BadSetup) {
    const std::string dir = test_dir();
    const auto expect = [](const std::function<void()>& f, const std::string& phrase) {
        try {
            f();
            ADD_FAILURE() << "no error; expected '" << phrase << "'";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
        }
    };
    expect([] { Mixture({}, {}); }, "mixture: no sources");
    SourceSpec zero = line_source(dir, "z", 3, 0.0);
    expect([&] { Mixture({zero}, {}); }, "weights must be > 0");
    SourceSpec empty = line_source(dir, "e", 0);
    // An empty source fails when the mixture opens it, not mid-run.
    expect([&] { Mixture({line_source(dir, "a", 3), empty}, {}); }, "e: no documents");
    SourceSpec missing;
    missing.path = dir + "/nope.txt";
    expect([&] { Mixture({missing}, {}); }, "nope.txt: no such file or directory");
}
