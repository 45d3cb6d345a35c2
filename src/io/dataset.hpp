#pragma once
// Training sequences over a set of token shards, a distributed sampler and a prefetcher.
//
// Sequence j is T+1 consecutive tokens (inputs = the first T, targets = the last T) starting
// at token j*T of one shard; a sequence never crosses shards. Sequences are numbered shard
// by shard in the order of the (sorted) file list.
//
// The sampler's order is a pure function of (seed, epoch, position): epoch e visits every
// sequence once in a permutation drawn from (seed, e). The global batch of optimizer step t
// is G = world * grad_accum * micro_batch consecutive positions t*G .. t*G + G-1, and rank r's
// micro-step m, row b takes position t*G + (m*world + r)*micro_batch + b. A resume needs only
// (seed, step) and works at a different world size with the same global batch.
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "io/token_shard.hpp"

namespace mics::io {

class TokenDataset {
 public:
  // Opens and validates every shard (header, size, token ids < vocab); throws naming the file.
  // Throws when the shards together hold no sequence of seq_len + 1 tokens.
  TokenDataset(const std::vector<std::string>& paths, int vocab, int seq_len);
  int seq_len() const { return seq_len_; }
  uint64_t num_sequences() const { return total_; }
  uint64_t num_tokens() const;
  const std::vector<TokenShard>& shards() const { return shards_; }
  // Writes sequence j's inputs and targets (seq_len each).
  void sequence(uint64_t j, int32_t* inputs, int32_t* targets) const;

 private:
  int seq_len_;
  std::vector<TokenShard> shards_;
  std::vector<uint64_t> first_;  // first sequence index of each shard
  uint64_t total_ = 0;
};

class Sampler {
 public:
  Sampler(uint64_t num_sequences, uint64_t seed);
  // The sequence at global position pos (epoch = pos / num_sequences).
  uint64_t sequence_at(uint64_t pos) const;
  uint64_t num_sequences() const { return n_; }
  // Global position of rank r's micro-step m, row b at optimizer step t.
  static uint64_t position(uint64_t step, int micro, int rank, int row, int world, int grad_accum,
                           int micro_batch);

 private:
  uint64_t n_, seed_;
  mutable uint64_t cached_epoch_ = UINT64_MAX;
  mutable std::vector<uint64_t> perm_;
  mutable std::mutex mutex_;
};

// One rank's micro-batches, read ahead on a background thread (depth micro-batches).
struct MicroBatch {
  uint64_t step = 0;
  int micro = 0;
  std::vector<int32_t> inputs, targets;  // micro_batch * seq_len each
};

class Prefetcher {
 public:
  Prefetcher(const TokenDataset& data, const Sampler& sampler, int rank, int world, int grad_accum,
             int micro_batch, uint64_t first_step, int depth = 4);
  ~Prefetcher();
  // The next micro-batch in (step, micro) order; blocks while it is being read. Time spent
  // blocked is added to wait_seconds().
  MicroBatch next();
  double wait_seconds() const;

 private:
  void run();
  const TokenDataset& data_;
  const Sampler& sampler_;
  int rank_, world_, grad_accum_, micro_batch_, depth_;
  uint64_t next_step_;
  int next_micro_ = 0;
  std::deque<MicroBatch> ready_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  double wait_s_ = 0;
  std::exception_ptr error_;  // a read error on the thread (a mics::Error), rethrown by next()
  std::thread thread_;
};

}  // namespace mics::io
