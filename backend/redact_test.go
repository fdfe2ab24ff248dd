package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/respite/respite/internal/testenv"
)

// clientSafe fails the test if err's text (what a client or /readyz
// sees) has any connection parameter; secrets are the DSN's own parts.
func clientSafe(t *testing.T, what string, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	msg := err.Error()
	for _, s := range append([]string{"user=", "host=", "database=", "password", "127.0.0.1", pg.DSN, strconv.Itoa(pg.Port)}, secrets...) {
		if strings.Contains(msg, s) {
			t.Errorf("%s: error %q contains %q", what, msg, s)
		}
	}
}

func TestErrorsHideConnection(t *testing.T) {
	ctx := ctxT(t)

	// Nothing listens on the port.
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ps := strconv.Itoa(port)
	dsn := fmt.Sprintf("postgres://respite_secret_user:hunter2pw@127.0.0.1:%d/secretdb?sslmode=disable", port)
	secrets := []string{dsn, ps, "respite_secret_user", "hunter2pw", "secretdb"}
	closed := openWith(t, dsn, Options{})
	err = closed.Ping(ctx)
	clientSafe(t, "Ping on a closed port", err, secrets...)
	if err.Error() != "postgres: cannot connect: connection refused" || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Ping on a closed port = %v", err)
	}
	if d := Detail(err); !strings.Contains(d, "user=respite_secret_user") || !strings.Contains(d, ps) || strings.Contains(d, "hunter2pw") {
		t.Errorf("Detail = %s", d)
	}
	_, err = closed.Describe(ctx, "users", "id", "")
	clientSafe(t, "Describe on a closed port", err, secrets...)
	if err.Error() != `table "users": postgres: cannot connect: connection refused` {
		t.Errorf("Describe on a closed port = %v", err)
	}
	clientSafe(t, "Setup on a closed port", Setup(ctx, dsn), secrets...)
	if _, err := closed.Begin(ctx); err == nil || err.Error() != "postgres: cannot connect: connection refused" {
		t.Errorf("Begin on a closed port = %v", err)
	}

	// A DSN that cannot be parsed.
	bad := "postgres://respite_secret_user:hunter2pw@127.0.0.1:notaport/secretdb"
	_, err = Open(ctx, bad, 1, 1)
	clientSafe(t, "Open with a bad port", err, bad, "hunter2pw", "secretdb", "respite_secret_user")
	if err.Error() != "postgres: invalid postgres.dsn: invalid port" || strings.Contains(Detail(err), "hunter2pw") {
		t.Errorf("Open with a bad port = %v [%s]", err, Detail(err))
	}

	// A database that does not exist.
	u, err := url.Parse(pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/secretdb"
	nodb := openWith(t, u.String(), Options{})
	err = nodb.Ping(ctx)
	clientSafe(t, "Ping of a missing database", err, "secretdb")
	if err.Error() != "postgres: cannot connect: database does not exist (SQLSTATE 3D000)" {
		t.Errorf("Ping of a missing database = %v", err)
	}
	if !strings.Contains(Detail(err), `database "secretdb" does not exist`) {
		t.Errorf("Detail = %s", Detail(err))
	}

	// A wrong password: the role needs password authentication, which
	// the test server (trust for everyone) gets for it in pg_hba.conf.
	exec(t, `CREATE ROLE respite_pw LOGIN PASSWORD 'right-secret-1'`)
	hba := filepath.Join(pg.Dir, "data", "pg_hba.conf")
	conf, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, append([]byte("host all respite_pw 127.0.0.1/32 scram-sha-256\n"), conf...), 0o600); err != nil {
		t.Fatal(err)
	}
	exec(t, `SELECT pg_reload_conf()`)
	wrong := openWith(t, dsnAs(t, "respite_pw", "wrong-secret-2", nil), Options{})
	deadline := time.Now().Add(10 * time.Second)
	for err = wrong.Ping(ctx); err == nil && time.Now().Before(deadline); err = wrong.Ping(ctx) {
		wrong.load.Reset() // the reload is asynchronous: drop the connection trust let in
		wrong.flush.Reset()
		time.Sleep(20 * time.Millisecond)
	}
	clientSafe(t, "Ping with a wrong password", err, "respite_pw", "wrong-secret-2")
	if err == nil || err.Error() != "postgres: cannot connect: authentication failed (SQLSTATE 28P01)" {
		t.Errorf("Ping with a wrong password = %v", err)
	}
	if d := Detail(err); !strings.Contains(d, `password authentication failed for user "respite_pw"`) || !strings.Contains(d, "user=respite_pw") {
		t.Errorf("Detail = %s", d)
	}
	right := openWith(t, dsnAs(t, "respite_pw", "right-secret-1", nil), Options{})
	if err := right.Ping(ctx); err != nil {
		t.Errorf("Ping with the right password: %v", Detail(err))
	}
}

// forwarder relays TCP connections to PostgreSQL until cut, which closes
// the listener and every relayed connection: PostgreSQL going away under
// open connections.
type forwarder struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startForwarder(t *testing.T, target string) *forwarder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln}
	t.Cleanup(f.cut)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, u)
			f.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return f
}

func (f *forwarder) port() int { return f.ln.Addr().(*net.TCPAddr).Port }

func (f *forwarder) cut() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a clean close
		}
		c.Close()
	}
	f.conns = nil
}

// Connections lost in the middle of the session: the errors of every
// operation name neither end of the connection.
func TestLostConnectionHidesAddresses(t *testing.T) {
	ctx := ctxT(t)
	fw := startForwarder(t, net.JoinHostPort(pg.Host, strconv.Itoa(pg.Port)))
	fp := strconv.Itoa(fw.port())
	dsn := strings.Replace(pg.DSN, ":"+strconv.Itoa(pg.Port)+"/", ":"+fp+"/", 1)
	lost := openWith(t, dsn, Options{LoadConns: 2, FlushConns: 1})
	stock, err := lost.Describe(ctx, "products", "sku", "stock")
	if err != nil {
		t.Fatal(err)
	}
	q := lost.Pool()
	if err := stock.WriteValue(ctx, q, "lost", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := stock.Flush(ctx, "lost", []Entry{{"lost", sp("2"), 1}}); err != nil {
		t.Fatal(err)
	}
	tx, err := lost.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fw.cut()
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _, err = stock.LoadValue(short, tx, "lost")
	clientSafe(t, "LoadValue in a transaction", err, fp, dsn)
	_, _, err = stock.LoadValue(short, q, "lost")
	clientSafe(t, "LoadValue", err, fp, dsn)
	clientSafe(t, "WriteValue", stock.WriteValue(short, q, "lost", "3"), fp, dsn)
	_, err = stock.Flush(short, "lost", []Entry{{"lost", sp("4"), 2}})
	clientSafe(t, "Flush", err, fp, dsn)
	clientSafe(t, "Ping", lost.Ping(short), fp, dsn)
	clientSafe(t, "Commit", Redact(tx.Commit(short)), fp, dsn)
	t.Logf("after the cut: %v / log: %s", err, Detail(err))
}
