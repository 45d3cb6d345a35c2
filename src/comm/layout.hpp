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

}  // namespace mics::comm
