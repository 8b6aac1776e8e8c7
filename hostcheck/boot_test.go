package hostcheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/vm"
)

// outcome is what the fake booter does for one vmm and accel.
type outcome struct {
	took time.Duration
	err  error
}

// fakeBooter answers from outcomes keyed "vmm/accel" (missing: booted in 1s)
// and records every boot.
type fakeBooter struct {
	t        *testing.T
	outcomes map[string]outcome
	boots    []bootCall
}

type bootCall struct {
	vmm     string
	spec    vm.Spec
	timeout time.Duration
}

func (f *fakeBooter) Boot(_ context.Context, vmm string, spec *vm.Spec, timeout time.Duration) (time.Duration, error) {
	for _, sh := range spec.Shares {
		if st, err := os.Stat(sh.Source); err != nil || !st.IsDir() {
			f.t.Errorf("share %s missing at boot: %v", sh.Source, err)
		}
	}
	f.boots = append(f.boots, bootCall{vmm: vmm, spec: *spec, timeout: timeout})
	if o, ok := f.outcomes[vmm+"/"+spec.Accel]; ok {
		return o.took, o.err
	}
	return time.Second, nil
}

func TestBootProbe(t *testing.T) {
	hang := outcome{err: fmt.Errorf("agent not healthy: %w", context.DeadlineExceeded)}
	abort := outcome{err: fmt.Errorf("qemu: create x: %w: qemu exited: signal: aborted", vm.ErrNotRunning)}
	for _, tt := range []struct {
		name     string
		config   string
		breaks   func(t *testing.T, h *Host, bins map[string]fakeBinary)
		outcomes map[string]outcome
		want     map[string]Status // result name → status
		detail   map[string]string // result name → detail it must contain
		fix      map[string]string
		accels   []string // vmm/accel booted, in order
	}{
		{
			name:     "kvm hangs, tcg boots: auto picks tcg",
			breaks:   noCLH,
			outcomes: map[string]outcome{"qemu/kvm": hang, "qemu/tcg": {took: 3940 * time.Millisecond}},
			want:     map[string]Status{"boot cocoon (qemu)": OK, "boot cocoon-clh (clh)": Warn},
			detail: map[string]string{
				"boot cocoon (qemu)":    "kvm: no agent within 15s (guest hangs) -> tcg: agent healthy in 3.9s; accel=auto will pick tcg",
				"boot cocoon-clh (clh)": "skipped: cloud-hypervisor not installed",
			},
			fix:    map[string]string{"boot cocoon-clh (clh)": "cloud-hypervisor release binary"},
			accels: []string{"qemu/kvm", "qemu/tcg"},
		},
		{
			name:   "kvm boots: auto picks kvm",
			breaks: noCLH,
			want:   map[string]Status{"boot cocoon (qemu)": OK, "boot cocoon-clh (clh)": Warn},
			detail: map[string]string{"boot cocoon (qemu)": "kvm: agent healthy in 1s -> tcg: agent healthy in 1s; accel=auto will pick kvm"},
			accels: []string{"qemu/kvm", "qemu/tcg"},
		},
		{
			name:     "accel=kvm where qemu aborts under kvm fails",
			config:   "[runtime.handlers.cocoon]\naccel = \"kvm\"\n",
			breaks:   noCLH,
			outcomes: map[string]outcome{"qemu/kvm": abort},
			want:     map[string]Status{"boot cocoon (qemu)": Fail, "boot cocoon-clh (clh)": Warn, "boot": Fail},
			detail:   map[string]string{"boot cocoon (qemu)": "kvm: qemu: create x: vm is not running: qemu exited: signal: aborted -> tcg: agent healthy in 1s; accel=kvm cannot boot"},
			fix:      map[string]string{"boot cocoon (qemu)": `set accel = "auto" in [runtime.handlers.cocoon]`},
			accels:   []string{"qemu/kvm", "qemu/tcg"},
		},
		{
			name:   "accel=tcg where kvm works too",
			config: "[runtime.handlers.cocoon]\naccel = \"tcg\"\n",
			breaks: noCLH,
			want:   map[string]Status{"boot cocoon (qemu)": OK, "boot cocoon-clh (clh)": Warn},
			detail: map[string]string{"boot cocoon (qemu)": "accel=tcg (KVM works too: accel=auto would use it)"},
			accels: []string{"qemu/kvm", "qemu/tcg"},
		},
		{
			name: "no /dev/kvm: kvm not tried",
			breaks: func(t *testing.T, h *Host, bins map[string]fakeBinary) {
				noCLH(t, h, bins)
				removeDev("kvm")(t, h)
			},
			want:   map[string]Status{"boot cocoon (qemu)": OK, "boot cocoon-clh (clh)": Warn},
			detail: map[string]string{"boot cocoon (qemu)": "/dev/kvm does not exist) -> tcg: agent healthy in 1s; accel=auto will pick tcg"},
			accels: []string{"qemu/tcg"},
		},
		{
			name:     "nothing boots",
			breaks:   noCLH,
			outcomes: map[string]outcome{"qemu/kvm": hang, "qemu/tcg": abort},
			want:     map[string]Status{"boot cocoon (qemu)": Fail, "boot cocoon-clh (clh)": Warn, "boot": Fail},
			detail:   map[string]string{"boot cocoon (qemu)": "accel=auto cannot boot", "boot": "no runtime handler can boot"},
			fix:      map[string]string{"boot cocoon (qemu)": "rebuild the guest"},
			accels:   []string{"qemu/kvm", "qemu/tcg"},
		},
		{
			name:     "cloud hypervisor boots on kvm",
			outcomes: map[string]outcome{"clh/kvm": {took: 250 * time.Millisecond}},
			want:     map[string]Status{"boot cocoon (qemu)": OK, "boot cocoon-clh (clh)": OK},
			detail:   map[string]string{"boot cocoon-clh (clh)": "kvm: agent healthy in 300ms"},
			accels:   []string{"qemu/kvm", "qemu/tcg", "clh/kvm"},
		},
		{
			name:     "cloud hypervisor that cannot boot fails",
			outcomes: map[string]outcome{"clh/kvm": hang},
			want:     map[string]Status{"boot cocoon (qemu)": OK, "boot cocoon-clh (clh)": Fail},
			detail:   map[string]string{"boot cocoon-clh (clh)": "kvm: no agent within 30s (guest hangs)"},
			fix:      map[string]string{"boot cocoon-clh (clh)": "use a qemu handler"},
			accels:   []string{"qemu/kvm", "qemu/tcg", "clh/kvm"},
		},
		{
			name:   "no guest: both skipped, nothing boots",
			config: "[runtime.handlers.cocoon]\nguest_dir = \"/nonexistent/guest\"\n[runtime.handlers.cocoon-clh]\nguest_dir = \"/nonexistent/guest\"\n",
			want:   map[string]Status{"boot cocoon (qemu)": Warn, "boot cocoon-clh (clh)": Warn, "boot": Fail},
			detail: map[string]string{"boot cocoon (qemu)": "skipped: no usable guest: guest: no guest installed in /nonexistent/guest"},
			fix:    map[string]string{"boot cocoon (qemu)": "cocoon guest build --out /nonexistent/guest"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, bins := fakeHost(t)
			if tt.breaks != nil {
				tt.breaks(t, h, bins)
			}
			loaded := testConfig(t, tt.config)
			booter := &fakeBooter{t: t, outcomes: tt.outcomes}
			tmp := t.TempDir()
			var results []Result
			h.bootAll(context.Background(), loaded.Config.Runtime, Options{Booter: booter, TempDir: tmp}, func(rs ...Result) { results = append(results, rs...) })

			if len(results) != len(tt.want) {
				t.Fatalf("want %d results, got %+v", len(tt.want), results)
			}
			for name, status := range tt.want {
				r := byName(t, results, name)
				wantResult(t, r, status, tt.detail[name], tt.fix[name])
			}
			var accels []string
			for _, b := range booter.boots {
				accels = append(accels, b.vmm+"/"+b.spec.Accel)
				checkProbeSpec(t, b, loaded.Config.Runtime.Handlers, tmp)
			}
			if strings.Join(accels, " ") != strings.Join(tt.accels, " ") {
				t.Fatalf("booted %v, want %v", accels, tt.accels)
			}
			if left, _ := os.ReadDir(tmp); len(left) > 0 {
				t.Fatalf("probe left %v in the temp dir", left)
			}
		})
	}
}

