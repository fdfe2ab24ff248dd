// Package resp guards a RESP (Redis protocol) server from hostile or broken
// client byte streams, and encodes and reads RESP values.
//
// tidwall/redcon v1.6.4, the server library Respite is built on, has no
// request limits and several crashes on bad input: `*1\r\n$9223372036854775807\r\nabc\r\n`
// overflows `i+size+2` in (*redcon.Reader).readCommands and panics in
// redcon's own goroutine; readCommands recurses once per socket read, so a
// command delivered in ~1M tiny reads overflows the stack; its read buffer
// doubles until a command fits; `*0\r\n` is a protocol error in redcon while
// Redis ignores it.
//
// Rather than patching redcon, this package wraps the listener:
//
//	ln, _ := net.Listen("tcp", addr)
//	redcon.Serve(resp.NewListener(ln, resp.Limits{}), handler, accept, closed)
//
// Every accepted connection is a *Conn whose Read validates the client's bytes
// as a RESP request stream before redcon sees them, answers protocol errors the
// way Redis 7.0 does (networking.c processMultibulkBuffer and
// processInlineBuffer), and hands redcon only whole, well-formed commands.
// Inside a redcon handler the *Conn is reachable as conn.NetConn().(*resp.Conn).
//
// The files, one job each:
//
//   - conn.go: Conn and NewConn/NewListener; Read's loop, which fills the
//     caller's buffer, holds unfinished commands back and reports errors.
//   - parse.go: the incremental validator of the request stream (multibulk
//     headers and payloads, counted and skipped; the start of inline lines).
//   - inline.go: inline command lines, split into arguments as Redis'
//     sdssplitargs does and handed to redcon as multibulk commands.
//   - limits.go: Limits, their defaults and clamping.
//   - errors.go: ProtocolError, ErrProtocol and Redis' exact error texts.
//   - closewatch.go: WatchClose, Closed and the read-deadline bookkeeping that
//     lets a blocked handler notice a vanished client.
//   - encode.go: the Append* encoders of replies and of requests
//     (AppendCommand).
//   - reply.go: AppendReply, the reader of one whole reply from an upstream
//     server.
package resp
