# Sourced by the *_test.sh scripts that check many things and report every failure before they
# exit: TMP (a scratch folder, removed at exit), fail (report and count), ok (report), FAILS.
FAILS=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}
ok() { echo "ok: $*"; }
