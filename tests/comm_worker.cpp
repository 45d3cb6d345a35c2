// One rank of the collective tests, started N times by `mics launch` (see comm_grid_test.cpp).
// Every rank can compute every rank's input (a hash of seed, rank and index), so each checks
// its results against a reference computed locally in double precision, and checks that the
// bytes its communicators sent equal each algorithm's documented formula, exactly.
//
//   comm_worker grid          all ops x dtypes x reductions x counts x algorithms, in and out of
//   place comm_worker groups        MiCS partition / replication groups from split() comm_worker
//   loop          all-reduces forever (the failure tests kill or stop a rank)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/runtime.hpp"
#include "worker_check.hpp"
#include "comm/traffic_model.hpp"

using namespace mics;
using namespace mics::comm;

namespace {


uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

// Input value of `rank` at index i, already representable in dtype t.
float value(uint64_t seed, int rank, size_t i, DType t) {
  const uint64_t h = mix(seed * 1000003 + static_cast<uint64_t>(rank) * 7919 + i);
  float v = static_cast<float>(static_cast<double>(h >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  if (t == DType::kBF16) v = bf16_to_f32(f32_to_bf16(v));
  if (t == DType::kF16) v = f16_to_f32(f32_to_f16(v));
  return v;
}



double reference(uint64_t seed, int n, size_t i, DType t, ReduceOp op) {
  double acc = op == ReduceOp::kMax ? -1e30 : 0.0;
  for (int r = 0; r < n; ++r) {
    const double v = value(seed, r, i, t);
    acc = op == ReduceOp::kMax ? std::max(acc, v) : acc + v;
  }
  return op == ReduceOp::kAvg ? acc / n : acc;
}

double tolerance(DType t, int n) {
  // Each ring hop rounds a partial sum of magnitude <= n once.
  if (t == DType::kF32) return 2e-6 * n * n;
  if (t == DType::kBF16) return 8e-3 * n * n;
  return 1e-3 * n * n;
}

uint64_t checksum(const void* buf, size_t bytes) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < bytes; ++i)
    h = (h ^ static_cast<const unsigned char*>(buf)[i]) * 1099511628211ULL;
  return h;
}

// --- traffic formulas, written independently of the algorithm files ---------------------
size_t blk(size_t count, int n, int i) {
  return block_of(count, n, mod(i, n)).count;
}

uint64_t expected_bytes(const std::string& op, Algo algo, const Communicator& c, size_t count,
                        size_t es) {
  const int n = c.size(), r = c.rank();
  const uint64_t M = count * es;
  if (n == 1) return 0;
  if (op == "all_gather") {
    if (algo == Algo::kRecursiveDoubling) {
      uint64_t sent = 0;
      for (int d = 1; d < n; d <<= 1)
        for (int j = 0; j < std::min(d, n - d); ++j) sent += blk(count, n, r + j) * es;
      return sent;
    }
    if (algo == Algo::kHierarchical) {
      const int nl = c.members_per_node(), k = n / nl, l = r % nl, a = r / nl;
      uint64_t stage1 = 0, stage2 = 0;
      for (int node = 0; node < k; ++node)
        if (node != mod(a + 1, k)) stage1 += blk(count, n, node * nl + l) * es;
      for (int local = 0; local < nl; ++local)
        if (local != mod(l + 1, nl))
          for (int node = 0; node < k; ++node) stage2 += blk(count, n, node * nl + local) * es;
      return stage1 + stage2;
    }
    return M - blk(count, n, r + 1) * es;
  }
  if (op == "reduce_scatter") {
    if (algo == Algo::kRecursiveDoubling) return expected_bytes("all_reduce", algo, c, count, es);
    return M - blk(count, n, r) * es;
  }
  if (op == "all_reduce") {
    if (algo == Algo::kRecursiveDoubling) {
      int p2 = 1, lg = 0;
      while (p2 * 2 <= n) p2 *= 2, ++lg;
      const int rem = n - p2;
      if (r < 2 * rem) return r % 2 == 0 ? M : (lg + 1) * M;
      return lg * M;
    }
    if (algo == Algo::kHalvingDoubling) {
      // M - |own block| while halving, then the aligned 1, 2, 4, ... blocks around it (p2 blocks)
      int p2 = 1;
      while (p2 * 2 <= n) p2 *= 2;
      const int rem = n - p2;
      if (r < 2 * rem && r % 2 == 0) return M;
      const int v = r < 2 * rem ? r / 2 : r - rem;
      uint64_t sent = M - blk(count, p2, v) * es;
      for (int width = 1; width < p2; width *= 2) {
        const int first = v / width * width;
        for (int b = first; b < first + width; ++b) sent += blk(count, p2, b) * es;
      }
      return r < 2 * rem ? sent + M : sent;
    }
    return (M - blk(count, n, r) * es) + (M - blk(count, n, r + 1) * es);
  }
  return 0;
}

struct Case {
  std::string op;
  DType dtype;
  ReduceOp redop;
  size_t count;
  Algo algo;
  bool in_place;
};

void run_case(Communicator& c, const Case& k, uint64_t seed) {
  const int n = c.size(), r = c.rank();
  const size_t es = dtype_size(k.dtype);
  const size_t count = k.count;
  const Block mine = block_of(count, n, r);
  std::vector<std::byte> in(count * es + 16), out(count * es + 16);
  const std::string what = fmt::format(
      "{} {} {} count={} algo={} {} on {}", k.op, to_string(k.dtype), to_string(k.redop), count,
      to_string(k.algo), k.in_place ? "in-place" : "out-of-place", c.name());
  std::memset(out.data(), 0xa5, out.size());
  const Traffic before = c.traffic();
  const Algo used = c.choose(k.op.c_str(), count * es, k.algo);
  if (k.op == "all_gather") {
    for (size_t i = 0; i < mine.count; ++i)
      store_f32(in.data(), i, k.dtype, value(seed, r, mine.offset + i, k.dtype));
    if (k.in_place) {
      std::memcpy(out.data() + mine.offset * es, in.data(), mine.count * es);
      c.all_gather(out.data() + mine.offset * es, out.data(), count, k.dtype, k.algo);
    } else {
      c.all_gather(in.data(), out.data(), count, k.dtype, k.algo);
    }
    for (size_t m = 0; m < static_cast<size_t>(n); ++m) {
      const Block b = block_of(count, n, static_cast<int>(m));
      for (size_t i = 0; i < b.count; ++i) {
        const float got = load_f32(out.data(), b.offset + i, k.dtype);
        const float want = value(seed, static_cast<int>(m), b.offset + i, k.dtype);
        EXPECT_OR_COUNT(got == want, "{}: element {} = {} want {}", what, b.offset + i, got, want);
        if (got != want) break;
      }
    }
  } else if (k.op == "reduce_scatter") {
    for (size_t i = 0; i < count; ++i) store_f32(in.data(), i, k.dtype, value(seed, r, i, k.dtype));
    void* dst = k.in_place ? static_cast<void*>(in.data() + mine.offset * es) : out.data();
    c.reduce_scatter(in.data(), dst, count, k.dtype, k.redop, k.algo);
    for (size_t i = 0; i < mine.count; ++i) {
      const double want = reference(seed, n, mine.offset + i, k.dtype, k.redop);
      const double got = load_f32(dst, i, k.dtype);
      EXPECT_OR_COUNT(std::fabs(got - want) <= tolerance(k.dtype, n),
                      "{}: shard element {} = {} want {}", what, i, got, want);
      if (std::fabs(got - want) > tolerance(k.dtype, n)) break;
    }
  } else if (k.op == "all_reduce") {
    for (size_t i = 0; i < count; ++i) store_f32(in.data(), i, k.dtype, value(seed, r, i, k.dtype));
    void* dst = k.in_place ? static_cast<void*>(in.data()) : out.data();
    c.all_reduce(in.data(), dst, count, k.dtype, k.redop, k.algo);
    for (size_t i = 0; i < count; ++i) {
      const double want = reference(seed, n, i, k.dtype, k.redop);
      const double got = load_f32(dst, i, k.dtype);
      EXPECT_OR_COUNT(std::fabs(got - want) <= tolerance(k.dtype, n), "{}: element {} = {} want {}",
                      what, i, got, want);
      if (std::fabs(got - want) > tolerance(k.dtype, n)) break;
    }
    // Every member must hold the same bits.
    uint64_t sums[8] = {};
    uint64_t my = checksum(dst, count * es);
    std::vector<uint64_t> all(static_cast<size_t>(n));
    c.all_gather(&my, all.data(), static_cast<size_t>(n) * 2, DType::kF32,
                 Algo::kRecursiveDoubling);
    (void)sums;
    for (int m = 0; m < n; ++m)
      EXPECT_OR_COUNT(all[m] == all[0], "{}: member {} differs from member 0", what, m);
    return;  // the checksum exchange adds traffic; all_reduce traffic is checked below via
             // ring_only
  } else if (k.op == "broadcast") {
    const int root = static_cast<int>(count % static_cast<size_t>(n));
    for (size_t i = 0; i < count; ++i)
      store_f32(out.data(), i, k.dtype, r == root ? value(seed, root, i, k.dtype) : -7.0f);
    c.broadcast(out.data(), count, k.dtype, root, k.algo);
    for (size_t i = 0; i < count; ++i) {
      const float got = load_f32(out.data(), i, k.dtype), want = value(seed, root, i, k.dtype);
      EXPECT_OR_COUNT(got == want, "{}: element {} = {} want {}", what, i, got, want);
      if (got != want) break;
    }
    return;
  }
  const Traffic after = c.traffic();
  const uint64_t sent = after.total_bytes() - before.total_bytes();
  const uint64_t want = expected_bytes(k.op, used, c, count, es);
  EXPECT_OR_COUNT(sent == want, "{} ({}): sent {} bytes, formula says {}", what, to_string(used),
                  sent, want);
  // The library's traffic model (comm/traffic_model.hpp) must agree, per rail.
  const Traffic model = predict_traffic(c, k.op, count, k.dtype, k.algo);
  for (int rail = 0; rail < 2; ++rail)
    EXPECT_OR_COUNT(model.bytes_sent[rail] == after.bytes_sent[rail] - before.bytes_sent[rail],
                    "{} ({}): rail {} sent {} bytes, predict_traffic says {}", what,
                    to_string(used), rail, after.bytes_sent[rail] - before.bytes_sent[rail],
                    model.bytes_sent[rail]);
}

void check_all_reduce_traffic(Communicator& c, size_t count, Algo algo) {
  std::vector<float> buf(count, 1.0f);
  const Traffic before = c.traffic();
  const Algo used = c.choose("all_reduce", count * 4, algo);
  c.all_reduce(buf.data(), buf.data(), count, DType::kF32, ReduceOp::kSum, algo);
  const uint64_t sent = c.traffic().total_bytes() - before.total_bytes();
  const uint64_t want = expected_bytes("all_reduce", used, c, count, 4);
  EXPECT_OR_COUNT(sent == want, "all_reduce count={} ({}) on {}: sent {} bytes, formula says {}",
                  count, to_string(used), c.name(), sent, want);
  const Traffic model = predict_traffic(c, "all_reduce", count, DType::kF32, algo);
  for (int rail = 0; rail < 2; ++rail)
    EXPECT_OR_COUNT(model.bytes_sent[rail] == c.traffic().bytes_sent[rail] - before.bytes_sent[rail],
                    "all_reduce count={} on {}: rail {} predict_traffic says {}", count, c.name(),
                    rail, model.bytes_sent[rail]);
}

void grid(Runtime& rt) {
  Communicator& world = rt.world();
  const int n = world.size();
  const std::vector<size_t> counts = {
      0, 1, 2, static_cast<size_t>(n) - 1 + 2, static_cast<size_t>(3 * n + 1), 1000, 40000, 300007};
  const std::vector<Algo> algos = {Algo::kAuto, Algo::kRing, Algo::kRecursiveDoubling, Algo::kHierarchical,
                                   Algo::kHalvingDoubling};
  uint64_t seed = 1;
  // The first hierarchical all-gather builds the node sub-communicators (a split, whose
  // exchange is world traffic); do it before measuring.
  {
    std::vector<float> shard(1), all(static_cast<size_t>(n));
    world.all_gather(shard.data(), all.data(), all.size(), DType::kF32, Algo::kHierarchical);
  }
  for (const char* op : {"all_gather", "reduce_scatter", "all_reduce", "broadcast"})
    for (DType t : {DType::kF32, DType::kBF16, DType::kF16})
      for (size_t count : counts)
        for (Algo algo : algos) {
          if (count > 40000 && (t != DType::kF32 || algo == Algo::kRecursiveDoubling)) continue;
          for (ReduceOp redop : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
            const bool reduces =
                std::string(op) == "reduce_scatter" || std::string(op) == "all_reduce";
            if (!reduces && redop != ReduceOp::kSum) continue;
            if (reduces && redop != ReduceOp::kSum && (t != DType::kF32 || count > 1000)) continue;
            for (bool in_place : {false, true}) {
              if (in_place && t != DType::kF32) continue;
              run_case(world, {op, t, redop, count, algo, in_place}, seed++);
            }
          }
        }
  for (size_t count : {size_t{1}, size_t{1000}, size_t{300007}})
    for (Algo algo : {Algo::kRing, Algo::kRecursiveDoubling, Algo::kHalvingDoubling})
      check_all_reduce_traffic(world, count, algo);
  world.barrier();
}

// Partition groups (contiguous blocks of p) and replication groups (strided), as MiCS builds.
void groups(Runtime& rt) {
  Communicator& world = rt.world();
  const int n = world.size();
  for (int p = 1; p <= n; ++p) {
    if (n % p) continue;
    auto part = world.split(world.rank() / p, world.rank() % p, fmt::format("partition(p={})", p));
    auto repl =
        world.split(world.rank() % p, world.rank() / p, fmt::format("replication(p={})", p));
    EXPECT_OR_COUNT(part->size() == p && repl->size() == n / p, "group sizes for p={}", p);
    EXPECT_OR_COUNT(part->global_rank(part->rank()) == world.rank(), "partition member identity");
    run_case(*part, {"all_gather", DType::kF32, ReduceOp::kSum, 10007, Algo::kAuto, false},
             100 + p);
    run_case(*part, {"reduce_scatter", DType::kBF16, ReduceOp::kSum, 10007, Algo::kRing, false},
             200 + p);
    run_case(*repl, {"all_reduce", DType::kF32, ReduceOp::kAvg, 2501, Algo::kRing, true}, 300 + p);
    // Colour < 0 leaves a rank out.
    auto odd = world.split(world.rank() % 2 ? 1 : -1, 0, "odd");
    EXPECT_OR_COUNT((odd != nullptr) == (world.rank() % 2 == 1), "split with negative colour");
    if (odd)
      run_case(*odd, {"all_gather", DType::kF16, ReduceOp::kSum, 33, Algo::kAuto, false}, 400 + p);
  }
  world.barrier();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "grid";
  try {
    auto rt = Runtime::start("comm_worker " + mode);
    if (mode == "grid")
      grid(*rt);
    else if (mode == "groups")
      groups(*rt);
    else if (mode == "loop") {
      std::vector<float> buf(1 << 20, 1.0f);
      for (long iter = 0;; ++iter) {
        rt->world().all_reduce(buf.data(), buf.data(), buf.size(), DType::kF32, ReduceOp::kAvg);
        if (iter == 2) {
          std::printf("rank %d: looping\n", rt->rank());
          std::fflush(stdout);
        }
      }
    } else {
      std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
      return 2;
    }
    if (g_failures == 0) rt->finish();
    std::printf("rank %d: %s with %d failure(s)\n", rt->rank(), mode.c_str(), g_failures);
    return g_failures ? 1 : 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "mics: error: %s\n", e.what());
    return 1;
  }
}
