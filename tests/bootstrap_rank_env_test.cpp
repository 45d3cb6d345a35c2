// read_rank_env() for every launcher it knows, and its errors on bad values.
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "base/error.hpp"
#include "bootstrap/rank_env.hpp"

extern char** environ;

namespace mics::bootstrap {
namespace {

// Clears every variable read_rank_env() looks at (this test may itself run under a launcher)
// and restores them afterwards.
class RankEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (char** e = environ; *e; ++e) {
      std::string entry(*e);
      const std::string name = entry.substr(0, entry.find('='));
      if (name.starts_with("MICS_") || name.starts_with("SLURM_") || name.starts_with("OMPI_") ||
          name.starts_with("PMIX_"))
        saved_[name] = entry.substr(entry.find('=') + 1);
    }
    for (const auto& [name, value] : saved_) unsetenv(name.c_str());
  }
  void TearDown() override {
    for (const char* prefix : {"MICS_", "SLURM_", "OMPI_", "PMIX_"}) {
      bool again = true;
      while (again) {
        again = false;
        for (char** e = environ; *e; ++e) {
          std::string entry(*e);
          if (entry.starts_with(prefix)) {
            unsetenv(entry.substr(0, entry.find('=')).c_str());
            again = true;
            break;
          }
        }
      }
    }
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
  }
  static void set(const char* name, const std::string& value) { setenv(name, value.c_str(), 1); }
  // Expects a kConfig error whose text names `variable`.
  static void expect_config_error(const std::string& variable) {
    try {
      RankEnv env = read_rank_env();
      FAIL() << "expected an error naming " << variable << ", got rank " << env.rank;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
      EXPECT_NE(std::string(e.what()).find(variable), std::string::npos) << e.what();
      EXPECT_EQ(e.context().layer, "bootstrap");
      EXPECT_FALSE(e.context().hint.empty());
    }
  }

 private:
  std::map<std::string, std::string> saved_;
};

std::string hostname() {
  char buf[HOST_NAME_MAX + 1] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

TEST_F(RankEnvTest, SingleRankNeedsNothing) {
  RankEnv env = read_rank_env();
  EXPECT_EQ(env.source, "single");
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.node_key, hostname());
  EXPECT_TRUE(env.master_addr.empty());
  EXPECT_FALSE(env.store_hosted);
}

TEST_F(RankEnvTest, MicsLaunch) {
  set("MICS_RANK", "3");
  set("MICS_WORLD_SIZE", "4");
  set("MICS_LOCAL_RANK", "1");
  set("MICS_NODE_ID", "node1");
  set("MICS_MASTER_ADDR", "127.0.0.1");
  set("MICS_MASTER_PORT", "29500");
  set("MICS_JOB_TOKEN", "abc");
  set("MICS_STORE_HOSTED", "1");
  set("SLURM_PROCID", "7");  // mics launch wins over Slurm
  set("SLURM_NTASKS", "8");
  RankEnv env = read_rank_env();
  EXPECT_EQ(env.source, "mics launch");
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.node_key, "node1");
  EXPECT_EQ(env.master_addr, "127.0.0.1");
  EXPECT_EQ(env.master_port, 29500);
  EXPECT_EQ(env.job_token, "abc");
  EXPECT_TRUE(env.store_hosted);
}

TEST_F(RankEnvTest, Slurm) {
  set("SLURM_PROCID", "5");
  set("SLURM_NTASKS", "16");
  set("SLURM_LOCALID", "1");
  set("SLURM_NODEID", "2");
  set("SLURM_JOB_ID", "4242");
  set("SLURM_STEP_ID", "0");
  set("MICS_MASTER_ADDR", "node-a");
  set("MICS_MASTER_PORT", "1234");
  RankEnv env = read_rank_env();
  EXPECT_EQ(env.source, "slurm");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 16);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.node_key, "slurm-node-2");
  EXPECT_EQ(env.job_token, "slurm:4242.0");
  EXPECT_FALSE(env.store_hosted);
  set("MICS_NODE_ID", "emulated-3");  // an explicit node id wins
  set("MICS_JOB_TOKEN", "explicit");
  env = read_rank_env();
  EXPECT_EQ(env.node_key, "emulated-3");
  EXPECT_EQ(env.job_token, "explicit");
}

