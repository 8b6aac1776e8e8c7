// Command critest-summary counts a critest JUnit report: passed, failed and
// skipped specs for the whole suite and for its [Conformance] specs, and
// names every failure. With two reports it prints them side by side.
//
//	critest-summary NAME=REPORT.xml [NAME=REPORT.xml ...]
package main

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type report struct {
	Suites []struct {
		Cases []testCase `xml:"testcase"`
	} `xml:"testsuite"`
}

type testCase struct {
	Name    string `xml:"name,attr"`
	Status  string `xml:"status,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
}

// counts is one column of the summary.
type counts struct {
	Passed, Failed, NotRun, SkippedAtRuntime int
	Failures                                 []string
}

func (c counts) total() int { return c.Passed + c.Failed + c.NotRun + c.SkippedAtRuntime }

// summary splits a report's specs (not its suite nodes) into all and [Conformance].
type summary struct {
	All, Conformance counts
}

func parse(r io.Reader) (summary, error) {
	var rep report
	if err := xml.NewDecoder(r).Decode(&rep); err != nil {
		return summary{}, err
	}
	var s summary
	for _, suite := range rep.Suites {
		for _, tc := range suite.Cases {
			if !strings.HasPrefix(tc.Name, "[It] ") {
				continue // [BeforeSuite] and friends are not specs
			}
			name := strings.TrimPrefix(tc.Name, "[It] ")
			add := func(c *counts) {
				switch tc.Status {
				case "passed":
					c.Passed++
				case "skipped", "pending":
					// Ginkgo writes "skipped - <reason>" for a spec that called
					// Skip() and plain "skipped" for one filtered out.
					if tc.Skipped != nil && strings.HasPrefix(tc.Skipped.Message, "skipped - ") {
						c.SkippedAtRuntime++
					} else {
						c.NotRun++
					}
				default: // failed, panicked, interrupted, timedout, aborted
					c.Failed++
					c.Failures = append(c.Failures, name)
				}
			}
			add(&s.All)
			if strings.Contains(name, "[Conformance]") {
				add(&s.Conformance)
			}
		}
	}
	if s.All.total() == 0 {
		return s, fmt.Errorf("no specs in the report")
	}
	return s, nil
}

func write(w io.Writer, names []string, sums []summary) {
	for _, part := range []struct {
		title string
		pick  func(summary) counts
	}{
		{"full suite", func(s summary) counts { return s.All }},
		{"[Conformance]", func(s summary) counts { return s.Conformance }},
	} {
		fmt.Fprintf(w, "critest, %s:\n", part.title)
		fmt.Fprintf(w, "  %-32s", "")
		for _, n := range names {
			fmt.Fprintf(w, " %16s", n)
		}
		fmt.Fprintln(w)
		for _, row := range []struct {
			label string
			value func(counts) int
		}{
			{"passed", func(c counts) int { return c.Passed }},
			{"failed", func(c counts) int { return c.Failed }},
			{"skipped: not run (filters)", func(c counts) int { return c.NotRun }},
			{"skipped: by the spec (Skip())", func(c counts) int { return c.SkippedAtRuntime }},
			{"specs", counts.total},
		} {
			fmt.Fprintf(w, "  %-32s", row.label)
			for _, s := range sums {
				fmt.Fprintf(w, " %16d", row.value(part.pick(s)))
			}
			fmt.Fprintln(w)
		}
	}
	for i, s := range sums {
		if len(s.All.Failures) == 0 {
			continue
		}
		sort.Strings(s.All.Failures)
		fmt.Fprintf(w, "%s failed:\n", names[i])
		for _, f := range s.All.Failures {
			fmt.Fprintf(w, "  - %s\n", f)
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: critest-summary NAME=REPORT.xml [NAME=REPORT.xml ...]")
		os.Exit(2)
	}
	var names []string
	var sums []summary
	for _, arg := range os.Args[1:] {
		name, file, ok := strings.Cut(arg, "=")
		if !ok {
			name, file = arg, arg
		}
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, "critest-summary:", err)
			os.Exit(1)
		}
		s, err := parse(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "critest-summary: %s: %v\n", file, err)
			os.Exit(1)
		}
		names, sums = append(names, name), append(sums, s)
	}
	write(os.Stdout, names, sums)
}