func noCLH(_ *testing.T, _ *Host, bins map[string]fakeBinary) { delete(bins, "cloud-hypervisor") }

// checkProbeSpec: a probe VM is the handler's VM (size, guest, kernel
// args), with no NIC, under the temp dir, with kvm's short deadline.
func checkProbeSpec(t *testing.T, b bootCall, handlers map[string]config.Handler, tmp string) {
	t.Helper()
	var hd config.Handler
	found := false
	for name, h := range handlers {
		if strings.HasPrefix(b.spec.ID, "check-"+name+"-") && h.VMM == b.vmm {
			hd, found = h, true
		}
	}
	if !found {
		t.Fatalf("probe %q matches no handler", b.spec.ID)
	}
	s := b.spec
	if s.VCPUs != hd.VCPUs || s.MemoryMiB != hd.MemoryMiB || s.MaxVCPUs != hd.MaxVCPUs || s.MaxMemoryMiB != hd.MaxMemoryMiB ||
		s.Kernel != filepath.Join(hd.GuestDir, "vmlinuz") || len(s.NICs) != 0 || !strings.HasPrefix(s.RunDir, tmp+"/") {
		t.Fatalf("probe spec %+v does not follow handler %+v", s, hd)
	}
	want := hd.BootTimeout.Std()
	if b.vmm == "qemu" && s.Accel == "kvm" {
		want = 15 * time.Second
	}
	if b.timeout != want {
		t.Fatalf("%s/%s boot timeout %v, want %v", b.vmm, s.Accel, b.timeout, want)
	}
}
