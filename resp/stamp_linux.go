//go:build linux

package resp

import (
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// Arrival stamps on Linux: the socket reports, with every read, when the
// kernel received the bytes (SO_TIMESTAMPNS), so the order in which
// several clients' commands reached the proxy is known exactly, whatever
// order their goroutines then run in.

// stamper reads a TCP socket with recvmsg and keeps the kernel's receive
// time of the last bytes read.
type stamper struct {
	raw syscall.RawConn
	oob [64]byte
}

func newStamper(nc net.Conn) *stamper {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return nil
	}
	return &stamper{raw: raw}
}

// read reads into p like net.Conn.Read (deadlines included) and returns the
// receive time of the bytes (zero when the kernel gave none). While it
// reads the socket, st (if not nil) is ReadReceiving; while it waits for
// bytes, ReadWaiting.
func (s *stamper) read(p []byte, st *Conn) (int, time.Time, error) {
	var n, oobn int
	var rerr error
	err := s.raw.Read(func(fd uintptr) bool {
		if st != nil {
			st.setReadState(ReadReceiving)
		}
		n, oobn, _, _, rerr = syscall.Recvmsg(int(fd), p, s.oob[:], 0)
		if rerr == syscall.EAGAIN {
			if st != nil {
				st.setReadState(ReadWaiting)
			}
			return false
		}
		return true
	})
	if err != nil {
		return 0, time.Time{}, err
	}
	if rerr != nil {
		return 0, time.Time{}, rerr
	}
	if n == 0 && len(p) > 0 {
		return 0, time.Time{}, io.EOF
	}
	return n, stampOf(s.oob[:oobn]), nil
}

// stampOf finds SCM_TIMESTAMPNS in a control message buffer.
func stampOf(oob []byte) time.Time {
	const hdr = int(unsafe.Sizeof(syscall.Cmsghdr{}))
	for len(oob) >= hdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			break
		}
		if h.Level == syscall.SOL_SOCKET && h.Type == syscall.SCM_TIMESTAMPNS && l >= hdr+int(unsafe.Sizeof(syscall.Timespec{})) {
			ts := (*syscall.Timespec)(unsafe.Pointer(&oob[hdr]))
			return time.Unix(ts.Unix())
		}
		oob = oob[(l+7)&^7:]
	}
	return time.Time{}
}

// StampListener asks for receive stamps on l's socket, which the sockets it
// accepts inherit: the kernel turns stamping on some time after the first
// socket asks, so asking when the server starts means clients' first
// commands are stamped too. It is a no-op for other listeners.
func StampListener(l net.Listener) {
	tl, ok := l.(*net.TCPListener)
	if !ok {
		return
	}
	if raw, err := tl.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
		})
	}
}
