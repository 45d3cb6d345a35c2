// Joining the job (see bootstrap.hpp). Keys used in the store:
//   join/node/<r>    rank r's node key
//   join/world/<r>   "<world size> <source>" as rank r sees it
//   join/config/<r>  rank r's configuration text (any bytes), set last
//   join/verdict     JSON {ok, message, peer, hint}: rank 0's verdict, read by every rank
//   join/ack/<r>     rank r read a negative verdict (rank 0, hosting the store, waits for these
//                    before the store goes away)
#include "bootstrap/bootstrap.hpp"

#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "base/knobs.hpp"
#include "base/log.hpp"
#include "base/strings.hpp"

namespace mics::bootstrap {
namespace {

using nlohmann::json;

constexpr double kVerdictAckTimeoutS = 10;
// The other ranks wait longer than rank 0 for the verdict (by a tenth of the deadline, within
// [0.5 s, 5 s]), so that when a rank is missing rank 0's verdict naming it reaches them before
// their own deadline (and before rank 0, hosting the store, exits).
double verdict_grace_s(double timeout_s) {
  return std::clamp(timeout_s / 10, 0.5, 5.0);
}

std::string rank_key(const char* prefix, int rank) {
  return fmt::format("{}/{}", prefix, rank);
}

std::vector<std::string> rank_keys(const char* prefix, int world) {
  std::vector<std::string> keys;
  keys.reserve(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) keys.push_back(rank_key(prefix, r));
  return keys;
}

// Waits for `wait_keys`, which appear once every rank has set its key under prefix (the keys
// themselves, or a key rank 0 sets after seeing them all: then the store keeps one waiter per
// rank, not world_size). A timeout probes prefix and names the ranks that did not come.
void wait_for_ranks(StoreClient& store, const RankEnv& env, const char* prefix,
                    const std::vector<std::string>& wait_keys, double timeout_s) {
  try {
    store.wait(wait_keys, timeout_s);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kTimeout) throw;
    MissingKeys absent = store.missing(rank_keys(prefix, env.world_size));
    if (absent.total == 0) throw;  // every rank came: the wait is for something else (rank 0)
    std::vector<std::string> ranks;
    for (size_t i = 0; i < absent.listed.size() && i < 16; ++i)
      ranks.push_back(absent.listed[i].substr(absent.listed[i].rfind('/') + 1));
    std::string list = mics::join(ranks, ", ");
    if (absent.total > ranks.size())
      list += fmt::format(" and {} more", absent.total - ranks.size());
    throw Error(
        ErrorKind::kTimeout,
        fmt::format("{} of {} ranks did not join the job within {} s: rank{} {}", absent.total,
                    env.world_size, timeout_s, absent.total == 1 ? "" : "s", list),
        {.layer = "bootstrap",
         .where = fmt::format("join on the store at {}", store.address()),
         .peer = static_cast<int>(parse_int64(ranks.front()).value_or(-1)),
         .hint = fmt::format("every rank of the {}-rank job (launched by {}) must start and reach "
                             "the store: check that they all were started with the same "
                             "MICS_MASTER_ADDR/MICS_MASTER_PORT and look at the missing ranks' "
                             "output; raise MICS_TIMEOUT_S if they are only slow",
                             env.world_size, env.source)});
  }
}

// Both values, or windows around their first difference when they are long.
std::string describe_difference(const std::string& a, const std::string& b, int rank) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  auto window = [&](const std::string& s) {
    if (s.size() <= 160) return "'" + s + "'";
    const size_t from = i > 40 ? i - 40 : 0;
    return fmt::format("'{}{}{}'", from > 0 ? "..." : "", s.substr(from, 120),
                       from + 120 < s.size() ? "..." : "");
  };
  return fmt::format(
      "rank {}'s job configuration differs from rank 0's at byte {}: rank 0 has "
      "{}, rank {} has {}",
      rank, i, window(a), rank, window(b));
}

// Rank 0's check of every rank's world size and configuration against its own.
json verdict_of(const std::vector<std::string>& worlds, const std::vector<std::string>& configs) {
  for (size_t r = 1; r < worlds.size(); ++r) {
    if (worlds[r] != worlds[0])
      return {{"ok", false},
              {"peer", r},
              {"message", fmt::format("rank {} was started as '{}' (world size, launcher), rank 0 "
                                      "as '{}'",
                                      r, worlds[r], worlds[0])},
              {"hint",
               "every rank must be started by the same launcher command with the same "
               "world size"}};
    if (configs[r] != configs[0])
      return {{"ok", false},
              {"peer", r},
              {"message", describe_difference(configs[0], configs[r], static_cast<int>(r))},
              {"hint",
               "start every rank with the same configuration: the same flags, config "
               "files and mics version on every node"}};
  }
  return {{"ok", true}};
}

