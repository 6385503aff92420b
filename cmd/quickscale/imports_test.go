package main

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const modulePath = "github.com/quickscale/quickscale"

// allowedImports is the import table of ARCHITECTURE.md: which project
// packages each top-level package may import (subpackages count as their
// top-level package). cmd/quickscale may import everything.
func allowedImports() map[string][]string {
	return map[string][]string{
		"jobs":          {},
		"migrations":    {},
		"observability": {},
		"store":         {"migrations"},
		"billing":       {"store", "jobs"},
		"web":           {"store", "jobs", "billing", "observability"},
		"api":           {"web", "store", "jobs", "billing", "observability"},
		"workers":       {"store", "jobs", "billing", "observability"},
	}
}

// topLevel maps an import path of the module to its top-level package.
func topLevel(importPath string) (string, bool) {
	rest, ok := strings.CutPrefix(importPath, modulePath+"/")
	if !ok {
		return "", false
	}
	top, _, _ := strings.Cut(rest, "/")
	return top, true
}

// importViolations checks direct imports of non-test code against the table.
func importViolations(imports map[string][]string) []string {
	allowed := allowedImports()
	var out []string
	for pkg, deps := range imports {
		from, ok := topLevel(pkg)
		if !ok || from == "cmd" {
			continue
		}
		list, known := allowed[from]
		if !known {
			out = append(out, pkg+": not in the import table of ARCHITECTURE.md")
			continue
		}
		for _, dep := range deps {
			to, ok := topLevel(dep)
			if !ok || to == from {
				continue
			}
			permitted := false
			for _, a := range list {
				if a == to {
					permitted = true
				}
			}
			if !permitted {
				out = append(out, pkg+" imports "+dep)
			}
		}
	}
	return out
}

func TestImportRulesOfTheArchitectureHold(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("go", "list", "-json", modulePath+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	imports := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		imports[p.ImportPath] = p.Imports
	}
	if len(imports) < 9 {
		t.Fatalf("go list found only %d packages", len(imports))
	}
	for _, v := range importViolations(imports) {
		t.Errorf("import rule broken: %s", v)
	}
}

func TestImportRuleCheckerFlagsAViolation(t *testing.T) {
	t.Parallel()
	got := importViolations(map[string][]string{
		modulePath + "/web":             {modulePath + "/workers", modulePath + "/store"},
		modulePath + "/store/storetest": {modulePath + "/store", modulePath + "/migrations"},
		modulePath + "/jobs":            {"github.com/riverqueue/river"},
	})
	if len(got) != 1 || got[0] != modulePath+"/web imports "+modulePath+"/workers" {
		t.Fatalf("violations = %q, want only web → workers", got)
	}
}

// TestNoGlobalStripeOrPrometheusState forbids the package-level state the
// architecture rules out: stripe.Key, stripe.SetBackend, promauto and
// prometheus' default registry.
func TestNoGlobalStripeOrPrometheusState(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../*/*.go")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("../../*/*/*.go")
	files = append(files, more...)
	forbidden := map[string]bool{
		"stripe.Key": true, "stripe.SetBackend": true,
		"prometheus.MustRegister": true, "prometheus.Register": true,
		"prometheus.DefaultRegisterer": true, "prometheus.DefaultGatherer": true,
		"promhttp.Handler": true,
	}
	fset := token.NewFileSet()
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatalf("parse %s: %v", f, err)
		}
		checked++
		for _, imp := range file.Imports {
			if strings.Contains(imp.Path.Value, "prometheus/promauto") {
				t.Errorf("%s imports promauto (registers on the global registry)", f)
			}
		}
		ast.Inspect(file, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok && forbidden[x.Name+"."+sel.Sel.Name] {
				t.Errorf("%s: uses %s.%s (global state)", fset.Position(sel.Pos()), x.Name, sel.Sel.Name)
			}
			return true
		})
	}
	if checked < 30 {
		t.Fatalf("checked only %d files", checked)
	}
}
