// MarkovSource: a random sparse order-1 Markov chain with an exactly known entropy rate.
#include <cmath>

#include <fmt/format.h>

#include "base/error.hpp"
#include "io/markov_corpus.hpp"
#include "io/rng.hpp"

namespace mics::io {

MarkovSource::MarkovSource(const MarkovSpec& spec) : spec_(spec) {
  if (spec.vocab < 1 || spec.states < 1 || spec.first_token < 0 ||
      spec.first_token + spec.states > spec.vocab || spec.branching < 1 ||
      spec.branching > spec.states)
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("Markov source with vocab {}, states {} from token {}, branching {}",
                            spec.vocab, spec.states, spec.first_token, spec.branching),
                {.layer = "io",
                 .where = "building the synthetic corpus source",
                 .hint = "need 1 <= branching <= states and first_token + states <= vocab"});
  const auto S = static_cast<uint32_t>(spec.states);
  const auto B = static_cast<uint32_t>(spec.branching);
  next_.resize(S);
  std::vector<uint32_t> pool(S);
  for (uint32_t i = 0; i < S; ++i) {
    SplitMix64 rng(hash_words({spec.seed, i, 0x6d61726b6f76ULL /* "markov" */}));
    // Candidates: every state but i+1, which is always successor 0 (the cycle through all).
    const uint32_t ring = (i + 1) % S;
    pool.clear();
    for (uint32_t s = 0; s < S; ++s)
      if (s != ring) pool.push_back(s);
    auto& succ = next_[i];
    succ.emplace_back(ring, 0.0);
    // A partial Fisher-Yates draws B-1 distinct states from the pool.
    for (uint32_t k = 0; k + 1 < B; ++k) {
      const auto j = k + static_cast<uint32_t>(rng.below(pool.size() - k));
      std::swap(pool[k], pool[j]);
      succ.emplace_back(pool[k], 0.0);
    }
    double total = 0;
    for (auto& [state, p] : succ) {
      p = 0.05 + 0.95 * (1.0 - rng.uniform());  // in (0.05, 1]
      total += p;
    }
    for (auto& [state, p] : succ) p /= total;
  }

  // Stationary distribution: power iteration on the lazy chain (P + I) / 2.
  std::vector<double> pi(S, 1.0 / S), nxt(S);
  constexpr int kMaxIterations = 1'000'000;
  bool converged = false;
  for (int it = 0; it < kMaxIterations && !converged; ++it) {
    for (uint32_t s = 0; s < S; ++s) nxt[s] = 0.5 * pi[s];
    for (uint32_t s = 0; s < S; ++s)
      for (const auto& [t, p] : next_[s]) nxt[t] += 0.5 * pi[s] * p;
    double sum = 0;
    for (double v : nxt) sum += v;
    double diff = 0;
    for (uint32_t s = 0; s < S; ++s) {
      nxt[s] /= sum;
      diff += std::fabs(nxt[s] - pi[s]);
    }
    pi.swap(nxt);
    converged = diff < 1e-12;
  }
  if (!converged)
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("the stationary distribution of the Markov source (states {}, "
                            "branching {}) did not converge in {} iterations",
                            spec.states, spec.branching, kMaxIterations),
                {.layer = "io",
                 .where = "building the synthetic corpus source",
                 .hint = "use fewer states or a larger branching"});
  stationary_ = std::move(pi);
  entropy_ = 0;
  for (uint32_t s = 0; s < S; ++s) {
    double h = 0;
    for (const auto& [t, p] : next_[s]) h -= p * std::log(p);
    entropy_ += stationary_[s] * h;
  }
}

std::vector<uint32_t> MarkovSource::generate(uint64_t n, uint64_t stream) const {
  std::vector<uint32_t> out;
  if (n == 0) return out;
  out.reserve(n);
  SplitMix64 rng(hash_words({spec_.seed, stream, 0x73747265616dULL /* "stream" */}));
  // The first state from pi, the others from the chain.
  uint32_t state = static_cast<uint32_t>(stationary_.size() - 1);
  {
    const double u = rng.uniform();
    double cum = 0;
    for (size_t s = 0; s < stationary_.size(); ++s) {
      cum += stationary_[s];
      if (u < cum) {
        state = static_cast<uint32_t>(s);
        break;
      }
    }
  }
  out.push_back(state);
  for (uint64_t i = 1; i < n; ++i) {
    const auto& succ = next_[state];
    const double u = rng.uniform();
    double cum = 0;
    uint32_t pick = succ.back().first;
    for (const auto& [t, p] : succ) {
      cum += p;
      if (u < cum) {
        pick = t;
        break;
      }
    }
    state = pick;
    out.push_back(state);
  }
  const auto first = static_cast<uint32_t>(spec_.first_token);
  if (first != 0)
    for (auto& token : out) token += first;
  return out;
}

}  // namespace mics::io
