package resp

// Inline commands: a line that does not start with '*', split into
// arguments by the rules of Redis 7.0's sdssplitargs (sds.c), which
// processInlineBuffer (networking.c) applies to the line before its '\n'
// (a '\r' before the '\n' is cut off first):
//
//   - Blanks between arguments are the isspace bytes: space, \t, \n, \v, \f,
//     \r. An unquoted argument ends at a space, \t or \r only (not at \v or
//     \f, which stay part of it).
//   - A "double" or 'single' quote may start anywhere in an argument
//     (a"b c" is the one argument `ab c`) and ends it: the closing quote
//     must be followed by a blank or the end of the line.
//   - Inside double quotes, \xHH (two hex digits) is that byte; \n \r \t \b
//     \a are LF, CR, TAB, BS, BEL; a backslash before any other byte stands
//     for that byte (\" is a quote, \\ a backslash, \x without two hex
//     digits an x).
//   - Inside single quotes only \' is an escape; other backslashes are
//     themselves.
//   - A quote left open at the end of the line, or a closing quote followed
//     by anything but a blank, is answered with "-ERR Protocol error:
//     unbalanced quotes in request" and the connection is closed. The error
//     comes at the end of the line, as in Redis: until then a NUL byte or
//     the length limit may still decide otherwise.
//   - A NUL byte makes the line endless: Redis looks for the '\n' with
//     strchr, which stops at the NUL, so the command is never run and every
//     later byte joins the line until more than MaxInline bytes (all bytes
//     since the line began, '\n's included) are answered with "too big
//     inline request".
//
// redcon parses inline lines by rules of its own (spaces only, no \x, \b or
// \a, no quote inside an argument), so the guard never hands it the line:
// the line's bytes are consumed, and a complete line with arguments is
// replaced by its arguments encoded as a multibulk command (AppendCommand),
// the form redcon also gives an inline command's Raw. A line without
// arguments (empty, or blanks only) is dropped: Redis runs nothing and
// replies nothing.

// tokState is the position of the inline tokenizer within a line.
type tokState uint8

const (
	tkBlank  tokState = iota // between arguments
	tkWord                   // in an argument, outside quotes
	tkDQ                     // inside "double quotes"
	tkDQEsc                  // after a backslash inside double quotes
	tkDQX                    // after \x inside double quotes
	tkDQX1                   // after \x and one hex digit (kept in hex)
	tkSQ                     // inside 'single quotes'
	tkSQEsc                  // after a backslash inside single quotes
	tkClosed                 // right after a closing quote
	tkBad                    // the quotes do not balance: the line is an error
)

// maxKeep bounds the inline buffers a Conn keeps between lines; larger ones
// (from long lines) are released once used.
const maxKeep = 64 << 10

// inline consumes the bytes p[i:] of an inline line (c.st is stInline or
// stNul) up to and including its '\n'. It returns the offset after the last
// byte consumed and whether a command is now ready in c.enc; at the end of a
// line without arguments it returns false with c.st back at stStart.
func (c *Conn) inline(p []byte, i int) (int, bool, *ProtocolError) {
	if c.st == stInline {
		for i < len(p) {
			b := p[i]
			i++
			if b == '\n' {
				ready, perr := c.endLine()
				return i, ready, perr
			}
			c.lineLen++
			if c.lineLen > c.lim.MaxInline {
				return i, false, errTooBigInline
			}
			if b == 0 {
				c.st = stNul
				break
			}
			c.split(b)
		}
	}
	if c.st == stNul {
		c.lineLen += len(p) - i
		if c.lineLen > c.lim.MaxInline {
			return len(p), false, errTooBigInline
		}
		i = len(p)
	}
	return i, false, nil
}

// startLine resets the tokenizer for a new inline line.
func (c *Conn) startLine() {
	c.st = stInline
	c.lineLen = 0
	c.tk = tkBlank
	c.line = c.line[:0]
	c.ends = c.ends[:0]
}

