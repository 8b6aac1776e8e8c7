// Package critest holds the critest harness (run.sh), its skip list and the
// checks that keep the list honest.
package critest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

type skipEntry struct {
	pattern string
	why     []string
	line    int
}

func readSkipList(t *testing.T) []skipEntry {
	t.Helper()
	f, err := os.Open("skip.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []skipEntry
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "", strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "skip:"):
			out = append(out, skipEntry{pattern: strings.TrimSpace(strings.TrimPrefix(line, "skip:")), line: n})
		case strings.HasPrefix(line, "why:"):
			if len(out) == 0 {
				t.Fatalf("skip.txt:%d: why before any skip", n)
			}
			out[len(out)-1].why = append(out[len(out)-1].why, strings.TrimSpace(strings.TrimPrefix(line, "why:")))
		default:
			t.Fatalf("skip.txt:%d: want skip:, why:, a comment or a blank line, got %q", n, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSkipListEntriesHaveReasons(t *testing.T) {
	entries := readSkipList(t)
	if len(entries) == 0 {
		t.Fatal("empty skip list")
	}
	for _, e := range entries {
		if e.pattern == "" {
			t.Errorf("skip.txt:%d: empty pattern", e.line)
		}
		if _, err := regexp.Compile(e.pattern); err != nil {
			t.Errorf("skip.txt:%d: %v", e.line, err)
		}
		if len(strings.Join(e.why, " ")) < 40 {
			t.Errorf("skip.txt:%d: %q needs a reason saying why a VM runtime cannot pass it", e.line, e.pattern)
		}
	}
}

// TestSkipListMatchesPinnedCritest lists the pinned critest's specs and
// checks that each entry skips something, and only a few specs: a pattern
// that matches nothing hides a renamed spec, one that matches many hides
// specs that should run.
func TestSkipListMatchesPinnedCritest(t *testing.T) {
	bin := filepath.Join(os.Getenv("COCOON_BIN"), "critest")
	if os.Getenv("COCOON_BIN") == "" {
		repo, _ := filepath.Abs("../..")
		bin = filepath.Join(repo, "bin", "critest")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no critest binary at %s (make tools builds it)", bin)
	}
	out, err := exec.Command(bin, "--ginkgo.dry-run", "--ginkgo.v", "--ginkgo.no-color").CombinedOutput()
	if err != nil {
		t.Fatalf("critest --ginkgo.dry-run: %v\n%s", err, out)
	}
	var specs []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "[k8s.io] ") {
			specs = append(specs, l)
		}
	}
	if len(specs) < 100 {
		t.Fatalf("dry run listed %d specs; the output format changed?", len(specs))
	}
	for _, e := range readSkipList(t) {
		re := regexp.MustCompile(e.pattern)
		n := 0
		for _, s := range specs {
			if re.MatchString(s) {
				n++
			}
		}
		if n == 0 || n > 2 {
			t.Errorf("skip.txt:%d: %q matches %d specs, want 1 or 2", e.line, e.pattern, n)
		}
	}
}
