package config

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// checkInts walks the YAML document beside the Config type and refuses a
// value that is not a whole number where the field is an integer. The
// decoder alone truncates 1.5 to 1 (and 0.9 to 0, "the default") and names
// Go's struct instead of the field for "abc"; this names the field path as
// written in the file and its line, e.g.
//
//	line 14: upstream.mux_conns: 1.5 is not an integer
//
// Syntax errors are left to the decoder, which reports them with context.
func checkInts(data []byte) error {
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil
	}
	for _, doc := range f.Docs {
		if err := walkInts(doc.Body, reflect.TypeOf(Config{}), ""); err != nil {
			return err
		}
	}
	return nil
}

func walkInts(n ast.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch v := n.(type) {
	case nil:
		return nil
	case *ast.TagNode:
		return walkInts(v.Value, t, path)
	case *ast.AnchorNode:
		return walkInts(v.Value, t, path)
	case *ast.MappingNode:
		for _, mv := range v.Values {
			if err := walkInts(mv, t, path); err != nil {
				return err
			}
		}
		return nil
	case *ast.MappingValueNode:
		if t.Kind() != reflect.Struct {
			return nil
		}
		key := v.Key.GetToken().Value
		field, ok := yamlField(t, key)
		if !ok {
			return nil // unknown fields are the decoder's to report
		}
		return walkInts(v.Value, field.Type, join(path, key))
	case *ast.SequenceNode:
		if t.Kind() != reflect.Slice {
			return nil
		}
		for i, e := range v.Values {
			if err := walkInts(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	}
	if !isPlainInt(t) {
		return nil
	}
	switch n.(type) {
	case *ast.IntegerNode, *ast.NullNode:
		return nil
	}
	tok := n.GetToken()
	return fmt.Errorf("line %d: %s: %s is not an integer", tok.Position.Line, path, strings.TrimSpace(n.String()))
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

// isPlainInt reports whether t is a builtin integer type; named types such
// as Duration decode themselves.
func isPlainInt(t reflect.Type) bool {
	if t.PkgPath() != "" {
		return false
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
