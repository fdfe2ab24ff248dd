package resp

import "strconv"

// ReplyKind is the type of a Reply.
type ReplyKind uint8

const (
	KindRaw    ReplyKind = iota // exact bytes, already in the client's protocol
	KindStatus                  // +text
	KindError                   // -text
	KindInt                     // :n
	KindBulk                    // $len text
	KindNull                    // $-1 in RESP2, _ in RESP3
	KindArray                   // *n elements
	KindMap                     // %n pairs in RESP3, a flat array in RESP2
)

// Reply is a typed reply the proxy produces itself (the route layer's
// answers, merged multi-key replies), or the raw bytes of one Redis sent.
// The session encodes it once, for the client's protocol, with AppendTo.
type Reply struct {
	Kind  ReplyKind
	Str   string  // KindStatus, KindError (without the '-'), KindBulk
	Int   int64   // KindInt
	Elems []Reply // KindArray; KindMap: key, value, key, value, ...
	Raw   []byte  // KindRaw
}

// Constructors for the common replies.
func OK() Reply                  { return Reply{Kind: KindStatus, Str: "OK"} }
func Status(s string) Reply      { return Reply{Kind: KindStatus, Str: s} }
func Err(msg string) Reply       { return Reply{Kind: KindError, Str: msg} }
func Int(n int64) Reply          { return Reply{Kind: KindInt, Int: n} }
func Bulk(s string) Reply        { return Reply{Kind: KindBulk, Str: s} }
func Null() Reply                { return Reply{Kind: KindNull} }
func Array(elems ...Reply) Reply { return Reply{Kind: KindArray, Elems: elems} }
func Map(pairs ...Reply) Reply   { return Reply{Kind: KindMap, Elems: pairs} }
func Raw(b []byte) Reply         { return Reply{Kind: KindRaw, Raw: b} }
func Bool(b bool) Reply          { return Int(boolInt(b)) }

// String is r in RESP3, for tests and logs.
func (r Reply) String() string { return string(r.AppendTo(nil, 3)) }

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// AppendTo encodes r onto dst for a client speaking proto (2 or 3).
func (r Reply) AppendTo(dst []byte, proto int) []byte {
	switch r.Kind {
	case KindRaw:
		return append(dst, r.Raw...)
	case KindStatus:
		return AppendStatus(dst, r.Str)
	case KindError:
		return AppendError(dst, r.Str)
	case KindInt:
		return AppendInt(dst, r.Int)
	case KindBulk:
		return AppendBulk(dst, r.Str)
	case KindNull:
		return AppendNull(dst, proto)
	case KindArray:
		dst = AppendArray(dst, len(r.Elems))
	case KindMap:
		dst = AppendMap(dst, len(r.Elems)/2, proto)
	}
	for _, e := range r.Elems {
		dst = e.AppendTo(dst, proto)
	}
	return dst
}

// IsError reports whether r is an error reply.
func (r Reply) IsError() bool {
	return r.Kind == KindError || r.Kind == KindRaw && len(r.Raw) > 0 && r.Raw[0] == '-'
}

// IsNull reports whether r is a null ($-1, *-1 or _).
func (r Reply) IsNull() bool {
	if r.Kind == KindNull {
		return true
	}
	return r.Kind == KindRaw && IsNull(r.Raw)
}

// AsInt returns the integer of an integer reply.
func (r Reply) AsInt() (int64, bool) {
	switch r.Kind {
	case KindInt:
		return r.Int, true
	case KindRaw:
		if len(r.Raw) > 3 && r.Raw[0] == ':' {
			n, err := strconv.ParseInt(string(r.Raw[1:len(r.Raw)-2]), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// ErrorText returns an error reply's text without the '-' and CRLF.
func (r Reply) ErrorText() string {
	if r.Kind == KindError {
		return r.Str
	}
	if r.Kind == KindRaw && len(r.Raw) > 2 {
		return string(r.Raw[1 : len(r.Raw)-2])
	}
	return ""
}

// IsNull reports whether a raw reply is a null ($-1, *-1 or _).
func IsNull(b []byte) bool {
	return len(b) > 0 && (b[0] == '_' || (len(b) > 1 && (b[0] == '$' || b[0] == '*') && b[1] == '-'))
}

// Elements splits a raw aggregate reply (array, set or push; a map's
// keys and values alike) into its elements' raw bytes; false if b is not
// one.
func Elements(b []byte) ([][]byte, bool) {
	if len(b) < 4 {
		return nil, false
	}
	switch b[0] {
	case '*', '~', '>', '%':
	default:
		return nil, false
	}
	i := 1
	for i < len(b) && b[i] != '\r' {
		i++
	}
	n, err := strconv.Atoi(string(b[1:i]))
	if err != nil || n < 0 || i+2 > len(b) {
		return nil, false
	}
	if b[0] == '%' {
		n *= 2
	}
	pos := i + 2
	out := make([][]byte, 0, n)
	for range n {
		end, ok := skip(b, pos, 0)
		if !ok {
			return nil, false
		}
		out = append(out, b[pos:end:end])
		pos = end
	}
	return out, pos == len(b)
}

// skip returns the end of the value that starts at b[pos].
func skip(b []byte, pos, depth int) (int, bool) {
	if depth > maxDepth || pos >= len(b) {
		return 0, false
	}
	i := pos + 1
	for i < len(b) && b[i] != '\r' {
		i++
	}
	if i+1 >= len(b) || b[i+1] != '\n' {
		return 0, false
	}
	next := i + 2
	switch b[pos] {
	case '+', '-', ':', ',', '_', '#', '(':
		return next, true
	}
	n, err := strconv.Atoi(string(b[pos+1 : i]))
	if err != nil {
		return 0, false
	}
	switch b[pos] {
	case '$', '=', '!':
		if n < 0 {
			return next, true
		}
		end := next + n + 2
		return end, end <= len(b)
	case '*', '~', '>', '%', '|':
		if n < 0 {
			return next, true
		}
		if b[pos] == '%' || b[pos] == '|' {
			n *= 2
		}
		for range n {
			var ok bool
			if next, ok = skip(b, next, depth+1); !ok {
				return 0, false
			}
		}
		if b[pos] == '|' {
			return skip(b, next, depth+1)
		}
		return next, true
	}
	return 0, false
}
