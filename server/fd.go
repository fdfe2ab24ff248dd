package server

import (
	"net"
	"syscall"

	"github.com/respite/respite/resp"
)

// socketFD is the file descriptor of a client's socket, for CLIENT LIST's
// fd field (0 when it cannot be read).
func socketFD(nc net.Conn) int {
	if g, ok := nc.(*resp.Conn); ok {
		nc = g.Underlying()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	fd := 0
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}
