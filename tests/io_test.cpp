// The token data layer (io/): shards in llm.c's layout (both kinds, a shard written by an
// independent writer, every corruption named), shard globs, the dataset, the distributed
// sampler, the prefetcher, the Markov source and its exact entropy rate, the synthetic corpus
// on disk (idempotent, race-safe) and the byte tokenizer.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/error.hpp"
#include "io/byte_tokenizer.hpp"
#include "io/dataset.hpp"
#include "io/markov_corpus.hpp"
#include "io/token_shard.hpp"

namespace fs = std::filesystem;
using namespace mics::io;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mics_io_test.XXXXXX").string();
    char* p = ::mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

// An independent writer, as llm.c's Python writes shards: 256 int32 (magic, version, count,
// 0...) then the raw tokens, all little-endian on x86. Lets tests forge headers and sizes.
void raw_shard(const std::string& path, int32_t magic, int32_t version, int32_t count,
               const std::vector<uint16_t>& tokens) {
  int32_t header[256] = {};
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fwrite(header, sizeof(int32_t), 256, f), 256u);
  if (!tokens.empty()) {
    ASSERT_EQ(std::fwrite(tokens.data(), 2, tokens.size(), f), tokens.size());
  }
  std::fclose(f);
}

// The message of the mics::Error that fn throws ("" when it throws none).
template <typename F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const mics::Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

std::vector<int32_t> all_tokens(const TokenShard& s) {
  std::vector<int32_t> out(s.size());
  s.read(0, out.size(), out.data());
  return out;
}

}  // namespace

// ---- shards ----------------------------------------------------------------------------------

TEST(TokenShard, RoundTripUint16) {
  TempDir dir;
  std::vector<uint32_t> tokens;
  for (uint32_t i = 0; i < 5000; ++i) tokens.push_back((i * 7919u) % 65536u);
  write_token_shard(dir / "a.bin", tokens);
  EXPECT_EQ(fs::file_size(dir / "a.bin"), 1024u + 2u * tokens.size());
  const TokenShard s = TokenShard::open(dir / "a.bin");
  EXPECT_EQ(s.token_bytes(), 2);
  EXPECT_EQ(s.version(), kShardVersionU16);
  ASSERT_EQ(s.size(), tokens.size());
  const auto got = all_tokens(s);
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(static_cast<uint32_t>(got[i]), tokens[i]);
  EXPECT_EQ(s.token(4999), tokens[4999]);
  const auto hist = s.histogram();
  uint64_t total = 0;
  for (auto c : hist) total += c;
  EXPECT_EQ(total, tokens.size());
  EXPECT_EQ(hist.size(), *std::max_element(tokens.begin(), tokens.end()) + 1u);
  // No temporary file is left next to it.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.str()), fs::directory_iterator{}), 1);
}

