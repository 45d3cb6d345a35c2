#!/usr/bin/env bash
# A process killed with SIGKILL leaves its libfabric shm region (/dev/shm/<pid>:0:0) behind;
# a later rank that gets the same pid must still open its intra-node rail. Each rank's shell
# plants such a leftover under its own pid, then becomes the rank.
set -u
MICS=$1
WORKER=$(dirname "$MICS")/tests/comm_worker
out=$("$MICS" launch -n 2 --no-prefix -- bash -c 'touch /dev/shm/$$:0:0; exec "$0" groups' "$WORKER" 2>&1)
rc=$?
if [ $rc -ne 0 ]; then echo "FAIL: ranks did not survive a stale shm region (exit $rc):"; echo "$out" | tail -5; exit 1; fi
echo "ok: $(echo "$out" | tail -1)"
