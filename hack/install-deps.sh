#!/usr/bin/env bash
# Installs what Cocoon needs from Debian (hack/packages.txt), idempotently: only
# missing packages are installed, so a second run costs one dpkg query. Then it
# checks the post-conditions the build relies on, so a missing piece fails here
# with its name rather than later inside some test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/[[:space:]]//g' "$here/packages.txt")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps the node lean, so everything the build needs
  # must be named in packages.txt (libprotobuf-dev is only a Recommends).
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian enables the containerd and docker-registry services on install; Cocoon
  # replaces the one and starts the other itself with a temporary root.
  for svc in containerd docker-registry; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
fi

# Post-conditions: every command and file of needs.txt is there and comes from
# a listed package, and protoc finds the well-known types.
"$here/check-deps.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'syntax = "proto3";\nimport "google/protobuf/empty.proto";\nmessage M { google.protobuf.Empty e = 1; }\n' > "$tmp/probe.proto"
if ! protoc -I "$tmp" -I /usr/include --descriptor_set_out=/dev/null "$tmp/probe.proto"; then
  echo "install-deps: protoc cannot compile a file importing google/protobuf/empty.proto (is libprotobuf-dev installed?)" >&2
  exit 1
fi
