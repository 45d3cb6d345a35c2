#include "comm/runtime.hpp"

#include <unistd.h>

#include <fmt/format.h>

#include "base/clock.hpp"

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
  // Ranks sharing this host's cores decide how idle waits behave (base/clock.hpp).
  if (rt->job_.store) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    rt->job_.store->set(fmt::format("host/{}", rt->rank()), host);
    int same_host = 0;
    for (int r = 0; r < rt->world_size(); ++r)
      same_host += rt->job_.store->get(fmt::format("host/{}", r)) == host;
    set_ranks_on_host(same_host);
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