std::string one_process_token() {
  return fmt::format("single-rank:{}", ::getpid());
}

}  // namespace

Job join(const std::string& config) {
  return join(read_rank_env(), config, knobs().timeout_s);
}

Job join(const RankEnv& env, const std::string& config, double timeout_s) {
  if (env.world_size < 1 || env.rank < 0 || env.rank >= env.world_size)
    throw Error(
        ErrorKind::kInvalidArgument,
        fmt::format("rank {} of world size {} is not a valid identity", env.rank, env.world_size),
        {.layer = "bootstrap",
         .where = "join",
         .hint = "the rank must be in [0, world size): check the launcher's variables"});
  log::set_rank(env.rank);
  Job job;
  job.env = env;
  std::string addr = env.master_addr;
  int port = env.master_port;
  std::string token = env.job_token;
  int host_rank = -1;
  if (!env.store_hosted && env.world_size == 1) {
    if (token.empty()) token = one_process_token();
    job.server = std::make_unique<StoreServer>("127.0.0.1", 0, token);
    addr = "127.0.0.1";
    port = job.server->port();
  } else if (!env.store_hosted) {
    host_rank = 0;
    if (env.rank == 0) {
      job.server = std::make_unique<StoreServer>("0.0.0.0", env.master_port, token);
      log::debug("hosting the rendezvous store on port {}", env.master_port);
    }
  }
  job.store = std::make_unique<StoreClient>(addr, port, token, timeout_s);
  StoreClient& store = *job.store;
  store.set_identity(env.rank, env.world_size, host_rank);

  store.set(rank_key("join/node", env.rank), env.node_key);
  store.set(rank_key("join/world", env.rank), fmt::format("{} {}", env.world_size, env.source));
  store.set(rank_key("join/config", env.rank), config);

  // Rank 0 waits for every rank's config and publishes the verdict, good or bad (a config that
  // differs, or ranks that never came); the others wait for it, so that every rank that joined
  // fails with the same error.
  if (env.rank == 0) {
    json verdict;
    try {
      wait_for_ranks(store, env, "join/config", rank_keys("join/config", env.world_size),
                     timeout_s);
      verdict = verdict_of(store.get_many(rank_keys("join/world", env.world_size)),
                           store.get_many(rank_keys("join/config", env.world_size)));
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kTimeout) throw;
      verdict = {{"ok", false},
                 {"kind", "timeout"},
                 {"peer", e.context().peer.value_or(-1)},
                 {"message", e.message()},
                 {"hint", e.context().hint}};
    }
    // Configurations are any bytes: replace what is not UTF-8 in the message.
    store.set("join/verdict", verdict.dump(-1, ' ', false, json::error_handler_t::replace));
  } else {
    wait_for_ranks(store, env, "join/config", {"join/verdict"},
                   timeout_s + verdict_grace_s(timeout_s));
  }
  const json verdict = json::parse(store.get("join/verdict"));
  if (!verdict.at("ok").get<bool>()) {
    if (env.rank != 0) {
      store.set(rank_key("join/ack", env.rank), "");
    } else if (job.server && env.world_size > 1) {
      // Keep the store up until the ranks that joined have read the verdict.
      const MissingKeys absent = store.missing(rank_keys("join/config", env.world_size));
      std::vector<std::string> acks;
      for (int r = 1; r < env.world_size; ++r)
        if (std::find(absent.listed.begin(), absent.listed.end(), rank_key("join/config", r)) ==
            absent.listed.end())
          acks.push_back(rank_key("join/ack", r));
      try {
        store.wait(acks, std::min(timeout_s, kVerdictAckTimeoutS));
      } catch (const Error&) {
      }
    }
    const int peer = verdict.at("peer").get<int>();
    throw Error(
        verdict.value("kind", "config") == "timeout" ? ErrorKind::kTimeout : ErrorKind::kConfig,
        verdict.at("message").get<std::string>(),
        {.layer = "bootstrap",
         .where = fmt::format("join (rank {} of {}, store at {})", env.rank, env.world_size,
                              store.address()),
         .peer = peer >= 0 ? std::optional<int>(peer) : std::nullopt,
         .hint = verdict.at("hint").get<std::string>()});
  }

  // Every rank set its node key before its config, so these are all present now.
  job.node_keys = store.get_many(rank_keys("join/node", env.world_size));
  log::debug("joined: rank {} of {} on node '{}' (via {}, store at {})", env.rank, env.world_size,
             env.node_key, env.source, store.address());
  return job;
}

void finish(Job& job) {
  if (!job.store) return;
  job.store->barrier("job/finish", job.env.world_size);
}

}  // namespace mics::bootstrap
