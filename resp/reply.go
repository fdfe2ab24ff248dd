package resp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
)

// ErrReply reports a malformed reply from the upstream server.
var ErrReply = errors.New("resp: malformed reply from upstream")

// maxDepth bounds nesting of aggregate replies read by AppendReply. Redis
// itself nests as deep as a Lua script's reply goes (until "reached lua
// stack limit", some thousands of levels), so the bound only stops a
// stream that cannot be RESP.
const maxDepth = 1 << 16

// AppendReply reads one complete RESP2 or RESP3 reply from br and appends
// its exact bytes to dst. Aggregates (arrays, maps, sets, pushes) are read
// whole, and an attribute (|) is read together with the reply it
// annotates. Errors: io errors from br, or ErrReply for bytes that are not
// RESP (types per https://github.com/redis/redis-specification).
func AppendReply(dst []byte, br *bufio.Reader) ([]byte, error) {
	return appendReply(dst, br, 0)
}

func appendReply(dst []byte, br *bufio.Reader, depth int) ([]byte, error) {
	if depth > maxDepth {
		return dst, ErrReply
	}
	start := len(dst)
	for {
		part, err := br.ReadSlice('\n')
		dst = append(dst, part...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return dst[:start], err
		}
	}
	line := dst[start:]
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return dst, ErrReply
	}
	kind := line[0]
	switch kind {
	case '+', '-', ':', ',', '_', '#', '(':
		return dst, nil
	}
	n, err := strconv.ParseInt(string(line[1:len(line)-2]), 10, 64)
	if err != nil {
		return dst, ErrReply
	}
	switch kind {
	case '$', '=', '!':
		if n < 0 {
			return dst, nil
		}
		body := len(dst)
		dst = grow(dst, int(n)+2)
		if _, err := io.ReadFull(br, dst[body:]); err != nil {
			return dst[:start], err
		}
		return dst, nil
	case '*', '~', '>', '%', '|':
		if kind == '%' || kind == '|' {
			n *= 2
		}
		for i := int64(0); i < n; i++ {
			if dst, err = appendReply(dst, br, depth+1); err != nil {
				return dst, err
			}
		}
		if kind == '|' || kind == '>' && depth > 0 && !confirmsSubscription(dst[start:]) {
			// An attribute annotates the reply after it; a push inside an
			// aggregate is out of band (Redis writes it where it is
			// produced, as DEBUG PROTOCOL push or a tracking invalidation
			// inside EXEC's array) and is no element of it: the element
			// still follows. A (un)subscribe confirmation is the element:
			// it is SUBSCRIBE's reply in RESP3, inside EXEC's array too.
			return appendReply(dst, br, depth+1)
		}
		return dst, nil
	}
	return dst, ErrReply
}

// confirmsSubscription reports whether the push b (its exact bytes) is
// the confirmation of a SUBSCRIBE, UNSUBSCRIBE or one of their pattern and
// shard forms: its first element names it.
func confirmsSubscription(b []byte) bool {
	i := bytes.IndexByte(b, '\n')
	if i < 0 || i+1 >= len(b) || b[i+1] != '$' {
		return false
	}
	b = b[i+2:]
	j := bytes.IndexByte(b, '\r')
	if j < 0 {
		return false
	}
	n, err := strconv.Atoi(string(b[:j]))
	if err != nil || n < 0 || j+2+n > len(b) {
		return false
	}
	switch string(b[j+2 : j+2+n]) {
	case "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe":
		return true
	}
	return false
}

// AppendReplyAfterPushes is AppendReply for a connection that never
// subscribes (the shared connections): pushes Redis sends before a reply
// (DEBUG PROTOCOL push, in RESP3) are read with it, their bytes first, so
// that they reach the client that caused them, just before its reply, and
// are not taken for the reply itself.
func AppendReplyAfterPushes(dst []byte, br *bufio.Reader) ([]byte, error) {
	for {
		start := len(dst)
		var err error
		if dst, err = AppendReply(dst, br); err != nil || dst[start] != '>' {
			return dst, err
		}
	}
}

// grow extends b by n bytes, reusing capacity when it can.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, 2*len(b)+n)
	copy(nb, b)
	return nb
}
