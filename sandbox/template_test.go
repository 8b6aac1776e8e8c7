package sandbox

import (
	"testing"

	"github.com/cocoon-runtime/cocoon/config"
)

func TestTemplateFor(t *testing.T) {
	on := config.Handler{VCPUs: 1, MemoryMiB: 256, Template: config.Template{Enabled: true}}
	off := on
	off.Template.Enabled = false
	for _, tc := range []struct {
		name  string
		h     config.Handler
		vcpus uint32
		mem   uint64
		want  string
	}{
		{"enabled, handler's size", on, 1, 256, "cocoon"},
		{"disabled", off, 1, 256, ""},
		{"pod asks for more vCPUs", on, 2, 256, ""},
		{"pod asks for more memory", on, 1, 512, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := templateFor("cocoon", tc.h, tc.vcpus, tc.mem); got != tc.want {
				t.Fatalf("templateFor = %q, want %q", got, tc.want)
			}
		})
	}
}
