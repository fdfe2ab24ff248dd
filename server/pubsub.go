package server

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tidwall/redcon"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// pubsub is the state of a detached session: its subscriptions (on a
// go-redis PubSub, which owns a connection of its own) and MONITOR.
// Messages arrive on another goroutine, so a detached session's writes and
// state are guarded by session.mu.
type pubsub struct {
	c        *session
	ps       *redis.PubSub
	channels map[string]bool
	patterns map[string]bool
	shards   map[string]bool
	acks     chan struct{} // one per subscription reply or pong written
	monitor  *redis.Client
	done     chan struct{}
}

// restricted reports whether the client is in RESP2 subscribed mode, where
// Redis only accepts (P|S)(UN)SUBSCRIBE, PING, QUIT and RESET.
func (p *pubsub) restricted(proto int) bool {
	return proto == 2 && len(p.channels)+len(p.patterns)+len(p.shards) > 0
}

func allowedSubscribed(name []byte) bool {
	return router.Lookup(name) == router.PubSub || router.Is(name, "ping") ||
		router.Is(name, "quit") || router.Is(name, "reset")
}

// serveDetached detaches the client from redcon, because pub/sub messages
// and MONITOR lines are written from another goroutine, and serves the
// client's commands (first pending, then whatever it sends) on a loop of
// its own until it leaves.
func (s *Server) serveDetached(c *session, pending []redcon.Command) {
	pending = cloneCommands(pending)
	dc := c.conn.Detach()
	c.mu.Lock()
	c.w = dc
	c.sub = &pubsub{
		c: c, channels: map[string]bool{}, patterns: map[string]bool{}, shards: map[string]bool{},
		acks: make(chan struct{}, 1024), done: make(chan struct{}),
	}
	c.mu.Unlock()
	s.detached.Add(1)
	go func() {
		defer func() {
			c.mu.Lock() // the receiver may be writing
			dc.Close()
			c.mu.Unlock()
			s.drop(c)
			s.detached.Add(-1)
		}()
		for !c.quit {
			var cmd redcon.Command
			if len(pending) > 0 {
				cmd, pending = pending[0], pending[1:]
			} else {
				var err error
				if cmd, err = dc.ReadCommand(); err != nil {
					return
				}
			}
			c.mu.Lock()
			c.run([]redcon.Command{cmd})
			err := dc.Flush()
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
}

// cloneCommands copies commands out of redcon's read buffer, which the
// detached reader reuses.
func cloneCommands(cmds []redcon.Command) []redcon.Command {
	out := make([]redcon.Command, len(cmds))
	for i, cmd := range cmds {
		out[i].Args = make([][]byte, len(cmd.Args))
		for j, a := range cmd.Args {
			out[i].Args[j] = append([]byte(nil), a...)
		}
	}
	return out
}

// subscribe carries SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE, their UNSUBSCRIBEs
// and a subscribed-mode PING. Replies come back on the PubSub connection
// and are written by receive, in the order Redis sent them; subscribe
// waits for them so later commands' replies keep their place.
func (c *session) subscribe(args [][]byte) {
	p := c.sub
	if p.ps == nil {
		p.ps = c.s.up.pinned[index(c.proto)].Subscribe(context.Background())
		go p.receive(p.ps)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
	defer cancel()
	names := make([]string, len(args)-1)
	for i, a := range args[1:] {
		names[i] = string(a)
	}
	expect := len(names)
	var err error
	switch name := args[0]; {
	case router.Is(name, "ping"):
		if len(args) > 2 {
			c.sendError(errArity("ping"))
			return
		}
		err, expect = p.ps.Ping(ctx, names...), 1
	case router.Is(name, "subscribe"), router.Is(name, "psubscribe"), router.Is(name, "ssubscribe"):
		if len(names) == 0 {
			c.sendError(errArity(router.Name(name)))
			return
		}
		switch {
		case router.Is(name, "subscribe"):
			err = p.ps.Subscribe(ctx, names...)
		case router.Is(name, "psubscribe"):
			err = p.ps.PSubscribe(ctx, names...)
		default:
			err = p.ps.SSubscribe(ctx, names...)
		}
	case router.Is(name, "unsubscribe"):
		expect = max(expect, len(p.channels), 1)
		err = p.ps.Unsubscribe(ctx, names...)
	case router.Is(name, "punsubscribe"):
		expect = max(expect, len(p.patterns), 1)
		err = p.ps.PUnsubscribe(ctx, names...)
	case router.Is(name, "sunsubscribe"):
		expect = max(expect, len(p.shards), 1)
		err = p.ps.SUnsubscribe(ctx, names...)
	}
	if err != nil {
		c.sendError(upstreamError(err))
		return
	}
	c.mu.Unlock()
	defer c.mu.Lock()
	timeout := time.After(c.s.up.timeout)
	for range expect {
		select {
		case <-p.acks:
		case <-timeout:
			return
		}
	}
}

// unsubscribeAll leaves every channel and pattern quietly (RESET).
func (p *pubsub) unsubscribeAll() {
	if p.ps != nil {
		p.ps.Close()
		p.ps = nil
	}
	clear(p.channels)
	clear(p.patterns)
	clear(p.shards)
	p.stopMonitor()
}

// receive writes what arrives on ps to the client until ps is closed.
func (p *pubsub) receive(ps *redis.PubSub) {
	c := p.c
	for {
		msg, err := ps.Receive(context.Background())
		if err != nil {
			if errors.Is(err, redis.ErrClosed) || c.isEnded() {
				return
			}
			select {
			case <-p.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		c.mu.Lock()
		if p.ps != ps { // RESET replaced it
			c.mu.Unlock()
			return
		}
		b, ack := p.encode(msg)
		c.w.WriteRaw(b)
		if dc, ok := c.w.(redcon.DetachedConn); ok {
			dc.Flush()
		}
		c.mu.Unlock()
		if ack {
			select {
			case p.acks <- struct{}{}:
			default:
			}
		}
	}
}

// encode turns a go-redis pub/sub value back into Redis' wire form for the
// client's protocol, and reports whether it answers a command.
func (p *pubsub) encode(msg interface{}) ([]byte, bool) {
	proto := p.c.proto
	switch m := msg.(type) {
	case *redis.Subscription:
		set := p.channels
		switch m.Kind {
		case "psubscribe", "punsubscribe":
			set = p.patterns
		case "ssubscribe", "sunsubscribe":
			set = p.shards
		}
		nilChannel := false
		switch m.Kind {
		case "subscribe", "psubscribe", "ssubscribe":
			set[m.Channel] = true
		default:
			nilChannel = m.Channel == "" && m.Count == 0 && !set[""]
			delete(set, m.Channel)
		}
		b := resp.AppendPush(nil, 3, proto)
		b = resp.AppendBulk(b, m.Kind)
		if nilChannel {
			b = resp.AppendNull(b, proto)
		} else {
			b = resp.AppendBulk(b, m.Channel)
		}
		return resp.AppendInt(b, int64(m.Count)), true
	case *redis.Message:
		if m.Pattern != "" {
			b := resp.AppendPush(nil, 4, proto)
			b = resp.AppendBulk(b, "pmessage")
			b = resp.AppendBulk(b, m.Pattern)
			b = resp.AppendBulk(b, m.Channel)
			return resp.AppendBulk(b, m.Payload), false
		}
		kind := "message"
		if p.shards[m.Channel] {
			kind = "smessage"
		}
		b := resp.AppendPush(nil, 3, proto)
		b = resp.AppendBulk(b, kind)
		b = resp.AppendBulk(b, m.Channel)
		return resp.AppendBulk(b, m.Payload), false
	case *redis.Pong:
		if proto == 3 {
			if m.Payload == "" {
				return resp.AppendStatus(nil, "PONG"), true
			}
			return resp.AppendBulk(nil, m.Payload), true
		}
		b := resp.AppendArray(nil, 2)
		b = resp.AppendBulk(b, "pong")
		return resp.AppendBulk(b, m.Payload), true
	}
	return nil, false
}

// monitor starts MONITOR on a dedicated upstream client and streams its
// lines to the client as status replies, as Redis does.
func (c *session) monitor() {
	p := c.sub
	if p.monitor != nil {
		c.sendStatus("OK")
		return
	}
	p.monitor = c.s.up.dedicated(c.proto)
	lines := make(chan string, 1024)
	cmd := p.monitor.Monitor(context.Background(), lines)
	cmd.Start()
	done := p.done
	go func() {
		for {
			select {
			case <-done:
				return
			case line := <-lines:
				c.mu.Lock()
				c.w.WriteRaw(resp.AppendStatus(nil, line))
				if dc, ok := c.w.(redcon.DetachedConn); ok {
					dc.Flush()
				}
				c.mu.Unlock()
			}
		}
	}()
}

func (p *pubsub) stopMonitor() {
	if p.monitor != nil {
		p.monitor.Close()
		p.monitor = nil
	}
}

// close ends subscriptions and MONITOR; the caller holds session.mu.
func (p *pubsub) close() {
	p.unsubscribeAll()
	select {
	case <-p.done:
	default:
		close(p.done)
	}
}

func (c *session) isEnded() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended
}
