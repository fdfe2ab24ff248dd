package server

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// redisAddr is the throwaway upstream Redis every test in this package uses.
var redisAddr string

func TestMain(m *testing.M) {
	r, err := testenv.StartRedis()
	if err != nil {
		fmt.Fprintln(os.Stderr, "server tests need redis-server:", err)
		os.Exit(1)
	}
	redisAddr = r.Addr
	code := m.Run()
	r.Stop()
	stopTestCluster()
	os.Exit(code)
}

// startProxy runs a proxy in front of the test Redis and returns its
// address; edit adjusts the configuration first.
func startProxy(t testing.TB, edit func(*config.Config)) string {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream.Addr = redisAddr
	if edit != nil {
		edit(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.order.slow = raceSlow
	go srv.Serve(l)
	lastServer = srv
	t.Cleanup(func() {
		srv.Close()
		if n := srv.counts.panics.Load(); n > 0 {
			t.Errorf("the proxy recovered %d panics serving clients (run with -v for the stack)", n)
		}
	})
	return l.Addr().String()
}

// rawConn is a RESP client that returns replies as the exact bytes on the
// wire, so tests can compare the proxy with Redis byte for byte.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// encode builds a RESP request.
func encode(args ...string) []byte {
	b := []byte("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b = append(b, "$"+strconv.Itoa(len(a))+"\r\n"+a+"\r\n"...)
	}
	return b
}

// do sends one command and returns its raw reply.
func (r *rawConn) do(args ...string) string {
	r.t.Helper()
	r.send(encode(args...))
	return r.read()
}

func (r *rawConn) send(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// read returns the next complete reply, failing the test after 10 s.
func (r *rawConn) read() string {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	s, err := readReply(r.br)
	if err != nil {
		r.t.Fatalf("reading reply: %v (got %q)", err, s)
	}
	return s
}

// readReply reads one RESP2 or RESP3 value and returns its exact bytes.
func readReply(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return line, err
	}
	if len(line) < 3 {
		return line, fmt.Errorf("short line %q", line)
	}
	body := strings.TrimSuffix(line[1:], "\r\n")
	var sb strings.Builder
	sb.WriteString(line)
	switch line[0] {
	case '+', '-', ':', ',', '_', '#', '(':
		return line, nil
	case '$', '=', '!':
		n, _ := strconv.Atoi(body)
		if n < 0 {
			return line, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return line, err
		}
		sb.Write(buf)
		return sb.String(), nil
	case '*', '~', '>', '%', '|':
		n, _ := strconv.Atoi(body)
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		for i := 0; i < n; i++ {
			s, err := readReply(br)
			sb.WriteString(s)
			if err != nil {
				return sb.String(), err
			}
		}
		if line[0] == '|' { // an attribute precedes the real reply
			s, err := readReply(br)
			sb.WriteString(s)
			return sb.String(), err
		}
		return sb.String(), nil
	}
	return line, fmt.Errorf("unknown type %q", line)
}

// expectClosed asserts the server closes the connection.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := r.br.ReadByte(); err == nil {
		r.t.Fatalf("connection still open, got byte %q", b)
	}
}

// lastServer is the server startProxy started last (tests read its admin
// address).
var lastServer *Server

func lastAdminAddr(t testing.TB) string {
	t.Helper()
	if lastServer == nil || lastServer.AdminAddr() == "" {
		t.Fatal("no admin listener")
	}
	return lastServer.AdminAddr()
}