TEST_F(RankEnvTest, OpenMpi) {
  set("OMPI_COMM_WORLD_RANK", "2");
  set("OMPI_COMM_WORLD_SIZE", "4");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "2");
  set("OMPI_MCA_ess_base_jobid", "2092957697");
  set("OMPI_MCA_orte_hnp_uri", "2092957696.0;tcp://192.0.2.2:53713");
  set("MICS_MASTER_ADDR", "127.0.0.1");
  set("MICS_MASTER_PORT", "4000");
  RankEnv env = read_rank_env();
  EXPECT_EQ(env.source, "openmpi");
  EXPECT_EQ(env.rank, 2);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 2);
  EXPECT_EQ(env.node_key, hostname());
  EXPECT_NE(env.job_token.find("2092957697"), std::string::npos);
  EXPECT_NE(env.job_token.find("53713"), std::string::npos);
  // PMIX_NAMESPACE alone is enough.
  unsetenv("OMPI_MCA_ess_base_jobid");
  unsetenv("OMPI_MCA_orte_hnp_uri");
  set("PMIX_NAMESPACE", "777");
  EXPECT_EQ(read_rank_env().job_token, "openmpi:777");
  // Nothing to derive a token from.
  unsetenv("PMIX_NAMESPACE");
  expect_config_error("MICS_JOB_TOKEN");
}

TEST_F(RankEnvTest, BadValuesNameTheVariable) {
  set("MICS_RANK", "two");
  set("MICS_WORLD_SIZE", "4");
  expect_config_error("MICS_RANK");
  set("MICS_RANK", "4");
  expect_config_error("MICS_RANK");  // not below the world size
  set("MICS_RANK", "-1");
  expect_config_error("MICS_RANK");
  set("MICS_RANK", "1");
  set("MICS_WORLD_SIZE", "0");
  expect_config_error("MICS_WORLD_SIZE");
  unsetenv("MICS_WORLD_SIZE");
  expect_config_error("MICS_WORLD_SIZE");  // missing
  set("MICS_WORLD_SIZE", "4");
  expect_config_error("MICS_MASTER_ADDR");  // required for 4 ranks
  set("MICS_MASTER_ADDR", "localhost");
  expect_config_error("MICS_MASTER_PORT");
  set("MICS_MASTER_PORT", "70000");
  expect_config_error("MICS_MASTER_PORT");
  set("MICS_MASTER_PORT", "80x");
  expect_config_error("MICS_MASTER_PORT");
  set("MICS_MASTER_PORT", "8080");
  expect_config_error("MICS_JOB_TOKEN");  // mics launch always exports one
  set("MICS_JOB_TOKEN", "t");
  set("MICS_LOCAL_RANK", "x");
  expect_config_error("MICS_LOCAL_RANK");
  unsetenv("MICS_LOCAL_RANK");
  EXPECT_EQ(read_rank_env().rank, 1);
}

TEST_F(RankEnvTest, SlurmBadValues) {
  set("SLURM_PROCID", "0");
  expect_config_error("SLURM_NTASKS");
  set("SLURM_NTASKS", "2");
  set("MICS_MASTER_ADDR", "a");
  set("MICS_MASTER_PORT", "1");
  set("SLURM_JOB_ID", "1");
  set("SLURM_NODEID", "first");
  expect_config_error("SLURM_NODEID");
}

TEST_F(RankEnvTest, WorldOfOneAcceptsAMasterButValidatesIt) {
  set("MICS_RANK", "0");
  set("MICS_WORLD_SIZE", "1");
  RankEnv env = read_rank_env();
  EXPECT_EQ(env.world_size, 1);
  EXPECT_TRUE(env.job_token.empty());
  set("MICS_MASTER_PORT", "0");
  expect_config_error("MICS_MASTER_PORT");
  set("MICS_MASTER_PORT", "1000");
  set("MICS_STORE_HOSTED", "1");
  expect_config_error("MICS_MASTER_ADDR");
}

}  // namespace
}  // namespace mics::bootstrap
