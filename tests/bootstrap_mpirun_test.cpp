// bootstrap::join under Open MPI's mpirun: rank, world size and the job token come from the
// variables mpirun sets (no MICS_JOB_TOKEN), rank 0 hosts the store.
//
// The test binary is its own rank program: Mpirun.FourRanks runs mpirun on this binary with
// the filter Mpirun.RankBody and a marker variable; without the marker RankBody skips.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "process_util.hpp"

#include "base/strings.hpp"
#include "bootstrap/bootstrap.hpp"

namespace mics::bootstrap {
namespace {

std::string find_in_path(const std::string& name) {
  for (const auto& dir : split(env_string("PATH").value_or("/usr/bin:/bin"), ':')) {
    const std::string path = dir + "/" + name;
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return {};
}

using mics::testing::free_port;

TEST(Mpirun, RankBody) {
  if (!std::getenv("MICS_MPIRUN_TEST_RANK"))
    GTEST_SKIP() << "runs only as a rank under mpirun (started by Mpirun.FourRanks)";
  Job job = join("mpirun-test-config");
  ASSERT_EQ(job.env.source, "openmpi");
  job.store->barrier("mpirun-test", job.env.world_size);
  std::printf("RANK-OK rank=%d world=%d nodes=%zu\n", job.env.rank, job.env.world_size,
              job.node_keys.size());
  std::fflush(stdout);
  finish(job);
}

TEST(Mpirun, FourRanks) {
  if (std::getenv("MICS_MPIRUN_TEST_RANK")) GTEST_SKIP() << "this is a rank, not the driver";
  const std::string mpirun = find_in_path("mpirun");
  if (mpirun.empty()) GTEST_SKIP() << "mpirun not found in PATH: install openmpi-bin to run this";
  char self[4096] = {};
  ASSERT_GT(readlink("/proc/self/exe", self, sizeof(self) - 1), 0);
  const int port = free_port();
  // env -u: this test may itself run under mics launch or with a token set; the ranks must
  // see only Open MPI's identity and derive the token from it.
  const std::string cmd = fmt::format(
      "env -u MICS_RANK -u MICS_WORLD_SIZE -u MICS_JOB_TOKEN -u MICS_STORE_HOSTED "
      "-u MICS_NODE_ID -u SLURM_PROCID MICS_MPIRUN_TEST_RANK=1 MICS_MASTER_ADDR=127.0.0.1 "
      "MICS_MASTER_PORT={} MICS_TIMEOUT_S=30 {} --oversubscribe --allow-run-as-root -n 4 "
      "-x MICS_MPIRUN_TEST_RANK -x MICS_MASTER_ADDR -x MICS_MASTER_PORT -x MICS_TIMEOUT_S "
      "{} --gtest_filter=Mpirun.RankBody 2>&1",
      port, mpirun, self);
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  std::array<char, 4096> buf;
  while (fgets(buf.data(), buf.size(), pipe)) output += buf.data();
  const int status = pclose(pipe);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  for (int r = 0; r < 4; ++r)
    EXPECT_NE(output.find(fmt::format("RANK-OK rank={} world=4 nodes=4", r)), std::string::npos)
        << output;
}

}  // namespace
}  // namespace mics::bootstrap
