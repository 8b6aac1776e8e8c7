#!/usr/bin/env bash
# Runs critest against a throw-away cocoond, skipping what skip.txt lists:
#   run.sh [--focus RE] [--skip RE] [--no-skip-list] [--parallel N] [--baseline] [-- extra critest flags]
# --baseline then runs the same specs, skip list left out, against Debian's
# containerd + runc on the same images and prints both counts side by side.
# Leaves nothing behind: the daemons, the registry and every file go with the exit trap.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
focus='' skip='' use_skip_list=1 parallel=1 baseline=0
while [ $# -gt 0 ]; do
  case $1 in
    --focus) focus=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --no-skip-list) use_skip_list=0; shift ;;
    --parallel) parallel=$2; shift 2 ;;
    --baseline) baseline=1; shift ;;
    --) shift; break ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "critest: SKIP: needs root (cocoond manages storage mounts)"
  exit 0
fi
. "$here/env.sh"
REPORT_DIR=${REPORT_DIR:-$COCOON_REPO/_output/critest}
mkdir -p "$REPORT_DIR"

# skip_regex FILE: the skip list's patterns as one alternation.
skip_regex() { awk '/^skip:/ { sub(/^skip:[ \t]*/, ""); printf "%s(%s)", sep, $0; sep = "|" }' "$1"; }
join_re() { local a=$1 b=$2; if [ -n "$a" ] && [ -n "$b" ]; then echo "$a|$b"; else echo "$a$b"; fi; }

# run_critest NAME ENDPOINT SKIP_RE: one critest run, its log and JUnit report named NAME.
run_critest() {
  local name=$1 endpoint=$2 skip_re=$3 args rc start
  args=(--runtime-endpoint "unix://$endpoint" --image-endpoint "unix://$endpoint"
        --ginkgo.no-color --ginkgo.junit-report "$REPORT_DIR/$name-junit.xml")
  [ -n "$focus" ] && args+=(--ginkgo.focus "$focus")
  [ -n "$skip_re" ] && args+=(--ginkgo.skip "$skip_re")
  [ "$parallel" -gt 1 ] && args+=(--parallel "$parallel")
  start=$(date +%s)
  set +e
  "$BIN/critest" "${args[@]}" "${extra[@]}" > "$REPORT_DIR/$name.log" 2>&1
  rc=$?
  set -e
  grep -E '^\s*\[(FAIL|PANICKED|TIMEDOUT)\]|^(Ran |SUCCESS|FAIL)|Passed \|' "$REPORT_DIR/$name.log" || true
  echo "critest against $name: exit $rc in $(( $(date +%s) - start ))s; log $REPORT_DIR/$name.log, junit $REPORT_DIR/$name-junit.xml"
  return $rc
}

extra=("$@")
if [ "$parallel" -gt 1 ]; then
  # critest --parallel drives the ginkgo CLI, which must be on PATH.
  [ -x "$BIN/ginkgo" ] || { echo "critest: --parallel needs $BIN/ginkgo (make tools)" >&2; exit 1; }
  export PATH=$BIN:$PATH
fi
cocoon_skip=$skip
[ $use_skip_list -eq 1 ] && cocoon_skip=$(join_re "$(skip_regex "$here/skip.txt")" "$skip")

cocoon_start_registry
cocoon_write_config
cocoon_start_daemon

rc=0
run_critest cocoon "$SOCK" "$cocoon_skip" || rc=$?
if [ $rc -ne 0 ]; then
  tail -n 80 "$REPORT_DIR/cocoon.log"
  echo "--- cocoond log (last 40 lines)"; tail -n 40 "$WORK/cocoond.log"
fi
reports=(cocoon="$REPORT_DIR/cocoon-junit.xml")

if [ $baseline -eq 1 ]; then
  # One runtime at a time: the pods of both would share host ports 12000-12003.
  timeout 300 "$BIN/crictl" --config "$WORK/crictl.yaml" rmp -a -f >/dev/null 2>&1 || true
  ctrd_start
  run_critest containerd "$CTRD_SOCK" "$skip" || echo "(the baseline's failures do not fail this run)"
  reports+=(containerd="$REPORT_DIR/containerd-junit.xml")
fi
[ -x "$BIN/critest-summary" ] && "$BIN/critest-summary" "${reports[@]}"
exit $rc
