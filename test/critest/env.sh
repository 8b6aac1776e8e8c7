# Sourced by the critest and benchmark scripts: a throw-away cocoond with its
# own state, a local registry with the test images behind a mirror table, and
# a CNI network, all under one temporary directory that cleanup removes.
# Needs: BIN (with cocoond, cocoon-test-images, crictl), root.

: "${BIN:?BIN must point at the built binaries}"
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000}
WORK=$(mktemp -d /tmp/cocoon-test.XXXXXX)
SOCK=$WORK/run/cocoon.sock
COCOOND_PID=
CTRD=$WORK/containerd
CTRD_SOCK=$CTRD/containerd.sock
CTRD_PID=
COCOON_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

cocoon_cleanup() {
  local rc=$?
  set +e # cleanup must run to the end whatever fails on the way
  [ -n "$CTRD_PID" ] && ctrd_stop
  # Pods outlive cocoond by design (their VMs keep running): remove them all
  # first, through CRI, so their VMs stop and CNI DEL frees their addresses.
  if [ -n "$COCOOND_PID" ] && kill -0 "$COCOOND_PID" 2>/dev/null; then
    timeout 300 "$BIN/crictl" --config "$WORK/crictl.yaml" rmp -a -f >/dev/null 2>&1 || true
  fi
  if [ -n "$COCOOND_PID" ] && kill -0 "$COCOOND_PID" 2>/dev/null; then
    kill -TERM "$COCOOND_PID"
    for _ in $(seq 1 100); do kill -0 "$COCOOND_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$COCOOND_PID" 2>/dev/null || true
  fi
  if pgrep -f -- "$WORK/run/vm/" >/dev/null; then
    echo "cleanup: VMs still running after every pod was removed (a bug): $(pgrep -f -- "$WORK/run/vm/" | tr '\n' ' ')" >&2
    pkill -KILL -f -- "$WORK/run/vm/" || true
    [ $rc -eq 0 ] && rc=1
  fi
  "$BIN/cocoon-test-images" down --dir "$WORK/registry" >/dev/null 2>&1 || true
  ip link del cocoontest0 2>/dev/null
  rm -rf /var/lib/cni/networks/cocoontest # host-local's lease dir
  # Anything the store left mounted (it should have unmounted on SIGTERM).
  local leaked
  leaked=$(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r)
  if [ -n "$leaked" ]; then
    echo "cleanup: mounts left under $WORK: $leaked" >&2
    for m in $leaked; do umount -l "$m" 2>/dev/null || true; done
  fi
  rm -rf "$WORK"
  return $rc
}
trap cocoon_cleanup EXIT

cocoon_start_registry() {
  "$BIN/cocoon-test-images" up --addr "$REGISTRY_ADDR" --dir "$WORK/registry"
}

cocoon_write_config() {
  mkdir -p "$WORK/cni" "$WORK/run" "$WORK/lib"
  # A network of its own (bridge, subnet, host-local allocations) beside a
  # node's default one; cleanup deletes the bridge the plugin leaves.
  CNI_CONF_DIR=$WORK/cni "$COCOON_REPO/hack/install-cni-default.sh" >/dev/null
  sed -i 's/"cocoon0"/"cocoontest0"/; s/"name": "cocoon"/"name": "cocoontest"/; s#10.88.0.0/16#10.90.0.0/16#' "$WORK/cni/10-cocoon.conflist"
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$WORK/policy.json"
  "$BIN/cocoon-test-images" registries-conf --addr "$REGISTRY_ADDR" > "$WORK/registries.conf"
  cat > "$WORK/cocoon.toml" <<TOML
[daemon]
socket = "$SOCK"
state_dir = "$WORK/lib"
runtime_dir = "$WORK/run"
log_level = "${COCOON_LOG_LEVEL:-info}"
log_format = "json"
[image]
graph_root = "$WORK/lib/storage"
run_root = "$WORK/run/storage"
registries_conf = "$WORK/registries.conf"
registries_conf_dir = ""
signature_policy = "$WORK/policy.json"
[cni]
conf_dir = "$WORK/cni"
[runtime]
guest_dir = "${COCOON_GUEST_DIR:-$COCOON_REPO/_output/guest}"
[runtime.handlers.cocoon]
accel = "${COCOON_ACCEL:-auto}"
boot_timeout = "${COCOON_BOOT_TIMEOUT:-60s}"
[runtime.handlers.cocoon.pool]
size = ${COCOON_POOL_SIZE:--1}
TOML
  # More handlers (the benchmark's configurations), whole TOML tables.
  if [ -n "${COCOON_EXTRA_CONFIG:-}" ]; then printf '%s\n' "$COCOON_EXTRA_CONFIG" >> "$WORK/cocoon.toml"; fi
}