TEST(TokenShard, RoundTripUint32) {
  TempDir dir;
  std::vector<uint32_t> tokens = {0, 1, 65535, 65536, 128255, 4000000000u, 7};
  write_token_shard(dir / "b.bin", tokens);
  EXPECT_EQ(fs::file_size(dir / "b.bin"), 1024u + 4u * tokens.size());
  TokenShard s = TokenShard::open(dir / "b.bin");
  EXPECT_EQ(s.token_bytes(), 4);
  EXPECT_EQ(s.version(), kShardVersionU32);
  ASSERT_EQ(s.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(s.token(i), tokens[i]);
  // Moves keep the mapping.
  TokenShard moved = std::move(s);
  EXPECT_EQ(moved.token(4), 128255u);
  EXPECT_HAS(error_of([&] { moved.validate_tokens(128256); }), "index 5 is 4000000000");
}

TEST(TokenShard, IndependentWriterLoadsUnchanged) {
  TempDir dir;
  std::vector<uint16_t> tokens = {50256, 15496, 11, 995, 0, 65535};
  raw_shard(dir / "llmc.bin", 20240520, 1, static_cast<int32_t>(tokens.size()), tokens);
  const TokenShard s = TokenShard::open(dir / "llmc.bin");
  ASSERT_EQ(s.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(s.token(i), tokens[i]);
  // And ours is byte-identical to the independent writer's.
  write_token_shard(dir / "ours.bin", std::vector<uint32_t>(tokens.begin(), tokens.end()));
  std::ifstream a(dir / "llmc.bin", std::ios::binary), b(dir / "ours.bin", std::ios::binary);
  const std::string sa((std::istreambuf_iterator<char>(a)), {}),
      sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa, sb);
}

TEST(TokenShard, EmptyShardIsValidButHoldsNoSequence) {
  TempDir dir;
  write_token_shard(dir / "empty.bin", {});
  const TokenShard s = TokenShard::open(dir / "empty.bin");
  EXPECT_EQ(s.size(), 0u);
  EXPECT_TRUE(s.histogram().empty());
  s.validate_tokens(1);
  const std::string msg = error_of([&] { TokenDataset({dir / "empty.bin"}, 256, 8); });
  EXPECT_HAS(msg, "empty.bin");
  EXPECT_HAS(msg, "no shard has a sequence");
}

TEST(TokenShard, EachCorruptionIsNamed) {
  TempDir dir;
  const std::vector<uint16_t> six = {1, 2, 3, 4, 5, 6};
  struct Case {
    std::string name, expect;
  };
  // Truncated: the header says 600 tokens, 513 are there.
  raw_shard(dir / "truncated.bin", 20240520, 1, 600, std::vector<uint16_t>(513, 1));
  raw_shard(dir / "trailing.bin", 20240520, 1, 5, six);
  raw_shard(dir / "magic.bin", 12345, 1, 6, six);
  raw_shard(dir / "version.bin", 20240520, 3, 6, six);
  raw_shard(dir / "u32size.bin", 20240801, 7, 6, six);  // uint32 kind needs 24 bytes of tokens
  {
    std::ofstream short_file(dir / "short.bin", std::ios::binary);
    short_file << "not a shard";
  }
  const std::vector<Case> cases = {
      {"truncated.bin",
       "size 2050 bytes, header says 600 tokens of 2 bytes -> expected 2224 bytes (truncated?"},
      {"trailing.bin", "expected 1034 bytes (trailing bytes?"},
      {"magic.bin", "bad magic 12345"},
      {"version.bin", "unknown version 3 for magic 20240520"},
      {"u32size.bin", "expected 1048 bytes"},
      {"short.bin", "file is 11 bytes, shorter than the 1024-byte header"},
      {"missing.bin", "no such file"},
  };
  for (const Case& c : cases) {
    const std::string msg = error_of([&] { TokenShard::open(dir / c.name); });
    EXPECT_HAS(msg, dir / c.name);
    EXPECT_HAS(msg, c.expect);
  }
  EXPECT_HAS(error_of([&] { TokenShard::open(dir / "version.bin"); }),
             "supported: magic 20240520 version 1");
  EXPECT_HAS(error_of([&] { TokenShard::open(dir / "truncated.bin"); }), "regenerate");

  // A token id >= vocab: the file, the index and the id.
  raw_shard(dir / "vocab.bin", 20240520, 1, 6, {1, 2, 3, 300, 5, 6});
  const TokenShard s = TokenShard::open(dir / "vocab.bin");
  s.validate_tokens(301);
  const std::string msg = error_of([&] { s.validate_tokens(256); });
  EXPECT_HAS(msg, dir / "vocab.bin");
  EXPECT_HAS(msg, "index 3 is 300, not below the vocabulary size 256");
  // The dataset validates at construction.
  EXPECT_HAS(error_of([&] { TokenDataset({dir / "vocab.bin"}, 256, 2); }), "index 3 is 300");
}

TEST(TokenShard, FailedWriteNamesThePathAndLeavesNothing) {
  TempDir dir;
  // A file size limit makes write() fail (EFBIG) the way a full disk does (ENOSPC).
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ignore, &old), 0);
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string msg =
      error_of([&] { write_token_shard(dir / "big.bin", std::vector<uint32_t>(100000, 7)); });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::sigaction(SIGXFSZ, &old, nullptr);
  EXPECT_HAS(msg, "cannot write shard " + (dir / "big.bin"));
  EXPECT_HAS(msg, "errno");
  EXPECT_TRUE(fs::is_empty(dir.str())) << "a temporary file was left behind";
  // A directory that does not exist.
  EXPECT_HAS(error_of([&] { write_token_shard(dir / "no/such/x.bin", std::vector<uint32_t>{1}); }),
             dir / "no/such/x.bin");
}

