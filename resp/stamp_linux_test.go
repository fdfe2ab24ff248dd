//go:build linux

package resp

import (
	"net"
	"testing"
	"time"
)

// TestArrivalIsWhenBytesCameNotWhenRead: Arrival orders two connections by
// when their bytes reached the socket, even when they are read the other
// way round. Linux only: elsewhere Arrival is the read time.
func TestArrivalIsWhenBytesCameNotWhenRead(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accept := func() (*Conn, net.Conn) {
		cl, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close(); sc.Close() })
		return NewConn(sc, Limits{}), cl
	}
	// The kernel turns receive stamps on for everyone some time after the
	// first socket asks (a deferred static key): packets before that are
	// stamped when read. A server's sockets keep it on; here one warms up.
	accept()
	time.Sleep(20 * time.Millisecond)
	a, ca := accept()
	b, cb := accept()
	if a.stamps == nil {
		t.Fatal("no receive stamps on a TCP connection")
	}
	ca.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	time.Sleep(2 * time.Millisecond)
	cb.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	time.Sleep(50 * time.Millisecond)
	buf := make([]byte, 256)
	if _, err := b.Read(buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := a.Read(buf); err != nil {
		t.Fatal(err)
	}
	if d := b.Arrival().Sub(a.Arrival()); d < time.Millisecond || d > 40*time.Millisecond {
		t.Fatalf("b arrived %v after a; want about 2ms (read order was b, a)", d)
	}
}
