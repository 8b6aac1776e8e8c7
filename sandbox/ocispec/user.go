package ocispec

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxDBSize bounds how much of an image's /etc/passwd or /etc/group we read:
// the image is untrusted and a huge file must not exhaust the daemon.
const maxDBSize = 8 << 20

type passwdEntry struct {
	name     string
	uid, gid uint32
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// userDB is the rootfs's /etc/passwd and /etc/group, read on first use.
type userDB struct {
	root   string
	loaded bool
	users  []passwdEntry
	groups []groupEntry
}

func (db *userDB) load() error {
	if db.loaded {
		return nil
	}
	db.loaded = true
	passwd, err := readRootfsFile(db.root, "/etc/passwd")
	if err != nil {
		return err
	}
	group, err := readRootfsFile(db.root, "/etc/group")
	if err != nil {
		return err
	}
	eachLine(passwd, 4, func(f []string) {
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 == nil && err2 == nil {
			db.users = append(db.users, passwdEntry{name: f[0], uid: uid, gid: gid})
		}
	})
	eachLine(group, 3, func(f []string) {
		gid, err := parseID(f[2])
		if err != nil {
			return
		}
		g := groupEntry{name: f[0], gid: gid}
		if len(f) > 3 && f[3] != "" {
			g.members = strings.Split(f[3], ",")
		}
		db.groups = append(db.groups, g)
	})
	return nil
}

// eachLine calls fn with the colon-separated fields of every line that has at
// least min fields; comments and malformed lines are skipped like libc does.
func eachLine(data []byte, min int, fn func([]string)) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), maxDBSize)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if f := strings.Split(line, ":"); len(f) >= min {
			fn(f)
		}
	}
}

func (db *userDB) userByName(name string) (passwdEntry, bool, error) {
	if err := db.load(); err != nil {
		return passwdEntry{}, false, err
	}
	for _, u := range db.users {
		if u.name == name {
			return u, true, nil
		}
	}
	return passwdEntry{}, false, nil
}

func (db *userDB) userByID(uid uint32) (passwdEntry, bool, error) {
	if err := db.load(); err != nil {
		return passwdEntry{}, false, err
	}
	for _, u := range db.users {
		if u.uid == uid {
			return u, true, nil
		}
	}
	return passwdEntry{}, false, nil
}

// readRootfsFile reads name inside root, resolving symlinks as if root were
// "/", so an image's /etc/passwd -> /host/file reads <root>/host/file, never
// the host's. A missing file is nil without error.
func readRootfsFile(root, name string) ([]byte, error) {
	if root == "" {
		return nil, nil
	}
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("rootfs %s: %w", root, err)
	}
	path, err := securejoin.SecureJoin(realRoot, name)
	if err != nil {
		return nil, fmt.Errorf("resolve %s in rootfs: %w", name, err)
	}
	// O_NOFOLLOW: the last component was resolved above and must not have
	// become a symlink since; O_NONBLOCK: a FIFO planted there must not hang us.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil
	}
	if err != nil {
		return nil, invalid("image %s: %v", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, invalid("image %s is not a regular file", name)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxDBSize+1))
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", name, err)
	}
	if len(data) > maxDBSize {
		return nil, invalid("image %s is larger than %d bytes", name, maxDBSize)
	}
	return data, nil
}

// parseID accepts the ids a process can hold: 0..2^32-2 (-1 means "unset").
func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == math.MaxUint32 {
		return 0, fmt.Errorf("bad id %q", s)
	}
	return uint32(n), nil
}

func checkID(kind string, n int64) (uint32, error) {
	if n < 0 || n >= math.MaxUint32 {
		return 0, invalid("%s %d is out of range", kind, n)
	}
	return uint32(n), nil
}

