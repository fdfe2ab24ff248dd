package upstream

import (
	"crypto/tls"
	"net"
	"syscall"
)

// alive reports whether an idle connection is still open: a peek at its
// socket that does not wait finds nothing to read. Redis closing it (its
// timeout, a restart, CLIENT KILL) leaves an end of file there; anything
// else waiting there (a TLS alert, bytes nobody asked for) makes the
// connection unusable too.
func alive(nc net.Conn) bool {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = true
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		_ = n
		ok = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		return true // never wait for readiness
	})
	return err == nil && ok
}

// peekQuiet returns a check that nc is open with nothing waiting in the
// kernel to be read: a peek that neither waits nor takes the read lock
// (raw Control), so it runs beside a reader blocked on nc.
func peekQuiet(nc net.Conn) func() bool {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return func() bool { return true }
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return func() bool { return false }
	}
	return func() bool {
		quiet := false
		var buf [1]byte
		err := raw.Control(func(fd uintptr) {
			_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			quiet = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		})
		return err == nil && quiet
	}
}
