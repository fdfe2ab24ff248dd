//go:build !linux

package resp

import (
	"net"
	"time"
)

// Without kernel receive stamps, Arrival is the time of the read.
type stamper struct{}

func newStamper(net.Conn) *stamper { return nil }

func (*stamper) read([]byte, *Conn) (int, time.Time, error) { panic("unreachable") }

// StampListener does nothing without kernel receive stamps.
func StampListener(net.Listener) {}
