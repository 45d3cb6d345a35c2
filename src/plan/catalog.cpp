// The cluster catalog. Figures are nominal (vendor pages), one direction, in bytes/s.
#include "plan/catalog.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "base/strings.hpp"

namespace mics::plan {

namespace {

constexpr double kGB = 1e9;
constexpr double kGbps = 1e9 / 8;
constexpr double kUs = 1e-6;
constexpr double kTflops = 1e12;
constexpr double kGiB = 1024.0 * 1024 * 1024;

Error plan_error(const std::string& message, const std::string& where, const std::string& hint) {
  return Error(ErrorKind::kInvalidArgument, message, {.layer = "plan", .where = where, .hint = hint});
}

}  // namespace

const std::vector<Cluster>& catalog() {
  // Latencies are per ring hop as NCCL reaches them (a few microseconds over NVLink, ~20 us
  // over EFA's SRD; NCCL's own tuning tables use similar base latencies); they matter only for
  // small messages and long rings.
  static const std::vector<Cluster> table = {
      // p3dn.24xlarge: 8x V100-SXM2 32 GB (125 TFLOPS fp16 tensor cores, 900 GB/s HBM2),
      // NVLink 2 hybrid cube mesh (6 links x 25 GB/s per direction = 150 GB/s per GPU),
      // 100 Gbps networking (https://aws.amazon.com/ec2/instance-types/p3/).
      {"p3dn.24xlarge", "8x V100-32GB, NVLink 2, 100 Gbps EFA", 8, 125 * kTflops, 32 * kGiB, 900 * kGB,
       Rail{150 * kGB, 5 * kUs}, Rail{100 * kGbps, 25 * kUs}, false, 0},
      // p4d.24xlarge: 8x A100-SXM4 40 GB (312 TFLOPS dense bf16, 1555 GB/s HBM2), NVSwitch
      // 600 GB/s per GPU (300 GB/s per direction), 4x100 Gbps EFA
      // (https://aws.amazon.com/ec2/instance-types/p4/, NVIDIA A100 datasheet).
      {"p4d.24xlarge", "8x A100-40GB, NVSwitch 600 GB/s, 400 Gbps EFA", 8, 312 * kTflops, 40 * kGiB, 1555 * kGB,
       Rail{300 * kGB, 4 * kUs}, Rail{400 * kGbps, 20 * kUs}, false, 0},
      // p4de.24xlarge: as p4d with A100-SXM4 80 GB (2039 GB/s HBM2e) (same AWS page).
      {"p4de.24xlarge", "8x A100-80GB, NVSwitch 600 GB/s, 400 Gbps EFA", 8, 312 * kTflops, 80 * kGiB, 2039 * kGB,
       Rail{300 * kGB, 4 * kUs}, Rail{400 * kGbps, 20 * kUs}, false, 0},
      // p5.48xlarge: 8x H100-SXM5 80 GB (989 TFLOPS dense bf16, 3350 GB/s HBM3), NVLink 4
      // 900 GB/s per GPU (450 per direction), 3200 Gbps EFA v2
      // (https://aws.amazon.com/ec2/instance-types/p5/, NVIDIA H100 datasheet).
      {"p5.48xlarge", "8x H100-80GB, NVLink 900 GB/s, 3200 Gbps EFA", 8, 989 * kTflops, 80 * kGiB, 3350 * kGB,
       Rail{450 * kGB, 3 * kUs}, Rail{3200 * kGbps, 15 * kUs}, false, 0},
      // trn1.32xlarge: 16 Trainium chips, 32 GB HBM each (820 GB/s), 190 TFLOPS bf16 per chip,
      // NeuronLink-v2 ring (384 GB/s per chip, taken as 192 per direction), 800 Gbps EFA
      // (https://aws.amazon.com/ec2/instance-types/trn1/, AWS Neuron docs "Trainium").
      {"trn1.32xlarge", "16x Trainium-32GB, NeuronLink-v2, 800 Gbps EFA", 16, 190 * kTflops, 32 * kGiB, 820 * kGB,
       Rail{192 * kGB, 5 * kUs}, Rail{800 * kGbps, 20 * kUs}, false, 0},
      // The FSDP2 anchor's machines (shared/anchors/README.md: 2 nodes x 8 A100-80GB over
      // Ethernet, from NVIDIA/cosmos-framework#161): A100-80GB SXM nodes with NVSwitch and an
      // Ethernet link whose speed the source does not give; 100 Gbps assumed (calibrated).
      {"a100-80gb-ethernet", "8x A100-80GB, NVSwitch 600 GB/s, 100 Gbps Ethernet (assumed)", 8, 312 * kTflops,
       80 * kGiB, 2039 * kGB, Rail{300 * kGB, 4 * kUs}, Rail{100 * kGbps, 50 * kUs}, false, 0},
      // This machine running the CPU engine (`mics train`, `mics launch --nodes K`): shm between
      // ranks of a node, tcp between emulated nodes. Nominal figures; measure them with
      // `mics bench --json` and pass host:FILE.json. peak_flops is a nominal 100 GFLOP/s per
      // rank so that the efficiency `--calibrate` fits reads as a fraction of it.
      {"host", "this machine, CPU engine (fp32), shm + tcp rails", 4, 100e9, 4 * kGiB, 10 * kGB,
       Rail{2 * kGB, 20 * kUs}, Rail{1 * kGB, 60 * kUs}, true, 0},
  };
  return table;
}

std::vector<std::string> cluster_names() {
  std::vector<std::string> names;
  for (const auto& c : catalog()) names.push_back(c.name);
  names.emplace_back("host:BENCH.json");
  return names;
}

namespace {

nlohmann::json read_bench_json(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw Error(ErrorKind::kIo, fmt::format("cannot read the bench results {}", path),
                {.layer = "plan", .where = "--cluster host:FILE", .hint = "write it with `mics launch -n N -- mics bench --json FILE`"});
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw plan_error(fmt::format("{} is not JSON: {}", path, e.what()), "--cluster host:FILE",
                     "pass the file `mics bench --json` wrote");
  }
  if (!j.contains("results") || !j["results"].is_array() || j["results"].empty() || !j.contains("world_size"))
    throw plan_error(fmt::format("{} has no bench results (world_size, results[])", path), "--cluster host:FILE",
                     "pass the file `mics bench --json` wrote");
  return j;
}

// One `mics bench --json` run, parsed.
struct BenchRun {
  std::string path;
  nlohmann::json json;
};

// The rail of one or several runs of the same bench command: each size's fastest run.
Rail rail_from_runs(const std::vector<BenchRun>& runs, int* nodes_out, int* ranks_per_node_out) {
  MICS_CHECK(!runs.empty(), "rail_from_runs: no bench run");
  nlohmann::json j = runs[0].json;
  const std::string& path = runs[0].path;
  const int n = j["world_size"].get<int>();
  const int nodes = j.value("nodes", 1);
  for (size_t f = 1; f < runs.size(); ++f) {
    const nlohmann::json& other = runs[f].json;
    if (other["world_size"].get<int>() != n || other.value("nodes", 1) != nodes)
      throw plan_error(
          fmt::format("{} measured {} ranks on {} node(s), {} measured {} on {}: the files of one rail must "
                      "come from the same bench command",
                      path, n, nodes, runs[f].path, other["world_size"].get<int>(), other.value("nodes", 1)),
          "--cluster host:FILE,...", "pass each layout's runs together, one layout per rail");
    for (const auto& r : other["results"]) {
      bool matched = false;
      for (auto& mine : j["results"])
        if (mine["bytes"] == r["bytes"] && mine["op"] == r["op"]) {
          matched = true;
          if (r["time_us"].get<double>() < mine["time_us"].get<double>()) mine = r;
        }
      if (!matched) j["results"].push_back(r);
    }
  }
  if (nodes_out) *nodes_out = nodes;
  if (ranks_per_node_out) *ranks_per_node_out = std::max(1, n / std::max(1, nodes));
  // Bandwidth: the largest message (the ring's beta); latency: the smallest message's time
  // over the ring's hops (n-1 for all-gather/reduce-scatter, 2(n-1) for all-reduce).
  const nlohmann::json* largest = nullptr;
  const nlohmann::json* smallest = nullptr;
  for (const auto& r : j["results"]) {
    if (!largest || r["bytes"].get<double>() > (*largest)["bytes"].get<double>()) largest = &r;
    if (!smallest || r["bytes"].get<double>() < (*smallest)["bytes"].get<double>()) smallest = &r;
  }
  Rail rail;
  rail.bandwidth = (*largest)["busbw_gbps"].get<double>() * 1e9;
  const double hops = std::max(1, n - 1) * ((*smallest)["op"] == "all_reduce" ? 2.0 : 1.0);
  rail.latency = (*smallest)["time_us"].get<double>() * 1e-6 / hops;
  const int cores = j.value("host_cores", usable_cores());
  rail.measured_core_sharing = std::max(1.0, static_cast<double>(n) / std::max(1, cores));
  if (rail.bandwidth <= 0)
    throw plan_error(fmt::format("{}: the largest message has no bandwidth", path), "--cluster host:FILE",
                     "run the bench with a larger --maxbytes");
  return rail;
}

}  // namespace

