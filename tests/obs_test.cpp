// Observability (src/obs/): the bounded collective log and trace, the straggler analysis, and
// end to end: `mics train --trace` on 4 ranks over 2 emulated nodes with one rank slowed on
// purpose, `mics report` (rendered by headless Chromium when it is installed), `mics report
// --merge`, and `mics bench --trace`.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "obs/collective_record.hpp"
#include "obs/observer.hpp"
#include "obs/report.hpp"
#include "obs/straggler.hpp"
#include "obs/trace.hpp"
#include "process_util.hpp"

namespace {

namespace fs = std::filesystem;
using mics::obs::CollOp;

const std::string& scratch() {
  static const std::string dir = [] {
    std::string d = fmt::format("{}/mics-obs-test-{}", fs::temp_directory_path().string(), ::getpid());
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);  // throws (fails the test) on invalid JSON
}

mics::obs::CollectiveRecord record(CollOp op, uint64_t bytes, int64_t dur_ns, uint64_t intra, uint64_t inter) {
  mics::obs::CollectiveRecord r;
  r.op = op;
  r.count = bytes / 4;
  r.bytes = bytes;
  r.dur_ns = dur_ns;
  r.comm_size = 4;
  r.algo = "ring";
  r.rail_bytes = {intra, inter};
  return r;
}

TEST(CollectiveLog, RingIsBoundedAndSummariesSeeEveryRecord) {
  mics::obs::CollectiveLog log(8);
  for (int i = 0; i < 100; ++i) log.push(record(CollOp::kAllGather, 4096, 1000, 10, 1));
  EXPECT_EQ(log.total(), 100u);
  const auto recent = log.recent();
  ASSERT_EQ(recent.size(), 8u);
  EXPECT_EQ(recent.front().seq, 92u);
  EXPECT_EQ(recent.back().seq, 99u);
  const auto rows = log.summary();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].s.count, 100u);
  EXPECT_EQ(rows[0].s.bytes, 409600u);
  EXPECT_EQ(log.rail_totals()[0], 1000u);
  EXPECT_EQ(log.rail_totals()[1], 100u);
  // 4096 bytes in 1 us = 4.096 GB/s; all_gather's bus factor over 4 ranks is 3/4.
  EXPECT_NEAR(rows[0].s.mean_algbw(), 4.096, 1e-9);
  EXPECT_NEAR(rows[0].s.mean_busbw(), 4.096 * 0.75, 1e-9);
  EXPECT_EQ(mics::obs::bucket_low(rows[0].bucket), 4096u);
  const auto j = nlohmann::json::parse(log.summary_json());
  EXPECT_EQ(j["records"], 100);
  EXPECT_EQ(j["by_op"][0]["op"], "all_gather");
}

TEST(CollectiveLog, BusFactorsFollowNcclTests) {
  EXPECT_DOUBLE_EQ(mics::obs::bus_factor(CollOp::kAllReduce, 8), 2.0 * 7 / 8);
  EXPECT_DOUBLE_EQ(mics::obs::bus_factor(CollOp::kReduceScatter, 8), 7.0 / 8);
  EXPECT_DOUBLE_EQ(mics::obs::bus_factor(CollOp::kBroadcast, 8), 1.0);
  EXPECT_DOUBLE_EQ(mics::obs::bus_factor(CollOp::kBarrier, 8), 0.0);
  EXPECT_EQ(mics::obs::size_bucket(0), 0);
  EXPECT_EQ(mics::obs::size_bucket(1), 1);
  EXPECT_EQ(mics::obs::size_bucket(1024), 11);
  EXPECT_EQ(mics::obs::size_bucket(1025), 11);
}

TEST(Trace, KeepsPinnedStepsAndAWindowOfTheLastOnes) {
  mics::obs::TraceBuffer trace({.max_events = 50, .pinned_steps = 2});
  for (int step = 0; step <= 20; ++step)
    for (int i = 0; i < 10; ++i) {
      mics::obs::TraceEvent e;
      fmt::format_to_n(e.name, sizeof(e.name) - 1, "span \"{}\"", i);  // quotes must be escaped
      e.cat = "compute";
      e.step = step;
      e.ts_ns = step * 1000000 + i * 1000;
      e.dur_ns = 500;
      trace.add(e);
    }
  EXPECT_LE(trace.size(), 50u);
  EXPECT_GT(trace.dropped_steps(), 0);
  const auto j = nlohmann::json::parse(trace.to_json(3, 4, 0, R"({"command":"test"})"));
  std::set<int> steps;
  for (const auto& e : j["traceEvents"]) {
    EXPECT_EQ(e["pid"], 3);
    if (e["ph"] == "X") steps.insert(e["args"]["step"].get<int>());
  }
  EXPECT_TRUE(steps.count(0) && steps.count(1) && steps.count(2)) << "pinned steps kept";
  EXPECT_TRUE(steps.count(20)) << "the last step kept";
  EXPECT_FALSE(steps.count(5)) << "an old step dropped";
  EXPECT_EQ(j["otherData"]["command"], "test");
  EXPECT_EQ(j["otherData"]["dropped_steps"].get<int64_t>(), trace.dropped_steps());
}

