package resp

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestReadStateFollowsTheReader: a tracked Conn is Waiting while its
// Read waits for bytes, Unclaimed once Read returned them, Busy once
// claimed; Limits.Arriving counts it only while it holds unclaimed bytes.
// An untracked Conn keeps no state.
func TestReadStateFollowsTheReader(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cl, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var arriving atomic.Int64
	c := NewConn(sc, Limits{Arriving: &arriving})
	defer c.Close()

	read := make(chan int)
	buf := make([]byte, 256)
	go func() {
		n, _ := c.Read(buf)
		read <- n
	}()
	deadline := time.Now().Add(2 * time.Second)
	for st, _ := c.ReadState(); st != ReadWaiting; st, _ = c.ReadState() {
		if time.Now().After(deadline) {
			t.Fatalf("state %d while Read waits for bytes, want ReadWaiting", st)
		}
		time.Sleep(time.Millisecond)
	}
	if n := arriving.Load(); n != 0 {
		t.Fatalf("Arriving %d while waiting, want 0", n)
	}
	cl.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	if n := <-read; n != 14 {
		t.Fatalf("read %d bytes", n)
	}
	if st, claims := c.ReadState(); st != ReadUnclaimed || claims != 0 {
		t.Fatalf("after Read: state %d, claims %d; want ReadUnclaimed, 0", st, claims)
	}
	if n := arriving.Load(); n != 1 {
		t.Fatalf("Arriving %d with unclaimed bytes, want 1", n)
	}
	c.Claim()
	if st, claims := c.ReadState(); st != ReadBusy || claims != 1 {
		t.Fatalf("after Claim: state %d, claims %d; want ReadBusy, 1", st, claims)
	}
	if n := arriving.Load(); n != 0 {
		t.Fatalf("Arriving %d after Claim, want 0", n)
	}
	c.Answered()
	if st, _ := c.ReadState(); st != ReadWaiting {
		t.Fatalf("after Answered: state %d, want ReadWaiting", st)
	}

	// Untracked: no state, Claim counts nothing.
	u := NewConn(sc, Limits{})
	u.Claim()
	if st, claims := u.ReadState(); st != ReadBusy || claims != 0 {
		t.Fatalf("untracked Conn: state %d, claims %d", st, claims)
	}
}

// TestAnsweredMidCommandKeepsState: with part of a command held back, a
// Conn is not waiting for new bytes: Answered leaves its state alone.
func TestAnsweredMidCommandKeepsState(t *testing.T) {
	var arriving atomic.Int64
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := NewConn(a, Limits{Arriving: &arriving})
	go b.Write([]byte("*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI"))
	buf := make([]byte, 256)
	if n, err := c.Read(buf); n != 14 || err != nil {
		t.Fatalf("Read: %d, %v", n, err)
	}
	c.Claim()
	c.Answered()
	if st, _ := c.ReadState(); st != ReadBusy {
		t.Fatalf("state %d with half a command held, want ReadBusy", st)
	}
}

// TestPartialCommandIsNotUnclaimed: a Read that returns part of a command
// larger than p leaves the Conn busy, not holding unclaimed commands: the
// command's arrival is that of a later read, so nobody waits for it yet.
func TestPartialCommandIsNotUnclaimed(t *testing.T) {
	var arriving atomic.Int64
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := NewConn(a, Limits{Arriving: &arriving})
	go b.Write([]byte("*2\r\n$3\r\nSET\r\n$200\r\n" + strings.Repeat("x", 150)))
	buf := make([]byte, 128)
	if n, err := c.Read(buf); n != 128 || err != nil {
		t.Fatalf("Read: %d, %v", n, err)
	}
	if st, _ := c.ReadState(); st != ReadBusy || arriving.Load() != 0 {
		t.Fatalf("part of a command read: state %d, Arriving %d; want ReadBusy, 0", st, arriving.Load())
	}
}