cocoon_start_daemon() {
  "$BIN/cocoond" --config "$WORK/cocoon.toml" >"$WORK/cocoond.log" 2>&1 &
  COCOOND_PID=$!
  for _ in $(seq 1 100); do
    [ -S "$SOCK" ] && break
    kill -0 "$COCOOND_PID" 2>/dev/null || { cat "$WORK/cocoond.log" >&2; echo "cocoond exited" >&2; return 1; }
    sleep 0.1
  done
  cocoon_crictl version >/dev/null
}

cocoon_crictl() {
  printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 120\n' "$SOCK" "$SOCK" > "$WORK/crictl.yaml"
  "$BIN/crictl" --config "$WORK/crictl.yaml" "$@"
}

# The baseline: Debian's containerd + runc with its own root, state and
# socket (never the system's), mirrors to the same local registry and the
# same CNI plugins on a bridge of its own.
ctrd_start() {
  command -v containerd >/dev/null || { echo "containerd not installed (make deps installs it)" >&2; return 1; }
  mkdir -p "$CTRD/cni"
  CNI_CONF_DIR=$CTRD/cni "$COCOON_REPO/hack/install-cni-default.sh" >/dev/null
  sed -i 's/"cocoon0"/"ctrd0"/; s/"name": "cocoon"/"name": "ctrd"/; s#10.88.0.0/16#10.89.0.0/16#' "$CTRD/cni/10-cocoon.conflist"
  {
    echo 'version = 2'
    echo "root = \"$CTRD/root\""
    echo "state = \"$CTRD/state\""
    echo '[grpc]'
    echo "  address = \"$CTRD_SOCK\""
    echo '[plugins."io.containerd.grpc.v1.cri"]'
    echo '  sandbox_image = "registry.k8s.io/pause:3.9"'
    echo '  restrict_oom_score_adj = true'
    echo '[plugins."io.containerd.grpc.v1.cri".cni]'
    echo '  bin_dir = "/usr/lib/cni"'
    echo "  conf_dir = \"$CTRD/cni\""
    for r in registry.k8s.io k8s.gcr.io gcr.io public.ecr.aws; do
      echo "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"$r\"]"
      echo "  endpoint = [\"http://$REGISTRY_ADDR\"]"
    done
  } > "$CTRD/config.toml"
  containerd --config "$CTRD/config.toml" >"$CTRD/log" 2>&1 &
  CTRD_PID=$!
  for _ in $(seq 1 100); do [ -S "$CTRD_SOCK" ] && return 0; sleep 0.1; done
  echo "containerd did not come up; log:" >&2; tail -n 20 "$CTRD/log" >&2; return 1
}

ctrd_stop() {
  timeout 120 "$BIN/crictl" --runtime-endpoint "unix://$CTRD_SOCK" rmp -a -f >/dev/null 2>&1
  kill "$CTRD_PID" 2>/dev/null
  wait "$CTRD_PID" 2>/dev/null
  CTRD_PID=
  # containerd's shims outlive it; they belong to this run only.
  pkill -f -- "$CTRD/state" 2>/dev/null
  local m
  for m in $(awk -v d="$CTRD" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m"; done
  ip link del ctrd0 2>/dev/null
  rm -rf /var/lib/cni/networks/ctrd
  return 0
}