TEST(TokenShard, GlobExpandsSortedAndNamesWhatIsMissing) {
  TempDir dir;
  for (const char* name :
       {"d_train_000002.bin", "d_train_000000.bin", "d_train_000001.bin", "d_val_000000.bin"})
    write_token_shard(dir / name, std::vector<uint32_t>{1, 2, 3});
  const auto files = expand_shard_glob(dir / "d_train_*.bin");
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0], dir / "d_train_000000.bin");
  EXPECT_EQ(files[2], dir / "d_train_000002.bin");
  const auto both = expand_shard_glob((dir / "d_val_*.bin") + "," + (dir / "d_train_000001.bin"));
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[0], dir / "d_train_000001.bin");
  EXPECT_HAS(error_of([&] { expand_shard_glob(dir / "nope.bin"); }),
             (dir / "nope.bin") + ": no such file");
  EXPECT_HAS(error_of([&] { expand_shard_glob(dir / "x_*.bin"); }), "matches no file");
  EXPECT_HAS(error_of([&] { expand_shard_glob(" , "); }), "no shard path given");
}

// ---- dataset, sampler, prefetcher ---------------------------------------------------------------

namespace {

// Two shards whose token i is (shard * 1000 + i) % 256: 3 and 2 sequences of T = 4.
struct TwoShards {
  TempDir dir;
  std::vector<std::string> paths;
  TwoShards() {
    for (int s = 0; s < 2; ++s) {
      std::vector<uint32_t> t;
      const int n = s == 0 ? 15 : 9;  // (15-1)/4 = 3, (9-1)/4 = 2
      for (int i = 0; i < n; ++i) t.push_back(static_cast<uint32_t>((s * 1000 + i) % 256));
      paths.push_back(dir / ("s" + std::to_string(s) + ".bin"));
      write_token_shard(paths.back(), t);
    }
  }
};

}  // namespace

TEST(TokenDataset, SequencesStayInsideOneShard) {
  TwoShards d;
  const TokenDataset data(d.paths, 256, 4);
  EXPECT_EQ(data.num_sequences(), 5u);
  EXPECT_EQ(data.num_tokens(), 24u);
  std::vector<int32_t> in(4), tg(4);
  data.sequence(2, in.data(), tg.data());  // shard 0, tokens 8..12
  EXPECT_EQ(in, (std::vector<int32_t>{8, 9, 10, 11}));
  EXPECT_EQ(tg, (std::vector<int32_t>{9, 10, 11, 12}));
  data.sequence(4, in.data(), tg.data());  // shard 1, tokens 4..8 of (1000 + i) % 256 = 232 + i
  EXPECT_EQ(in, (std::vector<int32_t>{236, 237, 238, 239}));
  EXPECT_EQ(tg, (std::vector<int32_t>{237, 238, 239, 240}));
  EXPECT_HAS(error_of([&] { TokenDataset({}, 256, 4); }), "no shard files");
}

TEST(Sampler, EachEpochIsABijectionFromSeedAndEpoch) {
  const uint64_t n = 1000;
  const Sampler a(n, 42), b(n, 42), c(n, 43);
  std::vector<uint64_t> e0, e1, e0b, other;
  for (uint64_t p = 0; p < n; ++p) e0.push_back(a.sequence_at(p));
  for (uint64_t p = n; p < 2 * n; ++p) e1.push_back(a.sequence_at(p));
  // b reads epoch 1 first, then epoch 0: the cache must not change the answer.
  for (uint64_t p = 2 * n - 1; p >= n; --p) (void)b.sequence_at(p);
  for (uint64_t p = 0; p < n; ++p) e0b.push_back(b.sequence_at(p));
  for (uint64_t p = 0; p < n; ++p) other.push_back(c.sequence_at(p));
  for (const auto* e : {&e0, &e1}) {
    std::vector<uint64_t> sorted = *e;
    std::sort(sorted.begin(), sorted.end());
    for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i);
  }
  EXPECT_EQ(e0, e0b);
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, other);
  // Pinned values: the order must not change across platforms or releases (resumes of a run
  // depend on it).
  const Sampler fixed(10, 1);
  std::vector<uint64_t> first;
  for (uint64_t p = 0; p < 20; ++p) first.push_back(fixed.sequence_at(p));
  EXPECT_EQ(first,
            (std::vector<uint64_t>{4, 2, 3, 8, 9, 6, 7, 5, 1, 0, 3, 6, 5, 1, 2, 4, 9, 8, 0, 7}));
}

