// `mics bench`: nccl-tests-style benchmark of the collectives, run under `mics launch`,
// Slurm or mpirun. Prints nccl-tests' columns (size, count, type, redop, time, algbw, busbw,
// #wrong) plus the bytes each rank sent per rail, and optionally writes JSON.
//
// size is the whole array (the gathered output of all_gather, the input of reduce_scatter and
// all_reduce); time is the slowest rank's average per iteration; busbw = algbw * 2(n-1)/n for
// all_reduce, algbw * (n-1)/n for all_gather and reduce_scatter, algbw for broadcast.
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/clock.hpp"
#include "base/dtype.hpp"
#include "base/error.hpp"
#include "base/knobs.hpp"
#include "base/strings.hpp"
#include "comm/clock_sync.hpp"
#include "comm/layout.hpp"
#include "comm/runtime.hpp"
#include "obs/observer.hpp"
#include "tools/commands.hpp"

namespace mics::tools {

namespace {

struct BenchOptions {
  std::string ops = "all_reduce";
  std::string min_bytes = "8";
  std::string max_bytes = "64M";
  double factor = 2;
  int warmup = 5;
  int iters = 20;
  int runs = 1;
  std::string dtype = "float";
  std::string redop = "sum";
  std::string algo = "auto";
  bool check = false;
  std::string json_path;
  std::string trace_path;
};

// Deterministic inputs whose sums stay exact in bf16 and f16 (small integers).
float input_value(int rank, size_t i) {
  return static_cast<float>((rank * 3 + static_cast<int>(i % 13)) % 7 + 1);
}

void fill(void* buf, size_t count, DType t, int rank, size_t first_index) {
  for (size_t i = 0; i < count; ++i) store_f32(buf, i, t, input_value(rank, first_index + i));
}


float expected_reduction(int n, size_t i, ReduceOp op) {
  float acc = op == ReduceOp::kMax ? -INFINITY : 0.0f;
  for (int r = 0; r < n; ++r)
    acc = op == ReduceOp::kMax ? std::max(acc, input_value(r, i)) : acc + input_value(r, i);
  if (op == ReduceOp::kAvg) acc /= static_cast<float>(n);
  return acc;
}

bool close_enough(float got, float want, DType t) {
  const float tol = t == DType::kF32 ? 1e-5f : 1e-2f;
  return std::fabs(got - want) <= tol * std::max(1.0f, std::fabs(want));
}

double bus_factor(const std::string& op, int n) {
  if (op == "all_reduce") return 2.0 * (n - 1) / n;
  if (op == "all_gather" || op == "reduce_scatter") return static_cast<double>(n - 1) / n;
  return 1.0;
}

struct Row {
  std::string op;
  size_t bytes, count;
  double time_us, algbw, busbw;
  long wrong;
  double intra_bytes, inter_bytes, inter_bytes_per_node;
  std::string algo;
};

int run_bench(const BenchOptions& o) {
  auto dtype = parse_dtype(o.dtype);
  if (!dtype)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("unknown --dtype '{}'", o.dtype),
                {.layer = "bench", .hint = "use float, bf16 or half"});
  auto redop = parse_reduce_op(o.redop);
  if (!redop)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("unknown --redop '{}'", o.redop),
                {.layer = "bench", .hint = "use sum, avg or max"});
  auto lo = parse_size(o.min_bytes), hi = parse_size(o.max_bytes);
  if (!lo || !hi || *lo < 0 || *hi < *lo)
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("bad size range -b {} -e {}", o.min_bytes, o.max_bytes),
                {.layer = "bench", .hint = "sizes like 8, 4K, 64M, 1G with -b <= -e"});
  if (o.factor < 1.01 && *hi != *lo)
    throw Error(ErrorKind::kInvalidArgument, "-f must be greater than 1", {.layer = "bench"});
  const comm::Algo algo = comm::parse_algo(o.algo);
  std::vector<std::string> ops = split(o.ops, ',');
  if (o.ops == "all") ops = {"all_gather", "reduce_scatter", "all_reduce", "broadcast"};
  for (const auto& op : ops) {
    if (op != "all_gather" && op != "reduce_scatter" && op != "all_reduce" && op != "broadcast" &&
        op != "sendrecv")
      throw Error(ErrorKind::kInvalidArgument, fmt::format("unknown --op '{}'", op),
                  {.layer = "bench",
                   .hint = "use all_gather, reduce_scatter, all_reduce, broadcast, sendrecv or all"});
    if (op == "sendrecv" && algo != comm::Algo::kAuto)
      throw Error(ErrorKind::kInvalidArgument, "--algo does not apply to sendrecv",
                  {.layer = "bench", .hint = "leave --algo at auto for --op sendrecv"});
  }

  const std::string config =
      fmt::format("bench ops={} b={} e={} f={} dtype={} redop={} algo={} iters={}", o.ops, *lo, *hi,
                  o.factor, o.dtype, o.redop, o.algo, o.iters);
  auto rt = comm::Runtime::start(config);
  comm::Communicator& world = rt->world();
  const int n = world.size(), me = world.rank();
  const size_t es = dtype_size(*dtype);
  const auto& topo = rt->topology();
  // --trace: every collective recorded (obs/), one Chrome trace per rank; a "step" per size.
  std::unique_ptr<obs::Observer> observer;
  if (!o.trace_path.empty()) {
    observer = std::make_unique<obs::Observer>(me, n);
    observer->set_clock(comm::sync_clocks(world));
    observer->enable_trace({static_cast<size_t>(knobs().trace_max_events), 2});
    observer->set_fabric_baseline({rt->transport().counters(fabric::Rail::kIntra).bytes_sent,
                                   rt->transport().counters(fabric::Rail::kInter).bytes_sent});
    world.set_observer(observer.get());
  }
  int row_index = 0;

  if (me == 0) {
    std::printf("# mics bench: %s, %d rank(s) on %d node(s); rails: intra=%s inter=%s\n",
                o.ops.c_str(), n, topo.num_nodes,
                rt->transport().provider(fabric::Rail::kIntra).c_str(),
                rt->transport().provider(fabric::Rail::kInter).c_str());
    // Every line that is not a result starts with '#', as in nccl-tests, so scripts can filter.
    std::printf("# knobs set:\n");
    for (const std::string& line : split(describe_knobs(true), '\n'))
      if (!line.empty()) std::printf("#%s\n", line.c_str());
    std::printf("#\n# %10s %12s %8s %6s %6s %10s %10s %10s %7s %12s %12s %12s\n", "size", "count",
                "type", "redop", "algo", "time(us)", "algbw", "busbw", "#wrong", "intra(B)",
                "inter(B)", "inter/node");
    std::fflush(stdout);
  }

  std::vector<Row> rows;
  for (const auto& op : ops) {
    for (double sz = static_cast<double>(*lo); sz <= static_cast<double>(*hi) * 1.0000001;
         sz = std::max(sz * o.factor, sz + 1)) {
      size_t count = static_cast<size_t>(sz) / es;
      const size_t bytes = count * es;
      const comm::Block mine = comm::block_of(count, n, me);
      if (observer) observer->step_begin(++row_index);
      std::vector<std::byte> input(std::max<size_t>(bytes, 1)), output(std::max<size_t>(bytes, 1));
      auto run_once = [&] {
        if (op == "all_gather")
          world.all_gather(input.data(), output.data(), count, *dtype, algo);
        else if (op == "reduce_scatter")
          world.reduce_scatter(input.data(), output.data(), count, *dtype, *redop, algo);
        else if (op == "all_reduce")
          world.all_reduce(input.data(), output.data(), count, *dtype, *redop, algo);
        else if (op == "sendrecv") {
          // nccl-tests' sendrecv_perf: every rank sends the whole buffer to the next rank and
          // receives the previous rank's at the same time, i.e. one ring step with both
          // directions of every link busy: the most a ring's step can move.
          if (n > 1)
            world.send_recv(input.data(), bytes, (me + 1) % n, 1, output.data(), bytes, (me + n - 1) % n, 1);
          else
            std::memcpy(output.data(), input.data(), bytes);
        } else
          world.broadcast(output.data(), count, *dtype, 0, algo);
      };
      auto prepare = [&] {
        if (op == "all_gather")
          fill(input.data(), mine.count, *dtype, 0, mine.offset);
        else if (op == "sendrecv")
          fill(input.data(), count, *dtype, me, 0);
        else if (op == "broadcast") {
          if (me == 0)
            fill(output.data(), count, *dtype, 0, 0);
          else
            std::memset(output.data(), 0xff, bytes);
        } else
          fill(input.data(), count, *dtype, me, 0);
      };
      prepare();
      for (int i = 0; i < o.warmup; ++i) run_once();
      // `runs` timed blocks; the fastest counts (on a shared machine the others include
      // somebody else's work). Traffic is per iteration of the last block.
      double elapsed = 1e300;
      comm::Traffic before, after;
      for (int run = 0; run < std::max(1, o.runs); ++run) {
        world.barrier();
        before = world.traffic();
        const auto t0 = Clock::now();
        for (int i = 0; i < o.iters; ++i) run_once();
        const double block = seconds_since(t0);
        after = world.traffic();
        // The slowest rank defines a block's time; agree on it before taking the minimum.
        float slowest_block = static_cast<float>(block);
        world.all_reduce(&slowest_block, &slowest_block, 1, DType::kF32, ReduceOp::kMax,
                         comm::Algo::kRecursiveDoubling);
        elapsed = std::min(elapsed, static_cast<double>(slowest_block));
      }
      long wrong = 0;
      if (o.check) {
        if (o.iters == 0 && o.warmup == 0) run_once();
        prepare();
        std::memset(output.data(), 0xee, bytes);
        if (op == "broadcast" && me == 0) fill(output.data(), count, *dtype, 0, 0);
        run_once();
        if (op == "all_gather") {
          for (size_t i = 0; i < count; ++i)
            wrong += !close_enough(load_f32(output.data(), i, *dtype), input_value(0, i), *dtype);
        } else if (op == "reduce_scatter") {
          for (size_t i = 0; i < mine.count; ++i)
            wrong += !close_enough(load_f32(output.data(), i, *dtype),
                                   expected_reduction(n, mine.offset + i, *redop), *dtype);
        } else if (op == "all_reduce") {
          for (size_t i = 0; i < count; ++i)
            wrong += !close_enough(load_f32(output.data(), i, *dtype), expected_reduction(n, i, *redop),
                                   *dtype);
        } else if (op == "sendrecv") {
          const int from = n > 1 ? (me + n - 1) % n : me;
          for (size_t i = 0; i < count; ++i)
            wrong += !close_enough(load_f32(output.data(), i, *dtype), input_value(from, i), *dtype);
        } else {
          for (size_t i = 0; i < count; ++i)
            wrong += !close_enough(load_f32(output.data(), i, *dtype), input_value(0, i), *dtype);
        }
      }
      // Reduce across ranks: slowest time, total wrong, per-rank and per-node rail bytes.
      const double iters = std::max(1, o.iters);
      std::vector<float> mine_stats = {
          static_cast<float>(elapsed), static_cast<float>(wrong),
          static_cast<float>(
              (after.bytes(fabric::Rail::kIntra) - before.bytes(fabric::Rail::kIntra)) / iters),
          static_cast<float>(
              (after.bytes(fabric::Rail::kInter) - before.bytes(fabric::Rail::kInter)) / iters)};
      std::vector<float> all(4 * static_cast<size_t>(n));
      world.all_gather(mine_stats.data(), all.data(), all.size(), DType::kF32,
                       comm::Algo::kRecursiveDoubling);
      double slowest = 0, intra = 0, inter = 0;
      long wrong_total = 0;
      std::vector<double> inter_per_node(static_cast<size_t>(topo.num_nodes), 0.0);
      for (int r = 0; r < n; ++r) {
        slowest = std::max(slowest, static_cast<double>(all[4 * r]));
        wrong_total += static_cast<long>(all[4 * r + 1]);
        intra = std::max(intra, static_cast<double>(all[4 * r + 2]));
        inter = std::max(inter, static_cast<double>(all[4 * r + 3]));
        inter_per_node[topo.node_of[world.global_rank(r)]] += all[4 * r + 3];
      }
      double node_max = 0;
      for (double v : inter_per_node) node_max = std::max(node_max, v);
      const double time_us = o.iters ? slowest / o.iters * 1e6 : 0;
      const double algbw = time_us > 0 ? static_cast<double>(bytes) / (time_us * 1e-6) / 1e9 : 0;
      const std::string algo_used =
          op == "sendrecv" ? std::string("p2p") : comm::to_string(world.choose(op.c_str(), bytes, algo));
      Row row{op,          bytes, count, time_us,  algbw,    algbw * bus_factor(op, n),
              wrong_total, intra, inter, node_max, algo_used};
      rows.push_back(row);
      if (me == 0) {
        std::printf("  %10zu %12zu %8s %6s %6s %10.2f %10.3f %10.3f %7s %12.0f %12.0f %12.0f\n",
                    bytes, count, to_string(*dtype),
                    op == "all_gather" || op == "broadcast" || op == "sendrecv" ? "none" : o.redop.c_str(),
                    algo_used.c_str(), time_us, algbw, row.busbw,
                    o.check ? std::to_string(wrong_total).c_str() : "N/A", intra, inter, node_max);
        std::fflush(stdout);
      }
      if (*hi == *lo) break;
    }
  }

  long total_wrong = 0;
  for (const auto& r : rows) total_wrong += r.wrong;
  if (observer) {
    world.set_observer(nullptr);
    const auto recorded = observer->log().rail_totals();
    const auto base = observer->fabric_baseline();
    const bool equal = recorded[0] == rt->transport().counters(fabric::Rail::kIntra).bytes_sent - base[0] &&
                       recorded[1] == rt->transport().counters(fabric::Rail::kInter).bytes_sent - base[1];
    float mismatch = equal ? 0.0f : 1.0f;
    world.all_reduce(&mismatch, &mismatch, 1, DType::kF32, ReduceOp::kMax, comm::Algo::kRecursiveDoubling);
    observer->write_trace(obs::trace_path_for_rank(o.trace_path, me), R"({"command":"mics bench"})");
    if (me == 0)
      std::printf("# trace: %llu collectives recorded per rank; their bytes %s the fabric counters on every rank\n",
                  static_cast<unsigned long long>(observer->log().total()), mismatch == 0.0f ? "equal" : "DIFFER FROM");
  }
  if (me == 0) {
    if (o.check)
      std::printf("# out of bounds values : %ld %s\n", total_wrong, total_wrong ? "FAILED" : "OK");
    if (!o.json_path.empty()) {
      nlohmann::json j;
      j["world_size"] = n;
      j["nodes"] = topo.num_nodes;
      j["intra_provider"] = rt->transport().provider(fabric::Rail::kIntra);
      j["inter_provider"] = rt->transport().provider(fabric::Rail::kInter);
      j["dtype"] = o.dtype;
      for (const auto& r : rows)
        j["results"].push_back({{"op", r.op},
                                {"bytes", r.bytes},
                                {"count", r.count},
                                {"algo", r.algo},
                                {"time_us", r.time_us},
                                {"algbw_gbps", r.algbw},
                                {"busbw_gbps", r.busbw},
                                {"wrong", o.check ? r.wrong : -1},
                                {"intra_bytes_per_rank", r.intra_bytes},
                                {"inter_bytes_per_rank", r.inter_bytes},
                                {"inter_bytes_per_node", r.inter_bytes_per_node}});
      std::ofstream out(o.json_path);
      if (!out)
        throw Error(ErrorKind::kIo, fmt::format("cannot write {}", o.json_path),
                    {.layer = "bench", .hint = "check the directory exists and is writable"});
      out << j.dump(2) << "\n";
    }
  }
  rt->finish();
  return total_wrong ? 1 : 0;
}

}  // namespace

