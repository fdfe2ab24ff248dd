package resp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/redcon"
)

// ---------------------------------------------------------------------------
// TCP tests with a real redcon server

func TestNormalCommands(t *testing.T) {
	addr := startTCP(t, Limits{})
	c := dial(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, mbulk("ECHO", "hello"))
	if got, want := readN(t, br, 1), echo("ECHO", "hello"); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	io.WriteString(c, "PING\r\n")
	if got, want := readN(t, br, 1), echo("PING"); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	io.WriteString(c, mbulk("SET", "", "bin\r\n\x00"))
	if got, want := readN(t, br, 1), echo("SET", "", "bin\r\n\x00"); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestPipeline1000(t *testing.T) {
	addr := startTCP(t, Limits{})
	c := dial(t, addr)
	br := bufio.NewReader(c)
	var req, want strings.Builder
	for i := 0; i < 1000; i++ {
		args := []string{"SET", "key:" + strconv.Itoa(i), strings.Repeat("v", i%50)}
		if i%3 == 0 {
			args = []string{"GET", "key:" + strconv.Itoa(i)}
		}
		req.WriteString(mbulk(args...))
		want.WriteString(echo(args...))
	}
	go io.WriteString(c, req.String())
	if got := readN(t, br, 1000); got != want.String() {
		t.Fatalf("pipeline replies differ")
	}
}

func TestInlineQuoted(t *testing.T) {
	addr := startTCP(t, Limits{})
	c := dial(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, `SET k "hello world"`+"\r\n"+`ECHO 'it\'s' "a\tb\n"`+"\n")
	want := echo("SET", "k", "hello world") + echo("ECHO", "it's", "a\tb\n")
	if got := readN(t, br, 2); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestCrashRequest(t *testing.T) {
	addr := startTCP(t, Limits{})
	req := "*1\r\n$9223372036854775807\r\nabc\r\n" // 31 bytes
	c := dial(t, addr)
	io.WriteString(c, req)
	if got, want := readAll(c), protoReply("invalid bulk length"); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	// valid commands before it are answered first
	c = dial(t, addr)
	io.WriteString(c, mbulk("PING")+req)
	if got, want := readAll(c), echo("PING")+protoReply("invalid bulk length"); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	// the server still serves other clients
	c = dial(t, addr)
	io.WriteString(c, mbulk("PING"))
	if got := readN(t, bufio.NewReader(c), 1); got != echo("PING") {
		t.Fatalf("got %q", got)
	}
}

func TestLimitsAndErrors(t *testing.T) {
	lim := Limits{MaxBulk: 1024, MaxArgs: 8, MaxInline: 128, MaxCommand: 4096}
	addr := startTCP(t, lim)
	ping := mbulk("PING")
	for _, tc := range []struct{ in, want string }{
		{"*1\r\n$1025\r\n", protoReply("invalid bulk length")},
		{mbulk("SET", strings.Repeat("x", 1024)), echo("SET", strings.Repeat("x", 1024)) + "<open>"},
		{"*9\r\n", protoReply("invalid multibulk length")},
		{mbulk("A", "B", "C", "D", "E", "F", "G", "H"), echo("A", "B", "C", "D", "E", "F", "G", "H") + "<open>"},
		{strings.Repeat("a", 129), protoReply("too big inline request")},
		{strings.Repeat("a", 128) + "\r", protoReply("too big inline request")},
		{strings.Repeat("a", 127) + "\r\n", echo(strings.Repeat("a", 127)) + "<open>"},
		{ping + "*1\r\nX", echo("PING") + protoReply("expected '$', got 'X'")},
		{"*1\r\n\r\n", protoReply("expected '$', got ' '")},
		{"*-0\r\n", protoReply("invalid multibulk length")},
		{"*01\r\n", protoReply("invalid multibulk length")},
		{"*+1\r\n", protoReply("invalid multibulk length")},
		{"*1x\r\n", protoReply("invalid multibulk length")},
		{"*1\rX", protoReply("invalid multibulk length")},
		{"*-9223372036854775809\r\n", protoReply("invalid multibulk length")},
		{"*1\r\n$-1\r\n", protoReply("invalid bulk length")},
		{"*1\r\n$04\r\n", protoReply("invalid bulk length")},
		{"*1\r\n$\r\n", protoReply("invalid bulk length")},
		{"*1\r\n$4\r\nPINGXY", protoReply("invalid bulk length")},
		{"*1\r\n$4\r\nPING\rX", protoReply("invalid bulk length")},
		{"PING\r\nSET k \"a\"b\r\n", echo("PING") + protoReply("unbalanced quotes in request")},
		{"ECHO a\"b\"\r\n", echo("ECHO", "ab") + "<open>"},
		{"ECHO \"a\"b\r\n", protoReply("unbalanced quotes in request")},
		{"ECHO \"a\r\n", protoReply("unbalanced quotes in request")},
		{ping + ping + "*1\r\n$9223372036854775807\r\nabc\r\n", echo("PING") + echo("PING") + protoReply("invalid bulk length")},
		// MaxCommand: closed without a reply, like Redis' query buffer limit
		{ping + mbulk("SET", strings.Repeat("x", 1000), strings.Repeat("y", 1000), strings.Repeat("z", 1000), strings.Repeat("w", 1000), strings.Repeat("v", 1000)), echo("PING")},
	} {
		c := dial(t, addr)
		io.WriteString(c, tc.in)
		got := readAllFor(c, 500*time.Millisecond)
		if got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", trunc([]byte(tc.in)), trunc([]byte(got)), trunc([]byte(tc.want)))
		}
	}
}

func TestIgnoredRequests(t *testing.T) {
	addr := startTCP(t, Limits{})
	c := dial(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, "*0\r\n*-1\r\n*-5\r\n\r\n\n   \r\n  \n"+mbulk("PING"))
	if got := readN(t, br, 1); got != echo("PING") {
		t.Fatalf("got %q", got)
	}
	// split across writes, with the connection kept open
	for _, part := range []string{"*", "0", "\r", "\n", " ", " ", "\r", "\n", "*-", "1\r\n", "\r", "\n"} {
		io.WriteString(c, part)
		time.Sleep(2 * time.Millisecond)
	}
	io.WriteString(c, "PING\r\n")
	if got := readN(t, br, 1); got != echo("PING") {
		t.Fatalf("got %q", got)
	}
	// an inline line starting with spaces then '*' stays inline
	io.WriteString(c, "  *1\r\n")
	if got := readN(t, br, 1); got != echo("*1") {
		t.Fatalf("got %q", got)
	}
}

// A 2 MB command delivered one byte per write, through net.Pipe (each read
// of the server side returns exactly one byte).
func TestSlowSender2MB(t *testing.T) {
	ml := newMemListener()
	defer ml.Close()
	conns := make(chan *Conn, 1)
	closed := make(chan struct{})
	go redcon.Serve(NewListener(ml, Limits{}), echoHandler, func(conn redcon.Conn) bool {
		conns <- conn.NetConn().(*Conn)
		return true
	}, func(redcon.Conn, error) { close(closed) })
	cli, srv := net.Pipe()
	defer cli.Close()
	ml.ch <- srv
	gc := <-conns

	val := strings.Repeat("0123456789abcdef", 2<<20/16)
	req := []byte(mbulk("SET", "k", val))
	done := make(chan error, 1)
	go func() {
		for i := range req {
			if _, err := cli.Write(req[i : i+1]); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	cli.SetReadDeadline(time.Now().Add(60 * time.Second))
	got := readN(t, bufio.NewReader(cli), 1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got != echo("SET", "k", val) {
		t.Fatalf("reply differs (%d bytes)", len(got))
	}
	// redcon's readCommands recursed once per Read of the guarded conn: a
	// handful of reads for 2 MB, instead of 2M.
	cli.Close()
	<-closed
	if gc.reads > 100 {
		t.Fatalf("redcon made %d reads for one 2 MB command", gc.reads)
	}
	t.Logf("redcon reads for a 2 MB command sent 1 byte per write: %d", gc.reads)
}

// The same over TCP with TCP_NODELAY and 1-byte writes (smaller: one syscall
// per byte).
func TestSlowSenderTCP(t *testing.T) {
	addr := startTCP(t, Limits{})
	c := dial(t, addr)
	c.SetNoDelay(true)
	val := strings.Repeat("x", 64<<10)
	req := []byte(mbulk("SET", "k", val) + "PING\r\n")
	go func() {
		for i := range req {
			if _, err := c.Write(req[i : i+1]); err != nil {
				return
			}
		}
	}()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if got := readN(t, br, 2); got != echo("SET", "k", val)+echo("PING") {
		t.Fatalf("reply differs")
	}
}

// ---------------------------------------------------------------------------
// Read contract on in-memory conns

func TestReadWholeCommands(t *testing.T) {
	var in strings.Builder
	for i := 0; i < 200; i++ {
		in.WriteString(mbulk("SET", "k"+strconv.Itoa(i), strings.Repeat("v", i)))
	}
	for _, chunk := range []int{1, 7, 100, 5000} {
		gc := NewConn(newScriptConn([]byte(in.String()), fixed(chunk)), Limits{})
		out := readChecked(t, gc, func(got, _ []byte) {
			// every Read ends at a command boundary (all commands here
			// are smaller than p)
			cmds, rest := parseAll(t, got)
			if len(rest) != 0 || len(cmds) == 0 {
				t.Fatalf("chunk %d: read returned a partial command (%d cmds, %d rest)", chunk, len(cmds), len(rest))
			}
		})
		if string(out) != in.String() {
			t.Fatalf("chunk %d: stream changed", chunk)
		}
	}
}

// Pipelined inline lines come out as their multibulk forms, whole and in
// order, whatever the read sizes; a line's form larger than p is split
// across Reads, and a Read that does not fill p ends at a command boundary.
func TestReadInlinePipeline(t *testing.T) {
	var in, want strings.Builder
	boundary := map[int]bool{}
	for i := 0; i < 300; i++ {
		v := strings.Repeat("v", i)
		in.WriteString("SET\tk" + strconv.Itoa(i) + ` "` + v + `\x41"` + "\r\n")
		want.WriteString(mbulk("SET", "k"+strconv.Itoa(i), v+"A"))
		boundary[want.Len()] = true
		if i%50 == 0 {
			in.WriteString("ECHO " + strings.Repeat("a ", 3000) + "\n")
			want.WriteString(mbulk(append([]string{"ECHO"}, strings.Split(strings.Repeat("a", 3000), "")...)...))
			boundary[want.Len()] = true
		}
	}
	for _, chunk := range []int{1, 7, 100, 5000} {
		gc := NewConn(newScriptConn([]byte(in.String()), fixed(chunk)), Limits{})
		out := readChecked(t, gc, func(got, all []byte) {
			if len(got) < readCheckedSize && !boundary[len(all)] {
				t.Fatalf("chunk %d: a Read of %d bytes ended inside a command", chunk, len(got))
			}
		})
		if string(out) != want.String() {
			t.Fatalf("chunk %d: got %q", chunk, trunc(out))
		}
	}
}

// parseCmds returns the arguments of the commands redcon parses from b.
func parseCmds(t testing.TB, b []byte) [][]string {
	t.Helper()
	rd := redcon.NewReader(bytes.NewReader(b))
	var out [][]string
	for {
		cs, err := rd.ReadCommands()
		if err != nil {
			if err != io.EOF {
				t.Fatalf("redcon: %v", err)
			}
			return out
		}
		for _, c := range cs {
			var args []string
			for _, a := range c.Args {
				args = append(args, string(a))
			}
			out = append(out, args)
		}
	}
}

// parseAll splits b, made of multibulk commands only, into redcon commands
// and the unparsed rest (redcon's Raw of an inline command is its multibulk
// form, not the bytes sent).
func parseAll(t testing.TB, b []byte) ([]redcon.Command, []byte) {
	t.Helper()
	rd := redcon.NewReader(bytes.NewReader(b))
	var cmds []redcon.Command
	for {
		c, err := rd.ReadCommands()
		if err != nil {
			break
		}
		cmds = append(cmds, c...)
	}
	// count consumed bytes
	var n int
	for _, c := range cmds {
		n += len(c.Raw)
	}
	return cmds, b[n:]
}

func TestSmallReads(t *testing.T) {
	in := "  \r\n*0\r\n" + mbulk("GET", "a") + "  PING  \r\n" + mbulk("SET", "b", strings.Repeat("z", 300))
	want := fmt.Sprintf("%q", [][]string{{"GET", "a"}, {"PING"}, {"SET", "b", strings.Repeat("z", 300)}})
	for _, size := range []int{1, 2, 3, 63, 64, 65, 4096} {
		gc := NewConn(newScriptConn([]byte(in), fixed(3)), Limits{})
		var out []byte
		p := make([]byte, size)
		for {
			n, err := gc.Read(p)
			if n == 0 && err == nil {
				t.Fatal("Read returned 0, nil")
			}
			out = append(out, p[:n]...)
			if err != nil {
				break
			}
		}
		if got := fmt.Sprintf("%q", parseCmds(t, out)); got != want {
			t.Fatalf("p=%d: got %q from %q", size, got, out)
		}
	}
}

// A long run of blanks before an inline command is consumed, not returned
// (a '\r' among them is a blank, as in Redis' sdssplitargs), and still counts
// towards MaxInline.
func TestBlankPrefix(t *testing.T) {
	in := strings.Repeat(" ", 10000) + "\r\n" + strings.Repeat(" ", 5000) + "\rx\r\n"
	gc := NewConn(newScriptConn([]byte(in), fixed(100)), Limits{})
	b, err := io.ReadAll(gc)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != mbulk("x") {
		t.Fatalf("got %q", b)
	}
	gc = NewConn(newScriptConn([]byte(strings.Repeat(" ", 200)), fixed(7)), Limits{MaxInline: 150})
	sc := gc.Conn.(*scriptConn)
	if _, err := io.ReadAll(gc); !errors.Is(err, ErrProtocol) || sc.written() != protoReply("too big inline request") {
		t.Fatalf("err %v, wrote %q", err, sc.written())
	}
}

// Documents redcon's own behaviour that the guard works around.
func TestRedconBehaviour(t *testing.T) {
	// empty lines: ignored, no reply
	cmds := parseCmds(t, []byte("\r\n\n   \r\n*1\r\n$4\r\nPING\r\n"))
	if len(cmds) != 1 || cmds[0][0] != "PING" {
		t.Fatalf("redcon on empty lines: %v", cmds)
	}
	// *0 is a protocol error in redcon
	if _, err := redcon.NewReader(bytes.NewReader([]byte("*0\r\n"))).ReadCommands(); err == nil {
		t.Fatal("redcon accepted *0")
	}
	// a steady pipelined stream whose reads end mid-command makes redcon's
	// buffer double again and again; the guard's whole-command reads keep it
	// at its initial 4 KiB (8 KiB at most).
	var buf bytes.Buffer
	for buf.Len() < 8<<20 {
		fmt.Fprintf(&buf, "*3\r\n$3\r\nSET\r\n$6\r\nkey:%02d\r\n$20\r\n%020d\r\n", buf.Len()%97, buf.Len())
	}
	maxp := func(r io.Reader) int {
		rec := &recReader{r: r}
		rd := redcon.NewReader(rec)
		for {
			if _, err := rd.ReadCommands(); err != nil {
				break
			}
		}
		return rec.maxp
	}
	raw := maxp(bytes.NewReader(buf.Bytes()))
	guarded := maxp(NewConn(newScriptConn(buf.Bytes(), fixed(1<<20)), Limits{}))
	t.Logf("largest redcon read buffer for an 8 MiB stream: unguarded %d, guarded %d", raw, guarded)
	if guarded > 8192 {
		t.Fatalf("guarded redcon buffer grew to %d", guarded)
	}
}

type recReader struct {
	r    io.Reader
	maxp int
}

func (r *recReader) Read(p []byte) (int, error) {
	if len(p) > r.maxp {
		r.maxp = len(p)
	}
	return r.r.Read(p)
}
