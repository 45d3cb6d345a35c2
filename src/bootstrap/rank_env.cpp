// Rank identity from the launcher's environment (see rank_env.hpp for the sources).
#include "bootstrap/rank_env.hpp"

#include <unistd.h>

#include <climits>
#include <optional>

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/strings.hpp"

namespace mics::bootstrap {
namespace {

constexpr int kMaxWorld = 1 << 20;

[[noreturn]] void config_error(std::string message, std::string hint) {
  throw Error(
      ErrorKind::kConfig, std::move(message),
      {.layer = "bootstrap", .where = "reading the rank environment", .hint = std::move(hint)});
}

// An integer variable in [lo, hi]; nullopt when unset. Throws naming the variable otherwise.
std::optional<int> env_int(const char* name, int64_t lo, int64_t hi) {
  auto text = env_string(name);
  if (!text) return std::nullopt;
  auto value = parse_int64(*text);
  if (!value || *value < lo || *value > hi)
    config_error(fmt::format("{}='{}' is not an integer in [{}, {}]", name, *text, lo, hi),
                 fmt::format("set {} to an integer in [{}, {}] (or unset it)", name, lo, hi));
  return static_cast<int>(*value);
}

int require_int(const char* name, int64_t lo, int64_t hi, const char* source, const char* set_by) {
  auto value = env_int(name, lo, hi);
  if (!value)
    config_error(fmt::format("{} is not set although this looks like a {} job", name, source),
                 fmt::format("{} sets {}; set it (an integer in [{}, {}]) or unset the other "
                             "{} variables",
                             set_by, name, lo, hi, source));
  return *value;
}

std::string host_name() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// Every rank of an Open MPI job sees the same values of these; the job id alone is not unique
// across hosts, the HNP URI (mpirun's address) and the transport key make it so.
std::optional<std::string> openmpi_token() {
  auto jobid = env_string("OMPI_MCA_ess_base_jobid");
  if (!jobid) jobid = env_string("PMIX_NAMESPACE");
  if (!jobid) return std::nullopt;
  std::string token = "openmpi:" + *jobid;
  if (auto hnp = env_string("OMPI_MCA_orte_hnp_uri")) token += "|" + *hnp;
  if (auto key = env_string("OMPI_MCA_orte_precondition_transports")) token += "|" + *key;
  return token;
}

}  // namespace

RankEnv read_rank_env() {
  RankEnv env;
  if (env_string("MICS_RANK")) {
    env.source = "mics launch";
    env.world_size = require_int("MICS_WORLD_SIZE", 1, kMaxWorld, "mics launch", "mics launch");
    env.rank = require_int("MICS_RANK", 0, INT_MAX, "mics launch", "mics launch");
    env.local_rank = env_int("MICS_LOCAL_RANK", 0, INT_MAX).value_or(env.rank);
  } else if (env_string("SLURM_PROCID")) {
    env.source = "slurm";
    env.world_size = require_int("SLURM_NTASKS", 1, kMaxWorld, "Slurm", "srun");
    env.rank = require_int("SLURM_PROCID", 0, INT_MAX, "Slurm", "srun");
    env.local_rank = env_int("SLURM_LOCALID", 0, INT_MAX).value_or(0);
  } else if (env_string("OMPI_COMM_WORLD_RANK")) {
    env.source = "openmpi";
    env.world_size = require_int("OMPI_COMM_WORLD_SIZE", 1, kMaxWorld, "Open MPI", "mpirun");
    env.rank = require_int("OMPI_COMM_WORLD_RANK", 0, INT_MAX, "Open MPI", "mpirun");
    env.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0, INT_MAX).value_or(0);
  } else {
    env.source = "single";
  }
  const char* rank_var = env.source == "mics launch" ? "MICS_RANK"
                         : env.source == "slurm"     ? "SLURM_PROCID"
                                                     : "OMPI_COMM_WORLD_RANK";
  if (env.rank >= env.world_size)
    config_error(
        fmt::format("{}={} is not below the world size {}", rank_var, env.rank, env.world_size),
        "the rank must be in [0, world size): check how the job was launched");

  // Node key: emulated node id, else Slurm's node index, else the host name.
  if (auto id = env_string("MICS_NODE_ID")) {
    env.node_key = *id;
  } else if (auto node = env_string("SLURM_NODEID"); node && env.source == "slurm") {
    env_int("SLURM_NODEID", 0, INT_MAX);  // validates
    env.node_key = "slurm-node-" + *node;
  } else {
    env.node_key = host_name();
  }

  // Rendezvous address.
  auto addr = env_string("MICS_MASTER_ADDR");
  auto port = env_int("MICS_MASTER_PORT", 1, 65535);
  if (env.world_size > 1) {
    if (!addr)
      config_error(
          fmt::format("MICS_MASTER_ADDR is not set (rank {} of {}, launched by {})", env.rank,
                      env.world_size, env.source),
          "set MICS_MASTER_ADDR to the host of rank 0 (under Slurm e.g. $(scontrol show "
          "hostnames \"$SLURM_JOB_NODELIST\" | head -n1)), or start the job with mics launch");
    if (!port)
      config_error(
          fmt::format("MICS_MASTER_PORT is not set (rank {} of {}, launched by {})", env.rank,
                      env.world_size, env.source),
          "set MICS_MASTER_PORT to a free TCP port on the host of rank 0, the same on every rank");
  }
  env.master_addr = addr.value_or("");
  env.master_port = port.value_or(0);

  // Job token.
  if (auto token = env_string("MICS_JOB_TOKEN")) {
    env.job_token = *token;
  } else if (env.source == "slurm" && env_string("SLURM_JOB_ID")) {
    env.job_token = fmt::format("slurm:{}.{}", *env_string("SLURM_JOB_ID"),
                                env_string("SLURM_STEP_ID").value_or("0"));
  } else if (env.source == "openmpi" && openmpi_token()) {
    env.job_token = *openmpi_token();
  } else if (env.world_size > 1) {
    config_error(fmt::format("MICS_JOB_TOKEN is not set and no job id to derive it from was "
                             "found (launched by {})",
                             env.source),
                 "export MICS_JOB_TOKEN=<a value unique to this job, the same on every rank>, "
                 "e.g. MICS_JOB_TOKEN=$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n')");
  }

  env.store_hosted = env_string("MICS_STORE_HOSTED").value_or("") == "1";
  if (env.store_hosted && env.master_addr.empty())
    config_error("MICS_STORE_HOSTED=1 but MICS_MASTER_ADDR is not set",
                 "a launcher that hosts the store must export MICS_MASTER_ADDR and "
                 "MICS_MASTER_PORT; unset MICS_STORE_HOSTED otherwise");
  if (env.store_hosted && env.master_port == 0)
    config_error("MICS_STORE_HOSTED=1 but MICS_MASTER_PORT is not set",
                 "a launcher that hosts the store must export MICS_MASTER_ADDR and "
                 "MICS_MASTER_PORT; unset MICS_STORE_HOSTED otherwise");
  return env;
}

}  // namespace mics::bootstrap
