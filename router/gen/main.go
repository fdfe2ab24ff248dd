// Command gen writes router/keys_table.go: for every command (and every
// subcommand, as "container|sub") that a throwaway redis-server lists in
// COMMAND, its arity, legacy key range (first, last, step) and the flags the
// router needs.
//
// Usage, from the repository root:
//
//	go run ./router/gen -o router/keys_table.go
//
// or `go generate ./router/`. It starts its own redis-server (found on
// PATH) on a free loopback port through internal/testenv and stops it when
// done; it never talks to an existing server. Without -o it writes to
// standard output.
//
// Besides copying the COMMAND reply, it checks the reply against the
// command's key specs (https://redis.io/docs/reference/key-specs/): for
// every command without the movablekeys flag, the positions the key specs
// give must be exactly those of the legacy (first, last, step) range, so
// that the range alone is a faithful description. Movable-key commands are
// described by hand-written rules in router/keys.go (router tests check
// that each one has a rule). It fails rather than emit a table that breaks
// these assumptions.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"go/format"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/respite/respite/internal/testenv"
)

func main() {
	out := flag.String("o", "", "write the table to this file instead of standard output")
	flag.Parse()
	src, err := generate()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if *out == "" {
		_, err = os.Stdout.Write(src)
	} else {
		err = os.WriteFile(*out, src, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

// spec is one emitted table entry; the field names match router.keySpec.
type spec struct {
	name              string
	arity             int
	first, last, step int
	write, readonly   bool
	movablekeys       bool
	keyWrite          bool     // a key spec has RW, OW or RM: the command may write a key
	notKey            bool     // the key positions are shard channels (not_key), not keys
	subcommands       bool     // a container: look up "name|sub"
	flags             []string // COMMAND flags and ACL categories the router keeps, as router.Flag names
}

// flagNames maps COMMAND flags (and ACL categories, with their @) to the
// router.Flag constants keys_table.go sets in commandFlags.
var flagNames = map[string]string{
	"write": "FlagWrite", "readonly": "FlagReadonly", "admin": "FlagAdmin",
	"no_auth": "FlagNoAuth", "noscript": "FlagNoScript", "pubsub": "FlagPubSub",
	"blocking": "FlagBlocking", "no_multi": "FlagNoMulti", "fast": "FlagFast",
	"loading": "FlagLoading", "stale": "FlagStale", "@dangerous": "FlagDangerous",
}

func generate() ([]byte, error) {
	r, err := testenv.StartRedis()
	if err != nil {
		return nil, err
	}
	defer r.Stop()

	c, err := net.DialTimeout("tcp", r.Addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)

	info, err := call(c, br, "INFO", "server")
	if err != nil {
		return nil, err
	}
	version := ""
	if s, ok := info.(string); ok {
		for _, line := range strings.Split(s, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				version = v
			}
		}
	}
	if version == "" {
		return nil, errors.New("no redis_version in INFO server")
	}

	reply, err := call(c, br, "COMMAND")
	if err != nil {
		return nil, err
	}
	entries, ok := reply.([]any)
	if !ok || len(entries) == 0 {
		return nil, fmt.Errorf("COMMAND: unexpected reply %T", reply)
	}
	var specs []spec
	for _, e := range entries {
		s, subs, err := parseEntry(e)
		if err != nil {
			return nil, err
		}
		specs = append(specs, s)
		for _, se := range subs {
			ss, subsubs, err := parseEntry(se)
			if err != nil {
				return nil, err
			}
			if len(subsubs) > 0 {
				return nil, fmt.Errorf("%s: nested subcommands", ss.name)
			}
			if !strings.HasPrefix(ss.name, s.name+"|") {
				return nil, fmt.Errorf("subcommand %q of %q: unexpected name", ss.name, s.name)
			}
			specs = append(specs, ss)
		}
	}
	slices.SortFunc(specs, func(a, b spec) int { return strings.Compare(a.name, b.name) })
	for i := 1; i < len(specs); i++ {
		if specs[i].name == specs[i-1].name {
			return nil, fmt.Errorf("duplicate command %q", specs[i].name)
		}
	}
	return render(version, specs)
}

// parseEntry reads one COMMAND entry: name, arity, flags, first key, last
// key, step, ACL categories, tips, key specs, subcommands (Redis 7 layout).
func parseEntry(e any) (spec, []any, error) {
	a, ok := e.([]any)
	if !ok || len(a) < 10 {
		return spec{}, nil, fmt.Errorf("COMMAND entry %v: want an array of at least 10 (Redis 7 or later)", e)
	}
	name, ok1 := a[0].(string)
	arity, ok2 := a[1].(int64)
	flags, ok3 := a[2].([]any)
	first, ok4 := a[3].(int64)
	last, ok5 := a[4].(int64)
	step, ok6 := a[5].(int64)
	keySpecs, ok7 := a[8].([]any)
	subs, ok8 := a[9].([]any)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && ok8) {
		return spec{}, nil, fmt.Errorf("COMMAND entry %v: unexpected field types", a[0])
	}
	s := spec{name: strings.ToLower(name), arity: int(arity), first: int(first), last: int(last), step: int(step),
		subcommands: len(subs) > 0}
	for _, f := range flags {
		switch f {
		case "write":
			s.write = true
		case "readonly":
			s.readonly = true
		case "movablekeys":
			s.movablekeys = true
		}
		if n, ok := flagNames[fmt.Sprint(f)]; ok {
			s.flags = append(s.flags, n)
		}
	}
	if cats, ok := a[6].([]any); ok {
		for _, c := range cats {
			if n, ok := flagNames[fmt.Sprint(c)]; ok {
				s.flags = append(s.flags, n)
			}
		}
	}
	if s.first == 0 && (s.last != 0 || s.step != 0) || s.first < 0 || s.first != 0 && s.step < 1 {
		return spec{}, nil, fmt.Errorf("%s: odd key range %d %d %d", s.name, s.first, s.last, s.step)
	}

	var ks []keySpec
	notKeys := 0
	for _, k := range keySpecs {
		m, err := asMap(k)
		if err != nil {
			return spec{}, nil, fmt.Errorf("%s: key spec: %w", s.name, err)
		}
		var p keySpec
		if fl, ok := m["flags"].([]any); ok {
			for _, f := range fl {
				switch f {
				case "RW", "OW", "RM":
					s.keyWrite = true
				case "not_key":
					p.notKey = true
				case "incomplete":
					p.incomplete = true
				}
			}
		}
		if p.notKey {
			notKeys++
		}
		bs, err := asMap(m["begin_search"])
		if err != nil {
			return spec{}, nil, fmt.Errorf("%s: begin_search: %w", s.name, err)
		}
		fk, err := asMap(m["find_keys"])
		if err != nil {
			return spec{}, nil, fmt.Errorf("%s: find_keys: %w", s.name, err)
		}
		p.bsType, _ = bs["type"].(string)
		p.fkType, _ = fk["type"].(string)
		if p.bsType == "index" {
			sp, _ := asMap(bs["spec"])
			p.index = toInt(sp["index"])
		}
		if p.fkType == "range" {
			sp, _ := asMap(fk["spec"])
			p.lastkey, p.keystep, p.limit = toInt(sp["lastkey"]), toInt(sp["keystep"]), toInt(sp["limit"])
		}
		ks = append(ks, p)
	}
	switch {
	case notKeys == 0:
	case notKeys == len(ks):
		s.notKey = true
	default:
		return spec{}, nil, fmt.Errorf("%s: some key specs are not_key, others are keys", s.name)
	}
	if !s.movablekeys {
		if err := checkRange(s, ks); err != nil {
			return spec{}, nil, fmt.Errorf("%s: %w (a router/keys.go rule and a generator change are needed)", s.name, err)
		}
	}
	return s, subs, nil
}

// keySpec is the part of a Redis 7 key spec the check needs.
type keySpec struct {
	bsType, fkType          string
	index                   int
	lastkey, keystep, limit int
	notKey, incomplete      bool
}

// checkRange verifies that, for a command without movablekeys, its key
// specs select the same argument positions as its legacy range, for every
// argument count the arity allows (up to a bound).
func checkRange(s spec, ks []keySpec) error {
	counts := []int{s.arity}
	if s.arity < 0 {
		counts = nil
		for n := -s.arity; n <= -s.arity+9; n++ {
			counts = append(counts, n)
		}
	}
	for _, k := range ks {
		if k.bsType != "index" || k.fkType != "range" || k.incomplete || k.keystep < 1 || k.limit != 0 {
			return fmt.Errorf("key spec %+v is not a plain index+range", k)
		}
	}
	for _, argc := range counts {
		var fromSpecs []int
		for _, k := range ks {
			last := k.lastkey
			if last >= 0 {
				last += k.index
			} else {
				last += argc
			}
			for i := k.index; i <= last && i < argc; i += k.keystep {
				fromSpecs = append(fromSpecs, i)
			}
		}
		slices.Sort(fromSpecs)
		fromSpecs = slices.Compact(fromSpecs)
		var fromRange []int
		if s.first > 0 {
			last := s.last
			if last < 0 {
				last += argc
			}
			for i := s.first; i <= last && i < argc; i += s.step {
				fromRange = append(fromRange, i)
			}
		}
		if !slices.Equal(fromSpecs, fromRange) {
			return fmt.Errorf("with %d arguments key specs give %v, range (%d,%d,%d) gives %v",
				argc, fromSpecs, s.first, s.last, s.step, fromRange)
		}
	}
	return nil
}

func render(version string, specs []spec) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "// Code generated by router/gen from the COMMAND reply of redis-server %s; DO NOT EDIT.\n\n", version)
	b.WriteString("package router\n\n")
	b.WriteString("// keySpecsRedisVersion is the version of the redis-server keySpecs was read from.\n")
	fmt.Fprintf(&b, "const keySpecsRedisVersion = %q\n\n", version)
	b.WriteString("// keySpecs maps lower-case command names, and \"container|sub\" for\n")
	b.WriteString("// subcommands, to what COMMAND says about them.\n")
	b.WriteString("var keySpecs = map[string]keySpec{\n")
	for _, s := range specs {
		fmt.Fprintf(&b, "%q: {arity: %d, first: %d, last: %d, step: %d", s.name, s.arity, s.first, s.last, s.step)
		for _, f := range []struct {
			on   bool
			name string
		}{
			{s.write, "write"}, {s.readonly, "readonly"}, {s.movablekeys, "movablekeys"},
			{s.keyWrite, "keyWrite"}, {s.notKey, "notKey"}, {s.subcommands, "subcommands"},
		} {
			if f.on {
				fmt.Fprintf(&b, ", %s: true", f.name)
			}
		}
		b.WriteString("},\n")
	}
	b.WriteString("}\n\n")
	b.WriteString("// Command ids, one per entry of keySpecs in name order; ids of commands\n")
	b.WriteString("// newer than this table follow in commands.go.\n")
	b.WriteString("const (\n")
	for i, s := range specs {
		if i == 0 {
			fmt.Fprintf(&b, "%s ID = iota + 1 // %s\n", goName(s.name), s.name)
		} else {
			fmt.Fprintf(&b, "%s // %s\n", goName(s.name), s.name)
		}
	}
	b.WriteString("numGenerated\n)\n\n")
	b.WriteString("// generatedNames are the lower-case names of the generated ids.\n")
	b.WriteString("var generatedNames = [numGenerated]string{\n")
	for _, s := range specs {
		fmt.Fprintf(&b, "%s: %q,\n", goName(s.name), s.name)
	}
	b.WriteString("}\n\n")
	b.WriteString("// generatedFlags are the COMMAND flags (and ACL categories) of the\n")
	b.WriteString("// generated ids that the router keeps.\n")
	b.WriteString("var generatedFlags = [numGenerated]Flag{\n")
	for _, s := range specs {
		if len(s.flags) > 0 {
			fmt.Fprintf(&b, "%s: %s,\n", goName(s.name), strings.Join(s.flags, " | "))
		}
	}
	b.WriteString("}\n")
	src, err := format.Source(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("gofmt: %w\n%s", err, b.Bytes())
	}
	return src, nil
}

