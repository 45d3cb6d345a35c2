// bootstrap::join with ranks as threads (rank 0 hosting the store), and with ranks as processes
// started by `mics launch` (the launcher hosting it).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "process_util.hpp"

#include "base/clock.hpp"
#include "base/error.hpp"
#include "bootstrap/bootstrap.hpp"

namespace mics::bootstrap {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

using mics::testing::free_port;

RankEnv thread_env(int rank, int world, int port) {
  RankEnv env;
  env.rank = rank;
  env.world_size = world;
  env.local_rank = rank % 2;
  env.node_key = "node" + std::to_string(rank / 2);
  env.master_addr = "127.0.0.1";
  env.master_port = port;
  env.job_token = "join-test";
  env.source = "test";
  return env;
}

struct Outcome {
  std::vector<std::string> node_keys;
  std::string error;
  int peer = -1;
  ErrorKind kind = ErrorKind::kInternal;
};

// Runs `ranks` of a `world`-rank job as threads; config_of(rank) is each rank's config.
std::vector<Outcome> run_ranks(int ranks, int world, double timeout_s,
                               const std::function<std::string(int)>& config_of) {
  const int port = free_port();
  std::vector<Outcome> out(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        Job job = join(thread_env(r, world, port), config_of(r), timeout_s);
        out[r].node_keys = job.node_keys;
        finish(job);
      } catch (const Error& e) {
        out[r].error = e.what();
        out[r].peer = e.context().peer.value_or(-1);
        out[r].kind = e.kind();
      }
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

TEST(Join, FourThreadsAgree) {
  auto out = run_ranks(4, 4, 10, [](int) { return std::string(R"({"model":"gpt2","p":2})"); });
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(out[r].error, "") << "rank " << r;
    EXPECT_EQ(out[r].node_keys, (std::vector<std::string>{"node0", "node0", "node1", "node1"}));
  }
}

TEST(Join, ConfigDisagreementNamesTheRankAndBothValues) {
  auto out = run_ranks(4, 4, 10, [](int r) {
    return r == 2 ? std::string("partition=4") : std::string("partition=8");
  });
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(out[r].kind, ErrorKind::kConfig) << out[r].error;
    EXPECT_EQ(out[r].peer, 2) << out[r].error;
    EXPECT_TRUE(contains(out[r].error, "rank 2")) << out[r].error;
    EXPECT_TRUE(contains(out[r].error, "'partition=8'")) << out[r].error;
    EXPECT_TRUE(contains(out[r].error, "'partition=4'")) << out[r].error;
  }
}

TEST(Join, LongConfigsShowTheDifference) {
  std::string base(500, 'x');
  auto out = run_ranks(2, 2, 10, [&](int r) {
    std::string c = base;
    if (r == 1) c[300] = 'Y';
    return c;
  });
  EXPECT_TRUE(contains(out[1].error, "at byte 300")) << out[1].error;
  EXPECT_TRUE(contains(out[1].error, "xY")) << out[1].error;
  EXPECT_LT(out[1].error.size(), 1000u);
}

TEST(Join, BinaryConfigsAreComparedExactly) {
  auto out = run_ranks(2, 2, 10, [](int r) {
    return r == 0 ? std::string("\xff\xfe\0a", 4) : std::string("\xff\xfe\0b", 4);
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(out[r].kind, ErrorKind::kConfig) << out[r].error;
    EXPECT_TRUE(contains(out[r].error, "at byte 3")) << out[r].error;
  }
  out = run_ranks(2, 2, 10, [](int) { return std::string("\xff\0", 2); });
  EXPECT_EQ(out[0].error, "");
  EXPECT_EQ(out[1].error, "");
}

TEST(Join, WorldSizeDisagreementIsNamed) {
  const int port = free_port();
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      RankEnv env = thread_env(r, 3, port);
      if (r == 2) env.world_size = 5;  // a rank started by another command
      try {
        Job job = join(env, "c", 10);
        finish(job);
      } catch (const Error& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r)
    EXPECT_TRUE(contains(errors[r], "rank 2 was started as '5 test'")) << errors[r];
}

TEST(Join, MissingRankIsNamed) {
  const auto t0 = Clock::now();
  auto out = run_ranks(3, 4, 1.0, [](int) { return std::string("c"); });  // rank 3 never starts
  EXPECT_LT(seconds_since(t0), 8.0);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(out[r].kind, ErrorKind::kTimeout) << out[r].error;
    EXPECT_TRUE(contains(out[r].error, "did not join")) << out[r].error;
    EXPECT_TRUE(contains(out[r].error, "rank 3")) << out[r].error;
    EXPECT_EQ(out[r].peer, 3);
  }
}

