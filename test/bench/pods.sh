#!/usr/bin/env bash
# Pod benchmark, cocoond (each pod a QEMU VM) against Debian's containerd 1.6
# + runc in the same run, with the same images and CNI plugins:
#   - RunPodSandbox p50/p90 and "pod + container running" p50, per
#     configuration: containerd+runc, cocoond from a warm pool, cocoond
#     restoring each VM from a snapshot template (no pool), cocoond cold
#     (pool size 0, no template), each as a ratio to containerd+runc;
#   - a burst of BURST RunPodSandbox calls at once: time until all are Ready,
#     errors, leftovers after removing them;
#   - cocoond's RSS with PODS pods running.
# A cocoond configuration is a runtime handler of one cocoond: add a mode as
# one more handler in COCOON_EXTRA_CONFIG and one more entry in CONFIGS.
set -euo pipefail
RUNS=${RUNS:-10}
PODS=${PODS:-10}
BURST=${BURST:-20}
POOL=${POOL:-2}
if [ "$(id -u)" -ne 0 ]; then echo "bench: SKIP: needs root"; exit 0; fi
command -v containerd >/dev/null || { echo "bench: SKIP: containerd not installed (make deps)"; exit 0; }

# The pool handler is "cocoon"; "cold" is the same VM with no pool. Boots in
# a burst share 2 cores under TCG: give them time.
export COCOON_POOL_SIZE=$POOL COCOON_BOOT_TIMEOUT=${COCOON_BOOT_TIMEOUT:-300s}
export COCOON_EXTRA_CONFIG="[runtime.handlers.cold]
accel = \"${COCOON_ACCEL:-auto}\"
boot_timeout = \"$COCOON_BOOT_TIMEOUT\"
[runtime.handlers.cold.pool]
size = 0
[runtime.handlers.restore]
accel = \"${COCOON_ACCEL:-auto}\"
boot_timeout = \"$COCOON_BOOT_TIMEOUT\"
[runtime.handlers.restore.pool]
size = 0
[runtime.handlers.restore.template]
enabled = true"
# label:runtime-handler, in report order; "ctrd" is the baseline. "restore"
# has no pool and restores every VM from its handler's snapshot template.
CONFIGS=${CONFIGS:-"pool:cocoon restore:restore cold:cold"}
. "$(dirname "$0")/../critest/env.sh"

cocoon_start_registry >/dev/null
cocoon_write_config
cocoon_start_daemon
ctrd_start

IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# pct P: the P-th percentile (nearest rank) of the numbers on stdin.
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {r=int((NR*p+99)/100); if (r<1) r=1; print a[r]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", a/b}'; }
crictl_for() { echo "$BIN/crictl --runtime-endpoint unix://$1 --image-endpoint unix://$1 --timeout 300s"; }
warm_ready() { grep -c '"msg":"warm VM ready"' "$WORK/cocoond.log" || true; }

# wait_pool N: until cocoond has made N warm VMs in all (the pool is full
# again after a claim), so each pool run measures a claim, not a boot.
wait_pool() {
  for _ in $(seq 1 1200); do
    [ "$(warm_ready)" -ge "$1" ] && return 0
    sleep 0.25
  done
  echo "bench: the pool did not refill" >&2
  return 1
}

# prime_template HANDLER: the first pod of a template handler boots cold and
# builds the template in the background; wait until it is saved.
prime_template() {
  printf '{"metadata":{"name":"prime","namespace":"bench","uid":"prime"}}' >"$WORK/prime.json"
  cocoon_crictl rmp -f "$(cocoon_crictl runp --runtime "$1" "$WORK/prime.json")" >/dev/null
  for _ in $(seq 1 1200); do
    [ -f "$WORK/lib/templates/$1/template.json" ] && return 0
    sleep 0.25
  done
  echo "bench: the $1 template was not built" >&2
  return 1
}

# measure ENDPOINT HANDLER LABEL: prints "runp_p50 runp_p90 full_p50" (ms).
measure() {
  local ep=$1 handler=$2 label=$3 c runp=() full=() made=0
  c=$(crictl_for "$ep")
  $c pull "$IMAGE" >/dev/null
  $c pull registry.k8s.io/pause:3.9 >/dev/null
  if [ "$label" = restore ]; then prime_template "$handler"; fi
  for i in $(seq 1 "$RUNS"); do
    if [ "$label" = pool ]; then made=$((made + 1)); wait_pool $((POOL + made - 1)); fi
    printf '{"metadata":{"name":"%s-%s","namespace":"bench","uid":"u-%s-%s"},"log_directory":"%s/logs"}' "$label" "$i" "$label" "$i" "$WORK" >"$WORK/pod.json"
    printf '{"metadata":{"name":"c"},"image":{"image":"%s"},"command":["sleep","3600"],"log_path":"c-%s-%s.log"}' "$IMAGE" "$label" "$i" >"$WORK/ctr.json"
    t0=$(now_ms)
    pod=$($c runp ${handler:+--runtime "$handler"} "$WORK/pod.json")
    t1=$(now_ms)
    ctr=$($c create "$pod" "$WORK/ctr.json" "$WORK/pod.json")
    $c start "$ctr" >/dev/null
    t2=$(now_ms)
    runp+=($((t1 - t0)))
    full+=($((t2 - t0)))
    $c rmp -f "$pod" >/dev/null
  done
  echo "$(printf '%s\n' "${runp[@]}" | pct 50) $(printf '%s\n' "${runp[@]}" | pct 90) $(printf '%s\n' "${full[@]}" | pct 50)"
}

# burst ENDPOINT HANDLER LABEL: BURST RunPodSandbox calls at once; prints
# "ms_until_all_ready errors pods_left".
burst() {
  local ep=$1 handler=$2 label=$3 c errs=0 t0 t1 left
  c=$(crictl_for "$ep")
  mkdir -p "$WORK/burst-$label"
  t0=$(now_ms)
  for i in $(seq 1 "$BURST"); do
    printf '{"metadata":{"name":"burst-%s-%s","namespace":"bench","uid":"b-%s-%s"}}' "$label" "$i" "$label" "$i" >"$WORK/burst-$label/$i.json"
    ($c runp ${handler:+--runtime "$handler"} "$WORK/burst-$label/$i.json" >"$WORK/burst-$label/$i.out" 2>&1; echo $? >"$WORK/burst-$label/$i.rc") &
  done
  wait
  t1=$(now_ms)
  for i in $(seq 1 "$BURST"); do
    [ "$(cat "$WORK/burst-$label/$i.rc")" = 0 ] || { errs=$((errs + 1)); sed 's/^/    /' "$WORK/burst-$label/$i.out" | tail -n 2 >&2; }
  done
  ready=$($c pods --state ready -q | wc -l)
  [ "$ready" -ge $((BURST - errs)) ] || errs=$((errs + BURST - errs - ready))
  $c rmp -a -f >/dev/null 2>&1 || true
  left=$($c pods -q | wc -l)
  echo "$((t1 - t0)) $errs $left"
}

declare -A R
read -r R[ctrd_p50] R[ctrd_p90] R[ctrd_full] < <(measure "$CTRD_SOCK" "" ctrd)
for cfg in $CONFIGS; do
  label=${cfg%%:*} handler=${cfg#*:}
  read -r R[${label}_p50] R[${label}_p90] R[${label}_full] < <(measure "$SOCK" "$handler" "$label")
done

echo "pods: $RUNS runs each, same images, same CNI plugins, QEMU accel ${COCOON_ACCEL:-auto} (KVM when it boots guests, else TCG); pool size $POOL"
printf '  %-34s %9s %9s %7s %7s %12s %7s\n' "RunPodSandbox (ms)" p50 p90 "p50 ×" "p90 ×" "pod+ctr p50" "×"
printf '  %-34s %9s %9s %7s %7s %12s %7s\n' "containerd+runc" "${R[ctrd_p50]}" "${R[ctrd_p90]}" 1.0 1.0 "${R[ctrd_full]}" 1.0
for cfg in $CONFIGS; do
  l=${cfg%%:*}
  printf '  %-34s %9s %9s %7s %7s %12s %7s\n' "cocoond $l" "${R[${l}_p50]}" "${R[${l}_p90]}" \
    "$(ratio "${R[${l}_p50]}" "${R[ctrd_p50]}")" "$(ratio "${R[${l}_p90]}" "${R[ctrd_p90]}")" \
    "${R[${l}_full]}" "$(ratio "${R[${l}_full]}" "${R[ctrd_full]}")"
done

# Bursts: the pool handler (a pool of POOL serves the first ones, the rest
# boot cold) against containerd's.
[ "$POOL" -gt 0 ] && wait_pool $((POOL + RUNS))
read -r b_ctrd_ms b_ctrd_err b_ctrd_left < <(burst "$CTRD_SOCK" "" ctrd)
first=${CONFIGS%% *}
read -r b_ms b_err b_left < <(burst "$SOCK" "${first#*:}" "${first%%:*}")
# VMs beyond the pool's once it has refilled: anything the burst leaked.
[ "$POOL" -gt 0 ] && wait_pool $((POOL + RUNS + POOL))
sleep 2
vms=$(find "$WORK/run/vm" -mindepth 1 -maxdepth 1 -type d | wc -l)
echo "  burst of $BURST RunPodSandbox at once: time until all Ready, errors, pods left after rmp -a"
echo "    containerd+runc:        ${b_ctrd_ms} ms, $b_ctrd_err errors, $b_ctrd_left left"
echo "    cocoond ${first%%:*}:$(printf '%*s' $((15 - ${#first})) '') ${b_ms} ms, $b_err errors, $b_left left, $((vms - POOL)) VMs beyond the pool; ratio $(ratio "$b_ms" "$b_ctrd_ms")"

# cocoond's own memory with PODS pods running.
for i in $(seq 1 "$PODS"); do
  printf '{"metadata":{"name":"rss-%s","namespace":"bench","uid":"r-%s"}}' "$i" "$i" >"$WORK/pod.json"
  cocoon_crictl runp "$WORK/pod.json" >/dev/null
done
rss=$(awk '/VmRSS/ {print $2}' "/proc/$COCOOND_PID/status")
echo "  cocoond RSS with $PODS pods: $((rss / 1024)) MiB"
