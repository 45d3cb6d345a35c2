// The cost model (src/plan/): collective times against their closed forms, the simulator's
// timeline rules, memory against the engine's own accounting (real `mics train` and
// `mics engine-bench` runs), the engine bench's MLP against model::Mlp's counts, the published
// anchors within 15%, calibration on synthetic runs, and errors that name the valid choices.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "model/mlp.hpp"
#include "plan/calibrate.hpp"
#include "plan/collective_model.hpp"
#include "plan/mesh_plan.hpp"
#include "plan/simulator.hpp"
#include "plan/validation.hpp"
#include "process_util.hpp"

namespace {

namespace fs = std::filesystem;
using namespace mics::plan;

const std::string& scratch() {
  static const std::string dir = [] {
    std::string d = fmt::format("{}/mics-plan-test-{}", fs::temp_directory_path().string(), ::getpid());
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

// --- collective model ----------------------------------------------------------------------

TEST(PlanCollectives, RingClosedForms) {
  const Rail rail{25e9, 7e-6};
  for (int n : {1, 2, 3, 8, 64}) {
    for (double m : {0.0, 1.0, 1e6, 3.3e9}) {
      const double ag = n > 1 && m > 0 ? (n - 1) * rail.latency + (n - 1.0) / n * m / rail.bandwidth : 0.0;
      EXPECT_DOUBLE_EQ(ring_time(Collective::kAllGather, n, m, rail), ag) << n << " " << m;
      EXPECT_DOUBLE_EQ(ring_time(Collective::kReduceScatter, n, m, rail), ag);
      const double ar = n > 1 && m > 0 ? 2 * (n - 1) * rail.latency + 2 * (n - 1.0) / n * m / rail.bandwidth : 0.0;
      EXPECT_DOUBLE_EQ(ring_time(Collective::kAllReduce, n, m, rail), ar);
    }
  }
}

TEST(PlanCollectives, GroupsHierarchicalAndTwoHop) {
  Cluster c = find_cluster("p4d.24xlarge");
  CostParams q;
  q.intra_efficiency = 0.5;
  q.inter_efficiency = 0.25;
  const int N = 64, n = 8;
  const CollectiveModel cm(c, q, N);
  const Rail intra{c.intra.bandwidth * 0.5, c.intra.latency}, inter{c.inter.bandwidth * 0.25, c.inter.latency};
  const double M = 1e9;
  // Inside a node: the intra-node ring.
  EXPECT_DOUBLE_EQ(cm.partition_all_gather(4, M, true), ring_time(Collective::kAllGather, 4, M, intra));
  EXPECT_DOUBLE_EQ(cm.partition_reduce_scatter(8, M), ring_time(Collective::kReduceScatter, 8, M, intra));
  // p = 32 = 4 nodes: stage 1 over k = 4 ranks, M/n each, n groups sharing a node's network;
  // stage 2 over the node's 8 ranks.
  const int k = 4;
  const double stage1 = (k - 1) * inter.latency + (k - 1.0) / k * (M / n) / (inter.bandwidth / n);
  const double stage2 = (n - 1) * intra.latency + (n - 1.0) / n * M / intra.bandwidth;
  EXPECT_NEAR(cm.hierarchical_all_gather(32, M), stage1 + stage2, 1e-12);
  // Per node, stage 1 sends (k-1)/k * M over the network; the flat ring (p-1)/p * M.
  const double flat = 31 * inter.latency + 31.0 / 32 * M / std::min(intra.bandwidth, inter.bandwidth);
  EXPECT_NEAR(cm.partition_all_gather(32, M, false), flat, 1e-12);
  // 2-hop: the shard M/p over r = N/p ranks, one per node, n such groups per node.
  const int p = 16, r = N / p;
  const double shard = M / p;
  const double two_hop = 2 * (r - 1) * inter.latency + 2 * (r - 1.0) / r * shard / (inter.bandwidth / n);
  EXPECT_NEAR(cm.replication_all_reduce(p, shard), two_hop, 1e-12);
  // p < n: the replication group has n/p members per node, p groups share the network.
  const int p2 = 2, r2 = N / p2;
  const double ar2 = 2 * (r2 - 1) * inter.latency +
                     2 * (r2 - 1.0) / r2 * (M / p2) / std::min(intra.bandwidth, inter.bandwidth / p2);
  EXPECT_NEAR(cm.replication_all_reduce(p2, M / p2), ar2, 1e-12);
}

// --- simulator -----------------------------------------------------------------------------

// GPT: every forward, the blocks' backward; the MLP ("layer.N"): every forward and backward.
bool needs_gather(const std::string& what) {
  return what.rfind("fwd", 0) == 0 || what.rfind("bwd block", 0) == 0 || what.rfind("bwd layer", 0) == 0;
}
bool reduces(const std::string& what) {
  return what.rfind("bwd block", 0) == 0 || what == "bwd embed" || what.rfind("bwd layer", 0) == 0;
}

void expect_timeline_rules(const StepPrediction& pr, const std::string& label) {
  std::map<Stream, std::vector<const Event*>> by_stream;
  for (const auto& e : pr.timeline) by_stream[e.stream].push_back(&e);
  const double eps = 1e-12;
  for (auto& [stream, events] : by_stream)
    for (size_t i = 1; i < events.size(); ++i)
      ASSERT_GE(events[i]->start + eps, events[i - 1]->end)
          << label << ": " << to_string(stream) << " overlaps: " << events[i - 1]->what << " / " << events[i]->what;
  std::vector<const Event*> compute, gathers, scatters;
  double comm_end = 0;
  for (const auto& e : pr.timeline) {
    ASSERT_LE(e.start, e.end) << label;
    if (e.stream == Stream::kCompute && e.what != "optimizer") compute.push_back(&e);
    if (e.what.rfind("all_gather", 0) == 0) gathers.push_back(&e);
    if (e.what.rfind("reduce_scatter", 0) == 0) scatters.push_back(&e);
    if (e.stream != Stream::kCompute) comm_end = std::max(comm_end, e.end);
  }
  const bool sharded = pr.partition_size > 1;
  size_t g = 0, s = 0;
  for (const Event* c : compute) {
    if (sharded && needs_gather(c->what)) {
      ASSERT_LT(g, gathers.size()) << label;
      EXPECT_EQ(gathers[g]->unit, c->unit) << label;
      EXPECT_GE(c->start + eps, gathers[g]->end) << label << ": " << c->what << " before its gather";
      ++g;
    }
    if (sharded && reduces(c->what)) {
      ASSERT_LT(s, scatters.size()) << label;
      EXPECT_EQ(scatters[s]->unit, c->unit) << label;
      EXPECT_GE(scatters[s]->start + eps, c->end) << label << ": reduce-scatter before its backward";
      ++s;
    }
  }
  EXPECT_EQ(g, gathers.size()) << label;
  EXPECT_EQ(s, scatters.size()) << label;
  const Event& opt = pr.timeline.back();
  EXPECT_EQ(opt.what, "optimizer");
  EXPECT_GE(opt.start + eps, comm_end) << label << ": optimizer before the collectives ended";
  EXPECT_DOUBLE_EQ(pr.step_s, opt.end);
  EXPECT_GE(pr.exposed_comm_s, -eps);
}

TEST(PlanSimulator, TimelineKeepsItsRules) {
  for (const std::string cluster : {"p4d.24xlarge", "host"}) {
    for (auto strategy : {mics::topo::Strategy::kDdp, mics::topo::Strategy::kZero3, mics::topo::Strategy::kMics}) {
      for (int depth : {0, 1, 3}) {
        for (int accum : {1, 3}) {
          for (bool every : {false, true}) {
            RunSpec s;
            s.model = find_model(cluster == "host" ? "L3H4C64V256T32" : "1.3b");
            s.cluster = find_cluster(cluster);
            s.world = cluster == "host" ? 8 : 32;
            s.strategy = strategy;
            s.partition_size = cluster == "host" ? 2 : 16;
            s.grad_accum = accum;
            s.micro_batch = 2;
            s.prefetch_depth = depth;
            s.all_reduce_every_micro_step = every;
            s.recompute = every;
            const auto pr = simulate(s, CostParams{});
            expect_timeline_rules(pr, fmt::format("{} {} depth {} S {} every {}", cluster,
                                                  mics::topo::to_string(strategy), depth, accum, every));
          }
        }
      }
    }
  }
}

TEST(PlanSimulator, FlopsAndTokensAddUp) {
  RunSpec s;
  s.model = find_model("6.7b");
  s.cluster = find_cluster("p5.48xlarge");
  s.world = 64;
  s.micro_batch = 2;
  s.grad_accum = 4;
  const auto pr = simulate(s, CostParams{});
  const double tokens = 64.0 * 4 * 2 * 2048;
  EXPECT_NEAR(pr.tokens_per_s, tokens / pr.step_s, 1e-6 * pr.tokens_per_s);
  EXPECT_NEAR(pr.tflops_per_gpu, s.model.flops_per_token(2048) * tokens / 64 / pr.step_s / 1e12, 1e-9);
  double per_token = 0;
  for (int u = 0; u <= s.model.config.layers; ++u) per_token += 3 * s.model.unit_forward_flops_per_token(u, 2048);
  EXPECT_NEAR(per_token, s.model.flops_per_token(2048), 1e-6 * per_token);
  EXPECT_EQ(pr.partition_size, 8);  // mics default: one node
}

// host:FILE,... with several runs of one bench command: each size's fastest run sets the rail
// (the largest message's bus bandwidth, the smallest's time per hop); files of different
// layouts for one rail are refused; one-node files make the intra rail, several-node ones the inter.
TEST(PlanCatalog, SeveralBenchRunsOfARailKeepEachSizesFastest) {
  auto write = [](const std::string& name, int world, int nodes, double small_us, double large_busbw) {
    nlohmann::json j;
    j["world_size"] = world;
    j["nodes"] = nodes;
    j["host_cores"] = 2;
    j["results"] = nlohmann::json::array();
    j["results"].push_back({{"op", "all_gather"}, {"bytes", 65536}, {"time_us", small_us}, {"busbw_gbps", 0.3}});
    j["results"].push_back({{"op", "all_gather"},
                            {"bytes", 4194304},
                            {"time_us", 4194304 * 0.75 / large_busbw / 1e3},
                            {"busbw_gbps", large_busbw}});
    const std::string path = scratch() + "/" + name;
    std::ofstream(path) << j.dump() << "\n";
    return path;
  };
  // run a: fast small message, slow large one; run b: the other way round
  const std::string a = write("rail-a.json", 4, 2, 150.0, 1.0), b = write("rail-b.json", 4, 2, 300.0, 2.0);
  int nodes = 0, per_node = 0;
  const Rail both = rail_from_bench_files({a, b}, &nodes, &per_node);
  EXPECT_EQ(nodes, 2);
  EXPECT_EQ(per_node, 2);
  EXPECT_NEAR(both.bandwidth, 2.0e9, 1.0);
  EXPECT_NEAR(both.latency, 150e-6 / 3, 1e-12);  // 3 hops of a 4-rank all-gather
  const Rail only_a = rail_from_bench_files({a}, nullptr, nullptr);
  EXPECT_NEAR(only_a.bandwidth, 1.0e9, 1.0);
  EXPECT_NEAR(only_a.latency, 150e-6 / 3, 1e-12);

  const std::string intra1 = write("rail-intra1.json", 2, 1, 20.0, 4.0),
                    intra2 = write("rail-intra2.json", 2, 1, 12.0, 3.0);
  const Cluster host = find_cluster(fmt::format("host:{},{},{},{}", a, intra1, b, intra2));
  EXPECT_NEAR(host.inter.bandwidth, 2.0e9, 1.0);
  EXPECT_NEAR(host.intra.bandwidth, 4.0e9, 1.0);
  EXPECT_NEAR(host.intra.latency, 12e-6, 1e-12);  // 1 hop of a 2-rank all-gather
  EXPECT_EQ(host.gpus_per_node, 2);

  const std::string other = write("rail-other.json", 8, 2, 150.0, 1.0);
  try {
    rail_from_bench_files({a, other}, nullptr, nullptr);
    ADD_FAILURE() << "files of two layouts were merged";
  } catch (const mics::Error& e) {
    EXPECT_NE(std::string(e.what()).find("same bench command"), std::string::npos) << e.what();
  }
}

// The CPU host's hop wait (CostParams::host_hop_s) adds to every hop of either rail.
TEST(PlanCollectives, HostHopWaitAddsToEveryHop) {
  Cluster host = find_cluster("host");
  host.gpus_per_node = 2;
  CostParams q;
  q.intra_efficiency = q.inter_efficiency = 1;
  const CollectiveModel base(host, q, 4);
  q.host_hop_s = 5e-3;
  const CollectiveModel waiting(host, q, 4);
  const double M = 1 << 20;
  // p = 2 inside a node: 1 hop; ZeRO-3 p = 4 on 2 nodes, hierarchical: 1 inter + 1 intra hop;
  // the 2-hop all-reduce over r = 2 (one rank per node): 2 hops.
  EXPECT_NEAR(waiting.partition_all_gather(2, M, true) - base.partition_all_gather(2, M, true), 5e-3, 1e-12);
  EXPECT_NEAR(waiting.partition_all_gather(4, M, true) - base.partition_all_gather(4, M, true), 2 * 5e-3, 1e-12);
  EXPECT_NEAR(waiting.replication_all_reduce(2, M) - base.replication_all_reduce(2, M), 2 * 5e-3, 1e-12);
  EXPECT_NEAR(waiting.intra().latency, host.intra.latency + 5e-3, 1e-15);
  EXPECT_NEAR(waiting.inter().latency, host.inter.latency + 5e-3, 1e-15);
}

// The CPU engine's boundary all-reduce is one collective over the concatenated shards.
TEST(PlanSimulator, CpuEngineAllReducesOnce) {
  RunSpec s;
  s.model = find_model("L4H4C128V256T64");
  s.cluster = find_cluster("host");
  s.cluster.gpus_per_node = 2;
  s.world = 4;
  s.strategy = mics::topo::Strategy::kMics;
  s.partition_size = 2;
  s.grad_accum = 2;
  s.micro_batch = 4;
  s.seq_len = 64;
  int all_reduces = 0;
  for (const auto& e : simulate(s, CostParams{}).timeline) all_reduces += e.what.rfind("all_reduce", 0) == 0;
  EXPECT_EQ(all_reduces, 1);
}

// --- the engine bench's MLP -----------------------------------------------------------------

// The description's closed forms against model::Mlp, whose kernels the bench runs, exactly.
TEST(PlanMlp, CountsMatchTheModelExactly) {
  for (const auto& [L, W] : std::vector<std::pair<int, int>>{{1, 1}, {3, 7}, {5, 33}, {8, 256}}) {
    const ModelDesc d = find_model(fmt::format("mlpL{}W{}", L, W));
    ASSERT_TRUE(d.is_mlp());
    EXPECT_EQ(d.mlp_layers, L);
    EXPECT_EQ(d.mlp_width, W);
    EXPECT_EQ(d.default_seq_len(), 1);
    const mics::model::Mlp mlp(std::vector<int>(static_cast<size_t>(L) + 1, W));
    const auto units = d.unit_sizes();
    ASSERT_EQ(units.size(), static_cast<size_t>(L));
    double flops = 0;
    for (int l = 0; l < L; ++l) {
      EXPECT_EQ(units[l], mlp.layer_numel(l)) << "layer " << l;
      EXPECT_EQ(units[l], static_cast<uint64_t>(W) * W + W);
      // Integers below 2^53: exact in double.
      EXPECT_EQ(d.unit_forward_flops_per_token(l, 1), mlp.forward_flops(l, 1)) << "layer " << l;
      EXPECT_EQ(d.mlp_unit_backward_flops(l), mlp.backward_flops(l, 1)) << "layer " << l;
      EXPECT_EQ(3 * mlp.forward_flops(l, 5), 5 * 3 * mlp.forward_flops(l, 1));  // linear in the batch
      flops += mlp.forward_flops(l, 1) + mlp.backward_flops(l, 1);
    }
    EXPECT_EQ(d.params(), mlp.total_numel());
    EXPECT_EQ(d.flops_per_token(1), flops);
    // 6 FLOPs per weight and sample, less the first layer's input gradient, plus db's adds.
    EXPECT_EQ(flops, 6.0 * L * W * W - 2.0 * W * W + 1.0 * L * W);
    for (int B : {1, 4}) {
      EXPECT_EQ(d.engine_activation_bytes(B, 1, false), mlp.activation_bytes(B));
      // acts (L + 1 rows), pre (L), dout, din and dpre: (2L + 4) rows of W floats per sample.
      EXPECT_EQ(mlp.activation_bytes(B), 4ull * B * W * (2ull * L + 4));
    }
  }
}

TEST(PlanMlp, NamesAndLimits) {
  for (const std::string bad : {"mlpL0W8", "mlpL8W", "mlpLW8", "mlpL8W8x"}) {
    try {
      find_model(bad);
      FAIL() << bad << " accepted";
    } catch (const mics::Error& e) {
      EXPECT_EQ(e.context().layer, "plan") << bad;
    }
  }
  RunSpec s;
  s.model = find_model("mlpL4W32");
  s.cluster = find_cluster("host");
  s.world = 4;
  s.seq_len = 64;  // the MLP has no sequence
  EXPECT_THROW(simulate(s, CostParams{}), mics::Error);
  s.seq_len = 0;
  s.recompute = true;
  EXPECT_THROW(simulate(s, CostParams{}), mics::Error);
}

// The engine bench's micro-step: every layer gathered twice and reduce-scattered once, in the
// timeline's rules; the first forward of a micro-step and the first backward gathered only once
// the previous op (which used and released that layer) is done.
TEST(PlanMlp, TimelineFollowsTheEngineBench) {
  const int L = 4, S = 3;
  for (auto strategy : {mics::topo::Strategy::kDdp, mics::topo::Strategy::kZero3, mics::topo::Strategy::kMics}) {
    for (int depth : {0, 1, 2}) {
      RunSpec s;
      s.model = find_model(fmt::format("mlpL{}W64", L));
      s.cluster = find_cluster("host");
      s.cluster.gpus_per_node = 2;
      s.cluster.host_cores = 4;  // a core per rank: the prefetch is modelled (CPU-bound: PlanSimulator.CpuBoundHostOverlapsNothing)
      s.world = 4;
      s.strategy = strategy;
      s.partition_size = 2;
      s.grad_accum = S;
      s.micro_batch = 4;
      s.prefetch_depth = depth;
      s.flat_zero3_gather = false;
      CostParams q;
      q.host_hop_s = 2e-3;
      q.compute_efficiency = 1e-4;  // ops of ~10 ms against ~2 ms collectives: prefetches start at once
      const auto pr = simulate(s, q);
      const std::string label = fmt::format("{} depth {}", mics::topo::to_string(strategy), depth);
      expect_timeline_rules(pr, label);
      int gathers = 0, scatters = 0, all_reduces = 0;
      for (const auto& e : pr.timeline) {
        gathers += e.what.rfind("all_gather", 0) == 0;
        scatters += e.what.rfind("reduce_scatter", 0) == 0;
        all_reduces += e.what.rfind("all_reduce", 0) == 0;
      }
      const bool sharded = pr.partition_size > 1;
      EXPECT_EQ(gathers, sharded ? 2 * L * S : 0) << label;
      EXPECT_EQ(scatters, sharded ? L * S : 0) << label;
      EXPECT_EQ(all_reduces, pr.replicas > 1 ? 1 : 0) << label;
      if (!sharded || depth == 0) continue;
      // Compute ops in order, gathers in order: the k-th gather is the k-th compute op's.
      std::vector<const Event*> compute, gather;
      for (const auto& e : pr.timeline) {
        if (e.stream == Stream::kCompute && e.what != "optimizer") compute.push_back(&e);
        if (e.what.rfind("all_gather", 0) == 0) gather.push_back(&e);
      }
      ASSERT_EQ(compute.size(), gather.size()) << label;
      for (size_t k = 1; k < compute.size(); ++k) {
        const bool first_fwd = compute[k]->what == "fwd layer.0";
        const bool first_bwd = compute[k]->what == fmt::format("bwd layer.{}", L - 1);
        if (first_fwd || first_bwd)
          EXPECT_GE(gather[k]->start + 1e-12, compute[k - 1]->end) << label << ": " << compute[k]->what;
        else
          EXPECT_LT(gather[k]->start, compute[k - 1]->end) << label << ": " << compute[k]->what << " not prefetched";
      }
    }
  }
}

// More ranks than cores: communication hides behind nothing; the step is the compute at the
// fair share of a core plus every collective.
TEST(PlanSimulator, CpuBoundHostOverlapsNothing) {
  for (auto strategy : {mics::topo::Strategy::kDdp, mics::topo::Strategy::kZero3, mics::topo::Strategy::kMics}) {
    RunSpec s;
    s.model = find_model("mlpL4W64");
    s.cluster = find_cluster("host");
    s.cluster.gpus_per_node = 2;
    s.cluster.host_cores = 2;
    s.world = 4;
    s.strategy = strategy;
    s.partition_size = 2;
    s.grad_accum = 3;
    s.micro_batch = 4;
    s.prefetch_depth = 2;
    CostParams q;
    q.host_hop_s = 2e-3;
    q.compute_efficiency = 1e-4;
    const auto pr = simulate(s, q);
    const std::string label = mics::topo::to_string(strategy);
    expect_timeline_rules(pr, label);
    EXPECT_DOUBLE_EQ(pr.core_share, 0.5) << label;
    EXPECT_NEAR(pr.step_s, pr.compute_s + pr.gather_busy_s + pr.reduce_busy_s, 1e-9 * pr.step_s) << label;
    // and no two events of the timeline overlap in time
    for (size_t i = 1; i < pr.timeline.size(); ++i) {
      for (size_t k = 0; k < i; ++k) {
        const auto &a = pr.timeline[k], &b = pr.timeline[i];
        EXPECT_TRUE(a.end <= b.start + 1e-12 || b.end <= a.start + 1e-12) << label << ": " << a.what << " / " << b.what;
      }
    }
  }
}

// A rail measured on this host's cores is scaled to the run's sharing of them (run sharing /
// measured sharing): measured with one rank per core it takes twice as long when two ranks
// share each core; measured at the run's own sharing it is taken as it is.
TEST(PlanSimulator, CpuRailsScaleToTheRunsCoreSharing) {
  RunSpec s;
  s.model = find_model("mlpL4W64");
  s.cluster = find_cluster("host");
  s.cluster.gpus_per_node = 2;
  s.cluster.host_cores = 2;
  s.world = 4;
  s.strategy = mics::topo::Strategy::kZero3;
  s.micro_batch = 4;
  CostParams q;
  q.compute_efficiency = 1e-4;
  RunSpec shared = s;
  shared.cluster.intra.measured_core_sharing = 2;
  shared.cluster.inter.measured_core_sharing = 2;
  const auto alone = simulate(s, q), same = simulate(shared, q);
  EXPECT_NEAR(alone.gather_busy_s, 2 * same.gather_busy_s, 1e-9 * alone.gather_busy_s);
  EXPECT_DOUBLE_EQ(alone.compute_s, same.compute_s);
  // With a core per rank (sharing 1) a rail measured at sharing 1 is taken as it is, one
  // measured at sharing 2 at half its time.
  RunSpec roomy = s, roomy_shared = shared;
  roomy.cluster.host_cores = roomy_shared.cluster.host_cores = 4;
  EXPECT_NEAR(simulate(roomy, q).gather_busy_s, alone.gather_busy_s / 2, 1e-9 * alone.gather_busy_s);
  EXPECT_NEAR(simulate(roomy_shared, q).gather_busy_s, same.gather_busy_s / 2, 1e-9 * same.gather_busy_s);
}

// --- memory against the engine -----------------------------------------------------------

struct Layout {
  int ranks, nodes;
  std::string strategy;
  int p;
  bool recompute;
};

TEST(PlanMemory, MatchesTheEngineExactly) {
  // Unit sizes that do not divide the world: unit 0 = 17388, a block = 48447 parameters.
  const std::string model = "L2H3C63V257T17";
  const ModelDesc desc = find_model(model);
  const Cluster host = find_cluster("host");
  for (const Layout& l : {Layout{4, 2, "mics", 2, false}, Layout{4, 2, "zero3", 4, true}, Layout{2, 1, "ddp", 1, false},
                          Layout{3, 1, "zero3", 3, false}}) {
    const std::string metrics = fmt::format("{}/mem-{}-{}-{}.jsonl", scratch(), l.ranks, l.nodes, l.strategy);
    const auto r = mics::testing::run_command(fmt::format(
        "MICS_TIMEOUT_S=60 MICS_DATA_DIR={}/data {} train -n {} --nodes {} --model {} --strategy {} {} --micro-batch 2 "
        "--seq-len 16 --steps 1 --samples 0 --eval-batches 1 {} --metrics {}",
        scratch(), MICS_BINARY, l.ranks, l.nodes, model, l.strategy,
        l.strategy == "mics" ? fmt::format("--partition-size {}", l.p) : "", l.recompute ? "--recompute" : "", metrics));
    ASSERT_EQ(r.status, 0) << r.output;
    const MeasuredRun run = read_run(metrics);
    ASSERT_EQ(run.partition_size, l.p);
    const MemoryPlan m = memory_plan(desc, host, l.ranks, l.p, 2, 16, l.recompute);
    EXPECT_EQ(m.model_states, run.model_state_bytes) << l.strategy << " p=" << l.p;
    EXPECT_EQ(m.activations, run.activation_bytes) << l.strategy;
    // The formula, spelled out: 16 bytes per parameter of the padded shard (unpadded at p = 1).
    const uint64_t N = static_cast<uint64_t>(l.ranks);
    const auto padded = [N](uint64_t x) { return (x + N - 1) / N * N; };
    const uint64_t expect = l.p == 1 ? 16 * (17388 + 2 * 48447) : 16 * (padded(17388) / l.p + 2 * (padded(48447) / l.p));
    EXPECT_EQ(m.model_states, expect);
  }
}

// The mesh planner's activations per rank and micro-batch against what real mesh runs keep
// (rank 0 = stage 0, tensor rank 0): tensor parallel with and without sequence parallelism,
// pipeline stages with and without the head, recompute.
TEST(PlanMemory, MeshActivationsMatchTheMeshTrainerExactly) {
  struct Mesh {
    int ranks, t, s;
    bool sp, recompute;
  };
  const std::string model = "L4H4C32V256T32";
  for (const Mesh& m : {Mesh{2, 2, 1, false, false}, Mesh{2, 2, 1, true, false}, Mesh{4, 2, 2, true, false},
                        Mesh{2, 1, 2, false, false}, Mesh{4, 2, 2, false, true}}) {
    const std::string label = fmt::format("t={} s={}{}{}", m.t, m.s, m.sp ? " sp" : "", m.recompute ? " recompute" : "");
    const std::string metrics = fmt::format("{}/mesh-act-{}-{}-{}-{}.jsonl", scratch(), m.t, m.s, m.sp, m.recompute);
    const auto r = mics::testing::run_command(fmt::format(
        "MICS_TIMEOUT_S=60 MICS_DATA_DIR={}/data {} train -n {} --model {} --tensor-parallel {} --pipeline-parallel {} {} {} "
        "--micro-batch 2 --seq-len 16 --grad-accum 2 --steps 1 --samples 0 --eval-batches 1 --metrics {}",
        scratch(), MICS_BINARY, m.ranks, model, m.t, m.s, m.sp ? "--sequence-parallel" : "", m.recompute ? "--recompute" : "",
        metrics));
    ASSERT_EQ(r.status, 0) << label << "\n" << r.output;
    nlohmann::json mesh;
    std::ifstream in(metrics);
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j.value("event", "") == "summary") mesh = j.at("mesh");
    }
    ASSERT_FALSE(mesh.is_null()) << label;
    const double per_micro_batch =
        mesh.at("activation_bytes").get<double>() / mesh.at("micro_batches_in_flight").get<double>();
    MeshSpec spec;
    spec.model = find_model(model);
    spec.cluster = find_cluster("host");
    spec.micro_batch = 2;
    spec.seq_len = 16;
    spec.recompute = m.recompute;
    EXPECT_EQ(mesh_activation_bytes(spec, m.t, m.s, m.sp), per_micro_batch) << label;
    if (m.t > 1 && !m.recompute) {  // sequence parallelism keeps less
      EXPECT_LT(mesh_activation_bytes(spec, m.t, m.s, true), mesh_activation_bytes(spec, m.t, m.s, false)) << label;
    }
  }
}

// A real `mics engine-bench --json` run on 2 emulated nodes: --calibrate reads its layout, one
// run per strategy, and the memory plan of the MLP equals the engine's own (widths that do not
// divide the world: the shards are padded).
TEST(PlanMemory, MatchesTheEngineBenchExactly) {
  const std::string file = scratch() + "/engine-bench.json";
  const auto r = mics::testing::run_command(fmt::format(
      "MICS_TIMEOUT_S=60 {} launch -n 4 --nodes 2 -- {} engine-bench --strategies ddp,zero3,mics:2 --layers 3 "
      "--width 7 --batch 2 --accum 2 --steps 2 --json {}",
      MICS_BINARY, MICS_BINARY, file));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto runs = read_runs(file);
  ASSERT_EQ(runs.size(), 3u);
  const Cluster host = find_cluster("host");
  const ModelDesc desc = find_model("mlpL3W7");
  const std::map<std::string, int> p_of = {{"ddp", 1}, {"zero3", 4}, {"mics", 2}};
  for (const MeasuredRun& run : runs) {
    EXPECT_EQ(run.kind, "engine-bench");
    EXPECT_EQ(run.model, "mlpL3W7");
    EXPECT_EQ(run.world, 4);
    EXPECT_EQ(run.nodes, 2);
    EXPECT_EQ(run.grad_accum, 2);
    EXPECT_EQ(run.micro_batch, 2);
    EXPECT_EQ(run.seq_len, 1);
    EXPECT_EQ(run.compute_threads, 1);
    EXPECT_EQ(run.ranks_on_host, 4);
    EXPECT_GT(run.step_s, 0);
    EXPECT_EQ(run.partition_size, p_of.at(run.strategy)) << run.path;
    const MemoryPlan m = memory_plan(desc, host, 4, run.partition_size, 2, 1, false);
    EXPECT_EQ(m.model_states, run.model_state_bytes) << run.path;
    EXPECT_EQ(m.activations, run.activation_bytes) << run.path;
    // 16 bytes per parameter of the shard: 56 per layer, padded to 56 (a multiple of 4) here,
    // unpadded and whole for ddp.
    EXPECT_EQ(m.model_states, 16ull * 3 * 56 / static_cast<uint64_t>(run.partition_size)) << run.path;
    const StepPrediction pr = simulate(run_spec(run, host), CostParams{});  // the layout is valid
    EXPECT_EQ(pr.partition_size, run.partition_size);
  }
  // Several strategies: --calibrate needs one, and the error lists them.
  try {
    read_run(file);
    FAIL() << "a three-strategy file accepted for --calibrate";
  } catch (const mics::Error& e) {
    EXPECT_NE(std::string(e.what()).find(file + "#mics:2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_run(file + "#zero3").partition_size, 4);
  EXPECT_THROW(read_run(file + "#mics:3"), mics::Error);
  const auto cli = mics::testing::run_command(
      fmt::format("{} plan --calibrate {}#mics:2 --check {} --json", MICS_BINARY, file, file));
  ASSERT_EQ(cli.status, 0) << cli.output;
  EXPECT_EQ(nlohmann::json::parse(cli.output)["checks"].size(), 3u) << cli.output;
}

TEST(PlanMemory, AutoPicksTheSmallestPartitionThatFits) {
  const auto c = choose_partition_size(find_model("100b"), find_cluster("p4d.24xlarge"), 512, 1, 2048, true);
  ASSERT_GT(c.partition_size, 0);
  EXPECT_LE(c.memory.total(), memory_budget(find_cluster("p4d.24xlarge")));
  for (int p : mics::topo::valid_partition_sizes(512, 8)) {
    if (p < c.partition_size) {
      EXPECT_GT(memory_plan(find_model("100b"), find_cluster("p4d.24xlarge"), 512, p, 1, 2048, true).total(),
                memory_budget(find_cluster("p4d.24xlarge")));
    }
  }
  // GPU accounting: 16 bytes per parameter of the shard.
  const auto m = memory_plan(find_model("1.3b"), find_cluster("p4d.24xlarge"), 8, 8, 1, 2048, false);
  uint64_t shard = 0;
  for (uint64_t u : find_model("1.3b").unit_sizes()) shard += (u + 7) / 8 * 8 / 8;
  EXPECT_EQ(m.model_states, 16 * shard);
}

// --- published anchors -------------------------------------------------------------------

TEST(PlanAnchors, PredictionsWithinFifteenPercent) {
  const auto families = validate_anchors();
  ASSERT_EQ(families.size(), 2u);
  for (const auto& f : families) {
    int fitted = 0, predicted = 0;
    for (const auto& r : f.rows) {
      if (r.fitted) {
        ++fitted;
        EXPECT_NEAR(r.error(), 0.0, 0.005) << f.name << " " << r.point;
      } else {
        ++predicted;
        EXPECT_LE(std::abs(r.error()), 0.15) << f.name << " " << r.point << ": " << r.predicted << " vs " << r.published;
      }
    }
    EXPECT_GE(predicted, 1) << f.name;
    EXPECT_GE(fitted, 1) << f.name;
  }
  // ZeRO-3: one point fitted.
  int zero3_fitted = 0;
  for (const auto& r : families[0].rows) zero3_fitted += r.fitted;
  EXPECT_EQ(zero3_fitted, 1);
}

// --- calibration ----------------------------------------------------------------------------

void write_run(const std::string& dir, const StepPrediction& pr, const std::string& model) {
  fs::create_directories(dir);
  std::ofstream out(dir + "/metrics.jsonl");
  for (int step = 1; step <= 5; ++step)
    out << nlohmann::json{{"event", "step"}, {"step", step}, {"step_ms", pr.step_s * 1e3 * (step == 1 ? 3 : 1)},
                          {"comm_exposed_ms", pr.exposed_comm_s * 1e3}, {"skipped", false}}
               .dump()
        << "\n";
  const auto& s = pr.spec;
  out << nlohmann::json{{"event", "summary"}, {"model", model}, {"strategy", mics::topo::to_string(s.strategy)},
                        {"world_size", s.world}, {"nodes", s.world / s.cluster.gpus_per_node},
                        {"partition_size", pr.partition_size}, {"grad_accum", s.grad_accum},
                        {"micro_batch", s.micro_batch}, {"seq_len", s.seq_len}, {"steps", 5}, {"recompute", false},
                        {"host_cores", 2}, {"ranks_on_host", 4}, {"compute_threads", 1}}
             .dump()
      << "\n";
}

TEST(PlanCalibrate, RecoversTheParametersOfASyntheticRun) {
  Cluster host = find_cluster("host");
  host.gpus_per_node = 2;
  host.host_cores = 2;  // as the run records: 4 ranks on 2 cores, not this machine's count
  CostParams truth;
  truth.compute_efficiency = 0.07;
  truth.host_hop_s = 4e-3;  // a hop's wait for a core
  const auto spec_of = [&](mics::topo::Strategy st, int p, int accum) {
    RunSpec s;
    s.model = find_model("L4H4C128V256T64");
    s.cluster = host;
    s.world = 4;
    s.strategy = st;
    s.partition_size = p;
    s.grad_accum = accum;
    s.micro_batch = 4;
    s.seq_len = 64;
    s.flat_zero3_gather = false;
    return s;
  };
  const auto a = simulate(spec_of(mics::topo::Strategy::kMics, 2, 2), truth);
  const auto b = simulate(spec_of(mics::topo::Strategy::kZero3, 4, 4), truth);
  write_run(scratch() + "/cal-a", a, "L4H4C128V256T64");
  write_run(scratch() + "/cal-b", b, "L4H4C128V256T64");
  const MeasuredRun ra = read_run(scratch() + "/cal-a");
  EXPECT_NEAR(ra.step_s, a.step_s, 1e-9);  // the first (slow) step is left out
  EXPECT_EQ(ra.host_cores, 2);
  EXPECT_EQ(ra.ranks_on_host, 4);
  // 4 ranks on 2 cores: CPU-bound, the step is compute at half a core plus all communication;
  // only the compute rate is fitted (to the step), the hop cost is the rails' (here the prior's).
  EXPECT_DOUBLE_EQ(a.core_share, 0.5);
  EXPECT_NEAR(a.step_s, a.compute_s + a.gather_busy_s + a.reduce_busy_s, 1e-9 * a.step_s);
  CostParams prior;
  prior.host_hop_s = truth.host_hop_s;
  const Calibration cal = calibrate(ra, find_cluster("host"), prior, true);
  EXPECT_NEAR(cal.params.compute_efficiency, truth.compute_efficiency, 1e-3 * truth.compute_efficiency);
  EXPECT_EQ(cal.params.host_hop_s, truth.host_hop_s);  // not fitted on a CPU-bound host
  EXPECT_EQ(cal.params.latency_scale, 1.0);
  const auto pb = simulate(run_spec(read_run(scratch() + "/cal-b"), find_cluster("host")), cal.params);
  EXPECT_NEAR(pb.step_s, b.step_s, 1e-3 * b.step_s);
  // With cores for every rank the split is the simulator's: compute from step - exposed, the
  // hop wait fitted to the exposed time.
  Cluster roomy = host;
  roomy.host_cores = 4;
  RunSpec spec4 = spec_of(mics::topo::Strategy::kMics, 2, 2);
  spec4.cluster = roomy;
  spec4.ranks_on_host = 4;
  const auto free4 = simulate(spec4, truth);
  ASSERT_DOUBLE_EQ(free4.core_share, 1.0);
  ASSERT_GT(free4.exposed_comm_s, 0);
  write_run(scratch() + "/cal-c", free4, "L4H4C128V256T64");
  MeasuredRun rc = read_run(scratch() + "/cal-c");
  rc.host_cores = 4;
  const Calibration cal4 = calibrate(rc, roomy, CostParams{}, true);
  EXPECT_NEAR(cal4.params.compute_efficiency, truth.compute_efficiency, 1e-3 * truth.compute_efficiency);
  EXPECT_NEAR(cal4.params.host_hop_s, truth.host_hop_s, 1e-3 * truth.host_hop_s);
}

// A synthetic `mics engine-bench --json` file: the predictions' step and exposed times as every
// timed step's, one result per prediction (one S and B per file, as the bench runs them).
void write_engine_bench(const std::string& file, const std::vector<StepPrediction>& prs) {
  const RunSpec& s = prs.front().spec;
  const ModelDesc& d = s.model;
  nlohmann::json j = {{"kind", "mics engine-bench"}, {"model", d.name}, {"layers", d.mlp_layers},
                      {"width", d.mlp_width}, {"accum", s.grad_accum}, {"grad_accum", s.grad_accum},
                      {"micro_batch", s.micro_batch}, {"steps", 5}, {"world_size", s.world},
                      {"nodes", s.world / s.cluster.gpus_per_node}, {"ranks_per_node", s.cluster.gpus_per_node},
                      {"host_cores", s.cluster.host_cores}, {"ranks_on_host", s.world}, {"compute_threads", 1},
                      {"params", d.params()},
                      {"flops_per_sample", d.flops_per_token(1)},
                      {"activation_bytes", d.engine_activation_bytes(s.micro_batch, 1, false)}};
  for (const auto& pr : prs) {
    const std::string name = pr.spec.strategy == mics::topo::Strategy::kMics
                                 ? fmt::format("mics:{}", pr.partition_size)
                                 : mics::topo::to_string(pr.spec.strategy);
    // Steps around the prediction: the median is the prediction itself.
    const double ms = pr.step_s * 1e3, ex = pr.exposed_comm_s * 1e3;
    j["results"].push_back({{"strategy", name}, {"p", pr.partition_size}, {"step_s", pr.step_s},
                            {"exposed_s", pr.exposed_comm_s},
                            {"step_ms", {ms * 1.3, ms, ms * 0.9, ms, ms * 1.1}},
                            {"exposed_ms", {ex * 1.5, ex, ex, ex * 0.8, ex * 1.2}}});
  }
  std::ofstream(file) << j.dump(2) << "\n";
}

TEST(PlanCalibrate, RecoversTheParametersOfAnEngineBenchRun) {
  Cluster host = find_cluster("host");
  host.gpus_per_node = 2;
  host.host_cores = 2;  // 4 ranks on 2 cores: each computes at half a core
  CostParams truth;
  truth.compute_efficiency = 0.004;  // the MLP's plain loops on a shared core
  truth.host_hop_s = 3e-3;
  const auto spec_of = [&](mics::topo::Strategy st, int p, int accum, int batch) {
    RunSpec s;
    s.model = find_model("mlpL8W256");
    s.cluster = host;
    s.world = 4;
    s.strategy = st;
    s.partition_size = p;
    s.grad_accum = accum;
    s.micro_batch = batch;
    s.flat_zero3_gather = false;
    return s;
  };
  const auto mics2 = simulate(spec_of(mics::topo::Strategy::kMics, 2, 2, 8), truth);
  const auto ddp = simulate(spec_of(mics::topo::Strategy::kDdp, 1, 2, 8), truth);
  const auto zero3 = simulate(spec_of(mics::topo::Strategy::kZero3, 4, 4, 4), truth);
  ASSERT_GT(mics2.exposed_comm_s, 0);
  EXPECT_DOUBLE_EQ(mics2.core_share, 0.5);
  // CPU-bound: nothing of the communication hides behind compute.
  for (const auto* pr : {&mics2, &ddp, &zero3})
    EXPECT_NEAR(pr->step_s, pr->compute_s + pr->gather_busy_s + pr->reduce_busy_s, 1e-9 * pr->step_s);
  const std::string a = scratch() + "/bench-a.json", b = scratch() + "/bench-b.json",
                    c = scratch() + "/bench-c.json";
  write_engine_bench(a, {mics2});
  write_engine_bench(b, {zero3});
  write_engine_bench(c, {ddp});
  const MeasuredRun ra = read_run(a);
  EXPECT_EQ(ra.kind, "engine-bench");
  EXPECT_EQ(ra.strategy, "mics");
  EXPECT_EQ(ra.partition_size, 2);
  EXPECT_NEAR(ra.step_s, mics2.step_s, 1e-9);
  CostParams prior;
  prior.host_hop_s = truth.host_hop_s;  // the rails' cost, as measured
  for (const std::string& fit : {a, b, c}) {
    const Calibration cal = calibrate(read_run(fit), find_cluster("host"), prior, true);
    EXPECT_NEAR(cal.params.compute_efficiency, truth.compute_efficiency, 1e-3 * truth.compute_efficiency) << fit;
    EXPECT_EQ(cal.params.host_hop_s, truth.host_hop_s) << fit;
    // The other layouts, from the fitted parameters: another strategy, S and B.
    for (const auto& [other, truth_step] :
         std::vector<std::pair<std::string, double>>{{a, mics2.step_s}, {b, zero3.step_s}, {c, ddp.step_s}}) {
      const auto pr = simulate(run_spec(read_run(other), find_cluster("host")), cal.params);
      EXPECT_NEAR(pr.step_s, truth_step, 1e-3 * truth_step) << fit << " -> " << other;
    }
  }
  // Without oversubscription the engine's split is the simulator's: the hop is fitted to the
  // exposed time and the compute at a whole core.
  Cluster roomy = host;
  roomy.host_cores = 4;
  const auto spec = spec_of(mics::topo::Strategy::kMics, 2, 2, 8);
  RunSpec spec4 = spec;
  spec4.cluster = roomy;
  const auto free4 = simulate(spec4, truth);
  EXPECT_DOUBLE_EQ(free4.core_share, 1.0);
  EXPECT_NEAR(free4.compute_s * 2, mics2.compute_s, 1e-9 * mics2.compute_s);  // half a core: twice the time
  write_engine_bench(scratch() + "/bench-d.json", {free4});
  const Calibration cal4 = calibrate(read_run(scratch() + "/bench-d.json"), roomy, CostParams{}, true);
  EXPECT_NEAR(cal4.params.compute_efficiency, truth.compute_efficiency, 1e-3 * truth.compute_efficiency);
  EXPECT_NEAR(cal4.params.host_hop_s, truth.host_hop_s, 1e-3 * truth.host_hop_s);
}

TEST(PlanCalibrate, BadRunsAreNamed) {
  fs::create_directories(scratch() + "/empty");
  std::ofstream(scratch() + "/empty/metrics.jsonl") << "{\"event\":\"step\",\"step_ms\":3}\n";
  try {
    read_run(scratch() + "/empty");
    FAIL() << "no summary accepted";
  } catch (const mics::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no summary"), std::string::npos) << e.what();
    EXPECT_EQ(e.context().layer, "plan");
  }
  EXPECT_THROW(read_run(scratch() + "/missing"), mics::Error);
  // Files of other kinds, an engine bench from before it recorded its layout, and an MLP whose
  // counts are not the plan's: each named.
  const auto expect_error = [](const std::string& path, const std::string& words) {
    try {
      read_runs(path);
      FAIL() << path << " accepted";
    } catch (const mics::Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
      EXPECT_EQ(e.context().layer, "plan");
    }
  };
  std::ofstream(scratch() + "/other.json") << "{\"foo\": 1}\n";
  expect_error(scratch() + "/other.json", "neither");
  std::ofstream(scratch() + "/text.txt") << "size count type\n";
  expect_error(scratch() + "/text.txt", "neither");
  std::ofstream(scratch() + "/old-bench.json") << R"({"layers": 2, "width": 8, "accum": 1, "results": []})" << "\n";
  expect_error(scratch() + "/old-bench.json", "world_size");
  nlohmann::json wrong = {{"kind", "mics engine-bench"}, {"model", "mlpL2W8"}, {"world_size", 2}, {"nodes", 1},
                          {"grad_accum", 1}, {"micro_batch", 1}, {"steps", 1}, {"params", 145},
                          {"flops_per_sample", 100.0},
                          {"results", {{{"strategy", "ddp"}, {"p", 1}, {"step_ms", {1.0}}, {"exposed_ms", {0.0}}}}}};
  std::ofstream(scratch() + "/wrong-bench.json") << wrong.dump() << "\n";
  expect_error(scratch() + "/wrong-bench.json", "disagree");
  wrong["params"] = 144;
  wrong["flops_per_sample"] = find_model("mlpL2W8").flops_per_token(1);
  std::ofstream(scratch() + "/right-bench.json") << wrong.dump() << "\n";
  EXPECT_EQ(read_runs(scratch() + "/right-bench.json").size(), 1u);
  EXPECT_THROW(read_runs(scratch() + "/right-bench.json", 1.5), mics::Error);
}

TEST(PlanCalibrate, StepQuantilePicksTheStepTime) {
  // Steps 40, 10, 30, 20, 50 ms (the engine bench's warm-up already left out): median 30,
  // fastest 10, 0.25 quantile 20, 0.1 quantile 14 (interpolated between 10 and 20).
  nlohmann::json bench = {{"kind", "mics engine-bench"},
                          {"model", "mlpL2W8"},
                          {"world_size", 2},
                          {"nodes", 1},
                          {"grad_accum", 1},
                          {"micro_batch", 1},
                          {"steps", 5},
                          {"params", 144},
                          {"flops_per_sample", find_model("mlpL2W8").flops_per_token(1)},
                          {"results",
                           {{{"strategy", "ddp"},
                             {"p", 1},
                             {"step_ms", {40.0, 10.0, 30.0, 20.0, 50.0}},
                             {"exposed_ms", {4.0, 1.0, 3.0, 2.0, 5.0}}}}}};
  const std::string file = scratch() + "/quantile-bench.json";
  std::ofstream(file) << bench.dump() << "\n";
  EXPECT_NEAR(read_run(file).step_s, 30e-3, 1e-12);
  EXPECT_NEAR(read_run(file, 0).step_s, 10e-3, 1e-12);
  EXPECT_NEAR(read_run(file, 0.25).step_s, 20e-3, 1e-12);
  EXPECT_NEAR(read_run(file, 0.25).exposed_comm_s, 2e-3, 1e-12);
  EXPECT_NEAR(read_run(file, 0.1).step_s, 14e-3, 1e-12);
  EXPECT_NEAR(read_run(file, 1).step_s, 50e-3, 1e-12);
  // A train run: the first step is left out before the quantile is taken.
  std::ofstream(scratch() + "/quantile-train.jsonl")
      << R"({"event":"step","step_ms":500,"comm_exposed_ms":0})"
      << "\n"
      << R"({"event":"step","step_ms":30,"comm_exposed_ms":0})"
      << "\n"
      << R"({"event":"step","step_ms":10,"comm_exposed_ms":0})"
      << "\n"
      << R"({"event":"step","step_ms":20,"comm_exposed_ms":0})"
      << "\n"
      << R"({"event":"summary","model":"L4H4C128V256T64","strategy":"ddp","world_size":2,"nodes":1,)"
      << R"("partition_size":1,"grad_accum":1,"micro_batch":4,"seq_len":64,"steps":4})"
      << "\n";
  EXPECT_NEAR(read_run(scratch() + "/quantile-train.jsonl").step_s, 20e-3, 1e-12);
  EXPECT_NEAR(read_run(scratch() + "/quantile-train.jsonl", 0).step_s, 10e-3, 1e-12);
  EXPECT_EQ(step_statistic(0.5), "median");
  EXPECT_EQ(step_statistic(0.25), "0.25 quantile");
}

// --- errors ---------------------------------------------------------------------------------

TEST(PlanErrors, UnknownNamesListTheValidOnes) {
  try {
    find_cluster("p9.huge");
    FAIL();
  } catch (const mics::Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("p4d.24xlarge"), std::string::npos) << w;
    EXPECT_NE(w.find("trn1.32xlarge"), std::string::npos) << w;
    EXPECT_EQ(e.context().layer, "plan");
  }
  try {
    find_model("gpt5");
    FAIL();
  } catch (const mics::Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("100b"), std::string::npos) << w;
    EXPECT_NE(w.find("gpt2-124m"), std::string::npos) << w;
  }
  RunSpec s;
  s.model = find_model("1.3b");
  s.cluster = find_cluster("p4d.24xlarge");
  s.world = 12;  // not whole nodes
  EXPECT_THROW(simulate(s, CostParams{}), mics::Error);
  s.world = 32;
  s.partition_size = 12;  // not a valid p
  EXPECT_THROW(simulate(s, CostParams{}), mics::Error);
}

// --- the CLI --------------------------------------------------------------------------------

TEST(PlanCli, PlanSweepAndJson) {
  auto r = mics::testing::run_command(fmt::format("{} plan --model 100b --cluster p4d.24xlarge --gpus 512 --recompute",
                                                  MICS_BINARY));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("chosen"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("zero3"), std::string::npos) << r.output;
  const std::string svg = scratch() + "/sweep.svg";
  r = mics::testing::run_command(
      fmt::format("{} plan --model 13b --cluster p5.48xlarge --sweep-gpus 16..4096 --svg {}", MICS_BINARY, svg));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(svg));
  r = mics::testing::run_command(fmt::format("{} plan --model 6.7b --gpus 64 --json", MICS_BINARY));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["strategies"].size(), 3u);
  r = mics::testing::run_command(fmt::format("{} plan --cluster nowhere", MICS_BINARY));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("p5.48xlarge"), std::string::npos) << r.output;
}

}  // namespace

