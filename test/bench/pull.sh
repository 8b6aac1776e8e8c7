#!/usr/bin/env bash
# Pull benchmark: the busybox test image through cocoond (crictl pull, removed
# between runs) against Debian's skopeo copying the same image from the same
# local registry into a fresh containers-storage store. Reports medians and the ratio.
set -euo pipefail
RUNS=${RUNS:-7}
if [ "$(id -u)" -ne 0 ]; then echo "bench: SKIP: needs root"; exit 0; fi
command -v skopeo >/dev/null || { echo "bench: SKIP: skopeo not installed (make deps)"; exit 0; }
. "$(dirname "$0")/../critest/env.sh"

IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
MIRRORED=$REGISTRY_ADDR/e2e-test-images/busybox:1.29-2

cocoon_start_registry >/dev/null
cocoon_write_config
cocoon_start_daemon

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

cocoon_times=() skopeo_times=()
for i in $(seq 1 "$RUNS"); do
  cocoon_crictl rmi "$IMAGE" >/dev/null 2>&1 || true
  t0=$(now_ms); cocoon_crictl pull "$IMAGE" >/dev/null; t1=$(now_ms)
  cocoon_times+=($((t1 - t0)))

  store=$WORK/skopeo-$i
  t0=$(now_ms)
  skopeo --registries-conf "$WORK/registries.conf" copy -q --src-tls-verify=false \
    "docker://$MIRRORED" "containers-storage:[overlay@$store/graph+$store/run]$IMAGE" >/dev/null
  t1=$(now_ms)
  skopeo_times+=($((t1 - t0)))
  umount -R "$store/graph/overlay" 2>/dev/null || true
  rm -rf "$store"
done

c=$(printf '%s\n' "${cocoon_times[@]}" | median)
s=$(printf '%s\n' "${skopeo_times[@]}" | median)
echo "pull $IMAGE, $RUNS runs each"
echo "  cocoond (crictl pull): ${cocoon_times[*]} ms, median $c ms"
echo "  skopeo copy:           ${skopeo_times[*]} ms, median $s ms"
awk -v c="$c" -v s="$s" 'BEGIN {printf "  ratio cocoond/skopeo: %.2f\n", c/s}'
