package sandbox

import "github.com/cocoon-runtime/cocoon/config"

// templateFor names the snapshot template a pod's VM restores from: the
// handler's, for VMs of the handler's own size only, so that pods of other
// sizes boot cold instead of making the template be rebuilt for them.
func templateFor(handler string, h config.Handler, vcpus uint32, memMiB uint64) string {
	if !h.Template.Enabled || vcpus != h.VCPUs || memMiB != h.MemoryMiB {
		return ""
	}
	return handler
}
