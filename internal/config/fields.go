package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// A fieldError is a bad value at a field of the file. Its text is
//
//	file:line: field.path: what is wrong (what is accepted)
//
// e.g. "config.yaml:41: routes[0].ttl: 60 has no unit (add one, e.g. 60s)".
type fieldError struct {
	line int    // line in the file; 0 when the file does not say
	path string // upstream.mux_conns, routes[1].ttl; "" for the document
	msg  string
	// near is where to point when path is not in the file, e.g. a field
	// that routes make required.
	near string
}

func bad(path, format string, args ...any) *fieldError {
	return &fieldError{path: path, msg: fmt.Sprintf(format, args...)}
}

// in is the error as Parse returns it for the file called name.
func (e *fieldError) in(name string) error {
	at := name
	if e.line > 0 {
		at = fmt.Sprintf("%s:%d", name, e.line)
	}
	if e.path == "" {
		return fmt.Errorf("%s: %s", at, e.msg)
	}
	return fmt.Errorf("%s: %s: %s", at, e.path, e.msg)
}

// fileLines is the line of every field path present in the file.
type fileLines map[string]int

// locate gives e the line of its path, else of e.near, else of the
// nearest enclosing field the file has (routes[0] for a missing
// routes[0].name).
func (l fileLines) locate(e *fieldError) {
	e.line = l[e.path]
	if e.line == 0 && e.near != "" {
		e.line = l[e.near]
	}
	for p := parent(e.path); p != "" && e.line == 0; p = parent(p) {
		e.line = l[p]
	}
}

// parent is the enclosing path: routes[0] for routes[0].ttl, routes for
// routes[0].
func parent(p string) string {
	if i := strings.LastIndexAny(p, ".["); i >= 0 {
		return p[:i]
	}
	return ""
}

// check walks the YAML document beside the Config type before the decoder
// sees it, and refuses the first value the field cannot take, with the
// field's path as written in the file and its line. The decoder alone
// names Go's struct instead of the field (`Go struct field Config.Routes
// of type bool` for a route's early_refresh), loses the line of errors from
// Duration and Percent, and truncates 1.5 to 1 in integer fields
// (docs/UPSTREAM-BUGS.md). It returns the line of every field it saw, so
// that validate's errors can name their line too.
func check(data []byte) (fileLines, *fieldError) {
	// Duplicate keys are check's to report, with their path (the parser
	// would name only the key).
	f, err := parser.ParseBytes(data, 0, parser.AllowDuplicateMapKey())
	if err != nil {
		return nil, decodeError(err)
	}
	lines := fileLines{}
	for i, doc := range f.Docs {
		if doc.Body == nil {
			continue
		}
		if i > 0 {
			return nil, &fieldError{line: line(doc.Body), msg: "a second YAML document (after ---) is not read (keep the whole configuration in one document)"}
		}
		if err := lines.value(doc.Body, reflect.TypeOf(Config{}), ""); err != nil {
			return nil, err
		}
	}
	return lines, nil
}

// textTypes are the types that read their own text: what they accept,
// and the function that says what is wrong with a value.
var textTypes = map[reflect.Type]struct {
	what  string
	check func(string) string
}{
	reflect.TypeOf(Duration(0)): {durationWhat, func(s string) string { _, msg := parseDuration(s); return msg }},
	reflect.TypeOf(Percent(0)):  {percentWhat, func(s string) string { _, msg := parsePercent(s); return msg }},
}

const (
	durationWhat = "a duration (Go syntax such as 500ms, 30s, 1h)"
	percentWhat  = "a percentage (0% to 100%, e.g. 10%)"
)

