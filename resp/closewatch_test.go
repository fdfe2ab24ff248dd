package resp

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestWatchCloseFires(t *testing.T) {
	cli, srv := tcpPair(t)
	gc := NewConn(srv, Limits{})
	stop := gc.WatchClose()
	io.WriteString(cli, mbulk("PING")+"\r\n*0\r\n")
	cli.Close()
	select {
	case <-gc.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("Closed did not fire")
	}
	if !stop() {
		t.Fatal("stop reported no close")
	}
	p := make([]byte, 4096)
	n, err := gc.Read(p)
	if err != nil || string(p[:n]) != mbulk("PING") {
		t.Fatalf("Read = %q, %v", p[:n], err)
	}
	if n, err := gc.Read(p); n != 0 || err != io.EOF {
		t.Fatalf("Read = %d, %v; want EOF", n, err)
	}
}

func TestWatchCloseStop(t *testing.T) {
	cli, srv := tcpPair(t)
	gc := NewConn(srv, Limits{})
	deadline := time.Now().Add(time.Hour)
	gc.SetReadDeadline(deadline)
	stop := gc.WatchClose()
	io.WriteString(cli, mbulk("GET", "a")+"*1\r\n$3\r\nGE")
	time.Sleep(50 * time.Millisecond)
	if stop() {
		t.Fatal("stop reported a close")
	}
	if stop() {
		t.Fatal("second stop reported a close")
	}
	select {
	case <-gc.Closed():
		t.Fatal("Closed fired")
	default:
	}
	// data read by the watcher comes first, then the socket
	go func() {
		time.Sleep(20 * time.Millisecond)
		io.WriteString(cli, "T\r\n")
	}()
	p := make([]byte, 4096)
	var out []byte
	for len(out) < len(mbulk("GET", "a")+mbulk("GET")) {
		n, err := gc.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p[:n]...)
	}
	if string(out) != mbulk("GET", "a")+mbulk("GET") {
		t.Fatalf("got %q", out)
	}
	// the read deadline set before the watch is back: a past one times out
	gc.SetReadDeadline(time.Now().Add(-time.Second))
	stop = gc.WatchClose()
	if stop() {
		t.Fatal("stop reported a close")
	}
	if _, err := gc.Read(p); !isTimeout(err) {
		t.Fatalf("Read after restoring a past deadline: %v", err)
	}
}

func TestWatchCloseInHandler(t *testing.T) {
	addr := startTCP(t, Limits{})
	for len(waitResult) > 0 {
		<-waitResult
	}
	c := dial(t, addr)
	io.WriteString(c, "WAIT 5000\r\n")
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case r := <-waitResult:
		if r != "closed" {
			t.Fatalf("handler saw %s", r)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("handler did not notice the close")
	}
	// a client that stays connected gets its answer and its pipelined
	// commands afterwards
	c = dial(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, "WAIT 300\r\n")
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, mbulk("PING"))
	if r := <-waitResult; r != "timeout" {
		t.Fatalf("handler saw %s", r)
	}
	if got := readN(t, br, 2); got != "+OK\r\n"+echo("PING") {
		t.Fatalf("got %q", got)
	}
}