Rail rail_from_bench_files(const std::vector<std::string>& paths, int* nodes_out, int* ranks_per_node_out) {
  std::vector<BenchRun> runs;
  for (const auto& path : paths) runs.push_back({path, read_bench_json(path)});
  return rail_from_runs(runs, nodes_out, ranks_per_node_out);
}

Cluster rails_at_core_sharing(const Cluster& cl, int ranks_on_host) {
  Cluster out = cl;
  if (!cl.cpu_engine || cl.host_cores <= 0) return out;
  const double sharing = std::max(1.0, static_cast<double>(ranks_on_host) / cl.host_cores);
  for (Rail* rail : {&out.intra, &out.inter}) {
    const double k = sharing / rail->measured_core_sharing;
    rail->bandwidth /= k;
    rail->latency *= k;
  }
  return out;
}

Cluster find_cluster(const std::string& name) {
  for (Cluster c : catalog())
    if (c.name == name) {
      // The CPU engine's ranks share this machine's cores unless a measured run says otherwise.
      if (c.cpu_engine && c.host_cores == 0) c.host_cores = usable_cores();
      return c;
    }
  if (name.rfind("host:", 0) == 0) {
    Cluster c = find_cluster("host");
    c.description = "this machine, CPU engine, rails from " + name.substr(5);
    // Files of one node measure the intra-node rail, files over several nodes the inter-node
    // one; several files of a rail (the same bench run again) give each size's fastest.
    std::vector<BenchRun> intra_runs, inter_runs;
    for (const auto& file : split(name.substr(5), ',')) {
      BenchRun run{file, read_bench_json(file)};
      (run.json.value("nodes", 1) > 1 ? inter_runs : intra_runs).push_back(std::move(run));
    }
    if (!intra_runs.empty()) {
      int nodes = 1, per_node = 1;
      c.intra = rail_from_runs(intra_runs, &nodes, &per_node);
      c.gpus_per_node = per_node;
    }
    // a ring across nodes: each node's egress runs at the bus bandwidth
    if (!inter_runs.empty()) c.inter = rail_from_runs(inter_runs, nullptr, nullptr);
    return c;
  }
  throw plan_error(fmt::format("unknown cluster '{}'; known: {}", name, join(cluster_names(), ", ")),
                   "--cluster", "pick one of the catalog's instance types, or host:FILE.json from `mics bench --json`");
}

}  // namespace mics::plan
