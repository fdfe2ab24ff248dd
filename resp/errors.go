package resp

import "errors"

// ErrProtocol is the sentinel that every *ProtocolError wraps:
// errors.Is(err, ErrProtocol) reports whether a Read failed because the
// client broke the protocol (as opposed to a network error or EOF).
var ErrProtocol = errors.New("protocol error")

// ProtocolError is returned by (*Conn).Read when the client's byte stream is
// not a valid RESP request stream or exceeds the Limits. The connection
// should then be closed (redcon does so).
type ProtocolError struct {
	// Msg is the Redis error text after "Protocol error: ", for example
	// "invalid bulk length".
	Msg string
	// Replied is true when "-ERR Protocol error: "+Msg+"\r\n" is (or will be,
	// at the Read that returns this error) written to the client. It is false
	// for MaxCommand, which Redis answers by closing without a reply.
	Replied bool
}

// Error returns "Protocol error: " + Msg, the text Redis sends after "-ERR ".
func (e *ProtocolError) Error() string { return "Protocol error: " + e.Msg }

// Unwrap returns ErrProtocol.
func (e *ProtocolError) Unwrap() error { return ErrProtocol }

func protoErr(msg string) *ProtocolError { return &ProtocolError{Msg: msg, Replied: true} }

// ErrQueryTotal is the error of a Read whose command would take the total
// of incomplete commands past Limits.MaxTotal: the connection is closed
// without a reply.
var ErrQueryTotal = &ProtocolError{Msg: "total query buffer limit exceeded", Replied: false}

// The messages of Redis 7.0 networking.c (processMultibulkBuffer,
// processInlineBuffer).
var (
	errMultibulkLen   = protoErr("invalid multibulk length")
	errBulkLen        = protoErr("invalid bulk length")
	errTooBigInline   = protoErr("too big inline request")
	errUnbalanced     = protoErr("unbalanced quotes in request")
	errCommandTooBig  = &ProtocolError{Msg: "query buffer limit exceeded", Replied: false}
	errExpectedDollar [256]*ProtocolError
)

func init() {
	for b := range errExpectedDollar {
		c := byte(b)
		// addReplyErrorFormat maps '\r' and '\n' to spaces so the error line
		// stays one line (Redis 7.0 networking.c addReplyErrorFormatInternal).
		if c == '\r' || c == '\n' {
			c = ' '
		}
		errExpectedDollar[b] = protoErr("expected '$', got '" + string([]byte{c}) + "'")
	}
}