// goName is a command's Go constant name: "client|no-evict" → CmdClientNoEvict.
func goName(name string) string {
	var b strings.Builder
	b.WriteString("Cmd")
	up := true
	for _, r := range name {
		switch {
		case r == '|' || r == '-' || r == '_':
			up = true
		case up:
			b.WriteString(strings.ToUpper(string(r)))
			up = false
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// asMap turns a RESP2 flat array of name, value pairs into a map.
func asMap(v any) (map[string]any, error) {
	a, ok := v.([]any)
	if !ok || len(a)%2 != 0 {
		return nil, fmt.Errorf("want a flat name/value array, got %v", v)
	}
	m := make(map[string]any, len(a)/2)
	for i := 0; i < len(a); i += 2 {
		k, ok := a[i].(string)
		if !ok {
			return nil, fmt.Errorf("field name %v is not a string", a[i])
		}
		m[k] = a[i+1]
	}
	return m, nil
}

func toInt(v any) int {
	n, _ := v.(int64)
	return int(n)
}

// call sends one command and reads its RESP2 reply.
func call(w io.Writer, br *bufio.Reader, args ...string) (any, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return nil, err
	}
	return read(br)
}

// read parses one RESP2 value: strings (simple and bulk) as string,
// integers as int64, arrays as []any, nulls as nil; errors are returned.
func read(br *bufio.Reader) (any, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("bad reply line %q", line)
	}
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, errors.New(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("bad bulk length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("bad array length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = read(br); err != nil {
				return nil, err
			}
		}
		return a, nil
	}
	return nil, fmt.Errorf("unexpected reply type %q", line)
}
