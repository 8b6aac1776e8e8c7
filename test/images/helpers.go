package main

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

//go:embed nonewprivs/main.go
var nonewprivsSource []byte

// helperSources are Go programs compiled into images at build time; the
// images carry no compiler and busybox cannot do their job.
var helperSources = map[string][]byte{"nonewprivs": nonewprivsSource}

// helper compiles an embedded program as a static binary. The build runs in
// a throwaway module so it does not depend on where this tool's source is,
// and -trimpath plus an empty build ID keep the bytes stable for a given Go
// toolchain.
func (b *builder) helper(name string) ([]byte, error) {
	if data, ok := b.helpers[name]; ok {
		return data, nil
	}
	src, ok := helperSources[name]
	if !ok {
		return nil, fmt.Errorf("unknown helper %q", name)
	}
	if b.goTool == "" {
		return nil, fmt.Errorf("helper %s: no go toolchain (set --go or put go in PATH)", name)
	}
	dir, err := os.MkdirTemp("", "cocoon-test-images-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	mod := "module " + name + "\n\ngo 1.22\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), src, 0o644); err != nil {
		return nil, err
	}
	out := filepath.Join(dir, name)
	cmd := exec.Command(b.goTool, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH,
		"GOFLAGS=", "GOWORK=off", "GOTOOLCHAIN=local", "GO111MODULE=on")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build helper %s: %w\n%s", name, err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	b.helpers[name] = data
	return data, nil
}

// findGo locates the go command used to build helpers.
func findGo() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// fallbackScripts stand in for applets critest runs that Debian's
// busybox-static leaves out. They are installed only when busybox lacks the
// applet and cover just the forms critest uses.
var fallbackScripts = []file{
	{Path: "usr/bin/pgrep", Mode: 0o755, Data: pgrepScript},
	{Path: "usr/bin/ipcs", Mode: 0o755, Data: ipcsScript},
}

// pgrep PATTERN: ERE match against process names, own pid excluded. The
// process list is read with shell builtins only, so no helper process of
// the script can match, and processes exiting meanwhile are skipped
// quietly (critest wants an empty stderr).
const pgrepScript = `#!/bin/sh
# Minimal pgrep (busybox-static has none): pgrep PATTERN
if [ $# -ne 1 ]; then
	echo "usage: pgrep PATTERN" >&2
	exit 2
fi
list=
for d in /proc/[0-9]*; do
	{ read -r name < "$d/comm"; } 2>/dev/null || continue
	list="$list${d#/proc/} $name
"
done
printf '%s' "$list" | awk -v pat="$1" -v self="$$" '
{
	pid = $1
	name = substr($0, length(pid) + 2)
	if (pid != self && name ~ pat) { print pid; found = 1 }
}
END { exit !found }'
`

// ipcs [-m]: critest only checks that a segment id shows up in the table.
const ipcsScript = `#!/bin/sh
# Minimal ipcs (busybox-static has none): shared memory segments only.
case "$1" in
"" | -m) ;;
*)
	echo "ipcs: only -m is supported" >&2
	exit 1
	;;
esac
exec awk '
BEGIN {
	while ((getline l < "/etc/passwd") > 0) { split(l, f, ":"); user[f[3]] = f[1] }
	print ""
	print "------ Shared Memory Segments --------"
	printf "%-10s %-10s %-10s %-10s %-10s %-10s %-12s\n", "key", "shmid", "owner", "perms", "bytes", "nattch", "status"
}
FNR > 1 {
	key = $1 < 0 ? $1 + 4294967296 : $1
	owner = ($8 in user) ? user[$8] : $8
	printf "0x%08x %-10s %-10s %-10s %-10s %-10s\n", key, $2, owner, $3, $4, $7
}
END { print "" }' /proc/sysvipc/shm
`
