#!/usr/bin/env bash
# Installs what Cocoon needs from Debian, idempotently: only missing packages
# are installed, so a second run costs one dpkg query.
set -euo pipefail

packages=(
  ca-certificates iproute2 cpio          # basics
  docker-registry busybox-static         # local test registry and test image contents
  skopeo                                 # pull benchmark baseline; ships /etc/containers defaults
  containernetworking-plugins            # CNI plugins in /usr/lib/cni
  qemu-system-x86                        # the VMM that runs on these machines
  protobuf-compiler                      # make generate
  libseccomp-dev                         # static libseccomp for the agent's seccomp filters
  containerd runc                        # side-by-side baseline for benchmarks and conformance
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian enables the containerd and docker-registry services on install; Cocoon
# replaces the one and starts the other itself with a temporary root.
for svc in containerd docker-registry; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
