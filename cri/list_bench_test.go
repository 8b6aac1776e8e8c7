package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/encoding/protojson"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// writeRecords persists pods pods with ctrs containers each as a cocoond
// would have, so sandbox.New loads them the way a restart does.
func writeRecords(tb testing.TB, dir string, pods, ctrs int) {
	tb.Helper()
	write := func(kind, id string, rec any) {
		data, err := json.Marshal(map[string]any{"version": 1, "data": rec})
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, kind), 0o700); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, kind, id+".json"), data, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	labels := map[string]string{"app": "web", "tier": "front", "io.kubernetes.pod.namespace": "default"}
	for i := range pods {
		podID := fmt.Sprintf("%064x", i+1)
		pcfg, _ := protojson.Marshal(&runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: fmt.Sprintf("pod-%d", i), Namespace: "default", Uid: fmt.Sprint(i)},
			Labels:   labels, Annotations: map[string]string{"kubernetes.io/config.seen": "2026-01-01T00:00:00Z"},
			LogDirectory: "/var/log/pods/x", DnsConfig: &runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}},
		})
		write("pods", podID, sandbox.Pod{ID: podID, Name: fmt.Sprintf("pod-%d_default_%d_0", i, i), Config: pcfg, State: sandbox.StateNotReady})
		for j := range ctrs {
			ctrID := fmt.Sprintf("%032x%032x", i+1, j+1)
			ccfg, _ := protojson.Marshal(&runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: fmt.Sprintf("c%d", j)},
				Image:    &runtimeapi.ImageSpec{Image: "sha256:abc"}, Command: []string{"/bin/sh", "-c", "sleep 1000"},
				Envs:   []*runtimeapi.KeyValue{{Key: "PATH", Value: []byte("/usr/bin:/bin")}, {Key: "HOME", Value: []byte("/root")}},
				Mounts: []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: "/var/lib/kubelet/pods/x/volumes/data"}},
				Labels: labels, LogPath: fmt.Sprintf("c%d/0.log", j),
			})
			write("containers", ctrID, sandbox.Container{ID: ctrID, PodID: podID, Name: fmt.Sprintf("%s_c%d_0", podID, j), Config: ccfg, State: sandbox.StateExited})
		}
	}
}

func newListServer(tb testing.TB, pods, ctrs int) *Server {
	dir := tb.TempDir()
	writeRecords(tb, dir, pods, ctrs)
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	m, err := sandbox.New(sandbox.Options{StateDir: dir, Log: logrus.NewEntry(log)}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return New(&fakeImages{}, fakeNetwork{}, m, nil, Options{}, logrus.NewEntry(log))
}

// BenchmarkListContainers is kubelet's relist poll on a node with 50 pods
// of 4 containers: ListPodSandbox, then ListContainers.
func BenchmarkListContainers(b *testing.B) {
	s := newListServer(b, 50, 4)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		pods, err := s.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil || len(pods.Items) != 50 {
			b.Fatal(len(pods.GetItems()), err)
		}
		ctrs, err := s.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		if err != nil || len(ctrs.Containers) != 200 {
			b.Fatal(len(ctrs.GetContainers()), err)
		}
	}
}

// TestListsFromLoadedRecords: records loaded from disk answer the list and
// status RPCs with their configs' metadata and labels, through the filters.
func TestListsFromLoadedRecords(t *testing.T) {
	t.Parallel()
	s := newListServer(t, 3, 2)
	ctx := context.Background()
	pods, err := s.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		LabelSelector: map[string]string{"app": "web"},
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY},
	}})
	if err != nil || len(pods.Items) != 3 || pods.Items[1].GetMetadata().GetName() != "pod-1" {
		t.Fatalf("pods %v, %v", pods, err)
	}
	ctrs, err := s.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		PodSandboxId: pods.Items[1].Id,
		State:        &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_EXITED},
	}})
	if err != nil || len(ctrs.Containers) != 2 || ctrs.Containers[0].GetMetadata().GetName() != "c0" || ctrs.Containers[0].GetLabels()["tier"] != "front" {
		t.Fatalf("containers %v, %v", ctrs, err)
	}
	none, err := s.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"app": "db"}}})
	if err != nil || len(none.Containers) != 0 {
		t.Fatalf("label filter: %v, %v", none, err)
	}
	st, err := s.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctrs.Containers[1].Id})
	if err != nil || st.Status.GetMetadata().GetName() != "c1" || st.Status.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || len(st.Status.GetMounts()) != 1 {
		t.Fatalf("status %v, %v", st, err)
	}
}
