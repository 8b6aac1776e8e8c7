package k8s

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAPIServerDouble checks the double's answers as client-go reads them,
// without kubelet: it runs everywhere, unlike TestKubelet.
func TestAPIServerDouble(t *testing.T) {
	s, err := startAPIServer(map[string][]map[string]any{"runtimeclasses": {hostRuntimeClass()}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	base := "http://" + s.addr

	do := func(method, path, contentType, body string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q", method, path, ct)
		}
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp.StatusCode, out
	}

	// A watch opened before the writes, from the list's resourceVersion.
	_, pods := do("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", "", "")
	listRV := pods["metadata"].(map[string]any)["resourceVersion"].(string)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wreq, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dn1&resourceVersion="+listRV, nil)
	wresp, err := http.DefaultClient.Do(wreq)
	if err != nil {
		t.Fatal(err)
	}
	defer wresp.Body.Close()
	events := bufio.NewScanner(wresp.Body)

	steps := []struct {
		name, method, path, contentType, body string
		wantCode                              int
		check                                 func(map[string]any) string
	}{
		{"runtimeclass list holds the seed", "GET", "/apis/node.k8s.io/v1/runtimeclasses", "", "", 200, func(o map[string]any) string {
			items, _ := o["items"].([]any)
			if o["kind"] != "RuntimeClassList" || len(items) != 1 || items[0].(map[string]any)["handler"] != hostRuntimeHandler {
				return "want one RuntimeClass with the host handler"
			}
			return ""
		}},
		{"empty list has a resourceVersion and items", "GET", "/api/v1/services", "", "", 200, func(o map[string]any) string {
			items, ok := o["items"].([]any)
			if !ok || len(items) != 0 || o["metadata"].(map[string]any)["resourceVersion"] == "" {
				return "want empty items and a resourceVersion"
			}
			return ""
		}},
		{"unknown resource is a 404 Status", "GET", "/api/v1/namespaces/default/secrets/x", "", "", 404, isStatus("NotFound")},
		{"unknown path is a 404 Status", "GET", "/healthz", "", "", 404, isStatus("NotFound")},
		{"missing object is NotFound", "GET", "/api/v1/nodes/n1", "", "", 404, isStatus("NotFound")},
		{"create a node", "POST", "/api/v1/nodes", "application/json", `{"metadata":{"name":"n1"},"status":{"capacity":{"cpu":"2"}}}`, 201, func(o map[string]any) string {
			md := o["metadata"].(map[string]any)
			if md["uid"] == "" || md["resourceVersion"] == "" || o["kind"] != "Node" {
				return "want uid, resourceVersion and kind set"
			}
			return ""
		}},
		{"create it again", "POST", "/api/v1/nodes", "application/json", `{"metadata":{"name":"n1"}}`, 409, isStatus("AlreadyExists")},
		{"get keeps the content", "GET", "/api/v1/nodes/n1", "", "", 200, func(o map[string]any) string {
			if o["status"].(map[string]any)["capacity"].(map[string]any)["cpu"] != "2" {
				return "the node lost its status"
			}
			return ""
		}},
		{"field selector on the list", "GET", "/api/v1/nodes?fieldSelector=metadata.name%3Dother", "", "", 200, func(o map[string]any) string {
			if len(o["items"].([]any)) != 0 {
				return "want no node named other"
			}
			return ""
		}},
		{"update of a missing object is NotFound", "PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1", "application/json", `{"metadata":{"name":"n1"}}`, 404, isStatus("NotFound")},
		// The seed RuntimeClass took resourceVersion 1, the node 2.
		{"stale update is a Conflict", "PUT", "/api/v1/nodes/n1", "application/json", `{"metadata":{"name":"n1","resourceVersion":"1"}}`, 409, isStatus("Conflict")},
		{"update at the current version", "PUT", "/api/v1/nodes/n1", "application/json", `{"metadata":{"name":"n1","resourceVersion":"2","uid":"forged"},"spec":{"podCIDR":"10.0.0.0/24"}}`, 200, func(o map[string]any) string {
			md := o["metadata"].(map[string]any)
			if md["resourceVersion"] != "3" || md["uid"] == "forged" || o["spec"].(map[string]any)["podCIDR"] != "10.0.0.0/24" {
				return "want the new spec, the next resourceVersion and the server's uid"
			}
			return ""
		}},
		{"a mirror pod", "POST", "/api/v1/namespaces/default/pods", "application/json", `{"metadata":{"name":"p-n1"},"spec":{"nodeName":"n1"}}`, 201, nil},
		{"a pod on another node", "POST", "/api/v1/namespaces/default/pods", "application/json", `{"metadata":{"name":"p-n2"},"spec":{"nodeName":"n2"}}`, 201, nil},
		{"merge patch applies", "PATCH", "/api/v1/namespaces/default/pods/p-n1", "application/merge-patch+json", `{"metadata":{"labels":{"a":"b"}}}`, 200, func(o map[string]any) string {
			if l, _ := o["metadata"].(map[string]any)["labels"].(map[string]any); l["a"] != "b" {
				return "label not applied"
			}
			return ""
		}},
		{"strategic merge patch of status applies", "PATCH", "/api/v1/namespaces/default/pods/p-n1/status", "application/strategic-merge-patch+json", `{"status":{"phase":"Running"}}`, 200, func(o map[string]any) string {
			if o["status"].(map[string]any)["phase"] != "Running" || o["metadata"].(map[string]any)["labels"] == nil {
				return "want the phase patched and the rest kept"
			}
			return ""
		}},
		{"a patch's uid is a precondition", "PATCH", "/api/v1/namespaces/default/pods/p-n1/status", "application/strategic-merge-patch+json", `{"metadata":{"uid":"other"},"status":{"phase":"Failed"}}`, 409, isStatus("Conflict")},
		{"json patch is not spoken", "PATCH", "/api/v1/namespaces/default/pods/p-n1", "application/json-patch+json", `{}`, 415, isStatus("UnsupportedMediaType")},
		{"delete with a wrong uid precondition", "DELETE", "/api/v1/namespaces/default/pods/p-n1", "application/json", `{"preconditions":{"uid":"nope"}}`, 409, isStatus("Conflict")},
		{"delete", "DELETE", "/api/v1/namespaces/default/pods/p-n1", "", "", 200, nil},
	}
	for _, st := range steps {
		code, out := do(st.method, st.path, st.contentType, st.body)
		if code != st.wantCode {
			t.Errorf("%s: %s %s answered %d %v, want %d", st.name, st.method, st.path, code, out, st.wantCode)
			continue
		}
		if st.check != nil {
			if why := st.check(out); why != "" {
				t.Errorf("%s: %s: %v", st.name, why, out)
			}
		}
	}

	// The watch saw n1's pod come, change twice and go, and nothing of n2's.
	var got []string
	for len(got) < 4 && events.Scan() {
		var e struct {
			Type   string `json:"type"`
			Object struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			} `json:"object"`
		}
		if err := json.Unmarshal(events.Bytes(), &e); err != nil {
			t.Fatalf("watch event %q: %v", events.Bytes(), err)
		}
		got = append(got, e.Type+" "+e.Object.Metadata.Name)
	}
	if want := "ADDED p-n1,MODIFIED p-n1,MODIFIED p-n1,DELETED p-n1"; strings.Join(got, ",") != want {
		t.Errorf("watch events %v, want %s", got, want)
	}

	// A streaming list: the current objects, then the bookmark ending them.
	lreq, _ := http.NewRequestWithContext(ctx, "GET", base+"/apis/node.k8s.io/v1/runtimeclasses?watch=1&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1", nil)
	lresp, err := http.DefaultClient.Do(lreq)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(lresp.Body) // ends after timeoutSeconds
	lresp.Body.Close()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"type":"ADDED"`) || !strings.Contains(lines[1], `"type":"BOOKMARK"`) || !strings.Contains(lines[1], `"k8s.io/initial-events-end":"true"`) {
		t.Errorf("streaming list answered %q, want the RuntimeClass then the initial-events-end bookmark", lines)
	}

	if miss := s.unknown(); len(miss) != 2 {
		t.Errorf("unknown requests recorded %v, want the secret and /healthz", miss)
	}
}

func isStatus(reason string) func(map[string]any) string {
	return func(o map[string]any) string {
		if o["kind"] != "Status" || o["reason"] != reason {
			return "want a Status with reason " + reason
		}
		return ""
	}
}

// TestStrategicMerge checks strategicMerge on patches of the shape kubelet
// sends (apimachinery's CreateTwoWayMergePatch of pod and node status).
func TestStrategicMerge(t *testing.T) {
	cases := []struct{ name, orig, patch, want string }{{
		name:  "conditions merge by type in the directive's order, other lists are replaced",
		orig:  `{"status":{"phase":"Pending","conditions":[{"type":"Ready","status":"False"},{"type":"PodScheduled","status":"True"}],"containerStatuses":[{"name":"a","ready":false}]}}`,
		patch: `{"metadata":{"uid":"u"},"status":{"$setElementOrder/conditions":[{"type":"Initialized"},{"type":"Ready"},{"type":"PodScheduled"}],"conditions":[{"type":"Initialized","status":"True"},{"type":"Ready","status":"True"}],"containerStatuses":[{"name":"a","ready":true}],"phase":"Running"}}`,
		want:  `{"metadata":{"uid":"u"},"status":{"conditions":[{"status":"True","type":"Initialized"},{"status":"True","type":"Ready"},{"status":"True","type":"PodScheduled"}],"containerStatuses":[{"name":"a","ready":true}],"phase":"Running"}}`,
	}, {
		name:  "$patch delete and null remove",
		orig:  `{"status":{"podIP":"10.0.0.1","podIPs":[{"ip":"10.0.0.1"},{"ip":"fd00::1"}]}}`,
		patch: `{"status":{"$setElementOrder/podIPs":[{"ip":"10.0.0.1"}],"podIPs":[{"$patch":"delete","ip":"fd00::1"}],"podIP":null}}`,
		want:  `{"status":{"podIPs":[{"ip":"10.0.0.1"}]}}`,
	}, {
		name:  "maps merge, primitive merge lists are a union",
		orig:  `{"status":{"capacity":{"cpu":"2","memory":"1Gi"},"volumesInUse":["a"]}}`,
		patch: `{"status":{"capacity":{"memory":"2Gi"},"$setElementOrder/volumesInUse":["b","a"],"volumesInUse":["b"]}}`,
		want:  `{"status":{"capacity":{"cpu":"2","memory":"2Gi"},"volumesInUse":["b","a"]}}`,
	}, {
		name:  "$retainKeys and $deleteFromPrimitiveList",
		orig:  `{"spec":{"a":1,"b":2,"c":3},"finalizers":["x","y"]}`,
		patch: `{"spec":{"$retainKeys":["a","c"],"c":4},"$deleteFromPrimitiveList/finalizers":["x"]}`,
		want:  `{"finalizers":["y"],"spec":{"a":1,"c":4}}`,
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var orig, patch map[string]any
			if err := json.Unmarshal([]byte(c.orig), &orig); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(c.patch), &patch); err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(strategicMerge(orig, patch))
			if string(got) != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}
