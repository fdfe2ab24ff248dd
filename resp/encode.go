package resp

import "strconv"

// The Append functions encode one RESP value onto dst and return the
// extended slice. Where RESP2 and RESP3 differ, proto (2 or 3) picks the
// encoding, following https://github.com/redis/redis-specification
// (protocol/RESP3.md): RESP2 has no null, map, set or push type of its own
// and uses $-1, flat arrays and arrays instead.

// AppendError encodes "-msg\r\n"; msg must start with an error code such
// as "ERR " and contain no CR or LF.
func AppendError(dst []byte, msg string) []byte {
	dst = append(dst, '-')
	dst = append(dst, msg...)
	return append(dst, '\r', '\n')
}

// AppendStatus encodes the simple string "+s\r\n".
func AppendStatus(dst []byte, s string) []byte {
	dst = append(dst, '+')
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}

// AppendInt encodes the integer ":n\r\n".
func AppendInt(dst []byte, n int64) []byte {
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, '\r', '\n')
}

// AppendBulk encodes the bulk string "$len\r\ns\r\n".
func AppendBulk(dst []byte, s string) []byte {
	dst = append(dst, '$')
	dst = strconv.AppendInt(dst, int64(len(s)), 10)
	dst = append(dst, '\r', '\n')
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}

// AppendNull encodes a null: "_\r\n" in RESP3, the null bulk "$-1\r\n" in
// RESP2.
func AppendNull(dst []byte, proto int) []byte {
	if proto == 3 {
		return append(dst, '_', '\r', '\n')
	}
	return append(dst, '$', '-', '1', '\r', '\n')
}

// AppendArray encodes the header of an array of n elements.
func AppendArray(dst []byte, n int) []byte { return appendHeader(dst, '*', n) }

// AppendMap encodes the header of a map of n key/value pairs: "%n" in
// RESP3, an array of 2n elements in RESP2.
func AppendMap(dst []byte, n int, proto int) []byte {
	if proto == 3 {
		return appendHeader(dst, '%', n)
	}
	return appendHeader(dst, '*', 2*n)
}

// AppendPush encodes the header of an out-of-band message of n elements
// (pub/sub messages, invalidations): ">n" in RESP3, an array in RESP2.
func AppendPush(dst []byte, n int, proto int) []byte {
	if proto == 3 {
		return appendHeader(dst, '>', n)
	}
	return appendHeader(dst, '*', n)
}

// AppendCommand encodes args as a RESP multibulk request onto dst.
func AppendCommand(dst []byte, args [][]byte) []byte {
	dst = appendHeader(dst, '*', len(args))
	for _, a := range args {
		dst = appendHeader(dst, '$', len(a))
		dst = append(dst, a...)
		dst = append(dst, '\r', '\n')
	}
	return dst
}

func appendHeader(dst []byte, kind byte, n int) []byte {
	dst = append(dst, kind)
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, '\r', '\n')
}
