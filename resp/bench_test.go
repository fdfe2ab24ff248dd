package resp

import (
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/tidwall/redcon"
)

// loopConn serves data over and over, filling each p.
type loopConn struct {
	scriptConn
	buf []byte
	off int
}

func (l *loopConn) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], l.buf[l.off:])
		n += k
		l.off = (l.off + k) % len(l.buf)
	}
	return n, nil
}

// benchPipeline is 1000 pipelined commands: GET key:N and SET key:N with
// 16-byte values, alternating.
func benchPipeline() []byte {
	var b strings.Builder
	for i := 0; i < 1000; i++ {
		k := "key:" + strconv.Itoa(i)
		if i%2 == 0 {
			b.WriteString(mbulk("GET", k))
		} else {
			b.WriteString(mbulk("SET", k, "0123456789abcdef"))
		}
	}
	return []byte(b.String())
}

// BenchmarkGuardRead measures (*Conn).Read on a pipelined stream of small
// GET/SET commands, read 4 KiB at a time as redcon's bufio.Reader does. One
// op is one pipeline of 1000 commands; ns/cmd is per command. "raw" is the
// wrapped conn alone (the copy every read pays anyway), "redcon" is redcon's
// own parsing of the guarded stream, for scale.
func BenchmarkGuardRead(b *testing.B) {
	pipe := benchPipeline()
	run := func(b *testing.B, r io.Reader) {
		p := make([]byte, 4096)
		b.SetBytes(int64(len(pipe)))
		b.ReportAllocs()
		b.ResetTimer()
		total := 0
		for i := 0; i < b.N; i++ {
			for total < len(pipe) {
				n, err := r.Read(p)
				if err != nil {
					b.Fatal(err)
				}
				total += n
			}
			total -= len(pipe)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/cmd")
	}
	b.Run("raw", func(b *testing.B) { run(b, &loopConn{buf: pipe}) })
	b.Run("guard", func(b *testing.B) { run(b, NewConn(&loopConn{buf: pipe}, Limits{})) })
	b.Run("redcon", func(b *testing.B) {
		rd := redcon.NewReader(NewConn(&loopConn{buf: pipe}, Limits{}))
		b.SetBytes(int64(len(pipe)))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			for n := 0; n < 1000; {
				cmds, err := rd.ReadCommands()
				if err != nil {
					b.Fatal(err)
				}
				n += len(cmds)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/cmd")
	})
}

// BenchmarkGuardReadLarge: SET commands with 64 KiB values, read into 1 MiB
// buffers: payloads are skipped by counting.
func BenchmarkGuardReadLarge(b *testing.B) {
	var sb strings.Builder
	for i := 0; i < 16; i++ {
		sb.WriteString(mbulk("SET", "key:"+strconv.Itoa(i), strings.Repeat("v", 64<<10)))
	}
	pipe := []byte(sb.String())
	gc := NewConn(&loopConn{buf: pipe}, Limits{})
	p := make([]byte, 1<<20)
	b.SetBytes(int64(len(pipe)))
	b.ResetTimer()
	total := 0
	for i := 0; i < b.N; i++ {
		for total < len(pipe) {
			n, err := gc.Read(p)
			if err != nil {
				b.Fatal(err)
			}
			total += n
		}
		total -= len(pipe)
	}
}