// endLine finishes the line at its '\n': an error if the quotes do not
// balance, else its arguments (if any) encoded into c.enc.
func (c *Conn) endLine() (bool, *ProtocolError) {
	c.st = stStart
	c.lineLen = 0
	switch c.tk {
	case tkWord:
		c.ends = append(c.ends, len(c.line))
	case tkBlank, tkClosed:
	default:
		return false, errUnbalanced
	}
	ready := len(c.ends) > 0
	if ready {
		c.argv = c.argv[:0]
		start := 0
		for _, e := range c.ends {
			c.argv = append(c.argv, c.line[start:e])
			start = e
		}
		c.encBuf = AppendCommand(c.encBuf[:0], c.argv)
		c.enc = c.encBuf
	}
	if cap(c.line) > maxKeep {
		c.line, c.ends, c.argv = nil, nil, nil
	}
	return ready, nil
}

// takeEnc moves the pending inline command's bytes into p.
func (c *Conn) takeEnc(p []byte) int {
	n := copy(p, c.enc)
	c.enc = c.enc[n:]
	if len(c.enc) == 0 && cap(c.encBuf) > maxKeep {
		c.encBuf, c.enc = nil, nil
	}
	return n
}

// split feeds one byte of the line (not its '\n', not a NUL) to the
// tokenizer, which appends the decoded bytes to c.line and the end offset of
// every finished argument to c.ends.
func (c *Conn) split(b byte) {
	switch c.tk {
	case tkBlank:
		if isSpace(b) {
			return
		}
		c.tk = tkWord
		c.word(b)
	case tkWord:
		c.word(b)
	case tkDQ:
		c.quoted(b, '"', tkDQEsc)
	case tkDQEsc:
		c.tk = tkDQ
		switch b {
		case 'x':
			c.tk = tkDQX
		case 'n':
			c.line = append(c.line, '\n')
		case 'r':
			c.line = append(c.line, '\r')
		case 't':
			c.line = append(c.line, '\t')
		case 'b':
			c.line = append(c.line, '\b')
		case 'a':
			c.line = append(c.line, '\a')
		default:
			c.line = append(c.line, b)
		}
	case tkDQX:
		if isHex(b) {
			c.hex = b
			c.tk = tkDQX1
			return
		}
		// \x without hex digits is an escaped x
		c.line = append(c.line, 'x')
		c.tk = tkDQ
		c.quoted(b, '"', tkDQEsc)
	case tkDQX1:
		c.tk = tkDQ
		if isHex(b) {
			c.line = append(c.line, unhex(c.hex)<<4|unhex(b))
			return
		}
		c.line = append(c.line, 'x', c.hex)
		c.quoted(b, '"', tkDQEsc)
	case tkSQ:
		c.quoted(b, '\'', tkSQEsc)
	case tkSQEsc:
		c.tk = tkSQ
		if b == '\'' {
			c.line = append(c.line, '\'')
			return
		}
		c.line = append(c.line, '\\')
		c.quoted(b, '\'', tkSQEsc)
	case tkClosed:
		if isSpace(b) {
			c.tk = tkBlank
		} else {
			c.tk = tkBad
		}
	case tkBad:
	}
}

// word handles b in an unquoted argument.
func (c *Conn) word(b byte) {
	switch b {
	case ' ', '\t', '\r':
		c.ends = append(c.ends, len(c.line))
		c.tk = tkBlank
	case '"':
		c.tk = tkDQ
	case '\'':
		c.tk = tkSQ
	default:
		c.line = append(c.line, b)
	}
}

// quoted handles b inside the quotes q, outside an escape; a backslash
// leads to the state esc.
func (c *Conn) quoted(b, q byte, esc tokState) {
	switch b {
	case '\\':
		c.tk = esc
	case q:
		c.ends = append(c.ends, len(c.line))
		c.tk = tkClosed
	default:
		c.line = append(c.line, b)
	}
}

// isSpace is C's isspace in the "C" locale.
func isSpace(b byte) bool {
	return b == ' ' || b-'\t' <= '\r'-'\t'
}

func isHex(b byte) bool {
	return b-'0' <= 9 || (b|0x20)-'a' <= 'f'-'a'
}

// unhex is the value of the hex digit b.
func unhex(b byte) byte {
	if b <= '9' {
		return b - '0'
	}
	return (b | 0x20) - 'a' + 10
}
