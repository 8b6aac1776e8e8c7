#!/usr/bin/env bash
# Pod benchmark: RunPodSandbox latency and "pod + container running" latency
# through cocoond (each pod a QEMU VM) against Debian's containerd 1.6 + runc
# in the same run, with the same images and CNI plugins; plus cocoond's RSS
# with PODS pods running. Reports medians and ratios.
set -euo pipefail
RUNS=${RUNS:-10}
PODS=${PODS:-10}
if [ "$(id -u)" -ne 0 ]; then echo "bench: SKIP: needs root"; exit 0; fi
command -v containerd >/dev/null || { echo "bench: SKIP: containerd not installed (make deps)"; exit 0; }
. "$(dirname "$0")/../critest/env.sh"

cocoon_start_registry >/dev/null
cocoon_write_config
cocoon_start_daemon

ctrd_start

IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# measure ENDPOINT LABEL: prints "runp_median pod+container_median" (ms)
measure() {
  local ep=$1 c="$BIN/crictl --runtime-endpoint unix://$1 --image-endpoint unix://$1 --timeout 120s" runp=() full=()
  $c pull "$IMAGE" >/dev/null
  $c pull registry.k8s.io/pause:3.9 >/dev/null
  for i in $(seq 1 "$RUNS"); do
    printf '{"metadata":{"name":"bench-%s","namespace":"bench","uid":"u-%s"},"log_directory":"%s/logs"}' "$i" "$i" "$WORK" > "$WORK/pod.json"
    printf '{"metadata":{"name":"c"},"image":{"image":"%s"},"command":["sleep","3600"],"log_path":"c-%s.log"}' "$IMAGE" "$i" > "$WORK/ctr.json"
    t0=$(now_ms); pod=$($c runp "$WORK/pod.json"); t1=$(now_ms)
    ctr=$($c create "$pod" "$WORK/ctr.json" "$WORK/pod.json"); $c start "$ctr" >/dev/null; t2=$(now_ms)
    runp+=($((t1 - t0))); full+=($((t2 - t0)))
    $c rmp -f "$pod" >/dev/null
  done
  echo "$(printf '%s\n' "${runp[@]}" | median) $(printf '%s\n' "${full[@]}" | median)"
}

read -r c_runp c_full < <(measure "$SOCK")
read -r d_runp d_full < <(measure "$CTRD_SOCK")
echo "pods: $RUNS runs each, same images, same CNI plugins, QEMU accel ${COCOON_ACCEL:-auto} (KVM when it boots guests, else TCG)"
echo "  RunPodSandbox median:        cocoond $c_runp ms, containerd+runc $d_runp ms, ratio $(awk -v a="$c_runp" -v b="$d_runp" 'BEGIN{printf "%.1f", a/b}')"
echo "  pod + container running:     cocoond $c_full ms, containerd+runc $d_full ms, ratio $(awk -v a="$c_full" -v b="$d_full" 'BEGIN{printf "%.1f", a/b}')"

# cocoond's own memory with PODS pods running.
for i in $(seq 1 "$PODS"); do
  printf '{"metadata":{"name":"rss-%s","namespace":"bench","uid":"r-%s"}}' "$i" "$i" > "$WORK/pod.json"
  cocoon_crictl runp "$WORK/pod.json" >/dev/null
done
rss=$(awk '/VmRSS/ {print $2}' "/proc/$COCOOND_PID/status")
echo "  cocoond RSS with $PODS pods: $((rss / 1024)) MiB"