TEST(Sampler, RanksMicroStepsAndRowsCoverTheGlobalBatchDisjointly) {
  for (auto [world, accum, mb] : {std::tuple{1, 1, 1}, {4, 1, 2}, {2, 3, 4}, {8, 2, 1}}) {
    const uint64_t G = static_cast<uint64_t>(world * accum * mb);
    for (uint64_t t : {0ull, 1ull, 17ull}) {
      std::set<uint64_t> seen;
      for (int r = 0; r < world; ++r)
        for (int m = 0; m < accum; ++m)
          for (int b = 0; b < mb; ++b) {
            const uint64_t p = Sampler::position(t, m, r, b, world, accum, mb);
            EXPECT_TRUE(seen.insert(p).second) << "position " << p << " twice";
          }
      ASSERT_EQ(seen.size(), G);
      EXPECT_EQ(*seen.begin(), t * G);
      EXPECT_EQ(*seen.rbegin(), t * G + G - 1);
    }
  }
}

TEST(Sampler, SameGlobalBatchAtAnotherWorldSizeVisitsTheSameSequences) {
  const Sampler s(97, 5);
  for (uint64_t t = 0; t < 60; ++t) {  // crosses epochs (97 sequences, 8 per step)
    std::multiset<uint64_t> one, four;
    for (int m = 0; m < 4; ++m)
      for (int b = 0; b < 2; ++b) one.insert(s.sequence_at(Sampler::position(t, m, 0, b, 1, 4, 2)));
    for (int r = 0; r < 4; ++r)
      for (int b = 0; b < 2; ++b)
        four.insert(s.sequence_at(Sampler::position(t, 0, r, b, 4, 1, 2)));
    ASSERT_EQ(one, four) << "step " << t;
  }
}

TEST(Prefetcher, ReturnsWhatDirectReadsReturnInOrder) {
  TwoShards d;
  const TokenDataset data(d.paths, 256, 4);
  const Sampler sampler(data.num_sequences(), 9);
  const int world = 2, rank = 1, accum = 3, mb = 2;
  Prefetcher pf(data, sampler, rank, world, accum, mb, /*first_step=*/5, /*depth=*/2);
  std::vector<int32_t> in(4), tg(4);
  for (uint64_t t = 5; t < 12; ++t)
    for (int m = 0; m < accum; ++m) {
      const MicroBatch batch = pf.next();
      ASSERT_EQ(batch.step, t);
      ASSERT_EQ(batch.micro, m);
      ASSERT_EQ(batch.inputs.size(), 8u);
      for (int b = 0; b < mb; ++b) {
        data.sequence(sampler.sequence_at(Sampler::position(t, m, rank, b, world, accum, mb)),
                      in.data(), tg.data());
        EXPECT_TRUE(std::equal(in.begin(), in.end(), batch.inputs.begin() + b * 4));
        EXPECT_TRUE(std::equal(tg.begin(), tg.end(), batch.targets.begin() + b * 4));
      }
    }
  EXPECT_GE(pf.wait_seconds(), 0.0);
}

TEST(Prefetcher, StopsCleanlyWhileFullOrFresh) {
  TwoShards d;
  const TokenDataset data(d.paths, 256, 4);
  const Sampler sampler(data.num_sequences(), 1);
  { Prefetcher fresh(data, sampler, 0, 1, 1, 1, 0, 1); }
  {
    Prefetcher full(data, sampler, 0, 1, 1, 1, 0, 3);
    (void)full.next();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it fill up
  }
  EXPECT_HAS(error_of([&] { Prefetcher bad(data, sampler, 2, 2, 1, 1, 0); }), "rank 2 of world 2");
}

TEST(Prefetcher, AnErrorOnTheThreadIsRethrownByNext) {
  TwoShards d;
  const TokenDataset data(d.paths, 256, 4);
  // A sampler over more sequences than the dataset has: the read of sequence >= 5 fails on the
  // thread; the batches before it are still handed out, then next() throws a mics::Error.
  const Sampler sampler(1000, 3);
  Prefetcher pf(data, sampler, 0, 1, 1, 1, 0, 2);
  std::string msg;
  for (int i = 0; i < 1000 && msg.empty(); ++i) msg = error_of([&] { (void)pf.next(); });
  EXPECT_HAS(msg, "sequence");
  EXPECT_HAS(error_of([&] { (void)pf.next(); }), "sequence");  // and again, not a hang
}

// ---- the Markov source -------------------------------------------------------------------------

