package main

import (
	"strings"
	"testing"
)

func TestSummaryAndReruns(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"output","Package":"a","Output":"first run\n"}`,
		`{"Action":"pass","Package":"a","Test":"TestX"}`,
		`{"Action":"pass","Package":"a"}`,
		// The same package again (make test's fuzz step after the tests).
		`{"Action":"output","Package":"a","Output":"fuzzing\n"}`,
		`{"Action":"fail","Package":"a","Test":"FuzzY"}`,
		`{"Action":"fail","Package":"a"}`,
		`{"Action":"skip","Package":"b","Test":"TestZ"}`,
		`{"Action":"fail","Package":"c"}`,
		`not json`,
	}, "\n") + "\n"
	var out strings.Builder
	code := run(strings.NewReader(in), &out)
	got := out.String()
	for _, want := range []string{"first run\n", "fuzzing\n", "not json\n", "FAILED: a.FuzzY", "FAILED: package c", "1 passed, 1 failed, 1 skipped\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}
