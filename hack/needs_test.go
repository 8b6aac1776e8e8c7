// Package hack holds the build's helper scripts; this test keeps their list of
// host dependencies (needs.txt) complete.
package hack

import (
	"bufio"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// projectBinaries are programs the project builds itself (or the Go
// toolchain), and optional VMMs whose tests skip without them: none comes
// from a Debian package.
var projectBinaries = map[string]bool{
	"cocoond": true, "cocoon": true, "cocoon-agent": true, "cocoon-test-images": true,
	"crictl": true, "critest": true, "ginkgo": true, "go": true, "/proc/self/exe": true,
	"cloud-hypervisor": true,
}

// TestNeedsListsEveryProgramTheCodeRuns finds every program a Go file runs or
// looks up by a literal name (exec.Command, exec.CommandContext,
// exec.LookPath) and requires it in needs.txt, which check-deps.sh ties to a
// package install-deps.sh installs.
func TestNeedsListsEveryProgramTheCodeRuns(t *testing.T) {
	t.Parallel()
	needs := readNeeds(t)
	used := map[string][]string{}
	root := ".."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "_output" || d.Name() == "bin" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pkg, ok := sel.X.(*ast.Ident)
			if !ok || pkg.Name != "exec" {
				return true
			}
			arg := 0
			switch sel.Sel.Name {
			case "Command", "LookPath":
			case "CommandContext":
				arg = 1
			default:
				return true
			}
			if len(call.Args) <= arg {
				return true
			}
			lit, ok := call.Args[arg].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			name, err := strconv.Unquote(lit.Value)
			if err == nil && !projectBinaries[name] {
				used[name] = append(used[name], path)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(used) == 0 {
		t.Fatal("found no program run by the code: the scan is broken")
	}
	var missing []string
	for name, where := range used {
		if !needs[name] && !needs[filepath.Base(name)] {
			missing = append(missing, name+" (run in "+strings.Join(where, ", ")+")")
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("hack/needs.txt lacks %s: add it, and its package to hack/packages.txt", m)
	}
}

func readNeeds(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open("needs.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	needs := map[string]bool{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		line, _, _ := strings.Cut(s.Text(), "#")
		if line = strings.TrimSpace(line); line != "" {
			needs[line] = true
		}
	}
	return needs
}
