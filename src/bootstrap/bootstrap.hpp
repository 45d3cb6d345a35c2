#pragma once
// Joining the job: read the rank environment, connect to the store (rank 0 hosts it when no
// launcher does), exchange each rank's node key and check that every rank agrees on the job's
// configuration (world size, version, the node layout it was launched with).
#include <memory>
#include <string>
#include <vector>

#include "bootstrap/rank_env.hpp"
#include "bootstrap/store.hpp"

namespace mics::bootstrap {

struct Job {
  RankEnv env;
  std::unique_ptr<StoreServer> server;  // set on the rank that hosts the store
  std::unique_ptr<StoreClient> store;
  std::vector<std::string> node_keys;  // node key of every rank, indexed by rank
};

// `config` is this rank's view of the job configuration as text (e.g. JSON); every rank must
// pass the same text or the call throws mics::Error(kConfig) naming the first rank that
// disagrees with rank 0 and both values.
Job join(const std::string& config);

// The same with the environment and the deadline given instead of read (read_rank_env() and
// MICS_TIMEOUT_S), e.g. to run several ranks as threads of one test.
//   - a launcher hosts the store (env.store_hosted): connect to it;
//   - else a single rank: an in-process store on 127.0.0.1 (any port), so job.store is
//     always usable;
//   - else rank 0 hosts the store on 0.0.0.0:MICS_MASTER_PORT and every rank connects to
//     MICS_MASTER_ADDR:MICS_MASTER_PORT.
// Ranks that do not arrive within the deadline are named in a kTimeout error.
Job join(const RankEnv& env, const std::string& config, double timeout_s);

// Leaves the job: a barrier of every rank, so that the rank hosting the store keeps it up until
// every rank is done with it. Call once, at the end, on every rank; then destroy the Job.
void finish(Job& job);

}  // namespace mics::bootstrap
