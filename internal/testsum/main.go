// Command testsum reads `go test -json` events (test2json) on stdin,
// prints their human-readable output, and ends with a summary line
//
//	N passed, N failed, N skipped
//
// counting top-level test functions (subtests and fuzz seeds are part of
// their parent). It exits 1 if any test failed, or a package failed outside
// any test (build error, TestMain failure, panic, timeout). Lines that are
// not JSON events are echoed unchanged. Used by `make test`:
//
//	go test -json ./... | go run ./internal/testsum
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is the subset of test2json's TestEvent that testsum reads.
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output and build-fail events
	Test       string
	Output     string
}

func main() {
	os.Exit(run(os.Stdin, os.Stdout))
}

func run(in io.Reader, out io.Writer) int {
	w := bufio.NewWriter(out)
	defer w.Flush()
	rd := bufio.NewReaderSize(in, 64<<10)
	o := newOrderer(w)

	var passed, failed, skipped int
	var failedTests []string
	testFailedIn := map[string]bool{} // package → some test failed
	pkgFailed := map[string]bool{}    // package failed

	for {
		line, err := rd.ReadBytes('\n')
		if len(line) > 0 {
			var e event
			if line[0] != '{' || json.Unmarshal(line, &e) != nil || e.Action == "" {
				w.Write(line) // not an event: echo as is
				w.Flush()
			} else {
				switch e.Action {
				case "output":
					o.output(e.Package, e.Output)
				case "build-output":
					w.WriteString(e.Output)
				case "build-fail":
					// "pkg [pkg.test]" names the test build of pkg.
					p, _, _ := strings.Cut(e.ImportPath, " [")
					pkgFailed[p] = true
				case "pass", "fail", "skip":
					top := e.Test != "" && !strings.Contains(e.Test, "/")
					switch {
					case e.Test == "":
						if e.Action == "fail" {
							pkgFailed[e.Package] = true
						}
						o.done(e.Package)
					case !top:
					case e.Action == "pass":
						passed++
					case e.Action == "fail":
						failed++
						failedTests = append(failedTests, e.Package+"."+e.Test)
						testFailedIn[e.Package] = true
					case e.Action == "skip":
						skipped++
					}
				}
			}
		}
		if err != nil {
			break
		}
	}
	o.flushAll()

	// Packages that failed with no failing test to show for it.
	var broken []string
	for p := range pkgFailed {
		if !testFailedIn[p] {
			broken = append(broken, p)
		}
	}
	sort.Strings(broken)

	fmt.Fprintln(w)
	for _, t := range failedTests {
		fmt.Fprintf(w, "FAILED: %s\n", t)
	}
	for _, p := range broken {
		fmt.Fprintf(w, "FAILED: package %s (build error, TestMain, panic or timeout: see above)\n", p)
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || len(broken) > 0 {
		return 1
	}
	return 0
}

// orderer keeps packages' output from interleaving: go test -json streams
// the events of packages running in parallel. The oldest unfinished package
// streams straight through (so a long fuzz run shows progress); the others
// are held back until it finishes, then written in the order they started.
type orderer struct {
	w      *bufio.Writer
	order  []string // packages in order of first output
	buf    map[string]*strings.Builder
	fin    map[string]bool
	active string // the package streaming now; "" if none
}

func newOrderer(w *bufio.Writer) *orderer {
	return &orderer{w: w, buf: map[string]*strings.Builder{}, fin: map[string]bool{}}
}

func (o *orderer) output(pkg, text string) {
	if o.buf[pkg] == nil {
		o.buf[pkg] = &strings.Builder{}
		o.order = append(o.order, pkg)
		delete(o.fin, pkg) // a package can run again (the fuzz step after the tests)
	}
	if o.active == "" {
		o.advance()
	}
	if pkg == o.active {
		o.w.WriteString(text)
		o.w.Flush()
		return
	}
	o.buf[pkg].WriteString(text)
}

func (o *orderer) done(pkg string) {
	o.fin[pkg] = true
	if pkg == o.active || o.active == "" {
		o.active = ""
		o.advance()
	}
}

// advance writes out held-back output in order, up to the first unfinished
// package, which becomes the active one.
func (o *orderer) advance() {
	for len(o.order) > 0 {
		p := o.order[0]
		o.w.WriteString(o.buf[p].String())
		o.buf[p].Reset()
		if !o.fin[p] {
			o.active = p
			break
		}
		o.order = o.order[1:]
		delete(o.buf, p)
	}
	o.w.Flush()
}

// flushAll writes whatever is still held back (input ended early).
func (o *orderer) flushAll() {
	for _, p := range o.order {
		o.w.WriteString(o.buf[p].String())
	}
	o.order = nil
	o.w.Flush()
}
