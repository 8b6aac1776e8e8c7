package hostcheck

import (
	"context"
	"errors"
	"testing"
)

func TestConfinementCheck(t *testing.T) {
	for _, tt := range []struct {
		name        string
		config      string
		breaks      func(bins map[string]fakeBinary)
		status      Status
		detail, fix string
	}{
		{name: "qemu confined", status: OK, detail: "qemu: no capabilities"},
		{name: "setpriv missing fails", breaks: func(b map[string]fakeBinary) { delete(b, "setpriv") },
			status: Fail, detail: "setpriv not found on PATH", fix: "util-linux"},
		{name: "qemu without seccomp fails", breaks: func(b map[string]fakeBinary) {
			b["setpriv"] = fakeBinary{version: "qemu-system-x86_64: -sandbox on: seccomp support is disabled", err: errors.New("exit status 1")}
		}, status: Fail, detail: "confined qemu does not start (handler cocoon): exit status 1: qemu-system-x86_64: -sandbox on: seccomp support is disabled", fix: "seccomp"},
		{name: "only a non-default handler on qemu warns", config: "[runtime]\ndefault_handler = \"cocoon-clh\"\n",
			breaks: func(b map[string]fakeBinary) { delete(b, "setpriv") }, status: Warn, detail: "handler cocoon cannot run pods"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, bins := fakeHost(t)
			if tt.breaks != nil {
				tt.breaks(bins)
			}
			r := h.checkConfinement(context.Background(), testConfig(t, tt.config).Config.Runtime)
			if r.Name != "vmm confinement" {
				t.Fatalf("name %q", r.Name)
			}
			wantResult(t, r, tt.status, tt.detail, tt.fix)
		})
	}
}
