package resp

// parser states
type state uint8

const (
	stStart   state = iota // at a command boundary
	stMBNum                // after '*': count digits (held, see Read)
	stMBLF                 // after the count's '\r' (held)
	stDollar               // expecting '$'
	stBulkNum              // after '$': length digits
	stBulkLF               // after the length's '\r'
	stPayload              // skipping payload bytes
	stPayCR                // expecting the payload's '\r'
	stPayLF                // expecting the payload's '\n'
	stInline               // in an inline line (inline.go)
	stNul                  // in an inline line after a NUL byte: it never ends
)

// parse validates the new input p[in:end] (p[:in] is output already) and
// compacts the kept bytes in place. It returns the new output length w and
// the input offset it stopped at: end, unless an inline command became ready
// in c.enc, which Read then places at w (the bytes after it are not parsed
// yet). The output offset just past the last complete command is stored in
// *bnd.
// Dropped items are cut out lazily: p[keep:i] is the run of input kept since
// the last cut and belongs at output offset w, so input offset i maps to
// output offset w+i-keep.
func (c *Conn) parse(p []byte, in, end int, bnd *int) (int, int, *ProtocolError) {
	w, keep, i := in, in, in
	var perr *ProtocolError
loop:
	for i < end {
		switch c.st {
		case stStart:
			c.item = w + i - keep
			if p[i] == '*' {
				// fast path: a whole positive count in the buffer
				if v, next, ok := fastNum(p, i+1, end, uint64(c.lim.MaxArgs)); ok && v > 0 {
					c.args = int(v)
					c.cmdBytes = int64(next - i)
					i = next
					c.st = stDollar
					continue
				}
				c.st = stMBNum
				c.num, c.ndig, c.neg, c.zero = 0, 0, false, false
				c.hdrLen = 1
				i++
				continue
			}
			c.startLine()

		case stMBNum, stBulkNum:
			limit := uint64(c.lim.MaxBulk)
			if c.st == stMBNum {
				limit = uint64(c.lim.MaxArgs)
				if c.neg {
					limit = 1 << 63
				}
			}
			for i < end {
				b := p[i]
				i++
				c.hdrLen++
				if d := b - '0'; d <= 9 {
					if c.zero || c.ndig >= 19 || (d == 0 && c.ndig == 0 && c.neg) {
						perr = c.numErr()
						break loop
					}
					if c.ndig == 0 && d == 0 {
						c.zero = true
					}
					c.num = c.num*10 + uint64(d)
					c.ndig++
					if c.num > limit {
						perr = c.numErr()
						break loop
					}
					continue
				}
				if b == '\r' && c.ndig > 0 {
					c.st++ // stMBLF or stBulkLF
					continue loop
				}
				if b == '-' && c.st == stMBNum && c.ndig == 0 && !c.neg {
					c.neg = true
					limit = 1 << 63
					continue
				}
				perr = c.numErr()
				break loop
			}

		case stMBLF:
			if p[i] != '\n' {
				perr = errMultibulkLen
				break loop
			}
			i++
			c.hdrLen++
			if c.neg || c.num == 0 {
				// `*0\r\n`, `*-1\r\n`: Redis ignores them
				// (processMultibulkBuffer: "if (ll <= 0) return C_OK").
				w, keep = c.drop(p, w, keep, i)
				c.st = stStart
				continue
			}
			c.args = int(c.num)
			c.cmdBytes = int64(c.hdrLen)
			c.st = stDollar

		case stDollar:
			// fast path: whole "$N\r\n" headers and payloads in the buffer
			for i < end && p[i] == '$' {
				v, next, ok := fastNum(p, i+1, end, uint64(c.lim.MaxBulk))
				if !ok {
					break
				}
				cb := c.cmdBytes + int64(next-i) + int64(v) + 2
				if cb > c.lim.MaxCommand {
					break
				}
				c.cmdBytes = cb
				i = next
				pe := next + int(v)
				if pe+1 >= end || p[pe] != '\r' || p[pe+1] != '\n' {
					c.remain = int64(v)
					c.st = stPayload
					continue loop
				}
				i = pe + 2
				if c.args--; c.args == 0 {
					*bnd = w + i - keep
					c.st = stStart
					continue loop
				}
			}
			if i == end {
				continue
			}
			if p[i] != '$' {
				perr = errExpectedDollar[p[i]]
				break loop
			}
			i++
			c.num, c.ndig, c.neg, c.zero = 0, 0, false, false
			c.hdrLen = 1
			c.st = stBulkNum

		case stBulkLF:
			if p[i] != '\n' {
				perr = errBulkLen
				break loop
			}
			i++
			c.hdrLen++
			c.cmdBytes += int64(c.hdrLen) + int64(c.num) + 2
			if c.cmdBytes > c.lim.MaxCommand {
				perr = errCommandTooBig
				break loop
			}
			c.remain = int64(c.num)
			c.st = stPayload

		case stPayload:
			if avail := int64(end - i); avail < c.remain {
				c.remain -= avail
				i = end
				continue
			}
			i += int(c.remain)
			c.remain = 0
			// fast path for the common "\r\n" + next header
			if i+1 < end && p[i] == '\r' && p[i+1] == '\n' {
				i += 2
				if c.args--; c.args == 0 {
					*bnd = w + i - keep
					c.st = stStart
				} else {
					c.st = stDollar
				}
				continue
			}
			c.st = stPayCR

		case stPayCR:
			if p[i] != '\r' {
				perr = errBulkLen
				break loop
			}
			i++
			c.st = stPayLF

		case stPayLF:
			if p[i] != '\n' {
				perr = errBulkLen
				break loop
			}
			i++
			if c.args--; c.args == 0 {
				*bnd = w + i - keep
				c.st = stStart
			} else {
				c.st = stDollar
			}

		case stInline, stNul:
			// The line's bytes are consumed, never kept: when it is
			// complete, Read puts its multibulk form in their place.
			c.item = w + i - keep
			var ready bool
			i, ready, perr = c.inline(p[:end], i)
			w, keep = c.drop(p, w, keep, i)
			if perr != nil || ready {
				break loop
			}
		}
	}
	if w != keep {
		copy(p[w:], p[keep:i])
	}
	return w + i - keep, i, perr
}

// drop cuts the item that began at output offset c.item and ends before
// input offset next out of the output, returning the new w and keep.
func (c *Conn) drop(p []byte, w, keep, next int) (int, int) {
	if s := c.item; s > w {
		if w != keep {
			copy(p[w:s], p[keep:keep+s-w])
		}
		w = s
	} else {
		w = s
	}
	return w, next
}

// fastNum parses a header number at p[i:end] that is complete ("\r\n"
// included), strictly valid, non-negative and at most limit. ok is false in
// every other case, which the byte-at-a-time states then handle.
func fastNum(p []byte, i, end int, limit uint64) (v uint64, next int, ok bool) {
	j := i
	for j < end && j-i < 19 {
		d := p[j] - '0'
		if d > 9 {
			break
		}
		v = v*10 + uint64(d)
		j++
	}
	if j == i || j+1 >= end || p[j] != '\r' || p[j+1] != '\n' ||
		(p[i] == '0' && j-i > 1) || v > limit {
		return 0, 0, false
	}
	return v, j + 2, true
}

func (c *Conn) numErr() *ProtocolError {
	if c.st == stMBNum {
		return errMultibulkLen
	}
	return errBulkLen
}