// --- the mesh planner (plan/mesh_plan.hpp) ----------------------------------------------------

namespace mesh_plan {

using namespace mics::plan;

MeshSpec spec_100b(int gpus) {
  MeshSpec s;
  s.model = find_model("100b");
  s.cluster = find_cluster("p4d.24xlarge");
  s.gpus = gpus;
  s.micro_batch = 1;
  s.grad_accum = 8;
  s.seq_len = 2048;
  return s;
}

TEST(PlanMesh, ClosedForms) {
  const MeshSpec spec = spec_100b(512);
  const CostParams q;
  const int t = 4, s = 8, p = 4;  // D = 16 data ranks, r = 4
  const int S = 8 * t * s;        // the pure layout's global batch: D ranks run t*s x the micro-batches
  const MeshPrediction m = predict_mesh(spec, q, t, s, p);
  EXPECT_EQ(m.layout.r, 4);
  const CollectiveModel cm(spec.cluster, q, spec.gpus);
  const double act = 1.0 * 2048 * 10240 * 2;  // B*T*C bf16
  const double L_s = 80.0 / s;
  EXPECT_DOUBLE_EQ(m.tensor_s, S * 4 * L_s * ring_time(Collective::kAllReduce, t, act, cm.intra()));
  // Stage neighbours are t*p = 16 ranks apart: on another node.
  EXPECT_DOUBLE_EQ(m.pipeline_p2p_s, S * 2 * (cm.inter().latency + act / cm.inter().bandwidth));
  EXPECT_DOUBLE_EQ(m.bubble_fraction, (s - 1.0) / (S + s - 1.0));
  const double u = (m.compute_s + m.tensor_s + m.pipeline_p2p_s) / S;
  EXPECT_NEAR(m.bubble_s, (s - 1) * u, 1e-12);
  EXPECT_NEAR(m.step_s, (S + s - 1) * u + m.data_exposed_s + m.optimizer_s, 1e-12);
  // Model states divided by t*s and p.
  EXPECT_NEAR(static_cast<double>(m.memory.model_states), 16.0 * static_cast<double>(spec.model.params()) / (t * s * p), 16.0);
  // t = s = 1: no tensor, pipeline or bubble time.
  const MeshPrediction flat = predict_mesh(spec, q, 1, 1, 64);
  EXPECT_EQ(flat.tensor_s, 0.0);
  EXPECT_EQ(flat.pipeline_p2p_s, 0.0);
  EXPECT_EQ(flat.bubble_s, 0.0);
}

// The CPU engine on a host with fewer cores than ranks: fair-share compute, every data
// collective exposed, no bubble (an idle stage's cores serve the others).
TEST(PlanMesh, CpuBoundHostClosedForms) {
  MeshSpec spec;
  spec.model = find_model("L4H4C128V256T64");
  spec.cluster = find_cluster("host");
  spec.cluster.gpus_per_node = 4;
  spec.cluster.host_cores = 2;
  spec.gpus = 8;
  spec.micro_batch = 2;
  spec.seq_len = 64;
  CostParams q;
  q.compute_efficiency = 0.1;
  const MeshPrediction m = predict_mesh(spec, q, 2, 2, 2);
  Cluster roomy = spec.cluster;
  roomy.host_cores = 8;
  MeshSpec free_spec = spec;
  free_spec.cluster = roomy;
  const MeshPrediction f = predict_mesh(free_spec, q, 2, 2, 2);
  EXPECT_NEAR(m.compute_s, 4 * f.compute_s, 1e-12 * m.compute_s);  // 2 cores for 8 ranks: a quarter each
  EXPECT_EQ(m.bubble_s, 0.0);
  EXPECT_GT(f.bubble_s, 0.0);
  EXPECT_GT(m.bubble_fraction, 0.0);  // still reported
  EXPECT_NEAR(m.step_s, m.compute_s + m.tensor_s + m.pipeline_p2p_s + m.data_exposed_s + m.optimizer_s, 1e-12);
}

TEST(PlanMesh, Constraints) {
  const MeshSpec spec = spec_100b(512);
  EXPECT_EQ(mesh_invalid(spec, 8, 4, 2), "");
  EXPECT_NE(mesh_invalid(spec, 3, 1, 8).find("does not divide the 80 heads"), std::string::npos);
  EXPECT_NE(mesh_invalid(spec, 16, 1, 8).find("ranks per node"), std::string::npos);  // t at most one node
  EXPECT_NE(mesh_invalid(spec, 1, 81, 1).find("more than the 80 layers"), std::string::npos);
  EXPECT_NE(mesh_invalid(spec, 1, 3, 1).find("does not divide N=512"), std::string::npos);
  EXPECT_NE(mesh_invalid(spec, 2, 1, 3).find("not a valid partition"), std::string::npos);
}

TEST(PlanMesh, SearchReturnsAFittingLayout) {
  const MeshSpec spec = spec_100b(512);
  const MeshSearch found = search_mesh(spec, CostParams{});
  ASSERT_TRUE(found.best.fits);
  const MeshLayout& l = found.best.layout;
  EXPECT_EQ(mesh_invalid(spec, l.t, l.s, l.p), "") << l.describe();
  EXPECT_EQ(l.t * l.s * l.p * l.r, 512);
  EXPECT_LE(found.best.memory.total(), memory_budget(spec.cluster));
  EXPECT_GT(found.layouts_tried, found.layouts_fit);
  EXPECT_GT(found.layouts_fit, 0);
  EXPECT_EQ(found.pure_mics.layout.t, 1);
  EXPECT_EQ(found.pure_mics.layout.s, 1);
  if (found.pure_mics.fits) {
    EXPECT_LE(found.best.step_s, found.pure_mics.step_s);
  }
  // Every layout that fits is no faster than the winner.
  for (int t : {1, 2, 4, 8})
    for (int s : {1, 2, 4, 8, 16})
      for (int p = 1; p <= 512 / (t * s); p *= 2) {
        if (!mesh_invalid(spec, t, s, p).empty()) continue;
        const MeshPrediction m = predict_mesh(spec, CostParams{}, t, s, p);
        if (m.fits) {
          EXPECT_GE(m.step_s, found.best.step_s) << m.layout.describe();
        }
      }
}

}  // namespace mesh_plan
