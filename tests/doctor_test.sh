#!/usr/bin/env bash
# `mics doctor`: sections, the rails on this host, a failing rail, and the JSON facts.
# Usage: doctor_test.sh MICS_BINARY SOURCE_DIR
set -u
MICS=${1:?usage: doctor_test.sh MICS_BINARY SOURCE_DIR}
SRC=${2:-.}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# Start from a clean slate: variables the doctor judges could come from the caller.
unset FI_PROVIDER MICS_INTRA_PROVIDER FI_EFA_USE_DEVICE_RDMA FI_EFA_FORK_SAFE \
  FI_EFA_USE_HUGE_PAGE NCCL_NET_GDR_LEVEL FI_LOG_LEVEL

# 1. Plain run: exit 0, every section, the rails of this host.
"$MICS" doctor >"$TMP/out.txt" 2>"$TMP/err.txt"
rc=$?
[ "$rc" -eq 0 ] && pass "doctor exits 0" || { fail "doctor exited $rc"; cat "$TMP/out.txt" "$TMP/err.txt"; }
for section in "== mics ==" "== system ==" "== libfabric ==" "== rails ==" "== EFA ==" \
  "== CUDA ==" "== environment" "== mics knobs ==" "== summary =="; do
  grep -qF -- "$section" "$TMP/out.txt" && pass "section '$section'" || fail "no section '$section'"
done
for var in FI_PROVIDER FI_EFA_USE_DEVICE_RDMA FI_EFA_FORK_SAFE FI_EFA_USE_HUGE_PAGE \
  NCCL_NET_GDR_LEVEL NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_PROTO NCCL_ALGO NCCL_MIN_NRINGS \
  NCCL_NVLS_ENABLE NCCL_TUNER_PLUGIN NCCL_NET_PLUGIN FI_LOG_LEVEL MICS_TIMEOUT_S MICS_CHUNK_BYTES; do
  grep -q "^  $var " "$TMP/out.txt" && pass "explains $var" || fail "does not explain $var"
done
grep -qE '\[ok\] intra-node rail: shm' "$TMP/out.txt" && pass "intra rail is shm" ||
  fail "intra rail is not shm: $(grep 'intra-node rail' "$TMP/out.txt")"
if "$MICS" doctor 2>/dev/null | grep -q "tagged RDM providers.*tcp;ofi_rxm"; then
  grep -qE '\[ok\] inter-node rail: tcp;ofi_rxm' "$TMP/out.txt" && pass "inter rail is tcp;ofi_rxm" ||
    fail "inter rail is not tcp;ofi_rxm: $(grep 'inter-node rail' "$TMP/out.txt")"
else
  fail "tcp;ofi_rxm is not among the providers (libfabric1's tcp provider missing?)"
fi
grep -q "all checks passed" "$TMP/out.txt" && pass "summary says passed" || fail "summary"

# 2. A provider that does not exist: exit 1, the rail marked failed, the providers listed.
FI_PROVIDER=nonexistent "$MICS" doctor >"$TMP/bad.txt" 2>&1
rc=$?
[ "$rc" -eq 1 ] && pass "FI_PROVIDER=nonexistent exits 1" || fail "FI_PROVIDER=nonexistent exited $rc"
grep -qE '\[FAIL\] inter-node rail:.*nonexistent' "$TMP/bad.txt" && pass "inter rail marked FAIL" ||
  fail "inter rail not marked FAIL"
grep -qE 'providers available here: .*shm.*tcp;ofi_rxm' "$TMP/bad.txt" &&
  pass "the failure lists the available providers" || fail "available providers not listed"
grep -q "FAILED" "$TMP/bad.txt" && pass "summary says FAILED" || fail "summary does not say FAILED"

# 3. Consistency warnings still exit 0.
FI_EFA_USE_DEVICE_RDMA=1 NCCL_SOCKET_IFNAME=nosuchif0 "$MICS" doctor >"$TMP/warn.txt" 2>&1
rc=$?
[ "$rc" -eq 0 ] && pass "warnings alone exit 0" || fail "warnings exited $rc"
if ! "$MICS" doctor 2>/dev/null | grep -q "efa provider *offered"; then
  grep -qE '\[warn\] FI_EFA_USE_DEVICE_RDMA=1 has no effect' "$TMP/warn.txt" &&
    pass "FI_EFA_USE_DEVICE_RDMA without efa warns" || fail "no FI_EFA_USE_DEVICE_RDMA warning"
fi
grep -qE '\[warn\] NCCL_SOCKET_IFNAME=.nosuchif0. matches no interface' "$TMP/warn.txt" &&
  pass "unknown NCCL_SOCKET_IFNAME warns" || fail "no NCCL_SOCKET_IFNAME warning"

# 4. JSON: valid, the same facts, in a file and on stdout.
"$MICS" doctor --json "$TMP/d.json" >/dev/null 2>&1
rc=$?
[ "$rc" -eq 0 ] && pass "--json exits 0" || fail "--json exited $rc"
python3 - "$TMP/d.json" <<'PY' && pass "--json FILE is valid and complete" || fail "--json FILE"
import json, sys
d = json.load(open(sys.argv[1]))
for key in ("mics", "system", "libfabric", "rails", "efa", "cuda", "environment", "knobs",
            "checks", "summary"):
    assert key in d, key
assert d["rails"]["intra"]["ok"] and d["rails"]["intra"]["provider"] == "shm", d["rails"]
assert d["rails"]["inter"]["ok"] and d["rails"]["inter"]["provider"] == "tcp;ofi_rxm", d["rails"]
assert "tcp;ofi_rxm" in d["libfabric"]["rdm_providers"]
assert d["summary"]["exit_code"] == 0
assert any(e["name"] == "FI_EFA_USE_DEVICE_RDMA" for e in d["environment"])
assert any(k["name"] == "MICS_TIMEOUT_S" for k in d["knobs"])
PY
FI_PROVIDER=nonexistent "$MICS" doctor --json - 2>/dev/null >"$TMP/bad.json"
rc=$?
[ "$rc" -eq 1 ] && pass "--json - with a failing rail exits 1" || fail "--json - exited $rc"
python3 - "$TMP/bad.json" <<'PY' && pass "--json - is valid and records the failure" || fail "--json -"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["rails"]["inter"]["ok"] is False
assert "nonexistent" in d["rails"]["inter"]["error"]
assert d["summary"]["failures"] >= 1 and d["summary"]["exit_code"] == 1
PY
"$MICS" doctor --json "$TMP/no/such/dir/d.json" >"$TMP/io.txt" 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q "cannot write" "$TMP/io.txt" && pass "unwritable --json is an error" ||
  fail "unwritable --json: rc=$rc"

echo "doctor_test: $failures failure(s)"
[ "$failures" -eq 0 ]
