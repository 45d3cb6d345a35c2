#pragma once
// The embedded default corpus: tokens from a random sparse Markov source whose entropy rate
// is computed exactly, so a run can say how close its loss came to the best possible.
//
// Source: order-1 Markov chain over `states` token ids (< vocab); from each state, `branching`
// successors drawn at random with random probabilities (all from the seed). The entropy rate
// is H = sum_i pi_i * H(P_i) in nats, pi the stationary distribution (power iteration to
// 1e-12). A model with context T >= 2 can reach H; no model can beat it in expectation.
//
// Choices made here: state i is token id first_token + i (other ids never occur; the embedded
// corpus starts at '0' so that its byte-level samples print as text).
// Successor 0 of state i is always i+1 mod states, so the chain has a cycle through every
// state (irreducible: pi exists and is unique); the other branching-1 successors are distinct
// states drawn at random. Probabilities are hash uniforms in (0.05, 1], normalized. pi is
// found by power iteration on the lazy chain (P + I)/2, which has the same stationary
// distribution and converges even when P is periodic.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mics::io {

struct MarkovSpec {
  int vocab = 256;
  int states = 64;
  int branching = 4;
  uint64_t seed = 1;
  int first_token = 0;  // state i emits token first_token + i
};

class MarkovSource {
 public:
  explicit MarkovSource(const MarkovSpec& spec);
  double entropy_rate_nats() const { return entropy_; }
  // n tokens of the chain started from the stationary distribution with stream seed `stream`.
  std::vector<uint32_t> generate(uint64_t n, uint64_t stream) const;
  const MarkovSpec& spec() const { return spec_; }
  // For tests and reports: the stationary distribution (index = state = token id) and the
  // successors of a state with their probabilities.
  const std::vector<double>& stationary() const { return stationary_; }
  const std::vector<std::pair<uint32_t, double>>& successors(uint32_t state) const {
    return next_.at(state);
  }

 private:
  MarkovSpec spec_;
  std::vector<std::vector<std::pair<uint32_t, double>>> next_;  // successors and probabilities
  std::vector<double> stationary_;
  double entropy_ = 0;
};

// `mics data synth`: writes DIR/synth_train_000000.bin .. (shards of at most
// shard_tokens), DIR/synth_val_000000.bin (val_tokens, an independent stream) and
// DIR/corpus.json {"source":"markov", spec..., "entropy_rate_nats", "train_tokens",
// "val_tokens", "train_files", "val_files"}. Written to DIR.tmp-<pid>-<n> and renamed, so a
// concurrent or interrupted generation never leaves a partial DIR. When DIR already holds a
// corpus.json of the same spec and token counts, that corpus is returned as it is (several
// ranks may call this at once: the first rename wins, the others use the winner's files).
// Train shard k is stream k of the source, the validation shard an independent stream; no
// validation shard is written when val_tokens is 0.
struct SynthResult {
  std::vector<std::string> train, val;
  double entropy_rate_nats = 0;
};
SynthResult write_synthetic_corpus(const std::string& dir, const MarkovSpec& spec,
                                   uint64_t train_tokens, uint64_t val_tokens,
                                   uint64_t shard_tokens = 100'000'000);
// Reads DIR/corpus.json; returns a negative entropy when there is none.
double read_entropy_floor(const std::string& dir);

}  // namespace mics::io