TEST(MarkovSource, StationaryDistributionIsStationary) {
  const MarkovSource src({.vocab = 256, .states = 64, .branching = 4, .seed = 3});
  const auto& pi = src.stationary();
  ASSERT_EQ(pi.size(), 64u);
  double sum = 0;
  std::vector<double> next(64, 0.0);
  for (uint32_t s = 0; s < 64; ++s) {
    sum += pi[s];
    EXPECT_GT(pi[s], 0.0);
    const auto& succ = src.successors(s);
    ASSERT_EQ(succ.size(), 4u);
    double ps = 0;
    std::set<uint32_t> distinct;
    for (const auto& [t, p] : succ) {
      ps += p;
      distinct.insert(t);
      next[t] += pi[s] * p;
    }
    EXPECT_NEAR(ps, 1.0, 1e-12);
    EXPECT_EQ(distinct.size(), 4u);
  }
  EXPECT_NEAR(sum, 1.0, 1e-12);
  double diff = 0;
  for (uint32_t s = 0; s < 64; ++s) diff += std::fabs(next[s] - pi[s]);
  EXPECT_LT(diff, 1e-10);
  EXPECT_GT(src.entropy_rate_nats(), 0.0);
  EXPECT_LT(src.entropy_rate_nats(), std::log(4.0));
}

TEST(MarkovSource, EmpiricalLossMatchesTheEntropyRate) {
  const MarkovSource src({.vocab = 256, .states = 32, .branching = 5, .seed = 11});
  const uint64_t n = 2'000'000;
  const auto tokens = src.generate(n, 7);
  ASSERT_EQ(tokens.size(), n);
  // Per-token NLL under the true probabilities; the standard error from 200 batch means
  // (consecutive tokens are correlated, batches of 10k tokens nearly are not).
  const int batches = 200;
  const uint64_t per = (n - 1) / batches;
  std::vector<double> means;
  for (int b = 0; b < batches; ++b) {
    double sum = 0;
    for (uint64_t i = b * per + 1; i <= (b + 1) * per; ++i) {
      const auto& succ = src.successors(tokens[i - 1]);
      double p = 0;
      for (const auto& [t, q] : succ)
        if (t == tokens[i]) p = q;
      ASSERT_GT(p, 0.0) << "token " << i << " is not a successor of its predecessor";
      sum -= std::log(p);
    }
    means.push_back(sum / static_cast<double>(per));
  }
  double mean = 0, var = 0;
  for (double m : means) mean += m / batches;
  for (double m : means) var += (m - mean) * (m - mean) / (batches - 1);
  const double se = std::sqrt(var / batches);
  EXPECT_LT(std::fabs(mean - src.entropy_rate_nats()), 4 * se + 1e-9)
      << "empirical " << mean << " vs entropy rate " << src.entropy_rate_nats() << " (se " << se
      << ")";
  EXPECT_LT(se, 0.01);
}

TEST(MarkovSource, GenerateIsDeterministicPerStream) {
  const MarkovSpec spec{.vocab = 100, .states = 50, .branching = 3, .seed = 2};
  const MarkovSource a(spec), b(spec);
  EXPECT_EQ(a.generate(1000, 1), b.generate(1000, 1));
  EXPECT_NE(a.generate(1000, 1), a.generate(1000, 2));
  for (uint32_t t : a.generate(1000, 3)) EXPECT_LT(t, 50u);
  EXPECT_DOUBLE_EQ(a.entropy_rate_nats(), b.entropy_rate_nats());
  // Pinned: the default corpus must stay the same corpus across platforms and releases.
  const MarkovSource d({.vocab = 256, .states = 64, .branching = 4, .seed = 1});
  EXPECT_NEAR(d.entropy_rate_nats(), 1.2536500015722836, 1e-12);
  EXPECT_EQ(d.generate(10, 0), (std::vector<uint32_t>{34, 31, 3, 58, 27, 28, 29, 53, 36, 60}));
  const MarkovSource c({.vocab = 100, .states = 50, .branching = 3, .seed = 3});
  EXPECT_NE(a.entropy_rate_nats(), c.entropy_rate_nats());
  // branching 1: a deterministic cycle, entropy 0, stationary uniform.
  const MarkovSource cyc({.vocab = 8, .states = 8, .branching = 1, .seed = 1});
  EXPECT_NEAR(cyc.entropy_rate_nats(), 0.0, 1e-15);
  EXPECT_NEAR(cyc.stationary()[3], 0.125, 1e-9);
  EXPECT_HAS(error_of([] { MarkovSource({.vocab = 10, .states = 20}); }),
             "first_token + states <= vocab");
  EXPECT_HAS(error_of([] { MarkovSource({.vocab = 80, .states = 64, .first_token = 48}); }),
             "from token 48");
  // An offset moves the ids and nothing else.
  const MarkovSource shifted(
      {.vocab = 256, .states = 64, .branching = 4, .seed = 1, .first_token = 48});
  EXPECT_DOUBLE_EQ(shifted.entropy_rate_nats(), d.entropy_rate_nats());
  EXPECT_EQ(shifted.generate(10, 0),
            (std::vector<uint32_t>{82, 79, 51, 106, 75, 76, 77, 101, 84, 108}));
}

