package agent

import (
	"io"
	"reflect"
	"testing"

	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestLibcontainerProcess(t *testing.T) {
	sp := &specs.Process{
		Args: []string{"sh", "-c", "id"}, Env: []string{"A=1"}, Cwd: "/work",
		User:            specs.User{UID: 1000, GID: 50, AdditionalGids: []uint32{7, 8}},
		NoNewPrivileges: true,
		ConsoleSize:     &specs.Box{Height: 40, Width: 120},
		Capabilities:    &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL"}, Effective: []string{"CAP_KILL"}},
	}
	for _, init := range []bool{true, false} {
		lp := libcontainerProcess(sp, init)
		if !reflect.DeepEqual(lp.Args, sp.Args) || lp.Cwd != "/work" || lp.UID != 1000 || lp.GID != 50 ||
			!reflect.DeepEqual(lp.AdditionalGroups, []int{7, 8}) || !*lp.NoNewPrivileges ||
			lp.ConsoleWidth != 120 || lp.ConsoleHeight != 40 || lp.Init != init {
			t.Fatalf("init=%v: %+v", init, lp)
		}
		// The init's capabilities come from the container config; an exec carries its own.
		if (lp.Capabilities != nil) == init {
			t.Fatalf("init=%v: capabilities %+v", init, lp.Capabilities)
		}
	}
}

func TestPipeStdio(t *testing.T) {
	lp := &libcontainer.Process{}
	p, err := newProcess(lp, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	if lp.Stdin == nil || lp.Stdout == nil || lp.Stderr == nil || len(p.childEnds) != 3 {
		t.Fatalf("child stdio not wired: %+v", lp)
	}
	// What the host writes reaches the child's stdin; EOF follows closeStdin.
	if _, err := p.writeStdin([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := p.closeStdin(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(lp.Stdin)
	if err != nil || string(got) != "hello" {
		t.Fatalf("child read %q, %v", got, err)
	}
	if _, err := p.writeStdin([]byte("late")); err == nil {
		t.Fatal("write after close succeeded")
	}
	if err := p.closeStdin(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	// What the child writes reaches the agent's reader.
	if _, err := lp.Stdout.Write([]byte("out")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(p.stdout, buf); err != nil || string(buf) != "out" {
		t.Fatalf("agent read %q, %v", buf, err)
	}
}

func TestNoStdinRequested(t *testing.T) {
	lp := &libcontainer.Process{}
	p, err := newProcess(lp, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	if lp.Stdin != nil {
		t.Fatal("stdin wired without being asked for")
	}
	if _, err := p.writeStdin([]byte("x")); err == nil {
		t.Fatal("write to a process without stdin succeeded")
	}
}
