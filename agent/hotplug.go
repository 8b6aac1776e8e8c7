package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// OnlineCPUMem onlines every present vCPU and memory block the VMM hotplugged.
// The kernel onlines memory itself (memhp_default_state=online); vCPUs wait
// for userspace, which in this guest is us.
func (s *Server) OnlineCPUMem(context.Context, *emptypb.Empty) (*agentapi.GuestDetails, error) {
	onlineAll("/sys/devices/system/cpu/cpu*/online", "0", "1")
	onlineAll("/sys/devices/system/memory/memory*/state", "offline", "online")
	return guestDetails(), nil
}

func onlineAll(pattern, offline, online string) {
	files, _ := filepath.Glob(pattern)
	for _, f := range files {
		if data, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(data)) == offline {
			_ = os.WriteFile(f, []byte(online), 0)
		}
	}
}

// onlineCPUs counts the CPUs in /sys/devices/system/cpu/online ("0-1,3").
func onlineCPUs() uint32 {
	data, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 0
	}
	return countCPUList(strings.TrimSpace(string(data)))
}

func countCPUList(list string) uint32 {
	var n uint32
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		n += uint32(b - a + 1)
	}
	return n
}
