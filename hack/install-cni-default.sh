#!/usr/bin/env bash
# Installs a default CNI network (bridge + host-local + portmap + loopback) when
# the node has none, as CRI-O and Podman do, so pods get a network out of the box.
set -euo pipefail
dir=${CNI_CONF_DIR:-/etc/cni/net.d}
if compgen -G "$dir/*.conflist" >/dev/null || compgen -G "$dir/*.conf" >/dev/null; then
  exit 0
fi
mkdir -p "$dir"
cat > "$dir/10-cocoon.conflist" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "cocoon",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cocoon0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "10.88.0.0/16" }]]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "loopback" }
  ]
}
JSON
echo "installed default CNI network $dir/10-cocoon.conflist"
