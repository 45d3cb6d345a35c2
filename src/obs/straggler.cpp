#include "obs/straggler.hpp"

#include <algorithm>
#include <cmath>

namespace mics::obs {

namespace {
constexpr float kNone = -3.0e38f;
// Layout: [0, world) idle ms per rank; then kArrivalSlots arrivals (max), kArrivalSlots
// negated arrivals (max = -min), the close time, the collective count, its negation and the
// negated close time.
size_t arrivals_at(int world) { return static_cast<size_t>(world); }
size_t neg_arrivals_at(int world) { return arrivals_at(world) + kArrivalSlots; }
size_t close_at(int world) { return neg_arrivals_at(world) + kArrivalSlots; }
}  // namespace

size_t straggler_payload_size(int world) { return close_at(world) + 4; }

std::vector<float> straggler_payload(int rank, int world, const StragglerWindow& w) {
  std::vector<float> p(straggler_payload_size(world), kNone);
  p[static_cast<size_t>(rank)] = static_cast<float>(std::max(0.0, w.idle_ms));
  const size_t slots = std::min<size_t>(w.arrivals_ms.size(), kArrivalSlots);
  for (size_t k = 0; k < slots; ++k) {
    p[arrivals_at(world) + k] = static_cast<float>(w.arrivals_ms[k]);
    p[neg_arrivals_at(world) + k] = static_cast<float>(-w.arrivals_ms[k]);
  }
  p[close_at(world)] = static_cast<float>(w.close_ms);
  p[close_at(world) + 1] = static_cast<float>(w.collectives);
  p[close_at(world) + 2] = static_cast<float>(-w.collectives);
  p[close_at(world) + 3] = static_cast<float>(-w.close_ms);
  return p;
}

StragglerResult analyze_stragglers(const std::vector<float>& v, int world) {
  StragglerResult r;
  r.close_max_ms = v[close_at(world)];
  if (world < 2) return r;
  r.idle_ms.resize(static_cast<size_t>(world));
  for (int i = 0; i < world; ++i) r.idle_ms[static_cast<size_t>(i)] = std::max(0.0f, v[static_cast<size_t>(i)]);
  r.rank = static_cast<int>(std::max_element(r.idle_ms.begin(), r.idle_ms.end()) - r.idle_ms.begin());
  std::vector<double> sorted = r.idle_ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = world % 2 ? sorted[static_cast<size_t>(world / 2)]
                                  : 0.5 * (sorted[static_cast<size_t>(world / 2 - 1)] + sorted[static_cast<size_t>(world / 2)]);
  r.delay_ms = r.idle_ms[static_cast<size_t>(r.rank)] - median;
  const float most = v[close_at(world) + 1], least = -v[close_at(world) + 2];
  r.slots_agree = most == least;
  r.spread_ms = std::max(0.0, static_cast<double>(r.close_max_ms) + static_cast<double>(v[close_at(world) + 3]));
  if (r.slots_agree) {
    const size_t slots = std::min<size_t>(static_cast<size_t>(most), kArrivalSlots);
    for (size_t k = 0; k < slots; ++k) {
      const double latest = v[arrivals_at(world) + k], earliest = -static_cast<double>(v[neg_arrivals_at(world) + k]);
      r.spread_ms = std::max(r.spread_ms, latest - earliest);
    }
  }
  return r;
}

}  // namespace mics::obs
