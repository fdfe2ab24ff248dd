package server

import (
	"sync"
	"sync/atomic"

	"github.com/respite/respite/resp"
)

// unread finds the clients whose commands may have reached the proxy
// before a batch without having taken a ticket yet (order.go): bytes
// still unread in their socket while their reader waits for bytes (a
// private level-triggered epoll set tells which sockets hold some), and
// bytes being read or read but not yet claimed (resp.Conn.ReadState,
// looked for only while arriving, the number of such Conns, is not zero).
// Arrival stamps cannot tell: a command has none until it is read, and a
// goroutine woken for earlier bytes may run after a later one.
type unread struct {
	poll     poller
	arriving atomic.Int64 // resp.Limits.Arriving of every client Conn

	mu    sync.Mutex
	conns map[int64]*resp.Conn // by session id
}

// arriving is a client that a batch waits for: the ReadState and claim
// count it had when the batch looked.
type arriving struct {
	id     int64
	gc     *resp.Conn
	state  resp.ReadState
	claims uint32
}

func newUnread() *unread {
	return &unread{poll: newPoller(), conns: make(map[int64]*resp.Conn)}
}

// close releases the epoll set.
func (u *unread) close() { u.poll.close() }

// add watches session id's connection gc, whose socket is fd (0: none).
func (u *unread) add(id int64, gc *resp.Conn, fd int) {
	if gc == nil {
		return
	}
	u.mu.Lock()
	u.conns[id] = gc
	u.mu.Unlock()
	u.poll.add(fd, id)
}

// remove forgets session id. Its socket leaves the epoll set when it is
// closed (removing it by number could remove a new socket that reuses it).
func (u *unread) remove(id int64) {
	u.mu.Lock()
	delete(u.conns, id)
	u.mu.Unlock()
}

// of appends to into the clients other than self whose commands may have
// arrived and not been claimed yet.
func (u *unread) of(self int64, into []arriving) []arriving {
	var ids [64]int64
	ready := u.poll.ready(ids[:0])
	scan := u.arriving.Load() > 0
	if len(ready) == 0 && !scan {
		return into
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	// A ready socket's reader may have started to read it since the
	// epoll set answered and since arriving was loaded (its bytes are now
	// on their way, and scan may be false): every state but ReadBusy
	// counts. ReadBusy: the client serves a batch it claimed, and bytes
	// that arrived since wait for its next read, whose ticket comes after.
	found := len(into)
	for _, id := range ready {
		if gc := u.conns[id]; gc != nil && id != self {
			if st, n := gc.ReadState(); st != resp.ReadBusy {
				into = append(into, arriving{id, gc, st, n})
			}
		}
	}
	if scan {
		for id, gc := range u.conns {
			if st, n := gc.ReadState(); id != self && st >= resp.ReadReceiving && !listed(into[found:], id) {
				into = append(into, arriving{id, gc, st, n})
			}
		}
	}
	return into
}

func listed(list []arriving, id int64) bool {
	for _, a := range list {
		if a.id == id {
			return true
		}
	}
	return false
}

// settled reports whether every client in exp has claimed what it read
// since (and so holds its ticket, if it needs one), closed, or found
// nothing to read.
func settled(exp []arriving) bool {
	for _, e := range exp {
		st, n := e.gc.ReadState()
		switch {
		case n != e.claims, st == resp.ReadBusy:
		case st == resp.ReadWaiting && e.state == resp.ReadReceiving:
			// the read found nothing
		default:
			return false
		}
	}
	return true
}
