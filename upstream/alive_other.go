//go:build !linux

package upstream

import "net"

// alive cannot peek at a socket here: an idle connection is taken as open,
// and a dead one fails its first command.
func alive(net.Conn) bool { return true }

// peekQuiet cannot peek here: the connection is taken as quiet, and a
// push is applied when the reader gets it.
func peekQuiet(net.Conn) func() bool { return func() bool { return true } }
