package clh

import (
	"net/http"
	"strings"
	"testing"
)

// The checker the fake uses must itself catch what it is there to catch.
func TestContractChecker(t *testing.T) {
	c, err := loadContract(specPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, method, endpoint, body, contentType string
		wantErr                                   string
	}{
		{"valid resize", "PUT", "vm.resize", `{"desired_vcpus":2}`, "application/json", ""},
		{"valid boot", "PUT", "vm.boot", "", "", ""},
		{"misspelt field", "PUT", "vm.create", `{"payload":{},"memory":{"size":1,"sharde":true}}`, "application/json", "sharde"},
		{"missing required payload", "PUT", "vm.create", `{"cpus":{"boot_vcpus":1,"max_vcpus":1}}`, "application/json", "payload"},
		{"wrong type", "PUT", "vm.add-net", `{"mtu":"1500"}`, "application/json", "mtu"},
		{"below minimum", "PUT", "vm.resize", `{"desired_vcpus":0}`, "application/json", "minimum"},
		{"vsock cid below 3", "PUT", "vm.add-vsock", `{"cid":2,"socket":"/s"}`, "application/json", "minimum"},
		{"unknown console mode", "PUT", "vm.create", `{"payload":{},"serial":{"mode":"Tty2"}}`, "application/json", "mode"},
		{"wrong method", "GET", "vm.create", "", "", "not in the spec"},
		{"unknown endpoint", "PUT", "vm.reboot", "", "", "not in the spec"},
		{"body on a body-less PUT", "PUT", "vm.boot", "{}", "application/json", "body on a body-less operation"},
		{"media type micro_http ignores", "PUT", "vm.resize", `{"desired_vcpus":2}`, "application/json; charset=utf-8", "Content-Type"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, "/api/v1/"+tt.endpoint, strings.NewReader(tt.body))
			req.Host = "localhost"
			req.ContentLength = int64(len(tt.body))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			_, err := c.checkRequest(req, []byte(tt.body))
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("checkRequest = %v, want %q", err, tt.wantErr)
			}
		})
	}

	for _, tt := range []struct {
		name, endpoint string
		status         int
		body           string
		wantErr        bool
	}{
		{"info", "vm.info", 200, `{"config":{"payload":{}},"state":"Running"}`, false},
		{"info with a state CH never reports", "vm.info", 200, `{"config":{"payload":{}},"state":"Booting"}`, true},
		{"device added", "vm.add-disk", 200, `{"id":"d","bdf":"0000:00:05.0"}`, false},
		{"device info without bdf", "vm.add-disk", 200, `{"id":"d"}`, true},
		{"error array", "vm.boot", 404, `["VM is not created"]`, false},
		{"error as an object", "vm.boot", 500, `{"error":"x"}`, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			method := map[string]string{"vm.info": "GET"}[tt.endpoint]
			if method == "" {
				method = "PUT"
			}
			req, _ := http.NewRequest(method, "/api/v1/"+tt.endpoint, nil)
			req.Host = "localhost"
			body := []byte(nil)
			if tt.endpoint == "vm.add-disk" {
				body = []byte(`{"path":"/p"}`)
				req.ContentLength = int64(len(body))
				req.Header.Set("Content-Type", "application/json")
			}
			cr, err := c.checkRequest(req, body)
			if err != nil {
				t.Fatal(err)
			}
			err = c.checkResponse(cr, tt.status, http.Header{"Content-Type": {"application/json"}}, []byte(tt.body))
			if (err != nil) != tt.wantErr {
				t.Errorf("checkResponse = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}
