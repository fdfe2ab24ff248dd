package resp

import "sync/atomic"

// ReadState is where a Conn's reader stands, for a server that keeps
// several clients' commands in arrival order (server/order.go): it tells
// whether bytes that reached the socket may still be on their way to the
// caller of Read, which has not yet claimed them (Claim). States are kept
// only for a Conn whose Limits.Arriving is set.
type ReadState int32

const (
	// ReadBusy: the caller serves what Read returned, or the Conn is
	// closed. New bytes wait for the caller's next Read.
	ReadBusy ReadState = iota
	// ReadWaiting: at a command boundary, waiting for bytes. Any that
	// arrived are still unread in the socket.
	ReadWaiting
	// ReadReceiving: reading the socket; bytes may be on their way.
	ReadReceiving
	// ReadUnclaimed: Read returned bytes the caller has not claimed yet.
	ReadUnclaimed
)

// claimState is a Conn's ReadState and how many batches were claimed.
type claimState struct {
	state  atomic.Int32
	claims atomic.Uint32
}

// ReadState returns where the Conn's reader stands and how many times
// Claim was called; safe from any goroutine.
func (c *Conn) ReadState() (ReadState, uint32) {
	return ReadState(c.claim.state.Load()), c.claim.claims.Load()
}

// Claim records that the caller took charge of what Read returned (the
// server gave the batch its place in the arrival order).
func (c *Conn) Claim() {
	if c.tracked() {
		c.claim.claims.Add(1)
		c.setReadState(ReadBusy)
	}
}

// Answered records, from the reader's goroutine, that the caller is done
// with what Read returned and is about to write the replies: any new
// bytes are unread in the socket from now on, though the next Read may
// not start before the write is done.
func (c *Conn) Answered() {
	if c.tracked() && c.atBoundary() {
		c.setReadState(ReadWaiting)
	}
}

func (c *Conn) tracked() bool { return c.lim.Arriving != nil }

// setReadState moves to s, keeping Limits.Arriving, the number of Conns
// that are receiving or hold unclaimed bytes, up to date.
func (c *Conn) setReadState(s ReadState) {
	if !c.tracked() {
		return
	}
	old := ReadState(c.claim.state.Swap(int32(s)))
	if was, is := old >= ReadReceiving, s >= ReadReceiving; was != is {
		if is {
			c.lim.Arriving.Add(1)
		} else {
			c.lim.Arriving.Add(-1)
		}
	}
}

// atBoundary reports whether the Conn holds nothing of the client's
// stream that Read has not returned. Reader's goroutine only.
func (c *Conn) atBoundary() bool {
	return c.st == stStart && c.pend == len(c.pbuf) && len(c.out) == 0 && len(c.enc) == 0 && c.lineLen == 0
}
