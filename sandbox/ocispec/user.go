package ocispec

import (
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
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxDBSize bounds how much of an image's /etc/passwd or /etc/group we read:
// the image is untrusted and a huge file must not exhaust the daemon.
const maxDBSize = 8 << 20

// userDB is the rootfs's /etc/passwd and /etc/group, read on first use and
// parsed by moby/sys/user. Comment lines (which the library skips in
// /etc/group only) and entries whose ids a process cannot hold are left out,
// as libc would never match them. Like containerd and runc, a line too short
// to hold an id reads as id 0: the image owns its passwd and could say 0.
type userDB struct {
	root   string
	loaded bool
	users  []user.User
	groups []user.Group
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
	if passwd != nil {
		if db.users, err = user.ParsePasswdFilter(bytes.NewReader(passwd), func(u user.User) bool {
			return !strings.HasPrefix(u.Name, "#") && validID(u.Uid) && validID(u.Gid)
		}); err != nil {
			return invalid("image /etc/passwd: %v", err)
		}
	}
	if group != nil {
		if db.groups, err = user.ParseGroupFilter(bytes.NewReader(group), func(g user.Group) bool {
			return validID(g.Gid)
		}); err != nil {
			return invalid("image /etc/group: %v", err)
		}
	}
	return nil
}

// validID: an id a process can hold, 0..2^32-2 (-1 means "unset").
func validID(n int) bool { return n >= 0 && n < math.MaxUint32 }

func (db *userDB) userByName(name string) (user.User, bool, error) {
	if err := db.load(); err != nil {
		return user.User{}, false, err
	}
	for _, u := range db.users {
		if u.Name == name {
			return u, true, nil
		}
	}
	return user.User{}, false, nil
}

func (db *userDB) userByID(uid uint32) (user.User, bool, error) {
	if err := db.load(); err != nil {
		return user.User{}, false, err
	}
	for _, u := range db.users {
		if u.Uid == int(uid) {
			return u, true, nil
		}
	}
	return user.User{}, false, nil
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
			gid := uint32(ent.Gid)
			name, passwdGID = ent.Name, &gid
		}
	} else {
		ent, ok, err := db.userByName(userPart)
		if err != nil {
			return specs.User{}, err
		}
		if !ok {
			return specs.User{}, invalid("user %q not found in the image's /etc/passwd", userPart)
		}
		gid := uint32(ent.Gid)
		u.UID, name, passwdGID = uint32(ent.Uid), ent.Name, &gid
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
			for _, m := range g.List {
				if strings.TrimSpace(m) == name {
					gids = append(gids, uint32(g.Gid))
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
		if g.Name == group {
			return uint32(g.Gid), nil
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
