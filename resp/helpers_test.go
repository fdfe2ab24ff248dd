package resp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/redcon"
)

// Helpers shared by the package's tests: redcon servers on guarded
// listeners, scripted and in-memory conns, RESP reply readers.

// echoHandler answers every command with an array of its arguments. WAIT ms
// blocks until the client closes (via WatchClose) or ms milliseconds pass and
// reports the outcome on waitResult.
func echoHandler(conn redcon.Conn, cmd redcon.Command) {
	defer func() {
		if r := recover(); r != nil {
			conn.WriteError(fmt.Sprint("ERR panic: ", r))
		}
	}()
	if len(cmd.Args) == 2 && strings.EqualFold(string(cmd.Args[0]), "WAIT") {
		ms, _ := strconv.Atoi(string(cmd.Args[1]))
		gc := conn.NetConn().(*Conn)
		stop := gc.WatchClose()
		select {
		case <-gc.Closed():
			waitResult <- "closed"
		case <-time.After(time.Duration(ms) * time.Millisecond):
			waitResult <- "timeout"
		}
		stop()
		conn.WriteString("OK")
		return
	}
	conn.WriteArray(len(cmd.Args))
	for _, a := range cmd.Args {
		conn.WriteBulk(a)
	}
}

var waitResult = make(chan string, 10)

// echo is the reply echoHandler writes for args.
func echo(args ...string) string {
	var b strings.Builder
	b.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b.WriteString("$" + strconv.Itoa(len(a)) + "\r\n" + a + "\r\n")
	}
	return b.String()
}

// mbulk encodes args as a multibulk command.
func mbulk(args ...string) string { return echo(args...) }

func protoReply(msg string) string { return "-ERR Protocol error: " + msg + "\r\n" }

// startTCP serves echoHandler on a guarded loopback listener.
func startTCP(t testing.TB, lim Limits) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go redcon.Serve(NewListener(l, lim), echoHandler, nil, nil)
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readAll reads until the server closes (or a 5 s deadline, reported as
// "<open>").
func readAll(c net.Conn) string { return readAllFor(c, 5*time.Second) }

func readAllFor(c net.Conn, d time.Duration) string {
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	if err != nil && isTimeout(err) {
		return string(b) + "<open>"
	}
	// EOF, or a reset: a server that closes with unread input sends RST
	return string(b)
}

// readN reads n RESP replies.
func readN(t testing.TB, br *bufio.Reader, n int) string {
	t.Helper()
	var out []byte
	for i := 0; i < n; i++ {
		r, err := readReply(br)
		if err != nil {
			t.Fatalf("reply %d: %v (got so far %q)", i, err, trunc(out))
		}
		out = append(out, r...)
	}
	return string(out)
}

func trunc(b []byte) []byte {
	if len(b) > 200 {
		return append(b[:200:200], "..."...)
	}
	return b
}

// readReply reads one RESP2 reply and returns its bytes.
func readReply(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadBytes('\n')
	if err != nil {
		return line, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return line, fmt.Errorf("bad line %q", line)
	}
	switch line[0] {
	case '+', '-', ':':
		return line, nil
	case '$':
		n, err := strconv.Atoi(string(line[1 : len(line)-2]))
		if err != nil || n < -1 {
			return line, fmt.Errorf("bad bulk header %q", line)
		}
		if n == -1 {
			return line, nil
		}
		body := make([]byte, n+2)
		if _, err := io.ReadFull(br, body); err != nil {
			return line, err
		}
		if body[n] != '\r' || body[n+1] != '\n' {
			return line, fmt.Errorf("bad bulk end")
		}
		return append(line, body...), nil
	case '*':
		n, err := strconv.Atoi(string(line[1 : len(line)-2]))
		if err != nil || n < -1 {
			return line, fmt.Errorf("bad array header %q", line)
		}
		for i := 0; i < n; i++ {
			r, err := readReply(br)
			line = append(line, r...)
			if err != nil {
				return line, err
			}
		}
		return line, nil
	}
	return line, fmt.Errorf("bad reply type %q", line)
}

// memListener is an in-memory net.Listener fed through its channel.
type memListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newMemListener() *memListener {
	return &memListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *memListener) Addr() net.Addr { return memAddr{} }

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

// scriptConn is a net.Conn whose reads deliver data in the given chunk
// sizes and then io.EOF; writes are collected.
type scriptConn struct {
	data   []byte
	sizes  func() int // next chunk size (>= 1)
	mu     sync.Mutex
	out    bytes.Buffer
	reads  int
	closed chan struct{}
	once   sync.Once
}

func newScriptConn(data []byte, sizes func() int) *scriptConn {
	return &scriptConn{data: data, sizes: sizes, closed: make(chan struct{})}
}

func (s *scriptConn) Read(p []byte) (int, error) {
	select {
	case <-s.closed:
		return 0, net.ErrClosed
	default:
	}
	s.reads++
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := s.sizes()
	if n > len(p) {
		n = len(p)
	}
	n = copy(p[:n], s.data)
	s.data = s.data[n:]
	return n, nil
}

func (s *scriptConn) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *scriptConn) written() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (s *scriptConn) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

func (s *scriptConn) LocalAddr() net.Addr                { return memAddr{} }
func (s *scriptConn) RemoteAddr() net.Addr               { return memAddr{} }
func (s *scriptConn) SetDeadline(t time.Time) error      { return nil }
func (s *scriptConn) SetReadDeadline(t time.Time) error  { return nil }
func (s *scriptConn) SetWriteDeadline(t time.Time) error { return nil }

func fixed(n int) func() int { return func() int { return n } }

// readCheckedSize is the p of every Read that readChecked makes.
const readCheckedSize = 4096

// readChecked reads gc to EOF and returns all it read. After every Read that
// returns bytes it calls check with them and with everything so far. A Read
// returning 0, nil or an error other than io.EOF fails the test.
func readChecked(t *testing.T, gc *Conn, check func(got, all []byte)) []byte {
	t.Helper()
	var out []byte
	p := make([]byte, readCheckedSize)
	for {
		n, err := gc.Read(p)
		if n == 0 && err == nil {
			t.Fatal("Read returned 0, nil")
		}
		out = append(out, p[:n]...)
		if n > 0 {
			check(p[:n], out)
		}
		if err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			return out
		}
	}
}
