// One rank of the engine equivalence tests, started N times by `mics launch` (see
// engine_equivalence_test.cpp). Every rank trains the MLP stack (model/mlp.hpp) through the
// sharded engine and, since it can build every rank's micro-batch, also trains the
// single-process reference (model/reference.hpp) on the same global batch; then checks:
//   - final parameters (Engine::full_parameters) against the reference:
//     max |engine - reference| / max |reference| <= --tol (default 1e-5, fp32 rounding level);
//   - per step: the optimizer boundary, the skip flag and the global gradient norm;
//   - traffic() == expected_traffic(steps) per rail, exactly, and the total against the
//     engine's collectives costed here independently from the algorithm table of
//     docs/ARCHITECTURE.md (with --documented-formula: against engine.hpp's ring formula);
//   - memory().model_state_bytes == 4 bytes x 4 arrays x the padded shard sizes.
//
//   engine_worker [--configs ddp,zero3,mics:2,mics:4] [--accums 1,4] [--steps 4] [--batch 3]
//                 [--sizes 13,17,9,5] [--lr 0.01] [--wd 0.01] [--clip 0] [--eps 1e-8]
//                 [--nan-at-step K[,K2...]]
//                 [--nan-rank R] [--keep-gathered] [--comm-dtype bf16] [--replicate-below N]
//                 [--tol 1e-5] [--strict] [--documented-formula]
// Configurations whose partition size does not fit the layout are skipped unless --strict
// (then the engine's error is the result). Prints one "traffic ..." line per configuration.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/knobs.hpp"
#include "base/strings.hpp"
#include "comm/runtime.hpp"
#include "worker_check.hpp"
#include "model/mlp.hpp"
#include "model/reference.hpp"
#include "shard/engine.hpp"
#include "topo/groups.hpp"

using namespace mics;

