package clh

import (
	"context"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// pinnedRelease is the Cloud Hypervisor release the spec subset follows.
const pinnedRelease = "v51.0"

func TestSpec(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromFile("cloud-hypervisor.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("not a valid OpenAPI document: %v", err)
	}
	if doc.Info.Version != pinnedRelease || !strings.Contains(doc.Info.Description, "release "+pinnedRelease) {
		t.Errorf("info does not pin %s: version %q", pinnedRelease, doc.Info.Version)
	}
	if len(doc.Servers) != 1 || doc.Servers[0].URL != "http://localhost/api/v1" {
		t.Errorf("servers %v", doc.Servers)
	}
	// Exactly the endpoints the driver uses, each with one operation.
	want := []string{
		"GET /vm.counters", "GET /vm.info", "GET /vmm.ping",
		"PUT /vm.add-disk", "PUT /vm.add-fs", "PUT /vm.add-net", "PUT /vm.add-vsock",
		"PUT /vm.boot", "PUT /vm.create", "PUT /vm.delete", "PUT /vm.pause",
		"PUT /vm.remove-device", "PUT /vm.resize", "PUT /vm.restore", "PUT /vm.resume",
		"PUT /vm.shutdown", "PUT /vm.snapshot", "PUT /vmm.shutdown",
	}
	var got []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			got = append(got, method+" "+path)
			if op.OperationID == "" {
				t.Errorf("%s %s has no operationId", method, path)
			}
			if op.Responses.Default() == nil {
				t.Errorf("%s %s does not describe CH's error answers", method, path)
			}
		}
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("operations\n got %v\nwant %v", got, want)
	}
}
