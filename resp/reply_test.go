package resp

import (
	"bufio"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestAppendReplyKeepsExactBytes(t *testing.T) {
	replies := []string{
		"+OK\r\n", "-ERR bad\r\n", ":42\r\n", "$-1\r\n", "*-1\r\n", "*0\r\n", "$0\r\n\r\n",
		"$5\r\nhe\r\nl\r\n", "*2\r\n$1\r\na\r\n*1\r\n:1\r\n", "_\r\n", ",1.5\r\n", "#t\r\n", "(123\r\n",
		"=8\r\ntxt:abcd\r\n", "!3\r\nerr\r\n", "%1\r\n$1\r\nf\r\n$1\r\nv\r\n", "~1\r\n$1\r\nm\r\n",
		">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n", "|1\r\n+key\r\n:1\r\n*1\r\n:2\r\n",
		"+" + strings.Repeat("x", 100000) + "\r\n",
	}
	stream := strings.Join(replies, "")
	// One byte at a time, so every partial-read path is taken.
	br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(stream)), 16)
	for _, want := range replies {
		got, err := AppendReply(nil, br)
		if err != nil || string(got) != want {
			t.Fatalf("AppendReply = %q, %v; want %q", got, err, want)
		}
	}
	if _, err := AppendReply(nil, br); err != io.EOF {
		t.Fatalf("at end of stream: %v", err)
	}
}

// A push inside an aggregate is out of band (Redis writes DEBUG PROTOCOL
// push inside EXEC's array where it runs): the aggregate's element still
// follows it. On a shared connection a push before a reply is read with
// that reply.
func TestAppendReplyPushes(t *testing.T) {
	push := ">2\r\n$4\r\nname\r\n:42\r\n"
	exec := "*2\r\n" + push + "$4\r\nreal\r\n|1\r\n+a\r\n:1\r\n$5\r\nreal2\r\n"
	br := bufio.NewReader(strings.NewReader(exec + "+OK\r\n"))
	if got, err := AppendReply(nil, br); err != nil || string(got) != exec {
		t.Fatalf("EXEC with a push inside: %q, %v", got, err)
	}
	// SUBSCRIBE in MULTI: in RESP3 its confirmation, a push, is EXEC's
	// element.
	sub := ">3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n"
	br = bufio.NewReader(strings.NewReader("*1\r\n" + sub + "+PONG\r\n"))
	if got, err := AppendReply(nil, br); err != nil || string(got) != "*1\r\n"+sub {
		t.Fatalf("EXEC of a SUBSCRIBE: %q, %v", got, err)
	}
	br = bufio.NewReader(strings.NewReader(push + "+OK\r\n" + push))
	if got, err := AppendReply(nil, br); err != nil || string(got) != push {
		t.Fatalf("a push alone: %q, %v", got, err)
	}
	br = bufio.NewReader(strings.NewReader(push + push + "$4\r\nreal\r\n:1\r\n"))
	if got, err := AppendReplyAfterPushes(nil, br); err != nil || string(got) != push+push+"$4\r\nreal\r\n" {
		t.Fatalf("AppendReplyAfterPushes: %q, %v", got, err)
	}
}

func TestAppendReplyRejectsGarbage(t *testing.T) {
	for _, in := range []string{"?x\r\n", "$abc\r\n", "*1\n", "x\r\n", strings.Repeat("*1\r\n", maxDepth+2) + ":1\r\n"} {
		if _, err := AppendReply(nil, bufio.NewReader(strings.NewReader(in))); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
	// Redis nests as deep as a Lua script's reply goes: a table that
	// contains itself comes back as 7995 arrays of one element around
	// "-ERR reached lua stack limit" (Redis 7.0.15). That is RESP.
	deep := strings.Repeat("*1\r\n", 7995) + "-ERR reached lua stack limit\r\n"
	if got, err := AppendReply(nil, bufio.NewReader(strings.NewReader(deep))); err != nil || string(got) != deep {
		t.Errorf("Redis' deepest reply: %v", err)
	}
	if _, err := AppendReply(nil, bufio.NewReader(strings.NewReader("$5\r\nab"))); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated bulk: %v", err)
	}
}
