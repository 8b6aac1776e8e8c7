#!/usr/bin/env bash
# Memory benchmark, cocoond against Debian's containerd 1.6 + runc in the same
# run, same images, same CNI plugins. Each pod is idle: a busybox `sleep`.
#  1. host PSS per idle pod, averaged over PODS pods after IDLE seconds:
#     cocoond: QEMU + virtiofsd + the pod's share tmpfs + cocoond's growth;
#     runc: shim + pause + workload + containerd's growth.
#  2. density: keep starting pods until DENSITY_PODS run, check that every one
#     answers `crictl exec`, report the time and memory, remove them all and
#     count what is left (processes, netns, veths, mounts, run/state files).
# Takes about 5 minutes under TCG on 2 cores with the defaults (302 s here:
# QEMU boots one VM after the other, about 5 s each); DENSITY_PODS=10 makes it
# about 2. Fails when a pod's PSS was not measured, a pod did not answer exec,
# or anything was left behind.
set -euo pipefail
PODS=${PODS:-5}
DENSITY_PODS=${DENSITY_PODS:-40}
IDLE=${IDLE:-20} # the guest reports its freed pages within seconds of boot
if [ "$(id -u)" -ne 0 ]; then echo "bench: SKIP: needs root"; exit 0; fi
command -v containerd >/dev/null || { echo "bench: SKIP: containerd not installed (make deps)"; exit 0; }
[ "$DENSITY_PODS" -ge "$PODS" ] || { echo "bench: DENSITY_PODS ($DENSITY_PODS) must be at least PODS ($PODS)" >&2; exit 1; }
. "$(dirname "$0")/../critest/env.sh"
# A pod's own cost, from cold-booted VMs: warm pool VMs are the handler's
# cost, not a pod's, they would be counted as leftovers once the pods are
# gone, and a refill boot beside the pods would skew their PSS. pods.sh
# measures the pool.
export COCOON_POOL_SIZE=0

cocoon_start_registry >/dev/null
cocoon_write_config
cocoon_start_daemon
ctrd_start

IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
pss_kb() { awk '/^Pss:/ {s += $2} END {print s + 0}' "$@" 2>/dev/null || true; }
mem_available_kb() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }

