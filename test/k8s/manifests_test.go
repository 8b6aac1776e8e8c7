package k8s

// The static pods. Every image comes from the local registry through the
// mirror table; busybox is the e2e-test-images one critest also uses.
const busybox = "registry.k8s.io/e2e-test-images/busybox:1.29-2"

// vmApp is the VM pod that must become Ready and stay so: an init container
// writes into an emptyDir that two containers share, one of them gated by a
// readiness probe on a file the test removes and puts back, the other with
// a liveness probe that keeps passing (a restart there is a bug).
//
// Every probe has a 10 s timeout: an exec probe is an ExecSync into the
// guest, which takes seconds under TCG on a loaded 2-core machine (up to
// 14 s measured here), and kubelet's 1 s default turned slow answers into
// failures and restarts.
const vmApp = `apiVersion: v1
kind: Pod
metadata:
  name: vm-app
  namespace: default
spec:
  terminationGracePeriodSeconds: 2
  volumes:
  - name: work
    emptyDir: {}
  initContainers:
  - name: init
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo init-ran > /work/init"]
    volumeMounts:
    - {name: work, mountPath: /work}
  containers:
  - name: writer
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo from-writer > /work/shared && touch /work/ready && exec sleep 1000000"]
    readinessProbe:
      exec: {command: ["cat", "/work/ready"]}
      periodSeconds: 2
      timeoutSeconds: 10
      failureThreshold: 1
    volumeMounts:
    - {name: work, mountPath: /work}
  - name: reader
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "until [ -f /work/shared ]; do sleep 0.1; done; cat /work/init /work/shared; exec sleep 1000000"]
    livenessProbe:
      exec: {command: ["cat", "/work/init"]}
      periodSeconds: 5
      timeoutSeconds: 10
    volumeMounts:
    - {name: work, mountPath: /work}
`

// vmRestarts is the VM pod whose containers kubelet must restart once each:
// "liveness" turns unhealthy a few seconds after its first start (a marker
// in the emptyDir keeps the second start healthy), and "oom" allocates past
// its memory limit on its first start.
const vmRestarts = `apiVersion: v1
kind: Pod
metadata:
  name: vm-restarts
  namespace: default
spec:
  terminationGracePeriodSeconds: 2
  volumes:
  - name: work
    emptyDir: {}
  containers:
  - name: liveness
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "touch /tmp/healthy; if [ ! -f /work/restarted ]; then touch /work/restarted; sleep 3; rm /tmp/healthy; fi; exec sleep 1000000"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 2
      timeoutSeconds: 10
      failureThreshold: 1
    volumeMounts:
    - {name: work, mountPath: /work}
  - name: oom
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    # dd's 96 MiB buffer, filled from /dev/zero, is past the 32 MiB limit.
    command: ["sh", "-c", "if [ -f /work/oomed ]; then exec sleep 1000000; fi; touch /work/oomed; exec dd if=/dev/zero of=/dev/null bs=96M count=4"]
    resources:
      requests: {memory: 32Mi}
      limits: {memory: 32Mi}
    volumeMounts:
    - {name: work, mountPath: /work}
`

// hostNet serves HTTP on a host port from the host's network namespace,
// and ticks into its log five times a second: every tick must be in the CRI
// log, in order, across a cocoond crash.
const hostNet = `apiVersion: v1
kind: Pod
metadata:
  name: host-net
  namespace: default
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo host-net-ok > /www/index.html && exec httpd -f -p 127.0.0.1:%d -h /www"]
  - name: ticker
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.2; done"]
`

// hostPID lists the host's processes from the host's PID namespace.
const hostPID = `apiVersion: v1
kind: Pod
metadata:
  name: host-pid
  namespace: default
spec:
  hostPID: true
  terminationGracePeriodSeconds: 2
  containers:
  - name: ps
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "exec sleep 1000000"]
`

// rcHost names the RuntimeClass whose handler is cocoond's host handler,
// and asks for no host namespace: a host pod with its own network
// namespace and a pod IP from CNI, serving HTTP on that IP.
const rcHost = `apiVersion: v1
kind: Pod
metadata:
  name: rc-host
  namespace: default
spec:
  runtimeClassName: ` + hostRuntimeClassName + `
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: ` + busybox + `
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo rc-host-ok > /www/index.html && exec httpd -f -p %d -h /www"]
    readinessProbe:
      tcpSocket: {port: %d}
      periodSeconds: 1
`
