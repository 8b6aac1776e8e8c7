package vm

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestRunStepsUnwindsInReverse(t *testing.T) {
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
			c, err := RunSteps(context.Background(), log, tt.steps)
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

func TestRunStepsHonoursCancellation(t *testing.T) {
	log := logrus.NewEntry(logrus.New())
	ctx, cancel := context.WithCancel(context.Background())
	undone := false
	_, err := RunSteps(ctx, log, []Step{
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
