package resp

import (
	"errors"
	"math"
	"sync/atomic"
	"time"
)

// Default limits, used for zero (or negative) Limits fields.
const (
	// DefaultMaxBulk is Redis' default proto-max-bulk-len (512 MiB).
	DefaultMaxBulk int64 = 512 << 20
	// DefaultMaxArgs is the default largest argument count (1<<20).
	DefaultMaxArgs = 1 << 20
	// DefaultMaxInline is Redis' PROTO_INLINE_MAX_SIZE (64 KiB).
	DefaultMaxInline = 64 << 10
	// DefaultMaxCommand is Redis' default client-query-buffer-limit (1 GiB).
	DefaultMaxCommand int64 = 1 << 30
)

// maxSize caps every limit so that redcon's index arithmetic (i+size+2 in
// readCommands, with i below the length of an in-memory buffer) cannot
// overflow an int, on 32-bit platforms too.
const maxSize = math.MaxInt / 4

// Limits bound one client's requests. A zero or negative field means the
// default (the Default* constants), never "no limit". Values above
// math.MaxInt/4 (and MaxArgs above math.MaxInt32, Redis' INT_MAX) are clamped.
type Limits struct {
	// MaxBulk is the largest bulk string (one argument of a multibulk
	// command) in bytes. Default 512 MiB, Redis' proto-max-bulk-len.
	// A larger `$N` header is answered with
	// "-ERR Protocol error: invalid bulk length", as Redis does.
	MaxBulk int64
	// MaxArgs is the largest argument count of one multibulk command.
	// Default 1<<20 (Redis allows up to INT_MAX). A larger `*N` header is
	// answered with "-ERR Protocol error: invalid multibulk length".
	MaxArgs int
	// MaxInline is the longest inline command line in bytes, counting every
	// byte before the terminating '\n' (a '\r' before it included). Default
	// 64 KiB, Redis' PROTO_INLINE_MAX_SIZE. A longer line is answered with
	// "-ERR Protocol error: too big inline request". A line holding a NUL
	// byte never ends (Redis finds the '\n' with strchr): every byte since
	// its start counts, so the error comes once more than MaxInline bytes
	// have followed.
	MaxInline int
	// MaxCommand is the largest multibulk command in bytes as sent (all
	// headers, payloads and CRLFs). Default 1 GiB, Redis' default
	// client-query-buffer-limit. Like Redis (networking.c
	// readQueryFromClient, "closing client that reached max query buffer
	// length") the connection is closed without a reply. This bounds what
	// redcon buffers for one command: MaxBulk alone would allow MaxArgs
	// arguments of MaxBulk bytes each.
	MaxCommand int64
	// Total, when set, counts the bytes of incomplete commands of every
	// Conn sharing it; a Conn whose command would take it past MaxTotal is
	// closed without a reply (ErrQueryTotal), as Redis' maxmemory-clients
	// evicts a client. Commands under 64 KiB are not counted.
	Total    *atomic.Int64
	MaxTotal int64
	// Idle, when > 0, closes a Conn that completes no command for that
	// long (ErrIdle), unless SetIdleExempt: Redis' timeout. The bytes of
	// a command that never completes do not count as activity.
	Idle time.Duration
	// Arriving, when set, makes the Conn keep its ReadState (claim.go)
	// and counts the Conns sharing it that are reading the socket or
	// hold bytes the caller has not claimed: a server that orders
	// clients by arrival need look for those only while it is not zero.
	Arriving *atomic.Int64
}

// totalStep is the granularity of Limits.Total accounting.
const totalStep = 64 << 10

// ErrIdle is the error of a Read after Limits.Idle without a complete
// command; the connection ends without a reply (ErrQueryTotal, in
// errors.go, is the one for Limits.MaxTotal).
var ErrIdle = errors.New("client idle longer than the timeout")

func (l Limits) normalized() Limits {
	if l.MaxBulk <= 0 {
		l.MaxBulk = DefaultMaxBulk
	}
	if l.MaxBulk > maxSize {
		l.MaxBulk = maxSize
	}
	if l.MaxArgs <= 0 {
		l.MaxArgs = DefaultMaxArgs
	}
	if l.MaxArgs > math.MaxInt32 {
		l.MaxArgs = math.MaxInt32
	}
	if l.MaxArgs > maxSize {
		l.MaxArgs = maxSize
	}
	if l.MaxInline <= 0 {
		l.MaxInline = DefaultMaxInline
	}
	if l.MaxInline > maxSize {
		l.MaxInline = maxSize
	}
	if l.MaxCommand <= 0 {
		l.MaxCommand = DefaultMaxCommand
	}
	if l.MaxCommand > maxSize {
		l.MaxCommand = maxSize
	}
	return l
}
