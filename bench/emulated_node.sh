#!/usr/bin/env bash
# Per-rank wrapper that makes one host's GPUs look like several nodes, for a rank started by
#   mics launch -n N --nodes K -- bench/emulated_node.sh CMD ARGS...
# From MICS_NODE_ID (node<j>), MICS_LOCAL_SIZE (n) and MICS_NODE_COUNT (K) it sets, then execs CMD:
#  - CUDA_VISIBLE_DEVICES to node j's block of n GPUs (entries j*n .. j*n+n-1 of the launcher's
#    CUDA_VISIBLE_DEVICES, else of 0 .. K*n-1). mics picks a rank's GPU as its local rank modulo
#    the visible GPUs (comm::select_gpu_device), and local ranks restart at 0 on every emulated
#    node, so without this node 1's ranks would land on node 0's GPUs (and share them);
#  - NCCL_HOSTID=emulated-node<j>: NCCL then takes the nodes for different hosts and carries
#    inter-node traffic over its NET transport (IB or sockets), not NVLink/P2P/SHM.
# NCCL_NVLS_ENABLE stays 0 (issue 10 asks it of every process).
set -euo pipefail
fail() { echo "emulated_node.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] || fail "usage: mics launch -n N --nodes K -- bench/emulated_node.sh CMD [ARGS...]"
node_id=${MICS_NODE_ID:-}
[[ $node_id =~ ^node([0-9]+)$ ]] || fail "MICS_NODE_ID='${node_id}' is not node<j>: start this under mics launch --nodes K"
node=${BASH_REMATCH[1]}
n=${MICS_LOCAL_SIZE:-}
k=${MICS_NODE_COUNT:-}
[[ $n =~ ^[1-9][0-9]*$ && $k =~ ^[1-9][0-9]*$ ]] || fail "MICS_LOCAL_SIZE='$n' / MICS_NODE_COUNT='$k' are not positive counts"
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a all <<<"$CUDA_VISIBLE_DEVICES"
else
  all=()
  for ((i = 0; i < n * k; i++)); do all+=("$i"); done
fi
((${#all[@]} >= n * k)) || fail "$k nodes x $n ranks need $((n * k)) GPUs, but only ${#all[@]} are visible (${all[*]})"
mine=("${all[@]:node*n:n}")
CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${mine[*]}")
export CUDA_VISIBLE_DEVICES
export NCCL_HOSTID=emulated-node$node
export NCCL_NVLS_ENABLE=0
exec "$@"
