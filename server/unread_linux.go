//go:build linux

package server

import "syscall"

// poller is a private level-triggered epoll set of client sockets, asked
// without blocking which hold unread bytes. Go's own netpoller is
// edge-triggered and tells only the goroutine parked on a socket.
type poller struct{ epfd int }

func newPoller() poller {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return poller{-1}
	}
	return poller{fd}
}

// add watches socket fd of session id.
func (p poller) add(fd int, id int64) {
	if p.epfd < 0 || fd <= 0 {
		return
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(id), Pad: int32(id >> 32)}
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
}

// ready appends the sessions whose sockets hold unread bytes (or an end
// of stream) to into.
func (p poller) ready(into []int64) []int64 {
	if p.epfd < 0 {
		return into
	}
	var evs [64]syscall.EpollEvent
	n, err := syscall.EpollWait(p.epfd, evs[:], 0)
	for i := 0; err == nil && i < n; i++ {
		into = append(into, int64(uint32(evs[i].Fd))|int64(evs[i].Pad)<<32)
	}
	return into
}

// close releases the epoll set.
func (p poller) close() {
	if p.epfd >= 0 {
		syscall.Close(p.epfd)
	}
}
