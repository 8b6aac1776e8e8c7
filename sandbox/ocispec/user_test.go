package ocispec

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	testPasswd = `# comment
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1::/:/bin/false
app:x:1000:1000:App:/home/app:/bin/sh
broken-line
nogroup-user:x:2000:2500::/:/bin/sh
`
	testGroup = `root:x:0:
daemon:x:1:
wheel:x:10:root,app
staff:x:50: app , other
app:x:1000:
audio:x:29:daemon
`
)

// fakeRootfs writes an image's /etc files under a temp dir.
func fakeRootfs(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func i64(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }

func TestResolveUser(t *testing.T) {
	root := fakeRootfs(t, map[string]string{"etc/passwd": testPasswd, "etc/group": testGroup})
	for _, tc := range []struct {
		name      string
		sc        *runtimeapi.LinuxContainerSecurityContext
		imageUser string
		want      specs.User
		fail      bool
	}{
		{name: "default root", want: specs.User{UID: 0, GID: 0, AdditionalGids: []uint32{0, 10}}},
		{name: "image name", imageUser: "app", want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 10, 50}}},
		{name: "image uid in passwd", imageUser: "1", want: specs.User{UID: 1, GID: 1, AdditionalGids: []uint32{1, 29}}},
		{name: "image uid not in passwd", imageUser: "4242", want: specs.User{UID: 4242, GID: 0, AdditionalGids: []uint32{0}}},
		{name: "image uid:gid", imageUser: "4242:77", want: specs.User{UID: 4242, GID: 77, AdditionalGids: []uint32{77}}},
		{name: "image name:group", imageUser: "app:staff", want: specs.User{UID: 1000, GID: 50, AdditionalGids: []uint32{50, 10}}},
		{name: "image name:gid", imageUser: "app:7", want: specs.User{UID: 1000, GID: 7, AdditionalGids: []uint32{7, 10, 50}}},
		{name: "image uid:group", imageUser: "1000:wheel", want: specs.User{UID: 1000, GID: 10, AdditionalGids: []uint32{10, 50}}},
		{name: "passwd gid without group entry", imageUser: "nogroup-user", want: specs.User{UID: 2000, GID: 2500, AdditionalGids: []uint32{2500}}},
		{name: "unknown name", imageUser: "ghost", fail: true},
		{name: "unknown group", imageUser: "app:ghosts", fail: true},
		{
			name: "RunAsUser wins over image user and group", imageUser: "app:staff",
			sc:   &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1)},
			want: specs.User{UID: 1, GID: 1, AdditionalGids: []uint32{1, 29}},
		},
		{
			name: "RunAsUser and RunAsGroup", imageUser: "app",
			sc:   &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1000), RunAsGroup: i64(3000)},
			want: specs.User{UID: 1000, GID: 3000, AdditionalGids: []uint32{3000, 10, 50}},
		},
		{
			// kubelet and critest refuse a group without a user.
			name: "RunAsGroup without RunAsUser",
			sc:   &runtimeapi.LinuxContainerSecurityContext{RunAsGroup: i64(3000)}, imageUser: "app:staff",
			fail: true,
		},
		{
			name: "RunAsUsername",
			sc:   &runtimeapi.LinuxContainerSecurityContext{RunAsUsername: "app", RunAsUser: i64(5)},
			want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 10, 50}},
		},
		{name: "unknown RunAsUsername", sc: &runtimeapi.LinuxContainerSecurityContext{RunAsUsername: "ghost"}, fail: true},
		{name: "negative uid", sc: &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(-1)}, fail: true},
		{name: "uid -1 as uint32", sc: &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(4294967295)}, fail: true},
		{
			name: "supplemental groups merge",
			sc:   &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1000), SupplementalGroups: []int64{4000, 50}},
			want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 10, 50, 4000}},
		},
		{
			name: "supplemental groups strict",
			sc: &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1000), SupplementalGroups: []int64{4000},
				SupplementalGroupsPolicy: runtimeapi.SupplementalGroupsPolicy_Strict},
			want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 4000}},
		},
		{name: "bad supplemental group", sc: &runtimeapi.LinuxContainerSecurityContext{SupplementalGroups: []int64{-3}}, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveUser(root, tc.sc, tc.imageUser)
			if tc.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// An image's /etc/passwd that links outside its rootfs is read inside it.
func TestResolveUserSymlinks(t *testing.T) {
	outside := fakeRootfs(t, map[string]string{"passwd": "evil:x:666:666::/:/bin/sh\n", "group": "evil:x:666:evil\n"})
	for _, tc := range []struct {
		name   string
		target string // where the image's /etc/passwd points
		files  map[string]string
		user   string
		want   specs.User
		fail   bool
	}{
		{name: "absolute outside", target: filepath.Join(outside, "passwd"), user: "evil", fail: true},
		{name: "relative escape", target: "../../../../../../../../" + filepath.Join(outside, "passwd")[1:], user: "evil", fail: true},
		{name: "numeric user still works", target: filepath.Join(outside, "passwd"), user: "666", want: specs.User{UID: 666, AdditionalGids: []uint32{0}}},
		{
			name: "absolute inside", target: "/usr/lib/passwd", user: "app",
			files: map[string]string{"usr/lib/passwd": "app:x:1000:1000::/:/bin/sh\n"},
			want:  specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000}},
		},
		{
			// The same absolute path exists inside the rootfs: that one is read.
			name: "absolute outside shadowed inside", target: filepath.Join(outside, "passwd"), user: "good",
			files: map[string]string{filepath.Join(outside, "passwd")[1:]: "good:x:7:7::/:/bin/sh\n"},
			want:  specs.User{UID: 7, GID: 7, AdditionalGids: []uint32{7}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeRootfs(t, tc.files)
			if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target, filepath.Join(root, "etc/passwd")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(outside, "group"), filepath.Join(root, "etc/group")); err != nil {
				t.Fatal(err)
			}
			got, err := ResolveUser(root, nil, tc.user)
			if tc.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestResolveUserOddFiles(t *testing.T) {
	// A FIFO must not block the daemon; a missing rootfs path is no passwd.
	root := fakeRootfs(t, map[string]string{"etc/group": testGroup})
	if err := syscall.Mkfifo(filepath.Join(root, "etc/passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ResolveUser(root, nil, "app")
	wantInvalid(t, err)

	if got, err := ResolveUser("", nil, "1000:1000"); err != nil || got.UID != 1000 || got.GID != 1000 {
		t.Fatalf("no rootfs: %+v %v", got, err)
	}
	_, err = ResolveUser("", nil, "app")
	wantInvalid(t, err)
}

// Build merges the pod's supplemental groups and honours its Strict policy.
func TestBuildUserPodGroups(t *testing.T) {
	in := input(t)
	in.RootfsHostPath = fakeRootfs(t, map[string]string{"etc/passwd": testPasswd, "etc/group": testGroup})
	in.Image.User = "app"
	in.Sandbox.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{SupplementalGroups: []int64{9000}}}
	if s := mustBuild(t, in); !reflect.DeepEqual(s.Process.User.AdditionalGids, []uint32{1000, 10, 50, 9000}) {
		t.Fatalf("merge: %v", s.Process.User.AdditionalGids)
	}
	in.Sandbox.Linux.SecurityContext.SupplementalGroupsPolicy = runtimeapi.SupplementalGroupsPolicy_Strict
	if s := mustBuild(t, in); !reflect.DeepEqual(s.Process.User.AdditionalGids, []uint32{1000, 9000}) {
		t.Fatalf("strict: %v", s.Process.User.AdditionalGids)
	}
}

// An image's passwd with ids no process can hold, comments, or a line too
// long to parse: the odd entries are never matched, and an unreadable file
// is the image's fault (InvalidArgument), never a daemon error.
func TestResolveUserMalformedDB(t *testing.T) {
	t.Parallel()
	passwd := "#root:x:5:5::/:/bin/sh\nroot:x:0:0::/:/bin/sh\nneg:x:-5:0::/:/bin/sh\nhuge:x:4294967295:0::/:/bin/sh\nbiggid:x:7:4294967296::/:/bin/sh\n"
	group := "#wheel:x:10:root\nwheel:x:11:root\nhuge:x:4294967295:root\n"
	root := fakeRootfs(t, map[string]string{"etc/passwd": passwd, "etc/group": group})
	for _, tc := range []struct {
		user string
		want specs.User
		fail bool
	}{
		{user: "root", want: specs.User{UID: 0, GID: 0, AdditionalGids: []uint32{0, 11}}},
		{user: "#root", fail: true},
		{user: "neg", fail: true},
		{user: "huge", fail: true},
		{user: "biggid", fail: true},
		{user: "root:huge", fail: true},
	} {
		got, err := ResolveUser(root, nil, tc.user)
		if tc.fail {
			wantInvalid(t, err)
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, %v; want %+v", tc.user, got, err, tc.want)
		}
	}

	long := fakeRootfs(t, map[string]string{"etc/passwd": "app:x:1:1:" + strings.Repeat("g", 1<<17) + ":/:/bin/sh\n"})
	_, err := ResolveUser(long, nil, "app")
	wantInvalid(t, err)
}