TEST(Join, MissingRankZeroIsNamedWhenALauncherHostsTheStore) {
  StoreServer server("127.0.0.1", 0, "join-test");
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (int r = 1; r < 3; ++r) {
    threads.emplace_back([&, r] {
      RankEnv env = thread_env(r, 3, server.port());
      env.store_hosted = true;
      try {
        join(env, "c", 1.0);
      } catch (const Error& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LT(seconds_since(t0), 8.0);
  for (int r = 1; r < 3; ++r)
    EXPECT_TRUE(contains(errors[r], "1 of 3 ranks did not join the job within 1.5 s: rank 0"))
        << errors[r];
}

TEST(Join, SingleRankHasAStoreToo) {
  RankEnv env;  // rank 0 of 1, nothing else
  env.node_key = "here";
  Job job = join(env, "cfg", 5);
  ASSERT_TRUE(job.store);
  EXPECT_EQ(job.node_keys, std::vector<std::string>{"here"});
  job.store->set("k", "v");
  EXPECT_EQ(job.store->get("k"), "v");
  finish(job);
}

// ---- ranks as processes under `mics launch` ----------------------------------------------

// The body of one launched rank: joins with a config that may differ on one rank.
TEST(JoinLaunched, RankBody) {
  const char* mode = std::getenv("MICS_JOIN_TEST_MODE");
  if (!mode) GTEST_SKIP() << "runs only as a rank of JoinLaunched.* (started by mics launch)";
  const char* rank = std::getenv("MICS_RANK");
  std::string config = "same";
  if (std::string(mode) == "disagree" && rank && std::string(rank) == "1") config = "different";
  Job job = join(config);
  std::string keys;
  for (const auto& k : job.node_keys) keys += k + ",";
  std::printf("JOINED rank=%d nodes=%s\n", job.env.rank, keys.c_str());
  finish(job);
}

struct LaunchRun {
  int status = -1;
  std::string output;
};

std::string self_exe() {
  char self[4096] = {};
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  EXPECT_GT(n, 0);
  return self;
}

LaunchRun finish_run(FILE* pipe) {
  LaunchRun run;
  std::array<char, 4096> buf;
  while (fgets(buf.data(), buf.size(), pipe)) run.output += buf.data();
  int status = pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

LaunchRun run_launch(const std::string& mode) {
  const std::string cmd = "MICS_JOIN_TEST_MODE=" + mode + " MICS_TIMEOUT_S=20 " +
                          std::string(MICS_BINARY) + " launch -n 4 --nodes 2 -- " + self_exe() +
                          " --gtest_filter=JoinLaunched.RankBody 2>&1";
  return finish_run(popen(cmd.c_str(), "r"));
}

TEST(JoinLaunched, FourRanksTwoNodes) {
  LaunchRun run = run_launch("agree");
  EXPECT_EQ(run.status, 0) << run.output;
  for (int r = 0; r < 4; ++r)
    EXPECT_TRUE(contains(run.output, "[" + std::to_string(r) + "] JOINED rank=" +
                                         std::to_string(r) + " nodes=node0,node0,node1,node1,"))
        << run.output;
}

TEST(JoinLaunched, DisagreementFailsTheJob) {
  LaunchRun run = run_launch("disagree");
  EXPECT_NE(run.status, 0) << run.output;
  EXPECT_TRUE(contains(run.output, "rank 1's job configuration differs from rank 0's"))
      << run.output;
  EXPECT_TRUE(contains(run.output, "'different'")) << run.output;
}

// Two launchers as two hosts of one job: node rank 0 hosts the store, node rank 1 connects.
TEST(JoinLaunched, TwoLaunchersAsTwoHosts) {
  const int port = free_port();
  auto start = [&](int node_rank) {
    const std::string cmd = fmt::format(
        "MICS_JOIN_TEST_MODE=agree MICS_TIMEOUT_S=20 MICS_JOB_TOKEN=two-hosts-{} {} launch -n 2 "
        "--nnodes 2 --node-rank {} --master-addr 127.0.0.1 --master-port {} -- {} "
        "--gtest_filter=JoinLaunched.RankBody 2>&1",
        port, MICS_BINARY, node_rank, port, self_exe());
    return popen(cmd.c_str(), "r");
  };
  FILE* second = start(1);  // the non-hosting one first: it must wait for the store
  FILE* first = start(0);
  LaunchRun a = finish_run(first);
  LaunchRun b = finish_run(second);
  EXPECT_EQ(a.status, 0) << a.output;
  EXPECT_EQ(b.status, 0) << b.output;
  const std::string nodes = " nodes=node0,node0,node1,node1,";
  EXPECT_TRUE(contains(a.output, "[0] JOINED rank=0" + nodes)) << a.output;
  EXPECT_TRUE(contains(a.output, "[1] JOINED rank=1" + nodes)) << a.output;
  EXPECT_TRUE(contains(b.output, "[2] JOINED rank=2" + nodes)) << b.output;
  EXPECT_TRUE(contains(b.output, "[3] JOINED rank=3" + nodes)) << b.output;
}

}  // namespace
}  // namespace mics::bootstrap
