// `mics engine-bench`: trains the MLP stack through the sharded engine under several
// strategies in one job and reports, per strategy, the optimizer-step time, the exposed
// (non-overlapped) communication time, the bytes each rank sent per rail and what the traffic
// model predicts. Run it under `mics launch`, e.g. 2 emulated nodes x 2 ranks:
//   mics launch -n 4 --nodes 2 -- mics engine-bench --strategies zero3,mics:2 --accum 4
// The rail bandwidths for the prediction are measured in the same job (a ring all-gather
// between two ranks of one node, and between two nodes).
//
// --json FILE also records what `mics plan --calibrate FILE` needs to model the runs
// (plan/calibrate.hpp): the MLP ("mlpL..W..", its parameters and FLOPs per sample as model::Mlp
// counts them), the layout and the host, and per strategy every timed step's time and exposed
// communication (the slowest rank's).
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "base/strings.hpp"
#include "comm/runtime.hpp"
#include "model/mlp.hpp"
#include "shard/engine.hpp"
#include "tools/commands.hpp"

namespace mics::tools {

namespace {

struct EngineBenchOptions {
  std::string strategies = "ddp,zero3,mics";
  int layers = 6;
  int width = 512;
  int batch = 4;
  int accum = 4;
  int steps = 3;
  std::string memory_budget = "0";
  std::string json_path;
};

// GB/s of one rail: a 2-member ring all-gather of 16 MiB between `a` and `b` (global ranks).
double rail_bandwidth(comm::Communicator& world, int a, int b) {
  const int me = world.rank();
  auto pair = world.split(me == a || me == b ? 0 : -1, me, "rail-probe");
  double gbps = 0;
  if (pair) {
    const size_t count = 4u << 20;
    std::vector<float> shard(count / 2, 1.0f), all(count);
    pair->all_gather(shard.data(), all.data(), count, DType::kF32, comm::Algo::kRing);
    const auto t0 = Clock::now();
    for (int i = 0; i < 3; ++i) pair->all_gather(shard.data(), all.data(), count, DType::kF32, comm::Algo::kRing);
    gbps = 3.0 * (count / 2) * 4 / seconds_since(t0) / 1e9;
  }
  float value = static_cast<float>(gbps);
  world.all_reduce(&value, &value, 1, DType::kF32, ReduceOp::kMax);
  return value;
}

struct Result {
  std::string name;
  int p = 0;
  double step_s = 0, exposed_s = 0, loss = 0;
  uint64_t intra = 0, inter = 0;
  double predicted_comm_s = 0;
  std::vector<double> step_ms, exposed_ms;  // per timed step, the slowest rank's
  uint64_t model_state_bytes = 0;
};

int run_engine_bench(const EngineBenchOptions& o) {
  auto rt = comm::Runtime::start(fmt::format("engine-bench {} L{} C{} B{} S{} T{}", o.strategies, o.layers,
                                             o.width, o.batch, o.accum, o.steps));
  comm::Communicator& world = rt->world();
  const auto& topo = rt->topology();
  const int n = topo.uniform_ranks_per_node();
  // Rail bandwidths: ranks 0 and 1 share a node when n > 1; ranks 0 and n are on two nodes.
  const double intra_gbps = n > 1 ? rail_bandwidth(world, 0, 1) : 0;
  const double inter_gbps = topo.num_nodes > 1 && n > 0 ? rail_bandwidth(world, 0, n) : 0;

  std::vector<int> sizes(static_cast<size_t>(o.layers) + 1, o.width);
  model::Mlp mlp(sizes);
  model::SyntheticData data(o.width, o.width, 7);
  std::vector<Result> results;
  for (const std::string& spec : split(o.strategies, ',')) {
    const auto parts = split(spec, ':');
    shard::EngineOptions eo;
    eo.strategy = topo::parse_strategy(parts[0]);
    eo.partition_size = parts.size() < 2 ? 0
                        : parts[1] == "auto" ? shard::EngineOptions::kAutoPartition
                                             : std::atoi(parts[1].c_str());
    eo.memory_budget_bytes = static_cast<uint64_t>(parse_size(o.memory_budget).value_or(0));
    eo.grad_accum = o.accum;
    eo.lr = 1e-3f;
    eo.activation_bytes = mlp.activation_bytes(o.batch);  // for mics:auto, as mics plan counts them
    shard::Engine engine(*rt, eo);
    for (int l = 0; l < mlp.num_layers(); ++l) engine.add_unit(fmt::format("layer{}", l), mlp.layer_numel(l));
    engine.finalize([&](int u, float* p) { mlp.init_layer(u, 1, p); });
    std::vector<float> x, y, grad;
    Result r;
    r.name = spec;
    r.p = engine.partition_size();
    double step_exposed = 0;
    auto train_step = [&](int64_t step) {
      double loss = 0;
      step_exposed = 0;
      for (int micro = 0; micro < o.accum; ++micro) {
        const int64_t first = ((step * o.accum + micro) * world.size() + world.rank()) * o.batch;
        data.batch(first, o.batch, x, y);
        model::MlpPass pass(mlp, x.data(), y.data(), o.batch);
        // Gather, then prefetch the next layer: a prefetch queued before the gather the compute
        // waits for would delay it by a whole gather (the trainer's order too).
        for (int l = 0; l < mlp.num_layers(); ++l) {
          const float* params = engine.gather(l);
          if (l + 1 < mlp.num_layers()) engine.prefetch(l + 1);
          pass.forward(l, params);
          engine.release(l);
        }
        loss += pass.loss();
        for (int l = mlp.num_layers() - 1; l >= 0; --l) {
          const float* params = engine.gather(l);
          if (l > 0) engine.prefetch(l - 1);
          grad.resize(mlp.layer_numel(l));
          pass.backward(l, params, grad.data());
          engine.release(l);
          engine.reduce_gradients(l, grad.data());
        }
        const auto report = engine.step();
        step_exposed += report.exposed_comm_s;
      }
      return loss / o.accum;
    };
    train_step(0);  // warm-up: buffers, connections
    world.barrier();
    const comm::Traffic before = engine.traffic();
    r.exposed_s = 0;
    // Per step: this rank's time and exposed communication; the slowest rank's of each below.
    std::vector<float> per_step(2 * static_cast<size_t>(o.steps));
    const auto t0 = Clock::now();
    for (int s = 1; s <= o.steps; ++s) {
      const auto ts = Clock::now();
      r.loss = train_step(s);
      per_step[2 * static_cast<size_t>(s - 1)] = static_cast<float>(seconds_since(ts) * 1e3);
      per_step[2 * static_cast<size_t>(s - 1) + 1] = static_cast<float>(step_exposed * 1e3);
      r.exposed_s += step_exposed;
    }
    r.step_s = seconds_since(t0) / o.steps;
    r.exposed_s /= o.steps;
    r.model_state_bytes = engine.memory().model_state_bytes;
    const comm::Traffic after = engine.traffic();
    r.intra = (after.bytes_sent[0] - before.bytes_sent[0]) / static_cast<uint64_t>(o.steps);
    r.inter = (after.bytes_sent[1] - before.bytes_sent[1]) / static_cast<uint64_t>(o.steps);
    const comm::Traffic model = engine.expected_traffic(1);
    if (model.bytes_sent[0] != r.intra || model.bytes_sent[1] != r.inter)
      throw Error(ErrorKind::kInternal,
                  fmt::format("{}: measured bytes per step {}/{} differ from the model's {}/{}", spec, r.intra,
                              r.inter, model.bytes_sent[0], model.bytes_sent[1]),
                  {.layer = "bench"});
    // After the traffic is read: the reports' own collectives are not the engine's.
    world.all_reduce(per_step.data(), per_step.data(), per_step.size(), DType::kF32, ReduceOp::kMax);
    for (int s = 0; s < o.steps; ++s) {
      r.step_ms.push_back(per_step[2 * static_cast<size_t>(s)]);
      r.exposed_ms.push_back(per_step[2 * static_cast<size_t>(s) + 1]);
    }
    r.predicted_comm_s = (intra_gbps > 0 ? r.intra / (intra_gbps * 1e9) : 0) +
                         (inter_gbps > 0 ? r.inter / (inter_gbps * 1e9) : 0);
    // The slowest rank defines the step; bytes are the busiest rank's (ring neighbours differ
    // per rank: in a 2x2 layout only every other rank sends across nodes).
    float worst[3] = {static_cast<float>(r.step_s), static_cast<float>(r.exposed_s),
                      static_cast<float>(r.predicted_comm_s)};
    world.all_reduce(worst, worst, 3, DType::kF32, ReduceOp::kMax);
    r.step_s = worst[0];
    r.exposed_s = worst[1];
    r.predicted_comm_s = worst[2];
    uint64_t mine[2] = {r.intra, r.inter};
    std::vector<uint64_t> all(2 * static_cast<size_t>(world.size()));  // exact: moved as raw bytes
    world.all_gather(mine, all.data(), all.size() * 2, DType::kF32);
    for (int rank = 0; rank < world.size(); ++rank) {
      r.intra = std::max(r.intra, all[2 * rank]);
      r.inter = std::max(r.inter, all[2 * rank + 1]);
    }
    results.push_back(r);
  }

  if (world.rank() == 0) {
    std::printf("# engine-bench: MLP %d x %d (%.1f M params), micro-batch %d, S=%d, %s\n", o.layers, o.width,
                mlp.total_numel() / 1e6, o.batch, o.accum, topo.describe().c_str());
    std::printf("# rails measured: intra %.2f GB/s, inter %.2f GB/s\n", intra_gbps, inter_gbps);
    std::printf("# %-10s %3s %10s %12s %14s %14s %14s %8s\n", "strategy", "p", "step(ms)", "exposed(ms)",
                "intra B/step", "inter B/step", "model comm ms", "loss");
    std::printf("# (bytes: the busiest rank's per optimizer step, equal to the traffic model's; model comm:\n"
                "#  those bytes over the measured rail bandwidths)\n");
    for (const auto& r : results)
      std::printf("  %-10s %3d %10.1f %12.1f %14lu %14lu %14.1f %8.4f\n", r.name.c_str(), r.p, r.step_s * 1e3,
                  r.exposed_s * 1e3, static_cast<unsigned long>(r.intra), static_cast<unsigned long>(r.inter),
                  r.predicted_comm_s * 1e3, r.loss);
    for (size_t i = 0; i < results.size(); ++i)
      for (size_t j = 0; j < results.size(); ++j)
        if (results[i].name.rfind("zero3", 0) == 0 && results[j].name.rfind("mics", 0) == 0)
          std::printf("# %s vs %s: step time %.2fx faster measured; traffic model predicts %.2fx less "
                      "communication time (%.2fx fewer inter-node bytes)\n",
                      results[j].name.c_str(), results[i].name.c_str(), results[i].step_s / results[j].step_s,
                      results[i].predicted_comm_s / std::max(1e-12, results[j].predicted_comm_s),
                      results[j].inter ? static_cast<double>(results[i].inter) / results[j].inter : 0.0);
    if (!o.json_path.empty()) {
      nlohmann::json j;
      j["kind"] = "mics engine-bench";
      j["model"] = fmt::format("mlpL{}W{}", o.layers, o.width);  // mics plan's name for it
      j["layers"] = o.layers;
      j["width"] = o.width;
      j["accum"] = o.accum;
      j["grad_accum"] = o.accum;
      j["micro_batch"] = o.batch;
      j["steps"] = o.steps;
      j["world_size"] = world.size();
      j["nodes"] = topo.num_nodes;
      j["ranks_per_node"] = n;
      j["host_cores"] = usable_cores();
      j["ranks_on_host"] = ranks_on_host();
      j["compute_threads"] = 1;  // model::Mlp's kernels are plain loops on the calling thread
      j["params"] = mlp.total_numel();
      double flops = 0;
      for (int l = 0; l < mlp.num_layers(); ++l) flops += mlp.forward_flops(l, 1) + mlp.backward_flops(l, 1);
      j["flops_per_sample"] = flops;
      j["activation_bytes"] = mlp.activation_bytes(o.batch);
      j["intra_gbps"] = intra_gbps;
      j["inter_gbps"] = inter_gbps;
      for (const auto& r : results)
        j["results"].push_back({{"strategy", r.name}, {"p", r.p}, {"step_s", r.step_s}, {"exposed_s", r.exposed_s},
                                {"intra_bytes", r.intra}, {"inter_bytes", r.inter},
                                {"predicted_comm_s", r.predicted_comm_s}, {"loss", r.loss}, {"step_ms", r.step_ms},
                                {"exposed_ms", r.exposed_ms}, {"model_state_bytes_per_rank", r.model_state_bytes}});
      std::ofstream out(o.json_path);
      if (!(out << j.dump(2) << "\n"))
        throw Error(ErrorKind::kIo, fmt::format("cannot write {}", o.json_path),
                    {.layer = "bench", .where = "--json", .hint = "check that the directory exists and is writable"});
    }
  }
  rt->finish();
  return 0;
}

}  // namespace

Runner add_engine_bench_command(CLI::App& app) {
  auto opts = std::make_shared<EngineBenchOptions>();
  CLI::App* sub = app.add_subcommand("engine-bench", "train an MLP stack through the sharded engine per strategy");
  sub->add_option("--strategies", opts->strategies, "comma list of ddp, zero3, mics, mics:P or mics:auto")->capture_default_str();
  sub->add_option("--layers", opts->layers, "MLP layers (units)")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--width", opts->width, "features per layer")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--batch", opts->batch, "micro-batch per rank")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--accum", opts->accum, "micro-steps per optimizer step (S)")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--steps", opts->steps, "timed optimizer steps")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--memory-budget", opts->memory_budget, "per-rank budget for mics:auto, e.g. 16M");
  sub->add_option("--json", opts->json_path, "write the results as JSON (rank 0)");
  return [opts] { return run_engine_bench(*opts); };
}

}  // namespace mics::tools
