#include "comm/runtime.hpp"

#include <unistd.h>

#include <fmt/format.h>

#include "base/clock.hpp"

#include "base/log.hpp"
#include "base/strings.hpp"
#include "comm/failure_board.hpp"
#include "comm/watchdog.hpp"
#include "mics/build_info.hpp"

namespace mics::comm {

namespace {

FailureBoard* g_board = nullptr;

// The failure board on the rendezvous store, over a connection of its own with a short
// deadline so that reporting never delays a failing rank by much; an unreachable store
// (its host died) turns the board off.
class StoreFailureBoard : public FailureBoard {
 public:
  explicit StoreFailureBoard(const bootstrap::RankEnv& env) {
    try {
      store_ = std::make_unique<bootstrap::StoreClient>(env.master_addr, env.master_port,
                                                        env.job_token, 2.0);
    } catch (const Error&) {
      store_.reset();
    }
  }
  void publish(int rank, const std::string& message) override {
    if (!store_) return;
    try {
      if (store_->add("failure/count", 1) == 1)
        store_->set("failure/report", fmt::format("{}\n{}", rank, message));
    } catch (const Error&) {
      store_.reset();
    }
  }
  std::optional<FailureReport> read() override {
    if (!store_) return std::nullopt;
    try {
      auto text = store_->try_get("failure/report");
      if (!text) return std::nullopt;
      const size_t nl = text->find('\n');
      return FailureReport{std::atoi(text->substr(0, nl).c_str()), text->substr(nl + 1)};
    } catch (const Error&) {
      store_.reset();
      return std::nullopt;
    }
  }

 private:
  std::unique_ptr<bootstrap::StoreClient> store_;
};

}  // namespace

void set_failure_board(FailureBoard* board) {
  g_board = board;
}
FailureBoard* failure_board() {
  return g_board;
}

std::unique_ptr<Runtime> Runtime::start(const std::string& config) {
  start_watchdog();
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
    std::vector<std::string> keys;
    for (int r = 0; r < rt->world_size(); ++r) keys.push_back(fmt::format("host/{}", r));
    int same_host = 0;
    for (const auto& h : rt->job_.store->get_many(keys)) same_host += h == host;
    set_ranks_on_host(same_host);
  }
  rt->transport_ =
      std::make_unique<fabric::Transport>(rt->job_.env.rank, rt->topology_, rt->job_.store.get());
  rt->world_ = Communicator::world(*rt->transport_);
  if (rt->world_size() > 1) {
    rt->board_ = std::make_unique<StoreFailureBoard>(rt->job_.env);
    set_failure_board(rt->board_.get());
  }
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
  if (g_board == board_.get()) set_failure_board(nullptr);
}

}  // namespace mics::comm
