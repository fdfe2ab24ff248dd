//go:build linux

package server

import (
	"net"
	"runtime"
	"testing"

	"github.com/respite/respite/resp"
)

// TestUnreadFindsClientsWithoutTicket: a client whose command sits
// unread in its socket, or read and not yet claimed, is one a pinned
// batch waits for (order.go); once it claims its batch it is settled, and
// a client with nothing sent is never waited for.
func TestUnreadFindsClientsWithoutTicket(t *testing.T) {
	u := newUnread()
	defer u.close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dial := func(id int64) (*resp.Conn, net.Conn) {
		cl, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		gc := resp.NewConn(sc, resp.Limits{Arriving: &u.arriving})
		t.Cleanup(func() { cl.Close(); gc.Close() })
		u.add(id, gc, socketFD(gc))
		return gc, cl
	}
	g1, c1 := dial(1)
	dial(2)
	if got := u.of(3, nil); len(got) != 0 {
		t.Fatalf("nothing sent, yet waiting for %v", got)
	}
	c1.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	var exp []arriving
	for range 1000 { // the bytes cross loopback
		if exp = u.of(3, nil); len(exp) > 0 {
			break
		}
		runtime.Gosched()
	}
	if len(exp) != 1 || exp[0].id != 1 || exp[0].state != resp.ReadWaiting {
		t.Fatalf("command unread in client 1's socket: waiting for %+v, want client 1 waiting", exp)
	}
	if got := u.of(1, nil); len(got) != 0 {
		t.Fatalf("a client waits for itself: %+v", got)
	}
	buf := make([]byte, 256)
	if _, err := g1.Read(buf); err != nil {
		t.Fatal(err)
	}
	if settled(exp) {
		t.Fatal("client 1 read its command but has not claimed it: settled")
	}
	if got := u.of(3, nil); len(got) != 1 || got[0].state != resp.ReadUnclaimed {
		t.Fatalf("read, unclaimed: waiting for %+v, want client 1 unclaimed", got)
	}
	g1.Claim()
	if !settled(exp) {
		t.Fatal("client 1 claimed its command: not settled")
	}
	if got := u.of(3, nil); len(got) != 0 {
		t.Fatalf("all claimed, yet waiting for %+v", got)
	}
	u.remove(1)
	c1.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	g1.Answered()
	if got := u.of(3, nil); len(got) != 0 {
		t.Fatalf("a removed client is waited for: %+v", got)
	}
}
