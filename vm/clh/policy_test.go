package clh

import (
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/vm"
)

func TestAgentPolicyIsLastOnTheCommandLine(t *testing.T) {
	spec := &vm.Spec{KernelArgs: []string{"cocoon.debug_console=1", "cocoon.log=debug"}}
	for _, tc := range []struct {
		name     string
		console  bool
		wantTail []string
	}{
		{name: "console off overrides a configured argument", wantTail: []string{"cocoon.agent_token=none", "cocoon.debug_console=0"}},
		{name: "console on", console: true, wantTail: []string{"cocoon.agent_token=none", "cocoon.debug_console=1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := strings.Fields(*vmConfig(withAgentPolicy(spec, tc.console)).Payload.Cmdline)
			if tail := fields[len(fields)-2:]; !slices.Equal(tail, tc.wantTail) {
				t.Fatalf("command line ends with %q, want %q", tail, tc.wantTail)
			}
			if len(spec.KernelArgs) != 2 {
				t.Fatalf("the spec was changed: %q", spec.KernelArgs)
			}
		})
	}
}
