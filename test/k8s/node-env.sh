#!/bin/bash
# The node under kubelet_test.go: test/critest/env.sh's throw-away cocoond
# (its own socket, state, CNI network, and the local registry with the test
# images behind a mirror table), with the whole run on an ext4 image this
# script loop-mounts, so cocoond's image store and kubelet's root dir are on
# a filesystem cAdvisor can size (docs/ARCHITECTURE.md, "Node: a real kubelet
# in the tests").
#
# It prints "READY <work dir> <cocoond socket>" once cocoond answers, then
# holds everything until its stdin closes (the test ends, or dies). Then
# env.sh's cleanup removes every pod through CRI and stops cocoond and the
# registry, and this script unmounts and deletes the image. A nonzero exit
# says something was left behind.
# Needs: BIN (cocoond, cocoon-test-images, crictl), root, mkfs.ext4.
set -euo pipefail

FS=$(mktemp -d /tmp/cocoon-k8s.XXXXXX)
fs_cleanup() {
  local rc=0
  if mountpoint -q "$FS"; then
    umount "$FS" || { echo "cleanup: $FS is busy; detaching it lazily" >&2; umount -l "$FS"; rc=1; }
  fi
  # mount -o loop sets autoclear: the loop device goes with the last unmount.
  if [ -n "$(losetup -j "$FS.img" 2>/dev/null)" ]; then
    echo "cleanup: a loop device still backs $FS.img" >&2
    losetup -j "$FS.img" | cut -d: -f1 | xargs -r -n1 losetup -d
    rc=1
  fi
  rm -f "$FS.img"
  rmdir "$FS" 2>/dev/null || true
  return $rc
}
trap fs_cleanup EXIT

# Sparse: it takes only what the images, layers and logs use.
truncate -s "${COCOON_K8S_FS_SIZE:-8G}" "$FS.img"
mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$FS.img"
mount -o loop "$FS.img" "$FS"

COCOON_TEST_TMPDIR=$FS
# shellcheck source=../critest/env.sh
. "$(dirname "$0")/../critest/env.sh"
# env.sh's cleanup first (pods, cocoond, registry, mounts under WORK), then
# the filesystem they were on.
trap 'cocoon_cleanup; rc=$?; fs_cleanup || rc=1; exit $rc' EXIT

cocoon_start_registry >&2
cocoon_write_config
cocoon_start_daemon
echo "READY $WORK $SOCK"
cat >/dev/null
