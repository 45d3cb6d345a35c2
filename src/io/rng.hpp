#pragma once
// Deterministic pseudo-random numbers for the data layer: the same (seed, ...) gives the same
// numbers on every platform and standard library (unlike std::uniform_int_distribution,
// whose algorithm is implementation-defined). splitmix64 (Steele, Lea, Flood 2014).
#include <cstdint>
#include <initializer_list>

namespace mics::io {

// The splitmix64 finalizer: a bijective 64-bit mix.
constexpr uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Hash of a sequence of 64-bit words (order matters).
constexpr uint64_t hash_words(std::initializer_list<uint64_t> words) {
  uint64_t h = 0x6a09e667f3bcc908ULL;
  for (uint64_t w : words) h = mix64(h ^ mix64(w + 0x9e3779b97f4a7c15ULL));
  return h;
}

class SplitMix64 {
 public:
  explicit constexpr SplitMix64(uint64_t seed) : state_(seed) {}
  constexpr uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(state_);
  }
  // Uniform in [0, bound), bound > 0, without modulo bias (rejection sampling).
  constexpr uint64_t below(uint64_t bound) {
    const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    for (;;) {
      const uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }
  // Uniform in [0, 1) with 53 random bits.
  constexpr double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

}  // namespace mics::io