TEST(Trace, RankGoesIntoThePath) {
  EXPECT_EQ(mics::obs::trace_path_for_rank("run/trace.json", 3), "run/trace.rank3.json");
  EXPECT_EQ(mics::obs::trace_path_for_rank("run/trace/rank-{rank}.json", 12), "run/trace/rank-12.json");
  EXPECT_EQ(mics::obs::trace_path_for_rank("a.b/trace", 0), "a.b/trace.rank0");
}

TEST(Straggler, TheIdlestRankIsNamedWithItsDelayOverTheMedian) {
  const int world = 4;
  std::vector<float> reduced(mics::obs::straggler_payload_size(world), -3e38f);
  const double idle[] = {5, 6, 47, 5.5};
  for (int r = 0; r < world; ++r) {
    mics::obs::StragglerWindow w;
    w.idle_ms = idle[r];
    w.arrivals_ms = {10.0 + (r == 2 ? 40 : 0), 20.0 + (r >= 2 ? 40 : 0)};
    w.close_ms = 100 + r;
    w.collectives = 2;
    const auto p = mics::obs::straggler_payload(r, world, w);
    for (size_t i = 0; i < p.size(); ++i) reduced[i] = std::max(reduced[i], p[i]);
  }
  const auto s = mics::obs::analyze_stragglers(reduced, world);
  EXPECT_EQ(s.rank, 2);
  EXPECT_NEAR(s.delay_ms, 47 - 5.75, 1e-4);
  EXPECT_TRUE(s.slots_agree);
  EXPECT_NEAR(s.spread_ms, 40, 1e-3);
  EXPECT_NEAR(s.close_max_ms, 103, 1e-3);
}

TEST(Report, SvgPlotsAreDocuments) {
  mics::obs::Plot p{"t<1>", "x", "y", false, false, {{"a", {1, 2, 3}, {3, 1, 2}, ""}}};
  const std::string svg = mics::obs::render_svg(p);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("t&lt;1&gt;"), std::string::npos);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
}

// The cost of recording one collective (the comm thread pays it per operation), with and
// without a trace. A measurement, not a speed test (timings stay out of unit tests): it prints
// the figure docs/ARCHITECTURE.md quotes and checks only what recording must do.
TEST(Overhead, RecordingACollectivePrintsItsCost) {
  for (bool tracing : {false, true}) {
    mics::obs::Observer observer(0, 4, 4096);
    if (tracing) observer.enable_trace({.max_events = 4096, .pinned_steps = 2});
    const int n = 200000;
    const int64_t t0 = mics::obs::steady_ns();
    for (int i = 0; i < n; ++i) {
      if (i % 1000 == 0) observer.step_begin(i / 1000 + 1);
      auto r = record(CollOp::kAllGather, 65536, 1000, 100, 10);
      r.start_ns = mics::obs::steady_ns();  // as the communicator does: two clock reads per op
      r.dur_ns = mics::obs::steady_ns() - r.start_ns;
      observer.record(r);
    }
    const double ns = static_cast<double>(mics::obs::steady_ns() - t0) / n;
    std::printf("record cost with trace %s: %.0f ns per collective\n", tracing ? "on" : "off", ns);
    EXPECT_EQ(observer.log().total(), static_cast<uint64_t>(n));
    EXPECT_EQ(observer.log().recent().size(), observer.log().capacity());  // the ring stays bounded
  }
}

// --- end to end --------------------------------------------------------------------------------

std::string env_prefix() { return fmt::format("MICS_TIMEOUT_S=90 MICS_DATA_DIR={}/data", scratch()); }

struct TracedRun {
  std::string dir;
  std::vector<nlohmann::json> steps;
  nlohmann::json summary;
};