// ---- the synthetic corpus ---------------------------------------------------------------------

TEST(SyntheticCorpus, WritesReadsAndIsIdempotent) {
  TempDir dir;
  const MarkovSpec spec{.vocab = 256, .states = 16, .branching = 3, .seed = 4};
  const auto r = write_synthetic_corpus(dir / "c", spec, 2500, 300, 1000);
  ASSERT_EQ(r.train.size(), 3u);
  ASSERT_EQ(r.val.size(), 1u);
  EXPECT_EQ(r.train[2], dir / "c/synth_train_000002.bin");
  EXPECT_EQ(TokenShard::open(r.train[2]).size(), 500u);
  EXPECT_EQ(TokenShard::open(r.val[0]).size(), 300u);
  EXPECT_EQ(read_entropy_floor(dir / "c"), r.entropy_rate_nats);
  EXPECT_EQ(r.entropy_rate_nats, MarkovSource(spec).entropy_rate_nats());
  const auto mtime = fs::last_write_time(r.train[0]);
  const auto again = write_synthetic_corpus(dir / "c/", spec, 2500, 300, 1000);
  EXPECT_EQ(again.train, r.train);
  EXPECT_EQ(again.val, r.val);
  EXPECT_EQ(fs::last_write_time(r.train[0]), mtime) << "regenerated instead of reusing";
  // Another spec in the same directory is an error, not an overwrite.
  const std::string msg =
      error_of([&] { write_synthetic_corpus(dir / "c", {.seed = 5}, 2500, 300); });
  EXPECT_HAS(msg, dir / "c");
  EXPECT_HAS(msg, "another synthetic corpus");
  // A damaged corpus is named.
  fs::remove(r.train[1]);
  EXPECT_HAS(error_of([&] { write_synthetic_corpus(dir / "c", spec, 2500, 300, 1000); }),
             "damaged");
  EXPECT_LT(read_entropy_floor(dir.str()), 0.0);
}

TEST(SyntheticCorpus, ConcurrentCallsAgreeAndLeaveNoTemporaries) {
  TempDir dir;
  const MarkovSpec spec{.vocab = 256, .states = 32, .branching = 4, .seed = 8};
  std::vector<SynthResult> results(3);
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i)
    threads.emplace_back([&, i] {
      try {
        results[i] = write_synthetic_corpus(dir / "corpus", spec, 200000, 20000, 50000);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(errors[i], "");
    EXPECT_EQ(results[i].train, results[0].train);
    EXPECT_EQ(results[i].val, results[0].val);
    EXPECT_EQ(results[i].entropy_rate_nats, results[0].entropy_rate_nats);
  }
  std::vector<std::string> entries;
  for (const auto& e : fs::directory_iterator(dir.str())) entries.push_back(e.path().filename());
  EXPECT_EQ(entries, std::vector<std::string>{"corpus"});
  EXPECT_EQ(results[0].train.size(), 4u);
  const TokenDataset data(results[0].train, 256, 64);
  EXPECT_EQ(data.num_tokens(), 200000u);
}

// ---- the byte tokenizer
// --------------------------------------------------------------------------

TEST(ByteTokenizer, EncodesBytesAndDecodesPrintably) {
  const std::string text = "Hi\n\\ \xff\t";
  const auto ids = byte_encode(text);
  EXPECT_EQ(ids, (std::vector<uint32_t>{'H', 'i', 10, '\\', ' ', 255, 9}));
  EXPECT_EQ(byte_decode(std::span<const uint32_t>(ids)), "Hi\\n\\\\ \\xff\\t");
  EXPECT_EQ(byte_decode(std::span<const uint32_t>(ids), true), "Hi\n\\\\ \\xff\t");
  const std::vector<int32_t> odd = {65, 300, -1};
  EXPECT_EQ(byte_decode(odd), "A<300><-1>");
}
