// Collectives over real processes, the real libfabric shm and tcp providers, and emulated
// nodes: every op, dtype and a spread of counts for world sizes 1..8 on 1, 2 and 4 nodes,
// checked against a reference and against each algorithm's traffic formula (comm_worker.cpp).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "process_util.hpp"

namespace {

struct Layout {
  int ranks;
  int nodes;
};

std::string launch(const Layout& l, const std::string& args) {
  return fmt::format("MICS_TIMEOUT_S=120 {} launch -n {} --nodes {} -- {} {}", MICS_BINARY, l.ranks,
                     l.nodes, MICS_COMM_WORKER, args);
}

class CommGrid : public ::testing::TestWithParam<Layout> {};

TEST_P(CommGrid, EveryOpDtypeCountAndAlgorithm) {
  auto result = mics::testing::run_command(launch(GetParam(), "grid"));
  EXPECT_EQ(result.status, 0) << result.output;
}

TEST_P(CommGrid, PartitionAndReplicationGroups) {
  auto result = mics::testing::run_command(launch(GetParam(), "groups"));
  EXPECT_EQ(result.status, 0) << result.output;
}

std::vector<Layout> layouts() {
  std::vector<Layout> all;
  for (int n = 1; n <= 8; ++n)
    for (int k : {1, 2, 4})
      if (n % k == 0 && k <= n) all.push_back({n, k});
  return all;
}

INSTANTIATE_TEST_SUITE_P(Layouts, CommGrid, ::testing::ValuesIn(layouts()),
                         [](const auto& param_info) {
                           return fmt::format("n{}_nodes{}", param_info.param.ranks,
                                              param_info.param.nodes);
                         });

}  // namespace
