// Sampler: epoch e visits every sequence once, in a permutation drawn from (seed, e).
#include <fmt/format.h>

#include "base/error.hpp"
#include "io/dataset.hpp"
#include "io/rng.hpp"

namespace mics::io {

Sampler::Sampler(uint64_t num_sequences, uint64_t seed) : n_(num_sequences), seed_(seed) {
  if (n_ == 0)
    throw Error(ErrorKind::kInvalidArgument, "a sampler over 0 sequences",
                {.layer = "io",
                 .where = "creating the data sampler",
                 .hint = "the dataset holds no sequence"});
}

uint64_t Sampler::sequence_at(uint64_t pos) const {
  const uint64_t epoch = pos / n_;
  std::lock_guard<std::mutex> lock(mutex_);
  if (epoch != cached_epoch_) {
    // Fisher-Yates (Durstenfeld) over 0..n-1 with splitmix64 seeded from hash(seed, epoch).
    perm_.resize(n_);
    for (uint64_t i = 0; i < n_; ++i) perm_[i] = i;
    SplitMix64 rng(hash_words({seed_, epoch, 0x73616d706c6572ULL /* "sampler" */}));
    for (uint64_t i = n_ - 1; i > 0; --i) std::swap(perm_[i], perm_[rng.below(i + 1)]);
    cached_epoch_ = epoch;
  }
  return perm_[pos % n_];
}

uint64_t Sampler::position(uint64_t step, int micro, int rank, int row, int world, int grad_accum,
                           int micro_batch) {
  MICS_CHECK(world > 0 && grad_accum > 0 && micro_batch > 0 && micro >= 0 && micro < grad_accum &&
                 rank >= 0 && rank < world && row >= 0 && row < micro_batch,
             fmt::format("step {} micro {} rank {} row {} of world {} x accum {} x batch {}", step,
                         micro, rank, row, world, grad_accum, micro_batch));
  const uint64_t G = static_cast<uint64_t>(world) * static_cast<uint64_t>(grad_accum) *
                     static_cast<uint64_t>(micro_batch);
  return step * G +
         (static_cast<uint64_t>(micro) * static_cast<uint64_t>(world) +
          static_cast<uint64_t>(rank)) *
             static_cast<uint64_t>(micro_batch) +
         static_cast<uint64_t>(row);
}

}  // namespace mics::io
