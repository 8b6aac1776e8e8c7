#!/bin/bash
# The node under kubelet_test.go: test/critest/env.sh's throw-away cocoond
# (its own socket, state, CNI network, and the local registry with the test
# images behind a mirror table), held for a Go test.
#
# It prints "READY <work dir> <cocoond socket>" once cocoond answers, then
# holds everything until its stdin closes (the test ends, or dies). Then
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
cat >/dev/null