// value checks node n against type t at path.
func (l fileLines) value(n ast.Node, t reflect.Type, path string) *fieldError {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for {
		switch v := n.(type) {
		case *ast.TagNode:
			n = v.Value
			continue
		case *ast.AnchorNode:
			n = v.Value
			continue
		}
		break
	}
	switch n.(type) {
	case nil, *ast.NullNode:
		return nil // empty: the default
	case *ast.AliasNode:
		return nil // checked where its anchor is; the decoder resolves it
	}
	at := func(format string, args ...any) *fieldError {
		e := bad(path, format, args...)
		e.line = line(n)
		return e
	}
	text, scalar := scalarText(n)
	shown := describe(n)
	if kind, ok := textTypes[t]; ok {
		if !scalar {
			return at("%s is not %s", shown, kind.what)
		}
		if msg := kind.check(text); msg != "" {
			return at("%s", msg)
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		return l.mapping(n, t, path)
	case reflect.Slice:
		seq, ok := n.(*ast.SequenceNode)
		if !ok {
			return at("%s is not a list (one entry per line, each starting with \"- \")", shown)
		}
		for i, e := range seq.Values {
			p := fmt.Sprintf("%s[%d]", path, i)
			l[p] = line(e)
			if err := l.value(e, t.Elem(), p); err != nil {
				return err
			}
		}
		return nil
	case reflect.Bool:
		if _, ok := n.(*ast.BoolNode); !ok {
			return at("%s is not a boolean (true or false)", shown)
		}
	case reflect.String:
		if !scalar {
			return at("%s is not a string (one value; quote it if it starts with [ or {)", shown)
		}
	case reflect.Float32, reflect.Float64:
		switch n.(type) {
		case *ast.IntegerNode, *ast.FloatNode:
		default:
			return at("%s is not a number (e.g. 1 or 0.5)", shown)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return intValue(n, t, shown, at)
	}
	return nil
}

// intValue checks a whole number for an integer field of type t.
func intValue(n ast.Node, t reflect.Type, shown string, at func(string, ...any) *fieldError) *fieldError {
	lo, hi := int64(math.MinInt64), uint64(math.MaxInt64)
	switch t.Kind() {
	case reflect.Int8, reflect.Int16, reflect.Int32:
		hi = uint64(1)<<(t.Bits()-1) - 1
		lo = -int64(hi) - 1
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		lo, hi = 0, math.MaxUint64>>(64-t.Bits())
	}
	inRange := false
	switch v := n.(type) {
	case *ast.IntegerNode:
		switch v := v.Value.(type) {
		case int64:
			inRange = v >= lo && (v < 0 || uint64(v) <= hi)
		case uint64:
			inRange = v <= hi
		}
	default:
		if strings.Trim(shown, "+-0123456789") != "" {
			return at("%s is not an integer (a whole number such as 10)", shown)
		}
		// digits only: too long for the parser's int64
	}
	if !inRange {
		return at("%s is out of range (%d to %d)", shown, lo, hi)
	}
	return nil
}

// mapping checks a section of the file against struct t.
func (l fileLines) mapping(n ast.Node, t reflect.Type, path string) *fieldError {
	var pairs []*ast.MappingValueNode
	switch v := n.(type) {
	case *ast.MappingNode:
		pairs = v.Values
	case *ast.MappingValueNode:
		pairs = []*ast.MappingValueNode{v}
	default:
		what := "a section"
		if path == "" {
			what = "a YAML mapping of settings"
		}
		return &fieldError{line: line(n), path: path, msg: fmt.Sprintf("%s is not %s (its fields: %s)", describe(n), what, strings.Join(yamlNames(t), ", "))}
	}
	for _, mv := range pairs {
		if mv.Key.IsMergeKey() {
			continue // <<: *anchor; checked where the anchor is
		}
		key := mv.Key.GetToken().Value
		p := join(path, key)
		ln := mv.Key.GetToken().Position.Line
		if first, seen := l[p]; seen {
			return &fieldError{line: ln, path: p, msg: fmt.Sprintf("set twice (first on line %d; keep one)", first)}
		}
		field, ok := yamlField(t, key)
		if !ok {
			return &fieldError{line: ln, path: p, msg: unknownField(key, yamlNames(t))}
		}
		l[p] = ln
		if err := l.value(mv.Value, field.Type, p); err != nil {
			return err
		}
	}
	return nil
}

// unknownField says so, suggesting the closest known name.
func unknownField(key string, known []string) string {
	best, dist := "", 3 // suggest only names at most 2 edits away
	for _, k := range known {
		if d := editDistance(key, k); d < dist {
			best, dist = k, d
		}
	}
	msg := "unknown field"
	if best != "" {
		msg += fmt.Sprintf("; did you mean %s?", best)
	}
	return msg + " (accepted: " + strings.Join(known, ", ") + ")"
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// scalarText is the value of a scalar node as the decoder reads it.
func scalarText(n ast.Node) (string, bool) {
	switch v := n.(type) {
	case *ast.LiteralNode:
		return v.Value.Value, true
	case *ast.MappingNode, *ast.MappingValueNode, *ast.SequenceNode:
		return "", false
	case ast.ScalarNode:
		return v.GetToken().Value, true
	}
	return "", false
}

// describe is the value as written, or what it is when it is not one
// value.
func describe(n ast.Node) string {
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a section (key: value)"
	case *ast.SequenceNode:
		return "a list"
	case *ast.LiteralNode:
		return "a block of text"
	}
	return strings.TrimSpace(n.GetToken().Origin)
}

func line(n ast.Node) int {
	return n.GetToken().Position.Line
}

// decodeError is a decoder or parser error (syntax, mostly: check has
// refused bad values first) as "line: message", without goccy's
// "[line:column]" prefix and source excerpt.
func decodeError(err error) *fieldError {
	var ye yaml.Error
	if errors.As(err, &ye) && ye.GetToken() != nil {
		return &fieldError{line: ye.GetToken().Position.Line, msg: ye.GetMessage()}
	}
	return &fieldError{msg: err.Error()}
}

// yamlField finds the field of struct t whose yaml tag is key.
func yamlField(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if yamlName(t.Field(i)) == key {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}

// yamlNames are the keys of struct t in the file, in declaration order.
func yamlNames(t reflect.Type) []string {
	names := make([]string, t.NumField())
	for i := range names {
		names[i] = yamlName(t.Field(i))
	}
	return names
}

// yamlName is the field's key in the file.
func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

// Changed lists the settings that differ between a and b as paths of the
// file (log_level, upstream.mux_conns, routes), descending into sections
// but not into lists.
func Changed(a, b Config) []string {
	return changed("", reflect.ValueOf(a), reflect.ValueOf(b))
}

func changed(path string, a, b reflect.Value) []string {
	if a.Kind() != reflect.Struct {
		if reflect.DeepEqual(a.Interface(), b.Interface()) {
			return nil
		}
		return []string{path}
	}
	var out []string
	for i := 0; i < a.NumField(); i++ {
		out = append(out, changed(join(path, yamlName(a.Type().Field(i))), a.Field(i), b.Field(i))...)
	}
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// parseDuration reads a Duration; msg says what is wrong and what is
// accepted.
func parseDuration(s string) (d Duration, msg string) {
	v, err := time.ParseDuration(s)
	switch {
	case err != nil && isNumber(s):
		return 0, fmt.Sprintf("%s has no unit (add one, e.g. %ss)", s, s)
	case err != nil:
		return 0, fmt.Sprintf("%q is not %s", s, durationWhat)
	case v < 0:
		return 0, fmt.Sprintf("%s is negative (0s or more)", s)
	}
	return Duration(v), ""
}

// parsePercent reads a Percent: "10%" or 10 is 0.10.
func parsePercent(s string) (p Percent, msg string) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	switch {
	case err != nil || math.IsNaN(v):
		return 0, fmt.Sprintf("%q is not %s", s, percentWhat)
	case v < 0 || v > 100:
		return 0, fmt.Sprintf("%s is out of range (0%% to 100%%)", s)
	}
	return Percent(v / 100), ""
}

func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}
