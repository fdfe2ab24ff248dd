package resp

import (
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/testenv"
	"github.com/tidwall/redcon"
)

// listHandler serves the few list commands the inline comparison needs, with
// Redis' replies, over one list per connection: RPUSH key v... (appends
// every argument after the key), LRANGE key 0 -1, DEL key and QUIT.
func listHandler(conn redcon.Conn, cmd redcon.Command) {
	list, _ := conn.Context().([][]byte)
	switch strings.ToUpper(string(cmd.Args[0])) {
	case "RPUSH":
		if len(cmd.Args) < 3 {
			conn.WriteError("ERR wrong number of arguments for 'rpush' command")
			return
		}
		for _, a := range cmd.Args[2:] {
			list = append(list, append([]byte(nil), a...))
		}
		conn.SetContext(list)
		conn.WriteInt(len(list))
	case "LRANGE":
		conn.WriteArray(len(list))
		for _, v := range list {
			conn.WriteBulk(v)
		}
	case "DEL":
		if len(list) > 0 {
			conn.WriteInt(1)
		} else {
			conn.WriteInt(0)
		}
		conn.SetContext(nil)
	case "QUIT":
		conn.WriteString("OK")
		conn.Close()
	default:
		conn.WriteError("ERR unknown command '" + string(cmd.Args[0]) + "'")
	}
}

// stored is the reply stream of an RPUSH of vals followed by listTail.
func stored(vals ...string) string {
	return ":" + strconv.Itoa(len(vals)) + "\r\n" + echo(vals...) + ":1\r\n+OK\r\n"
}

// listTail follows every inline line: LRANGE, DEL and QUIT as multibulk
// commands (QUIT ends the exchange promptly when nothing went wrong).
func listTail(key string) string {
	return mbulk("LRANGE", key, "0", "-1") + mbulk("DEL", key) + mbulk("QUIT")
}

// exchange sends in to addr and returns everything the server answers
// until it closes ("<open>" appended if it is still open after wait).
func exchange(t *testing.T, addr, in string, wait time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go io.WriteString(c, in)
	return readAllFor(c, wait)
}

