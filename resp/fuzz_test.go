package resp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/redcon"
)

// Two in-process redcon servers on in-memory listeners, started once per
// process: one with tiny limits (to reach the limit paths), one with the
// defaults.
var (
	fuzzOnce    sync.Once
	fuzzServers [2]*memListener
	fuzzLimits  = [2]Limits{
		{MaxBulk: 64, MaxArgs: 8, MaxInline: 64, MaxCommand: 256},
		{},
	}
)

// fuzzHandler echoes the arguments; it recovers, although nothing should
// panic in it.
func fuzzHandler(conn redcon.Conn, cmd redcon.Command) {
	defer func() {
		if r := recover(); r != nil {
			conn.WriteError(fmt.Sprint("ERR panic: ", r))
		}
	}()
	conn.WriteArray(len(cmd.Args))
	for _, a := range cmd.Args {
		conn.WriteBulk(a)
	}
}

func fuzzServer(i int) *memListener {
	fuzzOnce.Do(func() {
		for j := range fuzzServers {
			ml := newMemListener()
			fuzzServers[j] = ml
			go redcon.Serve(NewListener(ml, fuzzLimits[j]), fuzzHandler, nil, nil)
		}
	})
	return fuzzServers[i]
}

// chunker returns chunk sizes derived from seed: one chunk, single bytes,
// 1..16 or 1..4096 bytes.
func chunker(seed uint64) func() int {
	r := rand.New(rand.NewPCG(seed, seed>>7|1))
	switch seed % 4 {
	case 0:
		return fixed(1 << 30)
	case 1:
		return fixed(1)
	case 2:
		return func() int { return 1 + r.IntN(16) }
	default:
		return func() int { return 1 + r.IntN(4096) }
	}
}

func FuzzRequestStream(f *testing.F) {
	seeds := []string{
		"*1\r\n$9223372036854775807\r\nabc\r\n",
		"*1\r\n$4\r\nPING\r\n",
		"PING\r\n",
		"SET k \"hello world\"\r\n",
		"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
		"*0\r\n*-1\r\n\r\n\n   \r\n*1\r\n$4\r\nPING\r\n",
		"*1\r\n\r\n",
		"*1\r\n$4\r\nPINGXY",
		"ECHO a\"b\"\r\n",
		"ECHO \"a\\\"b\" 'c\\'d' \"\\x41\\n\"\r\n",
		"ECHO \"a\r\n",
		"ECHO a\tb\x0bc \x0c\"d\"\x0be\r\n",
		"ECHO \"c\\x41\\n\" \"\\x4\" \"\\xZZ\" \"\\x4g\" \"\\b\\a\\q\\\\\"\r\n",
		"ECHO a\"b c\" a'b' '\\n\\'' 'a\\\\' \"\"\r\n",
		"ECHO a\"b\"c\r\nECHO ''x\r\nECHO \"a\\\"\r\n",
		"ECHO a\x00b\r\nPING\r\n",
		"PING\r\n\x00" + strings.Repeat("x", 70) + "\r\n",
		" *1\r\n\r\r\n \r \n\"\"\r\n''\r\n",
		"*2\r\n$1\r\na\r\n$65\r\n" + strings.Repeat("x", 65) + "\r\n",
		"*9\r\n",
		"*-9223372036854775808\r\n*-9223372036854775809\r\n",
		"*01\r\n", "*+1\r\n", "*-0\r\n", "*1\rX", "*1\r\n$-1\r\n", "*1\r\n$04\r\n",
		strings.Repeat("a", 70) + "\r\n",
		strings.Repeat(" ", 100) + "x\r\n",
		"\x00\xff\r\n*\r\n$\r\n",
		"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$60\r\n" + strings.Repeat("v", 60) + "\r\n",
		strings.Repeat("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n", 50),
		"*4\r\n$1\r\na\r\n$60\r\n" + strings.Repeat("v", 60) + "\r\n$60\r\n" + strings.Repeat("v", 60) + "\r\n$60\r\n" + strings.Repeat("v", 60) + "\r\n",
	}
	for _, s := range seeds {
		for _, seed := range []uint64{0, 1, 2, 3, 6, 11} {
			f.Add([]byte(s), seed)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		which := int(seed>>2) & 1
		lim := fuzzLimits[which]
		cmds, perr := refParse(data, lim)
		var want strings.Builder
		for _, c := range cmds {
			want.WriteString(echo(c...))
		}
		if perr != nil && perr.Replied {
			want.WriteString("-ERR " + perr.Error() + "\r\n")
		}

		// 1. Through redcon, chunked.
		ml := fuzzServer(which)
		sc := newScriptConn(data, chunker(seed))
		select {
		case ml.ch <- sc:
		case <-time.After(10 * time.Second):
			t.Fatal("server stopped accepting")
		}
		select {
		case <-sc.closed:
		case <-time.After(20 * time.Second):
			t.Fatal("connection not closed after EOF")
		}
		got := sc.written()
		if rest, err := wellFormed(got); err != nil {
			t.Fatalf("reply stream not well-formed: %v (rest %q)", err, rest)
		}
		if got != want.String() {
			t.Fatalf("input %q\n got %q\nwant %q", data, got, want.String())
		}

		// 2. The server keeps accepting and answering.
		pc := newScriptConn([]byte("PING\r\n"), fixed(100))
		select {
		case ml.ch <- pc:
		case <-time.After(10 * time.Second):
			t.Fatal("server stopped accepting")
		}
		select {
		case <-pc.closed:
		case <-time.After(10 * time.Second):
			t.Fatal("PING connection not closed")
		}
		if pc.written() != echo("PING") {
			t.Fatalf("PING after the input got %q", pc.written())
		}

		// 3. Directly, with random read sizes (including tiny ones): the
		// validated stream parses in redcon to exactly the expected commands.
		r := rand.New(rand.NewPCG(seed, 99))
		sc = newScriptConn(data, chunker(seed/4+1))
		gc := NewConn(sc, lim)
		var out []byte
		var rerr error
		for reads := 0; ; reads++ {
			if reads > 6*len(data)+10 { // an inline line's multibulk form is up to 5.5 times longer
				t.Fatal("too many Reads")
			}
			p := make([]byte, 1+r.IntN(200))
			n, err := gc.Read(p)
			if n == 0 && err == nil {
				t.Fatal("Read returned 0, nil")
			}
			out = append(out, p[:n]...)
			if err != nil {
				rerr = err
				break
			}
		}
		switch {
		case perr == nil && rerr != io.EOF:
			t.Fatalf("Read error %v, want EOF", rerr)
		case perr != nil && (!errors.Is(rerr, ErrProtocol) || rerr.Error() != perr.Error()):
			t.Fatalf("Read error %v, want %v", rerr, perr)
		}
		if perr != nil && perr.Replied && sc.written() != "-ERR "+perr.Error()+"\r\n" {
			t.Fatalf("error reply %q", sc.written())
		}
		rd := redcon.NewReader(bytes.NewReader(out))
		var gotCmds [][]string
		for {
			cs, err := rd.ReadCommands()
			if err != nil {
				if err != io.EOF {
					t.Fatalf("redcon rejected the guarded stream %q: %v", out, err)
				}
				break
			}
			for _, c := range cs {
				var args []string
				for _, a := range c.Args {
					args = append(args, string(a))
				}
				gotCmds = append(gotCmds, args)
			}
		}
		if fmt.Sprintf("%q", gotCmds) != fmt.Sprintf("%q", cmds) {
			t.Fatalf("direct: got %q want %q", gotCmds, cmds)
		}
	})
}

