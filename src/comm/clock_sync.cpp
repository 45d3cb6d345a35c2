#include "comm/clock_sync.hpp"

#include <limits>

#include "comm/op.hpp"

namespace mics::comm {

obs::ClockSync sync_clocks(Communicator& comm, int rounds) {
  obs::ClockSync result;
  const int n = comm.size();
  if (n == 1) {
    result.epoch_ns = obs::steady_ns();
    return result;
  }
  rounds = std::max(1, rounds);
  Op op(comm, "clock_sync", Algo::kRing, sizeof(int64_t));
  const uint32_t final_base = static_cast<uint32_t>(2 * n * rounds);
  if (comm.rank() == 0) {
    std::vector<std::array<int64_t, 3>> answers(static_cast<size_t>(n));
    for (int peer = 1; peer < n; ++peer) {
      int64_t best_rtt = std::numeric_limits<int64_t>::max(), best_offset = 0;
      for (int i = 0; i < rounds; ++i) {
        const uint32_t index = static_cast<uint32_t>((peer * rounds + i) * 2);
        int64_t t1 = 0;
        fabric::Request* rx = op.recv(peer, index + 1, &t1, sizeof(t1));
        const int64_t t0 = obs::steady_ns();
        fabric::Request* tx = op.send(peer, index, &t0, sizeof(t0));
        op.wait(rx, "clock sync pong");
        const int64_t t3 = obs::steady_ns();
        op.wait(tx, "clock sync ping");
        if (t3 - t0 < best_rtt) {
          best_rtt = t3 - t0;
          best_offset = (t0 + t3) / 2 - t1;
        }
      }
      answers[static_cast<size_t>(peer)] = {best_offset, best_rtt, 0};
      result.rtt_ns = std::max(result.rtt_ns, best_rtt);  // rank 0 reports the worst peer's
    }
    result.epoch_ns = obs::steady_ns();
    std::vector<fabric::Request*> sends;
    for (int peer = 1; peer < n; ++peer) {
      answers[static_cast<size_t>(peer)][2] = result.epoch_ns;
      sends.push_back(op.send(peer, final_base + static_cast<uint32_t>(peer), answers[static_cast<size_t>(peer)].data(),
                              sizeof(answers[0])));
    }
    op.wait_all(sends, "clock sync result");
    return result;
  }
  const int me = comm.rank();
  for (int i = 0; i < rounds; ++i) {
    const uint32_t index = static_cast<uint32_t>((me * rounds + i) * 2);
    int64_t t0 = 0;
    op.wait(op.recv(0, index, &t0, sizeof(t0)), "clock sync ping");
    const int64_t t1 = obs::steady_ns();
    op.wait(op.send(0, index + 1, &t1, sizeof(t1)), "clock sync pong");
  }
  std::array<int64_t, 3> answer{};
  op.wait(op.recv(0, final_base + static_cast<uint32_t>(me), answer.data(), sizeof(answer)), "clock sync result");
  result.offset_ns = answer[0];
  result.rtt_ns = answer[1];
  result.epoch_ns = answer[2];
  return result;
}

}  // namespace mics::comm