# Processes of one runtime's pods, one pid a line.
cocoon_pids() { pgrep -f -- "$WORK/run/vm/" || true; }
ctrd_pids() {
  local shim
  for shim in $(pgrep -f -- "containerd-shim.*$CTRD_SOCK" || true); do
    echo "$shim"
    ps -o pid= --ppid "$shim" | while read -r p; do echo "$p"; ps -o pid= --ppid "$p"; done
  done | awk 'NF {print $1}' | sort -u
}
# Sum of the PSS of a list of pids (kB); pids that exit meanwhile count 0.
sum_pss() {
  local p files=()
  for p in "$@"; do files+=("/proc/$p/smaps_rollup"); done
  [ ${#files[@]} -eq 0 ] && { echo 0; return; }
  pss_kb "${files[@]}"
}
# Memory the pods' share tmpfs hold on the host (kB).
share_kb() {
  awk -v w="$WORK/run/sandboxes/" 'index($2, w) == 1 && $3 == "tmpfs" {print $2}' /proc/self/mounts | while read -r m; do df -k --output=used "$m" | tail -1; done | awk '{s += $1} END {print s + 0}'
}

# start_pods ENDPOINT FROM TO: pods FROM..TO, each with a running sleep container;
# prints the container ids, one a line, on fd 3.
start_pods() {
  local ep=$1 c="$BIN/crictl --runtime-endpoint unix://$1 --image-endpoint unix://$1 --timeout 180s" i pod ctr
  for i in $(seq "$2" "$3"); do
    printf '{"metadata":{"name":"mem-%s","namespace":"bench","uid":"m-%s"},"log_directory":"%s/logs"}' "$i" "$i" "$WORK" > "$WORK/pod-$i.json"
    printf '{"metadata":{"name":"idle"},"image":{"image":"%s"},"command":["sleep","36000"],"log_path":"idle-%s.log"}' "$IMAGE" "$i" > "$WORK/ctr-$i.json"
    pod=$($c runp "$WORK/pod-$i.json")
    ctr=$($c create "$pod" "$WORK/ctr-$i.json" "$WORK/pod-$i.json")
    $c start "$ctr" >/dev/null
    echo "$ctr" >&3
  done
}

# bench LABEL ENDPOINT DAEMON_PID PIDS_FN: prints one summary line per phase.
bench() {
  local label=$1 ep=$2 daemon=$3 pids_fn=$4 c="$BIN/crictl --runtime-endpoint unix://$2 --image-endpoint unix://$2 --timeout 180s"
  local ctrs=$WORK/$label.ctrs t0 t1 t2 avail0 avail1 daemon0 daemon1 pods_pss share per_pod ok=0 ctr
  $c pull "$IMAGE" >/dev/null
  $c pull registry.k8s.io/pause:3.9 >/dev/null
  : > "$ctrs"
  avail0=$(mem_available_kb); daemon0=$(sum_pss "$daemon")
  t0=$(now_ms)
  start_pods "$ep" 1 "$PODS" 3>>"$ctrs"
  sleep "$IDLE"
  # shellcheck disable=SC2046 # one pid a word
  pods_pss=$(sum_pss $($pids_fn)); daemon1=$(sum_pss "$daemon")
  share=0; [ "$label" = cocoond ] && share=$(share_kb)
  per_pod=$(( (pods_pss + share + daemon1 - daemon0) / PODS ))
  echo "$label idle_pod_pss_kb=$per_pod pods=$PODS vmm_and_helpers_kb=$((pods_pss / PODS)) share_kb=$((share / PODS)) daemon_growth_kb=$(( (daemon1 - daemon0) / PODS ))"
  t1=$(now_ms)
  [ "$DENSITY_PODS" -gt "$PODS" ] && start_pods "$ep" $((PODS + 1)) "$DENSITY_PODS" 3>>"$ctrs"
  t2=$(now_ms)
  while read -r ctr; do
    [ "$($c exec "$ctr" echo ok 2>/dev/null)" = ok ] && ok=$((ok + 1))
  done < "$ctrs"
  avail1=$(mem_available_kb)
  # shellcheck disable=SC2046
  pods_pss=$(sum_pss $($pids_fn)); daemon1=$(sum_pss "$daemon")
  echo "$label density pods=$DENSITY_PODS answering_exec=$ok start_s=$(( (t2 - t0 - IDLE * 1000) / 1000 )) host_mem_used_mib=$(( (avail0 - avail1) / 1024 )) pods_pss_mib=$((pods_pss / 1024)) daemon_pss_mib=$((daemon1 / 1024))"
  t1=$(now_ms)
  $c rmp -a -f >/dev/null
  t2=$(now_ms)
  echo "$label removal took_s=$(( (t2 - t1) / 1000 ))"
}

count() { awk 'NF' | wc -l; }
# What pods leave in cocoond's run and state dirs (the store's two record
# directories stay).
pod_files() {
  find "$WORK/run/vm" "$WORK/run/sandboxes" "$WORK/lib/sandboxes" -mindepth 1 \
    -not -path "$WORK/lib/sandboxes/pods" -not -path "$WORK/lib/sandboxes/containers" 2>/dev/null || true
}
cocoon_leftovers() {
  local procs netns veths mounts files
  procs=$(cocoon_pids | count)
  netns=$(find "$WORK/run/netns" -mindepth 1 2>/dev/null | count)
  veths=$(ip -o link show master cocoontest0 2>/dev/null | count)
  mounts=$(awk -v w="$WORK" 'index($2, w) == 1 && $2 !~ "/storage/overlay$" {print $2}' /proc/self/mounts | count)
  files=$(pod_files | count)
  echo "cocoond leftovers processes=$procs netns=$netns veths=$veths mounts=$mounts files=$files"
  pod_files | sed 's/^/  left: /' >&2
}
ctrd_leftovers() {
  local procs veths mounts
  procs=$(ctrd_pids | count)
  veths=$(ip -o link show master ctrd0 2>/dev/null | count)
  mounts=$(awk -v d="$CTRD/state" 'index($2, d) == 1 {print $2}' /proc/self/mounts | count)
  echo "containerd+runc leftovers processes=$procs veths=$veths mounts=$mounts"
}

echo "memory: $PODS idle pods averaged, density $DENSITY_PODS pods, QEMU accel ${COCOON_ACCEL:-auto} (KVM when it boots guests, else TCG)"
started=$(now_ms)
bench cocoond "$SOCK" "$COCOOND_PID" cocoon_pids | tee "$WORK/cocoond.out"
sleep 2
cocoon_leftovers | tee -a "$WORK/cocoond.out"
bench containerd+runc "$CTRD_SOCK" "$CTRD_PID" ctrd_pids | tee "$WORK/ctrd.out"
sleep 2
ctrd_leftovers | tee -a "$WORK/ctrd.out"
c_pod=$(sed -n 's/.*idle_pod_pss_kb=\([0-9]*\).*/\1/p' "$WORK/cocoond.out")
r_pod=$(sed -n 's/.*idle_pod_pss_kb=\([0-9]*\).*/\1/p' "$WORK/ctrd.out")
[ "${c_pod:-0}" -gt 0 ] && [ "${r_pod:-0}" -gt 0 ] || { echo "bench: FAIL: no PSS measured for an idle pod" >&2; exit 1; }
echo "  host PSS per idle pod:  cocoond $((c_pod / 1024)) MiB, containerd+runc $((r_pod / 1024)) MiB, ratio $(awk -v a="$c_pod" -v b="$r_pod" 'BEGIN{printf "%.1f", a/b}')"
echo "  total time: $(( ($(now_ms) - started) / 1000 )) s"
grep -q "answering_exec=$DENSITY_PODS " "$WORK/cocoond.out" || { echo "bench: FAIL: not every cocoond pod answered exec" >&2; exit 1; }
grep -q "processes=0 netns=0 veths=0 mounts=0 files=0" "$WORK/cocoond.out" || { echo "bench: FAIL: cocoond left something behind" >&2; exit 1; }