// wellFormed checks that s is a sequence of complete RESP2 replies.
func wellFormed(s string) (string, error) {
	br := bufio.NewReader(strings.NewReader(s))
	for {
		if _, err := br.Peek(1); err == io.EOF {
			return "", nil
		}
		if _, err := readReply(br); err != nil {
			rest, _ := io.ReadAll(br)
			return string(rest), err
		}
	}
}

// ---------------------------------------------------------------------------
// Reference model: a whole-buffer parser written independently of the
// guard's incremental state machine, following the rules documented on
// (*Conn).Read. It returns the complete commands (as redcon parses them) and
// the protocol error that ends the stream, if any.

type numStatus int

const (
	numOK numStatus = iota
	numIncomplete
	numBad
)

// refNum parses a header number starting at in[i] up to "\r\n": strict
// decimal (no '+', no leading zeros, no "-0"), negative only if neg, at most
// max (negative values down to -2^63). A number is bad as soon as its prefix
// cannot become valid.
func refNum(in []byte, i int, neg bool, max uint64) (int64, int, numStatus) {
	j := i
	isNeg := false
	if neg && j < len(in) && in[j] == '-' {
		isNeg = true
		j++
		max = 1 << 63
	}
	ds := j
	var v uint64
	for ; j < len(in) && in[j] >= '0' && in[j] <= '9'; j++ {
		nd := j - ds + 1
		if nd > 19 {
			return 0, 0, numBad
		}
		if nd == 2 && in[ds] == '0' {
			return 0, 0, numBad
		}
		if nd == 1 && in[j] == '0' && isNeg {
			return 0, 0, numBad
		}
		v = v*10 + uint64(in[j]-'0')
		if v > max {
			return 0, 0, numBad
		}
	}
	if j == len(in) {
		return 0, 0, numIncomplete
	}
	if in[j] != '\r' || j == ds {
		return 0, 0, numBad
	}
	if j+1 == len(in) {
		return 0, 0, numIncomplete
	}
	if in[j+1] != '\n' {
		return 0, 0, numBad
	}
	if isNeg {
		return -1, j + 2, numOK // the magnitude does not matter
	}
	return int64(v), j + 2, numOK
}

