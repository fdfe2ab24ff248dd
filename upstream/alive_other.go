//go:build !linux

package upstream

import "net"

// alive cannot peek at a socket here: an idle connection is taken as open,
// and a dead one fails its first command.
func alive(net.Conn) bool { return true }
