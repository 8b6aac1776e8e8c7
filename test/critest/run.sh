#!/usr/bin/env bash
# Runs critest against a throw-away cocoond: run.sh [--focus RE] [--skip RE] [-- extra critest flags]
# Leaves nothing behind: the daemon, the registry and every file go with the exit trap.
set -euo pipefail
focus='' skip=''
while [ $# -gt 0 ]; do
  case $1 in
    --focus) focus=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "critest: SKIP: needs root (cocoond manages storage mounts)"
  exit 0
fi
. "$(dirname "$0")/env.sh"
REPORT_DIR=${REPORT_DIR:-$COCOON_REPO/_output}
mkdir -p "$REPORT_DIR"

cocoon_start_registry
cocoon_write_config
cocoon_start_daemon

args=(--runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK"
      --ginkgo.no-color --ginkgo.junit-report "$REPORT_DIR/critest-junit.xml")
[ -n "$focus" ] && args+=(--ginkgo.focus "$focus")
[ -n "$skip" ] && args+=(--ginkgo.skip "$skip")
start=$(date +%s)
set +e
"$BIN/critest" "${args[@]}" "$@" > "$REPORT_DIR/critest.log" 2>&1
rc=$?
set -e
grep -E '^\s*\[(FAIL|PANICKED)\]|^(Ran |SUCCESS|FAIL)|Passed \|' "$REPORT_DIR/critest.log" || true
echo "critest: exit $rc in $(( $(date +%s) - start ))s; full log $REPORT_DIR/critest.log, junit $REPORT_DIR/critest-junit.xml"
if [ $rc -ne 0 ]; then
  tail -n 80 "$REPORT_DIR/critest.log"
  echo "--- cocoond log (last 40 lines)"; tail -n 40 "$WORK/cocoond.log"
fi
exit $rc