// TestInlineLikeRedis sends the same inline lines to a real redis-server and
// to a redcon server behind the guard, and wants byte-identical reply
// streams: the arguments Redis' sdssplitargs makes of a line are the ones
// redcon gets, and bad lines get Redis' error and a closed connection.
func TestInlineLikeRedis(t *testing.T) {
	rdb, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rdb.Stop)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go redcon.Serve(NewListener(l, Limits{}), listHandler, nil, nil)
	guard := l.Addr().String()

	const (
		unbalanced = "-ERR Protocol error: unbalanced quotes in request\r\n"
		tooBig     = "-ERR Protocol error: too big inline request\r\n"
		arity      = "-ERR wrong number of arguments for 'rpush' command\r\n*0\r\n:0\r\n+OK\r\n"
	)
	long := func(n int) string { return strings.Repeat("v", n) }
	// "RPUSH kN " is 9 bytes for N < 10, 10 bytes below 100.
	for i, tc := range []struct {
		args string // after "RPUSH k<i> "; the line ends in "\r\n" unless raw
		raw  bool   // args is the whole input
		want string // the expected reply stream ("" checks equality only)
		wait time.Duration
	}{
		{args: `a b c`, want: stored("a", "b", "c")},
		{args: "a\tb\t\tc", want: stored("a", "b", "c")},
		{args: "a\x0bb \x0b c\x0c", want: stored("a\x0bb", "c\x0c")},
		{args: "\x0b\x0c a \r b\r", want: stored("a", "b")},
		{args: "a   ", want: stored("a")},
		{args: `"c\x41\n"`, want: stored("cA\n")},
		{args: `"\xfF\x00\x7e"`, want: stored("\xff\x00~")},
		{args: `"\x4" "\xZZ" "\x4g" "\x" "x\x41\x4"`, want: stored("x4", "xZZ", "x4g", "x", "xAx4")},
		{args: `"\n\r\t\b\a\q\\\"\'"`, want: stored("\n\r\t\b\aq\\\"'")},
		{args: `\x41 a\b \\`, want: stored(`\x41`, `a\b`, `\\`)},
		{args: `"\\x41"`, want: stored(`\x41`)},
		{args: `'it\'s' '\n\x41' '"'`, want: stored("it's", `\n\x41`, `"`)},
		{args: `'a\b\\c'`, want: stored(`a\b\\c`)},
		{args: `"" '' """"`, want: unbalanced},
		{args: `"" ''`, want: stored("", "")},
		{args: `a"b c" d'e f' g""`, want: stored("ab c", "de f", "g")},
		{args: "\"a\"\tb \"c\"\x0bd 'e'\x0cf", want: stored("a", "b", "c", "d", "e", "f")},
		{args: "\"x\ry\" x\ry", want: stored("x\ry", "x", "y")},
		{args: "\xff\xfe \"\xc3\xa9\"", want: stored("\xff\xfe", "\xc3\xa9")},
		{args: `"a"b`, want: unbalanced},
		{args: `'a'b`, want: unbalanced},
		{args: `a"b"c`, want: unbalanced},
		{args: `''x`, want: unbalanced},
		{args: `"a`, want: unbalanced},
		{args: `'a`, want: unbalanced},
		{args: `"a\"`, want: unbalanced},
		{args: `"a\`, want: unbalanced},
		{args: `'a\'`, want: unbalanced},
		{args: `'a\\'`, want: unbalanced},
		{args: `"\x4`, want: unbalanced},
		{args: `"a" "b`, want: unbalanced},
		{args: "", want: arity},
		{args: " \t\x0b\x0c\r ", want: arity},
		{args: strings.Repeat("a ", 20000), want: stored(strings.Split(strings.Repeat("a", 20000), "")...)},
		{args: strings.Repeat(`"" `, 10000)},
		{args: strings.Repeat(`"\x41\x42" `, 5000)},
		// line ends: "\n" alone, and "\r\n" (a quote may hold a '\r')
		{raw: true, args: "RPUSH k a \"b\"\n" + listTail("k"), want: stored("a", "b")},
		{raw: true, args: "RPUSH k \"a\r\"\r\n" + listTail("k"), want: stored("a\r")},
		{raw: true, args: "RPUSH k \"a\r\n" + listTail("k"), want: unbalanced},
		{raw: true, args: "\x0b \"RPUSH\" k 'a'\r\n" + listTail("k"), want: stored("a")},
		// blank lines: no reply
		{raw: true, args: "\r\n\n \t\x0b\x0c\r\n\"RPUSH\" k a\r\n" + listTail("k"), want: stored("a")},
		// a NUL makes the line endless: no reply, the connection stays open
		{raw: true, args: "RPUSH k a\x00b\r\n" + listTail("k"), want: "<open>", wait: 300 * time.Millisecond},
		{raw: true, args: "RPUSH k \"\x00\"\r\n" + listTail("k"), want: "<open>", wait: 300 * time.Millisecond},
		// ... until more than 64 KiB follow the line's start, '\n's included
		{raw: true, args: "RPUSH k a\x00\r\n" + long(65534-10), want: "<open>", wait: 300 * time.Millisecond},
		{raw: true, args: "RPUSH k a\x00\r\n" + long(65535-10), want: tooBig},
		// the inline limit: 65536 bytes before the '\n' (a '\r' counts)
		{raw: true, args: "RPUSH k " + long(65536-8) + "\n" + listTail("k"), want: stored(long(65536 - 8))},
		{raw: true, args: "RPUSH k " + long(65535-8) + "\r\n" + listTail("k"), want: stored(long(65535 - 8))},
		{raw: true, args: "RPUSH k " + long(65536-8), want: "<open>", wait: 300 * time.Millisecond},
		{raw: true, args: "RPUSH k " + long(65537-8), want: tooBig},
		{raw: true, args: "RPUSH k " + long(65536-8) + "\r", want: tooBig},
		{raw: true, args: "RPUSH k \"" + long(70000), want: tooBig},
	} {
		key := "k" + strconv.Itoa(i)
		in := tc.args
		if !tc.raw {
			in = "RPUSH " + key + " " + tc.args + "\r\n" + listTail(key)
		}
		wait := tc.wait
		if wait == 0 {
			wait = 5 * time.Second
		}
		fromRedis := exchange(t, rdb.Addr, in, wait)
		fromGuard := exchange(t, guard, in, wait)
		if tc.want != "" && fromRedis != tc.want {
			t.Errorf("case %d %q: redis-server answered\n %q\nwant %q", i, trunc([]byte(in)), trunc([]byte(fromRedis)), trunc([]byte(tc.want)))
		}
		if fromGuard != fromRedis {
			t.Errorf("case %d %q: guard answered\n %q\nredis %q", i, trunc([]byte(in)), trunc([]byte(fromGuard)), trunc([]byte(fromRedis)))
		}
	}
}
