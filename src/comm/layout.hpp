#pragma once
// How `count` elements are cut into n blocks when n does not divide count: the first
// count % n blocks get one element more. Block i starts at i*base + min(i, rem). Every
// collective that shards (reduce-scatter's outputs, all-gather's inputs, the ring's blocks)
// uses this one layout, and the sharded engine uses it for its shards.
#include <algorithm>
#include <cstddef>

namespace mics::comm {

struct Block {
  size_t offset;  // in elements
  size_t count;
};

inline Block block_of(size_t count, int n, int i) {
  const size_t base = count / static_cast<size_t>(n);
  const size_t rem = count % static_cast<size_t>(n);
  const size_t ui = static_cast<size_t>(i);
  return {ui * base + std::min(ui, rem), base + (ui < rem ? 1 : 0)};
}

inline int mod(int a, int n) {
  return ((a % n) + n) % n;
}

// The power-of-two algorithms (recursive doubling, halving-doubling) over n members: p2 is the
// largest power of two <= n; the first 2*rem members (rem = n - p2) fold in pairs, each even one
// handing its array to the odd one above it. `virtual_rank` is this member's rank among the p2
// that go on (-1 for a folded even member); member_of() maps a virtual rank back.
struct PowerOfTwoFold {
  int p2 = 1, rem = 0, virtual_rank = 0;
  int member_of(int v) const { return v < rem ? v * 2 + 1 : v + rem; }
};

inline PowerOfTwoFold power_of_two_fold(int n, int member) {
  PowerOfTwoFold f;
  while (f.p2 * 2 <= n) f.p2 *= 2;
  f.rem = n - f.p2;
  f.virtual_rank = member < 2 * f.rem ? (member % 2 == 0 ? -1 : member / 2) : member - f.rem;
  return f;
}

}  // namespace mics::comm
