package pipeline

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

func TestRunUnwindsInReverse(t *testing.T) {
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetLevel(logrus.PanicLevel)
	var trail []string
	step := func(name string, fail bool, undoErr error) Step {
		return Step{Name: name, Run: func(context.Context) (func() error, error) {
			trail = append(trail, "do "+name)
			if fail {
				return nil, errors.New(name + " broke")
			}
			return func() error { trail = append(trail, "undo "+name); return undoErr }, nil
		}}
	}
	for _, tt := range []struct {
		name      string
		steps     []Step
		wantTrail []string
		wantErr   []string
	}{
		{
			name:      "all succeed, nothing undone",
			steps:     []Step{step("a", false, nil), step("b", false, nil)},
			wantTrail: []string{"do a", "do b"},
		},
		{
			name:      "third fails: second and first undone in that order",
			steps:     []Step{step("a", false, nil), step("b", false, nil), step("c", true, nil), step("d", false, nil)},
			wantTrail: []string{"do a", "do b", "do c", "undo b", "undo a"},
			wantErr:   []string{"c: c broke"},
		},
		{
			name:      "a failing undo does not stop the others",
			steps:     []Step{step("a", false, nil), step("b", false, errors.New("stuck")), step("c", true, nil)},
			wantTrail: []string{"do a", "do b", "do c", "undo b", "undo a"},
			wantErr:   []string{"c: c broke", "undo b: stuck"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			trail = nil
			c, err := Run(context.Background(), log, tt.steps)
			if !reflect.DeepEqual(trail, tt.wantTrail) {
				t.Fatalf("trail %v, want %v", trail, tt.wantTrail)
			}
			if len(tt.wantErr) == 0 {
				if err != nil || c.Len() != len(tt.steps) {
					t.Fatalf("err %v, %d undos", err, c.Len())
				}
				return
			}
			for _, w := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("error %v lacks %q", err, w)
				}
			}
		})
	}
}

func TestRunHonoursCancellation(t *testing.T) {
	log := logrus.NewEntry(logrus.New())
	ctx, cancel := context.WithCancel(context.Background())
	undone := false
	_, err := Run(ctx, log, []Step{
		{Name: "a", Run: func(context.Context) (func() error, error) {
			cancel()
			return func() error { undone = true; return nil }, nil
		}},
		{Name: "b", Run: func(context.Context) (func() error, error) { t.Fatal("ran after cancel"); return nil, nil }},
	})
	if !errors.Is(err, context.Canceled) || !undone {
		t.Fatalf("err %v undone %v", err, undone)
	}
}

// TestCrashPointFiresAfterTheNamedStepOnly: an armed hook kills the process
// right after the named step of the named pipeline, and nowhere else.
func TestCrashPointFiresAfterTheNamedStepOnly(t *testing.T) {
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetLevel(logrus.PanicLevel)
	var trail []string
	old := killSelf
	killSelf = func() { trail = append(trail, "KILL") }
	defer func() { killSelf = old; SetCrashPoint("") }()
	step := func(name string) Step {
		return Step{Name: name, Run: func(context.Context) (func() error, error) {
			trail = append(trail, name)
			return nil, nil
		}}
	}
	steps := []Step{step("a"), step("b"), step("c")}
	for _, tt := range []struct {
		armed, pipeline string
		want            []string
	}{
		{"", "run-pod", []string{"a", "b", "c"}},
		{"run-pod/b", "run-pod", []string{"a", "b", "KILL", "c"}},
		{"run-pod/b", "create-container", []string{"a", "b", "c"}},
		{"b", "", []string{"a", "b", "c"}}, // an unnamed pipeline's points start with "/"
	} {
		trail = nil
		SetCrashPoint(tt.armed)
		if _, err := Run(WithName(context.Background(), tt.pipeline), log, steps); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(trail, tt.want) {
			t.Errorf("armed %q in %q: trail %v, want %v", tt.armed, tt.pipeline, trail, tt.want)
		}
	}
}

// TestRunLogsNameThePipeline: a failing container creation must not log as
// a boot step; every step line carries the pipeline's name.
func TestRunLogsNameThePipeline(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	ctx := WithName(context.Background(), "create-container")
	_, err := Run(ctx, logrus.NewEntry(logger), []Step{
		{Name: "mounts", Run: func(context.Context) (func() error, error) { return nil, nil }},
		{Name: "agent", Run: func(context.Context) (func() error, error) { return nil, errors.New("refused") }},
	})
	if err == nil {
		t.Fatal("a failing step did not fail Run")
	}
	var got []string
	for _, e := range hook.AllEntries() {
		got = append(got, e.Message+" "+e.Data["pipeline"].(string)+"/"+e.Data["step"].(string))
	}
	want := []string{"step done create-container/mounts", "step failed, unwinding create-container/agent"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("log lines %q, want %q", got, want)
	}
}
