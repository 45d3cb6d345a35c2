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
  std::vector<std::string> node_keys;   // node key of every rank, indexed by rank
};

// `config` is this rank's view of the job configuration as text (e.g. JSON); every rank must
// pass the same text or the call throws mics::Error(kConfig) naming the first rank that
// disagrees with rank 0 and both values.
Job join(const std::string& config);

}  // namespace mics::bootstrap
