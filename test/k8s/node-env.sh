#!/bin/bash
# The node under kubelet_test.go: test/critest/env.sh's throw-away cocoond
# (its own socket, state, CNI network, and the local registry with the test
# images behind a mirror table), held for a Go test.
#
# It prints "READY <work dir> <cocoond socket>" once cocoond answers, then
# holds everything until its stdin closes (the test ends, or dies). A
# "crash-cocoond" line on stdin kills cocoond with SIGKILL, as a crash would,
# and starts it again over the same state: it answers "RESTARTED <ms>" (how
# long the new cocoond took to answer) or "RESTART-FAILED". Then
# env.sh's cleanup removes every pod through CRI, stops cocoond and the
# registry, and removes the work dir; a nonzero exit says something was left
# behind.
# Needs: BIN (cocoond, cocoon-test-images, crictl), root.
set -euo pipefail
# No warm pool: the test's "nothing left" check counts every VM, netns and
# run dir once the manifests are gone, and a pool refills. The pool is
# tested in test/e2e (TestWarmPool) and runs under critest.
export COCOON_POOL_SIZE=0

# shellcheck source=../critest/env.sh
. "$(dirname "$0")/../critest/env.sh"

cocoon_start_registry >&2
cocoon_write_config
cocoon_start_daemon
echo "READY $WORK $SOCK"

crashes=0
while read -r cmd; do
  case "$cmd" in
  crash-cocoond)
    kill -KILL "$COCOOND_PID"
    wait "$COCOOND_PID" 2>/dev/null || true
    crashes=$((crashes + 1))
    mv "$WORK/cocoond.log" "$WORK/cocoond.log.$crashes"
    # A killed cocoond leaves its socket file; the wait in
    # cocoon_start_daemon must see the new one.
    rm -f "$SOCK"
    start=$(date +%s%N)
    if cocoon_start_daemon; then
      echo "RESTARTED $((($(date +%s%N) - start) / 1000000))"
    else
      echo "RESTART-FAILED"
    fi
    ;;
  *) echo "node-env.sh: unknown command $cmd" >&2 ;;
  esac
done
