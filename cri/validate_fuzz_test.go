package cri

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// FuzzValidate runs the request checks on arbitrary pod and container configs
// (protobuf wire bytes, as kubelet sends them). They must not panic, must
// refuse with a short ErrInvalidArgument naming a config field, and whatever
// they accept must keep the promises the rest of cocoond relies on.
func FuzzValidate(f *testing.F) {
	for _, c := range []struct {
		pod *runtimeapi.PodSandboxConfig
		ctr *runtimeapi.ContainerConfig
	}{
		{critestPod(), critestContainer()},
		{kubeletPod(), kubeletContainer()},
		{&runtimeapi.PodSandboxConfig{}, &runtimeapi.ContainerConfig{}},
	} {
		pod, _ := proto.Marshal(c.pod)
		ctr, _ := proto.Marshal(c.ctr)
		f.Add(pod, ctr)
	}
	f.Fuzz(func(t *testing.T, podWire, ctrWire []byte) {
		var pod runtimeapi.PodSandboxConfig
		var ctr runtimeapi.ContainerConfig
		if proto.Unmarshal(podWire, &pod) != nil || proto.Unmarshal(ctrWire, &ctr) != nil {
			return
		}
		if err := validatePodSandboxConfig("config", &pod); err != nil {
			checkRefusal(t, err)
		} else {
			md := pod.GetMetadata()
			for _, v := range []string{md.GetName(), md.GetNamespace(), md.GetUid()} {
				if v == "" || len(v) > maxNameLen || v == "." || v == ".." || strings.ContainsAny(v, "/_\x00\n ") {
					t.Fatalf("accepted pod metadata %q", v)
				}
			}
			if d := pod.GetLogDirectory(); d != "" && (!filepath.IsAbs(d) || filepath.Clean(d) != d) {
				t.Fatalf("accepted log directory %q", d)
			}
			checkResources(t, pod.GetLinux().GetResources())
			checkResources(t, pod.GetLinux().GetOverhead())
		}
		if err := validateContainerConfig("config", &ctr); err != nil {
			checkRefusal(t, err)
			return
		}
		if p := ctr.GetLogPath(); p != "" {
			const dir = "/var/log/pods/ns_pod_uid"
			if joined := filepath.Join(dir, p); !strings.HasPrefix(joined, dir+"/") {
				t.Fatalf("accepted log path %q leaves the pod directory: %s", p, joined)
			}
		}
		if n := ctr.GetMetadata().GetName(); n == "" || strings.ContainsAny(n, "/\x00") {
			t.Fatalf("accepted container name %q", n)
		}
		checkResources(t, ctr.GetLinux().GetResources())
	})
}

func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("refusal does not wrap ErrInvalidArgument: %v", err)
	}
	msg := strings.TrimPrefix(err.Error(), errdefs.ErrInvalidArgument.Error()+": ")
	if !strings.HasPrefix(msg, "config") || len(msg) > 1024 {
		t.Fatalf("refusal does not name a config field in a short message: %.300q (%d bytes)", msg, len(msg))
	}
}

func checkResources(t *testing.T, r *runtimeapi.LinuxContainerResources) {
	t.Helper()
	if r == nil {
		return
	}
	if r.GetOomScoreAdj() < -1000 || r.GetOomScoreAdj() > 1000 || r.GetMemoryLimitInBytes() < 0 || r.GetCpuShares() < 0 ||
		r.GetCpuPeriod() < 0 || r.GetCpuQuota() < -1 || r.GetMemorySwapLimitInBytes() < -1 {
		t.Fatalf("accepted resources %v", r)
	}
	for k := range r.GetUnified() {
		if strings.Contains(k, "/") || strings.Contains(k, "..") {
			t.Fatalf("accepted unified key %q", k)
		}
	}
}
