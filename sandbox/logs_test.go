package sandbox

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestLogRecordFormat(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "c", "0.log")
	o, err := newOutput(path)
	if err != nil {
		t.Fatal(err)
	}
	o.writeRecord(0, "F", []byte("hello"))
	o.writeRecord(1, "P", []byte("part"))
	// After a reopen the old file is kept by whoever renamed it; a new one grows.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := o.reopen(); err != nil {
		t.Fatal(err)
	}
	o.writeRecord(0, "F", []byte("after"))
	o.close()

	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	line := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z (stdout|stderr) (P|F) (.*)$`)
	lines := strings.Split(strings.TrimSpace(string(old)), "\n")
	if len(lines) != 2 || !line.MatchString(lines[0]) || !strings.HasSuffix(lines[0], "stdout F hello") || !strings.HasSuffix(lines[1], "stderr P part") {
		t.Fatalf("old file %q", old)
	}
	if !strings.HasSuffix(strings.TrimSpace(string(cur)), "stdout F after") || strings.Count(string(cur), "\n") != 1 {
		t.Fatalf("new file %q", cur)
	}
}
