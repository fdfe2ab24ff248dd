package server

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// exchange writes cmds as one pipeline, then ECHO of a marker, and returns
// every byte that came back before the marker's reply: the exact bytes of
// the replies, pushes and attributes of cmds, however many frames they
// are. cmds must leave the connection outside MULTI and outside RESP2's
// pub/sub context, so that the ECHO is answered.
func (r *rawConn) exchange(cmds ...[]string) string {
	r.t.Helper()
	const marker = "respite-exchange-marker"
	var req []byte
	for _, cmd := range cmds {
		req = append(req, encode(cmd...)...)
	}
	r.send(append(req, encode("ECHO", marker)...))
	end := []byte("$" + strconv.Itoa(len(marker)) + "\r\n" + marker + "\r\n")
	var got []byte
	buf := make([]byte, 64<<10)
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !bytes.HasSuffix(got, end) {
		n, err := r.br.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			r.t.Fatalf("exchange %v: %v after %q", cmds, err, got)
		}
	}
	return string(got[:len(got)-len(end)])
}

// debugProtocolTypes are the reply types DEBUG PROTOCOL produces
// (src/debug.c): every RESP3 type, each with its RESP2 downgrade.
var debugProtocolTypes = []string{"string", "integer", "double", "bignum", "null", "array", "set", "map",
	"attrib", "push", "verbatim", "true", "false"}

// Every RESP3 reply type (map, set, double, big number, verbatim string,
// attribute, push, null, booleans) and its RESP2 form reaches the client
// byte for byte as Redis sends it, on a plain (shared) session and on
// pinned ones: after SELECT 9, while WATCHing, subscribed (RESP3), and
// inside MULTI/EXEC (where Redis writes a push in the middle of EXEC's
// array). HELLO comes
// first in one case and after SELECT in another, so a pinned connection
// switched to RESP3 midway is covered. Each case ends with the session
// back on a plain command, so a reply read short or long would show as a
// difference in the next one.
func TestResp3ReplyTypesByteForByte(t *testing.T) {
	r, err := testenv.StartRedis("--enable-debug-command", "local")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	proxy := startProxy(t, func(c *config.Config) { c.Upstream.Addr = r.Addr })
	if got := dialRaw(t, r.Addr).do("DEBUG", "PROTOCOL", "true"); got != ":1\r\n" {
		t.Fatalf("DEBUG PROTOCOL on the throwaway Redis: %q (is --enable-debug-command local taken?)", got)
	}

	debug := func(typ string) []string { return []string{"DEBUG", "PROTOCOL", typ} }
	var each, multi [][]string
	for _, typ := range debugProtocolTypes {
		each = append(each, debug(typ))
	}
	multi = append(multi, []string{"MULTI"})
	multi = append(multi, each...)
	multi = append(multi, []string{"EXEC"})

	type session struct {
		name  string
		setup [][]string // replies compared too, but for HELLO's (the proxy's id)
		proto string     // HELLO's argument, sent where the setup has "HELLO"
		tail  [][]string // leaves the session as it found it
	}
	var cases []session
	for _, proto := range []string{"3", "2"} {
		cases = append(cases,
			session{name: "plain", proto: proto, setup: [][]string{{"HELLO"}}},
			session{name: "SELECT 9 then HELLO", proto: proto, setup: [][]string{{"SELECT", "9"}, {"HELLO"}}, tail: [][]string{{"SELECT", "0"}}},
			session{name: "HELLO then SELECT 9", proto: proto, setup: [][]string{{"HELLO"}, {"SELECT", "9"}}, tail: [][]string{{"SELECT", "0"}}},
			session{name: "WATCH", proto: proto, setup: [][]string{{"HELLO"}, {"WATCH", "resp3:w"}}, tail: [][]string{{"UNWATCH"}}},
		)
	}
	// Subscribed (the relayed session), where RESP3 takes any command.
	cases = append(cases, session{name: "SUBSCRIBE", proto: "3", setup: [][]string{{"HELLO"}, {"SUBSCRIBE", "resp3:c"}}, tail: [][]string{{"UNSUBSCRIBE"}}})
	for _, tc := range cases {
		name := tc.name + " RESP" + tc.proto
		var conns [2]*rawConn
		var out [2][]string
		for i, addr := range []string{r.Addr, proxy} {
			c := dialRaw(t, addr)
			conns[i] = c
			for _, cmd := range tc.setup {
				if cmd[0] == "HELLO" {
					got := c.do("HELLO", tc.proto)
					if !strings.Contains(got, "$5\r\nproto\r\n:"+tc.proto+"\r\n") {
						t.Fatalf("%s: HELLO %s = %q", name, tc.proto, got)
					}
					continue
				}
				out[i] = append(out[i], c.exchange(cmd))
			}
			for _, cmd := range each {
				out[i] = append(out[i], c.exchange(cmd))
			}
			out[i] = append(out[i], c.exchange(multi...))
			// All of them in one pipeline, then a plain command.
			out[i] = append(out[i], c.exchange(append(append([][]string(nil), each...), []string{"PING"})...))
			out[i] = append(out[i], c.exchange(append([][]string{{"GET", "resp3:none"}}, tc.tail...)...))
		}
		for j := range out[0] {
			label := labelOf(j, len(tc.setup)-countHello(tc.setup))
			if out[0][j] != out[1][j] {
				t.Errorf("%s, %s: Redis %q, proxy %q", name, label, out[0][j], out[1][j])
			}
		}
		if n := len(out[1]); n != len(tc.setup)-countHello(tc.setup)+len(each)+3 {
			t.Fatalf("%s: %d exchanges", name, n)
		}
		// The RESP3 replies really are RESP3 (so the comparison is not of
		// two RESP2 streams).
		if tc.proto == "3" {
			k := len(tc.setup) - countHello(tc.setup)
			for j, want := range map[string]string{"map": "%3\r\n", "set": "~3\r\n", "double": ",3.141\r\n",
				"bignum": "(1234567", "null": "_\r\n", "attrib": "|1\r\n", "push": ">2\r\n", "verbatim": "=29\r\ntxt:", "true": "#t\r\n"} {
				i := indexOf(debugProtocolTypes, j)
				if got := out[1][k+i]; !strings.HasPrefix(got, want) {
					t.Errorf("%s: DEBUG PROTOCOL %s through the proxy = %q, want it to start %q", name, j, got, want)
				}
			}
		}
		for _, c := range conns {
			c.c.Close()
		}
	}
}

func countHello(cmds [][]string) int {
	n := 0
	for _, c := range cmds {
		if c[0] == "HELLO" {
			n++
		}
	}
	return n
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// labelOf names exchange j of a case with nSetup compared setup steps.
func labelOf(j, nSetup int) string {
	types := debugProtocolTypes
	switch {
	case j < nSetup:
		return "setup"
	case j < nSetup+len(types):
		return "DEBUG PROTOCOL " + types[j-nSetup]
	case j == nSetup+len(types):
		return "MULTI of every type"
	case j == nSetup+len(types)+1:
		return "pipeline of every type"
	}
	return "plain command after"
}
