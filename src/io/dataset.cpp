// TokenDataset: sequences of seq_len + 1 tokens over a list of shards.
#include <algorithm>

#include <fmt/format.h>

#include "base/error.hpp"
#include "io/dataset.hpp"

namespace mics::io {

TokenDataset::TokenDataset(const std::vector<std::string>& paths, int vocab, int seq_len)
    : seq_len_(seq_len) {
  const ErrorContext ctx{.layer = "io", .where = "opening the token dataset"};
  if (seq_len < 1 || vocab < 1)
    throw Error(
        ErrorKind::kInvalidArgument,
        fmt::format("sequence length {} and vocabulary {} must be positive", seq_len, vocab), ctx);
  if (paths.empty()) {
    ErrorContext c = ctx;
    c.hint = "give the shard files (--data DIR/*_train_*.bin)";
    throw Error(ErrorKind::kInvalidArgument, "no shard files given", c);
  }
  const auto T = static_cast<uint64_t>(seq_len);
  uint64_t tokens = 0;
  for (const std::string& path : paths) {
    TokenShard shard = TokenShard::open(path);
    shard.validate_tokens(vocab);
    const uint64_t n = shard.size() > T ? (shard.size() - 1) / T : 0;
    first_.push_back(total_);
    total_ += n;
    tokens += shard.size();
    shards_.push_back(std::move(shard));
  }
  if (total_ == 0) {
    ErrorContext c = ctx;
    c.hint = "use a shorter sequence length or more data";
    throw Error(
        ErrorKind::kInvalidArgument,
        fmt::format("the {} shard(s) ({}{}) hold {} tokens: no shard has a sequence of "
                    "seq_len + 1 = {} tokens",
                    paths.size(), paths.front(), paths.size() > 1 ? ", ..." : "", tokens, T + 1),
        c);
  }
}

uint64_t TokenDataset::num_tokens() const {
  uint64_t n = 0;
  for (const TokenShard& s : shards_) n += s.size();
  return n;
}

void TokenDataset::sequence(uint64_t j, int32_t* inputs, int32_t* targets) const {
  MICS_CHECK(j < total_, fmt::format("sequence {} of {}", j, total_));
  // The last shard whose first sequence is <= j.
  const auto it = std::upper_bound(first_.begin(), first_.end(), j);
  const auto s = static_cast<size_t>(it - first_.begin()) - 1;
  const auto T = static_cast<uint64_t>(seq_len_);
  const uint64_t start = (j - first_[s]) * T;
  shards_[s].read(start, static_cast<size_t>(T), inputs);
  shards_[s].read(start + 1, static_cast<size_t>(T), targets);
}

}  // namespace mics::io
