#include "comm/runtime.hpp"

#include <fmt/format.h>

#include "base/log.hpp"
#include "base/strings.hpp"
#include "mics/build_info.hpp"

namespace mics::comm {

std::unique_ptr<Runtime> Runtime::start(const std::string& config) {
  std::unique_ptr<Runtime> rt(new Runtime());
  const std::string full = fmt::format("mics {} | {}", build::kVersion, config);
  rt->job_ = bootstrap::join(full);
  log::set_rank(rt->job_.env.rank);
  rt->topology_ = bootstrap::Topology::from_node_keys(rt->job_.node_keys);
  // The launcher's idea of the layout must match what the ranks found.
  if (auto local_size = env_string("MICS_LOCAL_SIZE")) {
    const int n = rt->topology_.uniform_ranks_per_node();
    if (n != 0 && std::to_string(n) != *local_size)
      throw Error(ErrorKind::kConfig,
                  fmt::format("MICS_LOCAL_SIZE={} but the ranks found {} per node", *local_size, n),
                  {.layer = "comm", .where = "start-up", .hint = "launch every node alike"});
  }
  rt->transport_ = std::make_unique<fabric::Transport>(rt->job_.env.rank, rt->topology_,
                                                       rt->job_.store.get());
  rt->world_ = Communicator::world(*rt->transport_);
  if (rt->job_.env.rank == 0)
    log::debug("job: {} via {}", rt->topology_.describe(), rt->job_.env.source);
  return rt;
}

void Runtime::finish() {
  if (finished_) return;
  finished_ = true;
  bootstrap::finish(job_);
}

Runtime::~Runtime() {
  // Normal exits call finish(); on an error path we leave without waiting for the others.
}

}  // namespace mics::comm
