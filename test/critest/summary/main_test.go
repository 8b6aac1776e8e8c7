package main

import (
	"bytes"
	"strings"
	"testing"
)

const sample = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6">
  <testsuite name="CRI validation" tests="6">
    <testcase name="[BeforeSuite]" status="passed"></testcase>
    <testcase name="[It] [k8s.io] A runs [Conformance]" status="passed"></testcase>
    <testcase name="[It] [k8s.io] B runs" status="failed"><failure message="x">boom</failure></testcase>
    <testcase name="[It] [k8s.io] C is filtered [Conformance]" status="skipped"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [k8s.io] D skips itself" status="skipped"><skipped message="skipped - AppArmor is disabled on this host"></skipped></testcase>
    <testcase name="[It] [k8s.io] E times out [Conformance]" status="timedout"><failure message="t">late</failure></testcase>
  </testsuite>
</testsuites>`

func TestParse(t *testing.T) {
	s, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if c := s.All; c.Passed != 1 || c.Failed != 2 || c.NotRun != 1 || c.SkippedAtRuntime != 1 {
		t.Errorf("all = %+v", c)
	}
	if c := s.Conformance; c.Passed != 1 || c.Failed != 1 || c.NotRun != 1 || c.SkippedAtRuntime != 0 {
		t.Errorf("conformance = %+v", c)
	}
	if strings.Join(s.All.Failures, ",") != "[k8s.io] B runs,[k8s.io] E times out [Conformance]" {
		t.Errorf("failures = %q", s.All.Failures)
	}
}

func TestParseRejectsEmptyReport(t *testing.T) {
	if _, err := parse(strings.NewReader(`<testsuites><testsuite></testsuite></testsuites>`)); err == nil {
		t.Error("a report without specs must be an error: a run that never started is not a pass")
	}
}

func TestWriteSideBySide(t *testing.T) {
	s, _ := parse(strings.NewReader(sample))
	var b bytes.Buffer
	write(&b, []string{"cocoon", "containerd"}, []summary{s, s})
	out := b.String()
	for _, want := range []string{"critest, full suite:", "critest, [Conformance]:", "cocoon", "containerd", "cocoon failed:\n  - [k8s.io] B runs"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