// 4 ranks, 2 emulated nodes, mics p=2, rank 2 sleeping 200 ms before every step: far above
// the stalls a loaded test machine gives any rank (60 ms was not, under ctest -j8 on 16 cores).
const TracedRun& traced_run() {
  static const TracedRun run = [] {
    TracedRun r;
    r.dir = scratch() + "/run";
    const auto result = mics::testing::run_command(fmt::format(
        "{} MICS_DEBUG_SLOW_RANK=2 MICS_DEBUG_SLOW_MS=200 {} train -n 4 --nodes 2 --model tiny --micro-batch 2 --seq-len 32 "
        "--steps 8 --samples 0 --eval-batches 1 --eval-every 4 --out {} --trace {}/trace/rank{{rank}}.json",
        env_prefix(), MICS_BINARY, r.dir, r.dir));
    EXPECT_EQ(result.status, 0) << result.output;
    std::ifstream in(r.dir + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j["event"] == "step") r.steps.push_back(j);
      if (j["event"] == "summary") r.summary = j;
    }
    return r;
  }();
  return run;
}

TEST(ObsEndToEnd, TracesAreValidJsonWithTheExpectedEventKinds) {
  const TracedRun& run = traced_run();
  ASSERT_EQ(run.steps.size(), 8u);
  for (int rank = 0; rank < 4; ++rank) {
    const auto j = read_json(fmt::format("{}/trace/rank{}.json", run.dir, rank));
    std::set<std::string> cats, threads;
    std::map<std::string, uint64_t> rail;
    for (const auto& e : j["traceEvents"]) {
      EXPECT_EQ(e["pid"], rank);
      if (e["ph"] == "M" && e["name"] == "thread_name") threads.insert(e["args"]["name"].get<std::string>());
      if (e["ph"] != "X") continue;
      EXPECT_GE(e["dur"].get<double>(), 0.0);
      cats.insert(e["cat"].get<std::string>());
      if (e["cat"] == "collective") {
        rail["intra"] += e["args"]["intra_bytes"].get<uint64_t>();
        rail["inter"] += e["args"]["inter_bytes"].get<uint64_t>();
      }
    }
    for (const char* cat : {"collective", "compute", "comm_wait", "data", "step"}) EXPECT_TRUE(cats.count(cat)) << rank << " " << cat;
    EXPECT_TRUE(threads.count("main") && threads.count("comm"));
    EXPECT_EQ(j["otherData"]["dropped_events"], 0);
    // Every collective is in the trace (nothing dropped): its bytes equal the rank's fabric
    // counters when the trace was written.
    const auto& fabric = j["otherData"]["fabric_rail_bytes"];
    EXPECT_EQ(rail["intra"], fabric[0].get<uint64_t>()) << rank;
    EXPECT_EQ(rail["inter"], fabric[1].get<uint64_t>()) << rank;
    EXPECT_GT(rail["intra"] + rail["inter"], 0u);
  }
}

TEST(ObsEndToEnd, CollectiveRecordsEqualTheFabricCounters) {
  const TracedRun& run = traced_run();
  const auto& c = run.summary["collectives"];
  EXPECT_TRUE(c["records_match_fabric"].get<bool>()) << c.dump();
  EXPECT_EQ(c["rail_bytes"], c["fabric_rail_bytes"]);
  EXPECT_TRUE(run.summary["traffic_matches_model"].get<bool>()) << "recording changes no traffic";
  uint64_t intra = 0, inter = 0;
  for (const auto& row : c["by_op"]) {
    intra += row["intra_bytes"].get<uint64_t>();
    inter += row["inter_bytes"].get<uint64_t>();
  }
  EXPECT_EQ(intra, c["rail_bytes"][0].get<uint64_t>());
  EXPECT_EQ(inter, c["rail_bytes"][1].get<uint64_t>());
  // The per-step bytes are the step's collectives: the same every step.
  for (const auto& s : run.steps) EXPECT_EQ(s["intra_bytes"], run.steps.front()["intra_bytes"]);
}

TEST(ObsEndToEnd, TheSlowedRankIsNamedTheStraggler) {
  const TracedRun& run = traced_run();
  int named = 0;
  for (const auto& s : run.steps) {
    named += s["straggler_rank"] == 2;
    if (s["straggler_rank"] == 2) {
      EXPECT_GT(s["straggler_delay_ms"].get<double>(), 20.0) << s.dump();
    }
  }
  EXPECT_GE(named, 6) << "rank 2 named in " << named << " of 8 steps";
  ASSERT_FALSE(run.summary["stragglers"].empty());
  const auto top = *std::max_element(run.summary["stragglers"].begin(), run.summary["stragglers"].end(),
                                     [](const auto& a, const auto& b) { return a["steps"] < b["steps"]; });
  EXPECT_EQ(top["rank"], 2);
  EXPECT_GT(run.summary["max_arrival_spread_ms"].get<double>(), 20.0);
}

