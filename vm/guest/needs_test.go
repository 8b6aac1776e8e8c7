package guest

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig(strings.NewReader(`#
# Linux/x86 6.1 Kernel Configuration
CONFIG_VIRTIO_PCI=m
CONFIG_DEVTMPFS=y
# CONFIG_NET_9P is not set
CONFIG_LOCALVERSION=""
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"VIRTIO_PCI": "m", "DEVTMPFS": "y", "LOCALVERSION": `""`}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config = %v, want %v", cfg, want)
	}
}

func TestPlanFor(t *testing.T) {
	needs := []Need{
		{Config: "DEVTMPFS"},
		{Config: "VIRTIO_PCI", Module: "virtio_pci"},
		{Config: "OVERLAY_FS", Module: "overlay"},
		{Config: "NET_9P", Module: "9pnet", Optional: true},
	}
	tests := []struct {
		name    string
		config  map[string]string
		want    Plan
		wantErr string
	}{
		{
			name:   "modules and built-ins",
			config: map[string]string{"DEVTMPFS": "y", "VIRTIO_PCI": "m", "OVERLAY_FS": "y", "NET_9P": "m"},
			want:   Plan{Builtin: []string{"DEVTMPFS", "OVERLAY_FS"}, Modules: []string{"virtio_pci", "9pnet"}},
		},
		{
			name:   "optional missing is noted, not fatal",
			config: map[string]string{"DEVTMPFS": "y", "VIRTIO_PCI": "y", "OVERLAY_FS": "m"},
			want:   Plan{Builtin: []string{"DEVTMPFS", "VIRTIO_PCI"}, Modules: []string{"overlay"}, Unavailable: []string{"NET_9P"}},
		},
		{
			name:    "required missing names every symbol",
			config:  map[string]string{"DEVTMPFS": "y"},
			wantErr: "kernel lacks CONFIG_VIRTIO_PCI, CONFIG_OVERLAY_FS",
		},
		{
			name:    "must be built in",
			config:  map[string]string{"DEVTMPFS": "m", "VIRTIO_PCI": "m", "OVERLAY_FS": "m"},
			wantErr: "CONFIG_DEVTMPFS=m (must be =y)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PlanFor(needs, tt.config)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("plan = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestNeedsTable keeps the single list sane: every symbol once, every
// module-capable entry names its module.
func TestNeedsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, n := range Needs {
		if seen[n.Config] {
			t.Errorf("CONFIG_%s listed twice", n.Config)
		}
		seen[n.Config] = true
		if n.Why == "" {
			t.Errorf("CONFIG_%s: no reason given", n.Config)
		}
	}
	for _, must := range []string{"VIRTIO_PCI", "VIRTIO_CONSOLE", "VIRTIO_VSOCKETS", "VIRTIO_NET", "VIRTIO_BLK", "VIRTIO_FS", "OVERLAY_FS"} {
		if !seen[must] {
			t.Errorf("CONFIG_%s missing from Needs", must)
		}
	}
}
