#pragma once
// What every multi-rank command starts with: join the job (rendezvous, configuration check),
// open the fabric rails, and build the world communicator. Works the same under
// `mics launch`, Slurm, Open MPI and SageMaker (see bootstrap/rank_env.hpp).
#include <memory>
#include <string>

#include "bootstrap/bootstrap.hpp"
#include "bootstrap/topology.hpp"
#include "comm/communicator.hpp"
#include "comm/failure_board.hpp"
#include "fabric/transport.hpp"

namespace mics::comm {

class Runtime {
 public:
  // `config` is the command's configuration as text; every rank must pass the same (the
  // version and world size are added here).
  static std::unique_ptr<Runtime> start(const std::string& config);
  ~Runtime();

  int rank() const { return job_.env.rank; }
  int world_size() const { return job_.env.world_size; }
  const bootstrap::Topology& topology() const { return topology_; }
  fabric::Transport& transport() { return *transport_; }
  Communicator& world() { return *world_; }
  bootstrap::StoreClient& store() { return *job_.store; }
  // Waits for every rank before the store (possibly hosted here) goes away.
  void finish();

 private:
  Runtime() = default;
  bootstrap::Job job_;
  bootstrap::Topology topology_;
  std::unique_ptr<fabric::Transport> transport_;
  std::unique_ptr<Communicator> world_;
  std::unique_ptr<FailureBoard> board_;
  bool finished_ = false;
};

}  // namespace mics::comm
