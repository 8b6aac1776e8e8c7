package ocispec

import (
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func destinations(ms []specs.Mount) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Destination)
	}
	return out
}

func TestMounts(t *testing.T) {
	defaults := []string{"/proc", "/dev", "/sys", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys/fs/cgroup"}
	for _, tc := range []struct {
		name      string
		given     []Mount
		wantDst   []string
		wantOpts  map[string][]string // destination → options
		wantType  map[string]string
		wantRootP string
		fail      bool
	}{
		{name: "defaults", wantDst: defaults, wantOpts: map[string][]string{
			"/dev/shm": {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"},
			"/sys":     {"nosuid", "noexec", "nodev", "ro"},
		}},
		{
			name: "volumes sorted parent first",
			given: []Mount{
				{Source: "/share/m/1", Destination: "/data/sub", ReadOnly: true},
				{Source: "/share/m/0", Destination: "/data", Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER},
				{Source: "/share/m/2", Destination: "/etc/hosts"},
			},
			wantDst: []string{"/proc", "/dev", "/sys", "/data", "/dev/pts", "/dev/shm", "/dev/mqueue", "/data/sub", "/etc/hosts", "/sys/fs/cgroup"},
			wantOpts: map[string][]string{
				"/data/sub": {"rbind", "rprivate", "ro"},
				"/data":     {"rbind", "rslave", "rw"},
			},
		},
		{
			name:     "shm replaces the default",
			given:    []Mount{{Source: "/share/shm", Destination: "/dev/shm/"}},
			wantDst:  []string{"/proc", "/dev", "/sys", "/dev/pts", "/dev/mqueue", "/dev/shm", "/sys/fs/cgroup"},
			wantOpts: map[string][]string{"/dev/shm": {"rbind", "rprivate", "rw"}},
		},
		{
			name:    "a /dev mount drops all /dev defaults",
			given:   []Mount{{Source: "/share/dev", Destination: "/dev"}},
			wantDst: []string{"/proc", "/sys", "/dev", "/sys/fs/cgroup"},
		},
		{
			name:      "bidirectional makes the root shared",
			given:     []Mount{{Source: "/share/m/0", Destination: "/mnt", Propagation: runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL}},
			wantDst:   []string{"/proc", "/dev", "/sys", "/mnt", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys/fs/cgroup"},
			wantOpts:  map[string][]string{"/mnt": {"rbind", "rshared", "rw"}},
			wantRootP: "rshared",
		},
		{
			name:     "non-bind type",
			given:    []Mount{{Source: "tmpfs", Destination: "/scratch", Type: "tmpfs"}},
			wantDst:  []string{"/proc", "/dev", "/sys", "/scratch", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys/fs/cgroup"},
			wantOpts: map[string][]string{"/scratch": {"nosuid", "nodev", "rw"}},
			wantType: map[string]string{"/scratch": "tmpfs", "/proc": "proc"},
		},
		{name: "relative destination", given: []Mount{{Source: "/a", Destination: "a"}}, fail: true},
		{name: "relative source", given: []Mount{{Source: "a", Destination: "/a"}}, fail: true},
		{name: "root", given: []Mount{{Source: "/a", Destination: "/"}}, fail: true},
		{name: "duplicate", given: []Mount{{Source: "/a", Destination: "/a"}, {Source: "/b", Destination: "/a/"}}, fail: true},
		{name: "bad propagation", given: []Mount{{Source: "/a", Destination: "/a", Propagation: 9}}, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t)
			in.Mounts = tc.given
			s, err := Build(in)
			if tc.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := destinations(s.Mounts); !reflect.DeepEqual(got, tc.wantDst) {
				t.Fatalf("destinations %q\nwant %q", got, tc.wantDst)
			}
			for _, m := range s.Mounts {
				if want, ok := tc.wantOpts[m.Destination]; ok && !reflect.DeepEqual(m.Options, want) {
					t.Errorf("%s options %q, want %q", m.Destination, m.Options, want)
				}
				if want, ok := tc.wantType[m.Destination]; ok && m.Type != want {
					t.Errorf("%s type %q, want %q", m.Destination, m.Type, want)
				}
			}
			if s.Linux.RootfsPropagation != tc.wantRootP {
				t.Errorf("rootfs propagation %q", s.Linux.RootfsPropagation)
			}
		})
	}
}