Runner add_bench_command(CLI::App& app) {
  auto opts = std::make_shared<BenchOptions>();
  CLI::App* sub = app.add_subcommand(
      "bench", "nccl-tests-style collective benchmark (run under mics launch or mpirun)");
  sub->add_option("--op", opts->ops,
                  "all_gather, reduce_scatter, all_reduce, broadcast, sendrecv (ring-step exchange), a comma list, or all")
      ->capture_default_str();
  sub->add_option("-b,--minbytes", opts->min_bytes, "smallest size (whole array), e.g. 8, 1K, 1M")
      ->capture_default_str();
  sub->add_option("-e,--maxbytes", opts->max_bytes, "largest size")->capture_default_str();
  sub->add_option("-f,--stepfactor", opts->factor, "multiply the size by this each step")
      ->capture_default_str();
  sub->add_option("-w,--warmup", opts->warmup, "untimed iterations per size")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("-n,--iters", opts->iters, "timed iterations per size")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("-d,--dtype", opts->dtype, "float, bf16 or half")->capture_default_str();
  sub->add_option("-o,--redop", opts->redop, "sum, avg or max")->capture_default_str();
  sub->add_option("--algo", opts->algo,
                  "auto, ring, rd (latency: recursive doubling/Bruck/tree), hier or hd (all-reduce: halving-doubling)")
      ->capture_default_str();
  sub->add_option("-r,--runs", opts->runs,
                  "timed blocks of --iters per size; the fastest is reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_flag("-c,--check", opts->check,
                "validate results (the #wrong column); exit 1 on any error");
  sub->add_option("--json", opts->json_path, "write the results as JSON to this file (rank 0)");
  sub->add_option("--trace", opts->trace_path,
                  "Chrome trace JSON per rank of every collective (trace.json -> trace.rank0.json, or a path with {rank})");
  return [opts] { return run_bench(*opts); };
}

}  // namespace mics::tools