// ResolveUser returns the process user for a container: RunAsUsername,
// RunAsUser and RunAsGroup from sc win over the image's USER ("uid", "name",
// "uid:gid", "name:group", ...); names are looked up in the rootfs's
// /etc/passwd and /etc/group at rootfsHostPath. Additional gids are the
// primary gid, the groups listing the user (unless the policy is Strict) and
// sc's SupplementalGroups.
func ResolveUser(rootfsHostPath string, sc *runtimeapi.LinuxContainerSecurityContext, imageUser string) (specs.User, error) {
	return resolveUser(rootfsHostPath, sc, imageUser, nil, false)
}

func resolveUser(root string, sc *runtimeapi.LinuxContainerSecurityContext, imageUser string, podGroups []int64, podStrict bool) (specs.User, error) {
	db := &userDB{root: root}
	if sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil && sc.GetRunAsUsername() == "" {
		// kubelet and containerd refuse a group without a user: the image's
		// user might not belong to it.
		return specs.User{}, invalid("RunAsGroup is set without RunAsUser or RunAsUsername")
	}
	var userPart, groupPart string
	switch {
	case sc.GetRunAsUsername() != "":
		userPart = sc.GetRunAsUsername()
	case sc.GetRunAsUser() != nil:
		uid, err := checkID("RunAsUser", sc.GetRunAsUser().GetValue())
		if err != nil {
			return specs.User{}, err
		}
		userPart = strconv.FormatUint(uint64(uid), 10)
	default:
		// The image's group only goes with the image's user.
		userPart, groupPart, _ = strings.Cut(imageUser, ":")
	}

	var u specs.User
	var name string // for /etc/group membership; empty for an unknown uid
	var passwdGID *uint32
	if userPart == "" {
		userPart = "0"
	}
	if uid, err := parseID(userPart); err == nil {
		u.UID = uid
		ent, ok, err := db.userByID(uid)
		if err != nil {
			return specs.User{}, err
		}
		if ok {
			name, passwdGID = ent.name, &ent.gid
		}
	} else {
		ent, ok, err := db.userByName(userPart)
		if err != nil {
			return specs.User{}, err
		}
		if !ok {
			return specs.User{}, invalid("user %q not found in the image's /etc/passwd", userPart)
		}
		u.UID, name, passwdGID = ent.uid, ent.name, &ent.gid
	}

	switch {
	case sc.GetRunAsGroup() != nil:
		gid, err := checkID("RunAsGroup", sc.GetRunAsGroup().GetValue())
		if err != nil {
			return specs.User{}, err
		}
		u.GID = gid
	case groupPart != "":
		gid, err := db.resolveGroup(groupPart)
		if err != nil {
			return specs.User{}, err
		}
		u.GID = gid
	case passwdGID != nil:
		u.GID = *passwdGID
	}

	// The primary gid is listed too, so dropping it with setgid() does not
	// shed a group a file's permissions rely on (containerd's CVE-2023-25173 fix).
	gids := []uint32{u.GID}
	strict := podStrict || sc.GetSupplementalGroupsPolicy() == runtimeapi.SupplementalGroupsPolicy_Strict
	if !strict && name != "" {
		if err := db.load(); err != nil {
			return specs.User{}, err
		}
		for _, g := range db.groups {
			for _, m := range g.members {
				if strings.TrimSpace(m) == name {
					gids = append(gids, g.gid)
					break
				}
			}
		}
	}
	for _, n := range append(append([]int64{}, sc.GetSupplementalGroups()...), podGroups...) {
		gid, err := checkID("supplemental group", n)
		if err != nil {
			return specs.User{}, err
		}
		gids = append(gids, gid)
	}
	u.AdditionalGids = dedup(gids)
	return u, nil
}

func (db *userDB) resolveGroup(group string) (uint32, error) {
	if gid, err := parseID(group); err == nil {
		return gid, nil
	}
	if err := db.load(); err != nil {
		return 0, err
	}
	for _, g := range db.groups {
		if g.name == group {
			return g.gid, nil
		}
	}
	return 0, invalid("group %q not found in the image's /etc/group", group)
}

func dedup(ids []uint32) []uint32 {
	seen := map[uint32]bool{}
	out := ids[:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}