TEST(ObsEndToEnd, MergedTraceHasEveryRank) {
  const TracedRun& run = traced_run();
  const std::string merged = run.dir + "/merged.json";
  const auto r = mics::testing::run_command(
      fmt::format("{} report --merge {}/trace/rank0.json {}/trace/rank1.json {}/trace/rank2.json {}/trace/rank3.json --out {}",
                  MICS_BINARY, run.dir, run.dir, run.dir, run.dir, merged));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = read_json(merged);
  std::set<int> pids;
  for (const auto& e : j["traceEvents"]) pids.insert(e["pid"].get<int>());
  EXPECT_EQ(pids, (std::set<int>{0, 1, 2, 3}));
  // A small cap drops old steps but keeps the pinned ones.
  const auto capped = mics::testing::run_command(fmt::format("{} report --merge {}/trace/rank0.json {}/trace/rank1.json --max-events 300 --out {}.small",
                                                             MICS_BINARY, run.dir, run.dir, merged));
  ASSERT_EQ(capped.status, 0) << capped.output;
  const auto small = read_json(merged + ".small");
  EXPECT_GT(small["otherData"]["dropped_steps"].get<int>(), 0);
}

std::string find_chromium() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    const auto r = mics::testing::run_command(fmt::format("command -v {}", name));
    if (r.status == 0) return name;
  }
  return "";
}

TEST(ObsEndToEnd, ReportIsSelfContainedAndRendersInHeadlessChromium) {
  const TracedRun& run = traced_run();
  const std::string html = run.dir + "/report.html";
  const auto r = mics::testing::run_command(fmt::format("{} report {} --out {} --svg-dir {}/plots", MICS_BINARY, run.dir, html, run.dir));
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(html);
  std::stringstream text;
  text << in.rdbuf();
  const std::string page = text.str();
  for (const char* id : {"plot-loss", "plot-tokens_per_s", "plot-step_time", "plot-bytes_per_rail", "plot-collective_busbw",
                         "id=\"stragglers\"", "id=\"collectives\""})
    EXPECT_NE(page.find(id), std::string::npos) << id;
  EXPECT_EQ(page.find("<script"), std::string::npos) << "no scripts";
  EXPECT_EQ(page.find("http://"), page.find("http://www.w3.org/2000/svg")) << "nothing from the network";
  EXPECT_EQ(page.find("https://"), std::string::npos);
  for (const char* svg : {"loss", "tokens_per_s", "step_time", "bytes_per_rail", "collective_busbw"})
    EXPECT_TRUE(fs::file_size(fmt::format("{}/plots/{}.svg", run.dir, svg)) > 500) << svg;

  const std::string chromium = find_chromium();
  if (chromium.empty())
    GTEST_SKIP() << "chromium is not installed (apt-get install chromium): the report's rendering is not checked";
  const std::string png = run.dir + "/report.png";
  const auto shot = mics::testing::run_command(fmt::format(
      "timeout 120 {} --headless --no-sandbox --disable-gpu --window-size=1100,2400 --screenshot={} file://{}", chromium, png, html));
  ASSERT_EQ(shot.status, 0) << shot.output;
  EXPECT_GT(fs::file_size(png), 20000u) << "a blank page is smaller";
  const auto dom = mics::testing::run_command(
      fmt::format("timeout 120 {} --headless --no-sandbox --disable-gpu --dump-dom file://{} 2>/dev/null", chromium, html));
  ASSERT_EQ(dom.status, 0);
  EXPECT_NE(dom.output.find("<svg"), std::string::npos);
  EXPECT_NE(dom.output.find("Stragglers"), std::string::npos);
}

TEST(ObsEndToEnd, BenchTraceBytesEqualTheFabricCounters) {
  const std::string trace = scratch() + "/bench/trace.json";
  const auto r = mics::testing::run_command(fmt::format("MICS_TIMEOUT_S=60 {0} launch -n 4 --nodes 2 -- {0} bench --op all -b 1K -e 256K -f 4 -w 1 -n 2 --trace {1}",
                                                        MICS_BINARY, trace));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("their bytes equal the fabric counters on every rank"), std::string::npos) << r.output;
  for (int rank = 0; rank < 4; ++rank) {
    const auto j = read_json(fmt::format("{}/bench/trace.rank{}.json", scratch(), rank));
    std::set<std::string> ops;
    for (const auto& e : j["traceEvents"])
      if (e["ph"] == "X" && e["cat"] == "collective") ops.insert(e["name"].get<std::string>());
    for (const char* op : {"all_gather", "reduce_scatter", "all_reduce", "broadcast", "barrier"}) EXPECT_TRUE(ops.count(op)) << op;
  }
}

}  // namespace
