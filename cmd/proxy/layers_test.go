package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The packages in layers, bottom first (docs/ARCHITECTURE.md draws them):
// a package imports only packages of lower layers, never one of its own
// layer or above. cmd/proxy, the binary, sits on top.
var layers = map[string]int{
	"resp":            0,
	"internal/config": 0,
	"internal/admin":  0,
	"router":          1,
	"upstream":        1,
	"backend":         1,
	"policy":          2,
	"server":          3,
	"cmd/proxy":       4,
}

// onlyFrom are packages only the named layer may import: PostgreSQL is
// the route layer's business.
var onlyFrom = map[string]string{
	"backend":                 "policy",
	"github.com/jackc/pgx/v5": "backend policy",
}

// TestImportLayers checks the import graph with go list: no back edges,
// resp at the bottom, cmd at the top, backend (and pgx) imported only by
// the route layer, server importing neither.
func TestImportLayers(t *testing.T) {
	const module = "github.com/respite/respite/"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], module)
		layer, ok := layers[pkg]
		if !ok {
			continue // tools, tests' helpers, bench: outside the proxy
		}
		seen[pkg] = true
		for _, imp := range fields[1:] {
			dep := strings.TrimPrefix(imp, module)
			for guarded, allowed := range onlyFrom {
				if (dep == guarded || strings.HasPrefix(dep, guarded+"/")) && !strings.Contains(" "+allowed+" ", " "+pkg+" ") {
					t.Errorf("%s imports %s, which only %s may", pkg, dep, allowed)
				}
			}
			if l, ok := layers[dep]; ok && l >= layer {
				t.Errorf("%s (layer %d) imports %s (layer %d): a back edge", pkg, layer, dep, l)
			}
		}
	}
	for pkg := range layers {
		if !seen[pkg] {
			t.Errorf("package %s not found by go list", pkg)
		}
	}
}