func refParse(in []byte, lim Limits) (cmds [][]string, perr *ProtocolError) {
	lim = lim.normalized()
	pos := 0
	for pos < len(in) {
		if in[pos] == '*' {
			start := pos
			n, next, st := refNum(in, pos+1, true, uint64(lim.MaxArgs))
			switch st {
			case numBad:
				return cmds, errMultibulkLen
			case numIncomplete:
				return cmds, nil
			}
			pos = next
			if n <= 0 {
				continue
			}
			var args []string
			for j := int64(0); j < n; j++ {
				if pos >= len(in) {
					return cmds, nil
				}
				if in[pos] != '$' {
					return cmds, errExpectedDollar[in[pos]]
				}
				l, next, st := refNum(in, pos+1, false, uint64(lim.MaxBulk))
				switch st {
				case numBad:
					return cmds, errBulkLen
				case numIncomplete:
					return cmds, nil
				}
				if int64(next-start)+l+2 > lim.MaxCommand {
					return cmds, errCommandTooBig
				}
				pos = next
				if int64(len(in)-pos) < l {
					return cmds, nil
				}
				arg := in[pos : pos+int(l)]
				pos += int(l)
				if pos < len(in) && in[pos] != '\r' || pos+1 < len(in) && in[pos+1] != '\n' {
					return cmds, errBulkLen
				}
				if pos+2 > len(in) {
					return cmds, nil
				}
				pos += 2
				args = append(args, string(arg))
			}
			cmds = append(cmds, args)
			continue
		}
		// inline: Redis looks for the '\n' with strchr, which stops at a
		// NUL, so a line with a NUL never ends.
		e := bytes.IndexByte(in[pos:], '\n')
		if nul := bytes.IndexByte(in[pos:], 0); e < 0 || (nul >= 0 && nul < e) {
			if len(in)-pos > lim.MaxInline {
				return cmds, errTooBigInline
			}
			return cmds, nil
		}
		if e > lim.MaxInline {
			return cmds, errTooBigInline
		}
		line := in[pos : pos+e]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		args, ok := refSplit(line)
		if !ok {
			return cmds, errUnbalanced
		}
		if len(args) > 0 {
			cmds = append(cmds, args)
		}
		pos += e + 1
	}
	return cmds, nil
}

// refSplit splits a whole inline line (no NUL, no '\n') with lookahead, the
// way Redis 7.0's sdssplitargs walks a C string; ok is false for bad quoting.
// The guard's tokenizer (inline.go) works a byte at a time instead.
func refSplit(s []byte) (args []string, ok bool) {
	at := func(k int) byte { // 0 past the end, like the C string's NUL
		if k < len(s) {
			return s[k]
		}
		return 0
	}
	space := func(b byte) bool { return strings.IndexByte(" \t\n\v\f\r", b) >= 0 }
	hex := func(b byte) (byte, bool) {
		v, err := strconv.ParseUint(string([]byte{b}), 16, 8)
		return byte(v), err == nil && b != 0
	}
	p := 0
	for {
		for p < len(s) && space(s[p]) {
			p++
		}
		if p == len(s) {
			return args, true
		}
		cur := []byte{}
		var quote byte
		for done := false; !done; {
			ch := at(p)
			if quote != 0 {
				h1, ok1 := hex(at(p + 2))
				h2, ok2 := hex(at(p + 3))
				switch {
				case quote == '"' && ch == '\\' && at(p+1) == 'x' && ok1 && ok2:
					cur = append(cur, h1*16+h2)
					p += 3
				case quote == '"' && ch == '\\' && p+1 < len(s):
					p++
					if m := strings.IndexByte("nrtba", s[p]); m >= 0 {
						cur = append(cur, "\n\r\t\b\a"[m])
					} else {
						cur = append(cur, s[p])
					}
				case quote == '\'' && ch == '\\' && at(p+1) == '\'':
					p++
					cur = append(cur, '\'')
				case ch == quote:
					if p+1 < len(s) && !space(s[p+1]) {
						return nil, false
					}
					done = true
				case p == len(s):
					return nil, false
				default:
					cur = append(cur, ch)
				}
			} else {
				switch {
				case p == len(s) || ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t':
					done = true
				case ch == '"' || ch == '\'':
					quote = ch
				default:
					cur = append(cur, ch)
				}
			}
			if p < len(s) {
				p++
			}
		}
		args = append(args, string(cur))
	}
}
