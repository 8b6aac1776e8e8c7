package hostcheck

import (
	"context"
	"errors"
	"testing"
)

func TestVMMChecks(t *testing.T) {
	for _, tt := range []struct {
		name           string
		config         string
		breaks         func(bins map[string]fakeBinary)
		qemu, clh      Status
		detail, fix    string
		detailOf, fixd string
	}{
		{name: "both installed", qemu: OK, clh: OK, detailOf: "vmm qemu", detail: "/usr/bin/qemu-system-x86_64: QEMU emulator version 7.2.22 (handler cocoon)"},
		{name: "clh missing warns: the default handler is qemu", breaks: func(b map[string]fakeBinary) { delete(b, "cloud-hypervisor") },
			qemu: OK, clh: Warn, detailOf: "vmm clh", detail: "cloud-hypervisor not found on PATH (handler cocoon-clh cannot run pods)", fix: "cloud-hypervisor release binary"},
		{name: "clh missing fails when it runs the default handler", config: "[runtime]\ndefault_handler = \"cocoon-clh\"\n",
			breaks: func(b map[string]fakeBinary) { delete(b, "cloud-hypervisor") }, qemu: OK, clh: Fail,
			detailOf: "vmm clh", detail: "not found", fix: "cloud-hypervisor"},
		{name: "qemu missing fails", breaks: func(b map[string]fakeBinary) { delete(b, "qemu-system-x86_64") },
			qemu: Fail, clh: OK, detailOf: "vmm qemu", detail: "qemu-system-x86_64 not found on PATH", fix: "apt-get install qemu-system-x86"},
		{name: "qemu that does not run fails", breaks: func(b map[string]fakeBinary) {
			b["qemu-system-x86_64"] = fakeBinary{version: "error while loading shared libraries", err: errors.New("exit status 127")}
		}, qemu: Fail, clh: OK, detailOf: "vmm qemu", detail: "does not run (handler cocoon): /usr/bin/qemu-system-x86_64 --version: exit status 127: error while loading", fix: "apt-get install"},
		{name: "two handlers on one vmm", config: "[runtime.handlers.big]\nmemory_mib = 1024\n",
			qemu: OK, clh: OK, detailOf: "vmm qemu", detail: "(handlers big, cocoon)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, bins := fakeHost(t)
			if tt.breaks != nil {
				tt.breaks(bins)
			}
			loaded := testConfig(t, tt.config)
			results := h.checkVMMs(context.Background(), loaded.Config.Runtime)
			if len(results) != 2 {
				t.Fatalf("want a result per vmm, got %+v", results)
			}
			if q, c := byName(t, results, "vmm qemu"), byName(t, results, "vmm clh"); q.Status != tt.qemu || c.Status != tt.clh {
				t.Fatalf("qemu %s, clh %s; want %s, %s", q.Status, c.Status, tt.qemu, tt.clh)
			}
			r := byName(t, results, tt.detailOf)
			wantResult(t, r, r.Status, tt.detail, tt.fix)
		})
	}
}

func TestVirtiofsdCheck(t *testing.T) {
	for _, tt := range []struct {
		name        string
		breaks      func(bins map[string]fakeBinary)
		status      Status
		detail, fix string
	}{
		{name: "installed", status: OK, detail: "/usr/lib/qemu/virtiofsd: virtiofsd version 7.2.22"},
		{name: "missing", breaks: func(b map[string]fakeBinary) { delete(b, "/usr/lib/qemu/virtiofsd") },
			status: Fail, detail: "/usr/lib/qemu/virtiofsd", fix: "apt-get install qemu-system-common"},
		{name: "broken", breaks: func(b map[string]fakeBinary) {
			b["/usr/lib/qemu/virtiofsd"] = fakeBinary{err: errors.New("signal: segmentation fault")}
		}, status: Fail, detail: "segmentation fault", fix: "qemu-system-common"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, bins := fakeHost(t)
			if tt.breaks != nil {
				tt.breaks(bins)
			}
			wantResult(t, h.checkVirtiofsd(context.Background()), tt.status, tt.detail, tt.fix)
		})
	}
}