namespace {


struct Args {
  std::vector<std::string> configs = {"ddp", "zero3", "mics:2", "mics:4"};
  std::vector<int> accums = {1, 4};
  int steps = 4;
  int batch = 3;
  std::vector<int> sizes = {13, 17, 9, 5};
  float lr = 0.01f, wd = 0.01f, clip = 0.0f, eps = 1e-8f;
  std::vector<int> nan_steps;  // steps whose gradient gets a NaN on nan_rank
  int nan_rank = -1;
  bool keep_gathered = false;
  DType comm_dtype = DType::kF32;
  size_t replicate_below = 0;
  double tol = 1e-5;
  bool strict = false;
  bool documented_formula = false;  // also hold the total to engine.hpp's ring formula
  uint64_t seed = 1234;
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = text.find(',', start);
    const size_t end = comma == std::string::npos ? text.size() : comma;
    if (end > start) out.push_back(text.substr(start, end - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::vector<int> int_list(const std::string& text) {
  std::vector<int> out;
  for (const auto& s : split_list(text)) out.push_back(std::stoi(s));
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        throw Error(ErrorKind::kInvalidArgument, "missing value for " + flag, {.layer = "test"});
      return argv[++i];
    };
    if (flag == "--configs")
      a.configs = split_list(value());
    else if (flag == "--accums")
      a.accums = int_list(value());
    else if (flag == "--steps")
      a.steps = std::stoi(value());
    else if (flag == "--batch")
      a.batch = std::stoi(value());
    else if (flag == "--sizes")
      a.sizes = int_list(value());
    else if (flag == "--lr")
      a.lr = std::stof(value());
    else if (flag == "--wd")
      a.wd = std::stof(value());
    else if (flag == "--clip")
      a.clip = std::stof(value());
    else if (flag == "--eps")
      a.eps = std::stof(value());
    else if (flag == "--nan-at-step")
      a.nan_steps = int_list(value());
    else if (flag == "--nan-rank")
      a.nan_rank = std::stoi(value());
    else if (flag == "--keep-gathered")
      a.keep_gathered = true;
    else if (flag == "--comm-dtype") {
      const auto t = parse_dtype(value());
      if (!t) throw Error(ErrorKind::kInvalidArgument, "bad --comm-dtype", {.layer = "test"});
      a.comm_dtype = *t;
    } else if (flag == "--replicate-below")
      a.replicate_below = std::stoul(value());
    else if (flag == "--tol")
      a.tol = std::stod(value());
    else if (flag == "--strict")
      a.strict = true;
    else if (flag == "--documented-formula")
      a.documented_formula = true;
    else
      throw Error(ErrorKind::kInvalidArgument, "unknown flag " + flag, {.layer = "test"});
  }
  return a;
}

bool poisoned(const Args& a, int step) {
  return std::find(a.nan_steps.begin(), a.nan_steps.end(), step) != a.nan_steps.end();
}

struct Config {
  topo::Strategy strategy;
  int requested_p;  // mics only
  int accum;
};

std::string describe(const Config& c) {
  return c.strategy == topo::Strategy::kMics
             ? fmt::format("mics p={} S={}", c.requested_p, c.accum)
             : fmt::format("{} S={}", topo::to_string(c.strategy), c.accum);
}

size_t padded(size_t numel, int world) {
  const size_t w = static_cast<size_t>(world);
  return (numel + w - 1) / w * w;
}

bool replicated(size_t numel, int p, const Args& a) {
  return p == 1 || numel < a.replicate_below;
}

// --- traffic, written independently of the engine and of comm/traffic_model.cpp ------------
// Bytes one member of an n-member communicator sends, from the algorithm table of
// docs/ARCHITECTURE.md, with kAuto's choice: the latency algorithms up to
// MICS_SMALL_MSG_BYTES of the whole array (recursive doubling; a small reduce-scatter is a
// recursive-doubling all-reduce), the ring (or, for all-gathers, the hierarchical algorithm,
// which sends the same total) above.
uint64_t block_elems(size_t count, int n, int i) {
  return count / static_cast<size_t>(n) + (static_cast<size_t>(i % n) < count % n ? 1 : 0);
}
bool small(uint64_t bytes) {
  return static_cast<int64_t>(bytes) <= knobs().small_msg_bytes;
}
uint64_t rd_all_reduce_bytes(int n, int me, uint64_t bytes) {
  int p2 = 1, rounds = 0;
  while (p2 * 2 <= n) p2 *= 2, ++rounds;
  const int rem = n - p2;
  if (me < 2 * rem) return me % 2 == 0 ? bytes : (static_cast<uint64_t>(rounds) + 1) * bytes;
  return static_cast<uint64_t>(rounds) * bytes;
}
uint64_t all_gather_bytes(int n, size_t count, size_t es) {
  // Ring, Bruck and hierarchical all send n-1 of the (here always even) blocks.
  MICS_CHECK(count % static_cast<size_t>(n) == 0, "units are padded to whole blocks");
  return static_cast<uint64_t>(n - 1) * (count / static_cast<size_t>(n)) * es;
}
uint64_t reduce_scatter_bytes(int n, int me, size_t count, size_t es) {
  if (n == 1) return 0;
  if (small(count * es)) return rd_all_reduce_bytes(n, me, count * es);
  return (count - block_elems(count, n, me)) * es;
}
uint64_t all_reduce_bytes(int n, int me, size_t count, size_t es) {
  if (n == 1 || count == 0) return 0;
  if (small(count * es)) return rd_all_reduce_bytes(n, me, count * es);
  return (2 * count - block_elems(count, n, me) - block_elems(count, n, me + 1)) * es;
}

struct TrafficTotals {
  uint64_t calls = 0;       // the collectives the engine makes, each costed as above
  uint64_t documented = 0;  // shard/engine.hpp's formula (ring algorithms)
};

// One optimizer step, per rank, both rails: S*G all-gathers and S reduce-scatters of every
// sharded unit inside the partition group, one all-reduce of all gradient shards across the
// replication group, one of the replicated units over the world, and the one-float norm
// all-reduce inside the partition group.
TrafficTotals step_traffic(const model::Mlp& mlp, const Args& a, int world, int rank, int p,
                           int accum) {
  const int r = world / p;
  const uint64_t S = static_cast<uint64_t>(accum), G = a.keep_gathered ? 1 : 2;
  const size_t es = dtype_size(a.comm_dtype);
  TrafficTotals t;
  size_t shards = 0, rep = 0;
  uint64_t M = 0, M_comm = 0;
  for (int l = 0; l < mlp.num_layers(); ++l) {
    const size_t numel = mlp.layer_numel(l);
    if (replicated(numel, p, a)) {
      rep += numel;
      continue;
    }
    const size_t n = padded(numel, world);
    shards += n / static_cast<size_t>(p);
    M += 4 * n;
    M_comm += es * n;
    t.calls += S * G * all_gather_bytes(p, n, 4) + S * reduce_scatter_bytes(p, rank % p, n, es);
  }
  t.calls += all_reduce_bytes(r, rank / p, shards, 4) + all_reduce_bytes(world, rank, rep, 4);
  const uint64_t norm = all_reduce_bytes(p, rank % p, 1, 4);
  t.calls += norm;
  const uint64_t up = static_cast<uint64_t>(p), ur = static_cast<uint64_t>(r);
  t.documented =
      S * G * (up - 1) * M / up + S * (up - 1) * M_comm / up + 2 * (ur - 1) * M / up / ur + norm;
  if (rep && world > 1)
    t.documented +=
        (2 * rep - block_elems(rep, world, rank) - block_elems(rep, world, rank + 1)) * 4;
  return t;
}

void run_config(comm::Runtime& rt, const Args& a, const Config& c) {
  const int world = rt.world_size(), rank = rt.rank();
  const std::string name = describe(c);
  const model::Mlp mlp(a.sizes);
  const model::SyntheticData data(mlp.input_dim(), mlp.output_dim(), a.seed);
  const int L = mlp.num_layers();

  shard::EngineOptions opt;
  opt.strategy = c.strategy;
  opt.partition_size = c.requested_p;
  opt.grad_accum = c.accum;
  opt.lr = a.lr;
  opt.weight_decay = a.wd;
  opt.eps = a.eps;
  opt.clip_norm = a.clip;
  opt.comm_dtype = a.comm_dtype;
  opt.keep_gathered = a.keep_gathered;
  opt.replicate_below = a.replicate_below;
  shard::Engine engine(rt, opt);
  for (int l = 0; l < L; ++l) {
    const int unit = engine.add_unit(fmt::format("layer{}", l), mlp.layer_numel(l));
    EXPECT_OR_COUNT(unit == l, "[{}] add_unit returned {} for layer {}", name, unit, l);
  }
  engine.finalize([&](int unit, float* params) { mlp.init_layer(unit, a.seed, params); });
  const int p = engine.partition_size();
  EXPECT_OR_COUNT(engine.replicas() * p == world, "[{}] p={} r={} on {} ranks", name, p,
                  engine.replicas(), world);
  EXPECT_OR_COUNT(engine.num_units() == L, "[{}] num_units {}", name, engine.num_units());
  for (int l = 0; l < L; ++l)
    EXPECT_OR_COUNT(engine.unit_size(l) == mlp.layer_numel(l), "[{}] unit_size({}) = {}, not {}",
                    name, l, engine.unit_size(l), mlp.layer_numel(l));

  // Memory: params + grads + 2 moments, fp32, of this rank's padded shards.
  const auto mem = engine.memory();
  {
    // A sharded unit's shard is padded/p; a replicated unit (p = 1, or below replicate_below)
    // is kept whole, unpadded.
    uint64_t shard_elems = 0;
    for (int l = 0; l < L; ++l) {
      const size_t numel = mlp.layer_numel(l);
      shard_elems += replicated(numel, p, a) ? numel : padded(numel, world) / p;
    }
    EXPECT_OR_COUNT(mem.model_state_bytes == 16 * shard_elems,
                    "[{}] model_state_bytes {} != 16 x {} shard elements", name,
                    mem.model_state_bytes, shard_elems);
  }
  EXPECT_OR_COUNT(mem.full_model_params == mlp.total_numel(), "[{}] full_model_params {} != {}",
                  name, mem.full_model_params, mlp.total_numel());

  model::AdamWOptions ropt;
  ropt.lr = a.lr;
  ropt.weight_decay = a.wd;
  ropt.eps = a.eps;
  ropt.clip_norm = a.clip;
  model::ReferenceTrainer ref(mlp, data, ropt, a.seed, world, c.accum, a.batch);

  std::vector<std::vector<float>> grads(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) grads[l].resize(mlp.layer_numel(l));
  std::vector<float> x, y;
  int skipped = 0;
  // The global gradient norm: fp32 sums in another order (1e-4), or bf16 gradients.
  const double norm_tol = std::max(1e-4, 5 * a.tol);
  for (int t = 0; t < a.steps; ++t) {
    for (int s = 0; s < c.accum; ++s) {
      data.batch(model::sample_index(t, s, rank, 0, world, c.accum, a.batch), a.batch, x, y);
      model::MlpPass pass(mlp, x.data(), y.data(), a.batch);
      for (int l = 0; l < L; ++l) {
        if (l + 1 < L) engine.prefetch(l + 1);
        pass.forward(l, engine.gather(l));
        engine.release(l);
      }
      pass.loss();
      for (int l = L - 1; l >= 0; --l) {
        if (l > 0) engine.prefetch(l - 1);
        pass.backward(l, engine.gather(l), grads[l].data());
        engine.release(l);
        const int nan_rank = a.nan_rank >= 0 ? a.nan_rank : world - 1;
        if (poisoned(a, t) && s == 0 && rank == nan_rank && l == L / 2)
          grads[l][grads[l].size() / 2] = std::numeric_limits<float>::quiet_NaN();
        engine.reduce_gradients(l, grads[l].data());
      }
      const auto rep = engine.step();
      const bool boundary = s == c.accum - 1;
      EXPECT_OR_COUNT(rep.boundary == boundary, "[{}] step {} micro {}: boundary {}", name, t, s,
                      rep.boundary);
      if (!boundary) continue;
      const auto want = ref.step(t, poisoned(a, t));
      skipped += want.skipped;
      EXPECT_OR_COUNT(rep.skipped == want.skipped, "[{}] step {}: skipped {} expected {}", name, t,
                      rep.skipped, want.skipped);
      if (!want.skipped)
        EXPECT_OR_COUNT(std::abs(rep.grad_norm - want.grad_norm) <= norm_tol * want.grad_norm,
                        "[{}] step {}: grad norm {} expected {}", name, t, rep.grad_norm,
                        want.grad_norm);
      if (rank == 0)
        std::printf("[%s] step %d loss %.6f grad_norm %.6g (engine %.6g)%s\n", name.c_str(), t,
                    want.loss, want.grad_norm, rep.grad_norm, rep.skipped ? " skipped" : "");
    }
  }

  // Working set of gathered units: this driver holds at most the unit it computes and the one
  // it prefetched (all of them with keep_gathered, from forward to the end of the micro-step).
  {
    auto gathered = [&](int l) -> uint64_t {
      const size_t numel = mlp.layer_numel(l);
      return replicated(numel, p, a) ? 0 : 4 * padded(numel, world);
    };
    uint64_t peak = 0, all = 0;
    for (int l = 0; l < L; ++l) {
      all += gathered(l);
      peak = std::max(peak, gathered(l) + (l + 1 < L ? gathered(l + 1) : 0));
    }
    if (a.keep_gathered) peak = all;
    EXPECT_OR_COUNT(engine.memory().gathered_peak_bytes == peak,
                    "[{}] gathered_peak_bytes {} expected {}", name,
                    engine.memory().gathered_peak_bytes, peak);
  }

  // Traffic, before full_parameters() (a collective of its own).
  const auto got = engine.traffic();
  const auto expect = engine.expected_traffic(a.steps);
  for (int rail = 0; rail < fabric::kNumRails; ++rail)
    EXPECT_OR_COUNT(got.bytes_sent[rail] == expect.bytes_sent[rail],
                    "[{}] rank {} rail {}: sent {} bytes, expected_traffic says {}", name, rank,
                    rail, got.bytes_sent[rail], expect.bytes_sent[rail]);
  const auto model = step_traffic(mlp, a, world, rank, p, c.accum);
  const uint64_t steps = static_cast<uint64_t>(a.steps);
  EXPECT_OR_COUNT(got.total_bytes() == steps * model.calls,
                  "[{}] rank {}: sent {} bytes in all; the engine's collectives cost {} by the "
                  "algorithm table",
                  name, rank, got.total_bytes(), steps * model.calls);
  if (a.documented_formula)
    EXPECT_OR_COUNT(got.total_bytes() == steps * model.documented,
                    "[{}] rank {}: sent {} bytes in all; shard/engine.hpp's formula gives {}", name,
                    rank, got.total_bytes(), steps * model.documented);
  std::printf("traffic [%s] rank %d intra %llu inter %llu expected %llu %llu documented %llu\n",
              name.c_str(), rank, static_cast<unsigned long long>(got.bytes_sent[0]),
              static_cast<unsigned long long>(got.bytes_sent[1]),
              static_cast<unsigned long long>(expect.bytes_sent[0]),
              static_cast<unsigned long long>(expect.bytes_sent[1]),
              static_cast<unsigned long long>(steps * model.documented));

  // Final parameters against the reference.
  double max_diff = 0, max_ref = 0;
  for (int l = 0; l < L; ++l) {
    const auto full = engine.full_parameters(l);
    const auto& want = ref.params()[l];
    EXPECT_OR_COUNT(full.size() == want.size(), "[{}] full_parameters({}) has {} elements, not {}",
                    name, l, full.size(), want.size());
    for (size_t i = 0; i < std::min(full.size(), want.size()); ++i) {
      const double d = std::abs(static_cast<double>(full[i]) - want[i]);
      max_diff =
          std::isnan(full[i]) ? std::numeric_limits<double>::infinity() : std::max(max_diff, d);
      max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
    }
  }
  const double rel = max_diff / max_ref;
  EXPECT_OR_COUNT(rel <= a.tol,
                  "[{}] rank {}: parameters differ from the reference by {:.3g} "
                  "(max |param| {:.3g}), bound {:.1g}",
                  name, rank, rel, max_ref, a.tol);
  // The comparison means something: the parameters moved by far more than the bound.
  {
    const auto init = mlp.init(a.seed);
    double moved = 0;
    for (int l = 0; l < L; ++l)
      for (size_t i = 0; i < init[l].size(); ++i)
        moved = std::max(moved, std::abs(double{ref.params()[l][i]} - init[l][i]));
    EXPECT_OR_COUNT(a.steps == skipped || moved / max_ref > 20 * a.tol,
                    "[{}] training moved the parameters by only {:.3g}", name, moved / max_ref);
  }
  // With clipping: every step was clipped, and unclipped training ends far from the result.
  if (a.clip > 0) {
    model::AdamWOptions plain_opt = ropt;
    plain_opt.clip_norm = 0;
    model::ReferenceTrainer plain(mlp, data, plain_opt, a.seed, world, c.accum, a.batch);
    double apart = 0;
    for (int t = 0; t < a.steps; ++t) {
      const auto r = plain.step(t, poisoned(a, t));
      EXPECT_OR_COUNT(r.skipped || r.grad_norm > a.clip, "[{}] step {} was not clipped", name, t);
    }
    for (int l = 0; l < L; ++l)
      for (size_t i = 0; i < plain.params()[l].size(); ++i)
        apart = std::max(apart, std::abs(double{plain.params()[l][i]} - ref.params()[l][i]));
    EXPECT_OR_COUNT(apart / max_ref > 20 * a.tol,
                    "[{}] clipping changed the parameters by only {:.3g}", name, apart / max_ref);
    if (rank == 0)
      std::printf("[%s] clipping moved the result by %.3g x max |param|\n", name.c_str(),
                  apart / max_ref);
  }
  if (rank == 0)
    std::printf("[%s] params max_rel_diff %.3g (bound %.1g) skipped %d memory %llu B\n",
                name.c_str(), rel, a.tol, skipped,
                static_cast<unsigned long long>(mem.model_state_bytes));
}

}  // namespace

int main(int argc, char** argv) {
  std::string command = "engine_worker";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  try {
    const Args a = parse(argc, argv);
    auto rt = comm::Runtime::start(command);
    const int n = rt->topology().uniform_ranks_per_node();
    const auto valid = topo::valid_partition_sizes(rt->world_size(), n);
    for (const auto& text : a.configs) {
      const auto colon = text.find(':');
      const auto strategy = topo::parse_strategy(text.substr(0, colon));
      const int p = colon == std::string::npos ? 0 : std::stoi(text.substr(colon + 1));
      if (strategy == topo::Strategy::kMics && !a.strict &&
          std::find(valid.begin(), valid.end(), p) == valid.end())
        continue;
      for (int accum : a.accums) run_config(*rt, a, {strategy, p, accum});
    }
    if (g_failures == 0) rt->finish();
    std::printf("rank %d: %d failure(s)\n", rt->rank(), g_failures);
    return g_failures ? 1 : 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "mics: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "engine_worker: %s\n", e.what());
    return 2;
  }
}
