#pragma once
// Who am I: rank identity read from the environment of whichever launcher started us.
// Sources, first match wins:
//   mics launch : MICS_RANK, MICS_WORLD_SIZE, MICS_LOCAL_RANK, MICS_NODE_ID
//   Slurm (srun): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID
//   Open MPI    : OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
//   none        : a single rank (rank 0 of 1)
// The rendezvous address comes from MICS_MASTER_ADDR / MICS_MASTER_PORT and the job token
// from MICS_JOB_TOKEN (or, under Slurm / Open MPI, a value derived from the job id that every
// rank of the job sees alike).
#include <string>

namespace mics::bootstrap {

struct RankEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;         // as the launcher reports it (a hint; topo/ derives the real one)
  std::string node_key;       // MICS_NODE_ID if set (emulated nodes), else SLURM_NODEID/hostname
  std::string master_addr;    // rendezvous store host
  int master_port = 0;        // rendezvous store port
  std::string job_token;      // shared secret of the job
  std::string source;         // "mics launch", "slurm", "openmpi", "single"
  bool store_hosted = false;  // MICS_STORE_HOSTED=1: a launcher hosts the store, rank 0 must not
};

// Reads and validates the environment. Throws mics::Error (kConfig) naming the variable that
// is missing or malformed and how to set it.
//   - MICS_MASTER_ADDR / MICS_MASTER_PORT are required when world_size > 1 (and validated
//     whenever set).
//   - The token is MICS_JOB_TOKEN; else under Slurm "slurm:<SLURM_JOB_ID>.<SLURM_STEP_ID>";
//     else under Open MPI a value built from the job id mpirun gives every rank
//     (OMPI_MCA_ess_base_jobid or PMIX_NAMESPACE, with OMPI_MCA_orte_hnp_uri and
//     OMPI_MCA_orte_precondition_transports when present); a single rank needs none.
RankEnv read_rank_env();

}  // namespace mics::bootstrap
