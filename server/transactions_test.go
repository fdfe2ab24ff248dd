package server

import (
	"strings"
	"testing"
)

// txCases are reference cases of MULTI/EXEC/WATCH, from Redis'
// tests/unit/multi.tcl and the MULTI/EXEC/WATCH docs. Each step is
// "CLIENT: COMMAND ARGS [=> expected reply]", with the reply in wire
// notation and \r\n written as a space. Every case runs against Redis
// directly and through the proxy: the replies must be identical byte for
// byte, and equal the expected reply where one is given.
var txCases = []struct {
	name  string
	steps []string
}{
	{"TX-01 basics", []string{"A: DEL mylist", "A: RPUSH mylist a", "A: RPUSH mylist b", "A: RPUSH mylist c",
		"A: MULTI => +OK", "A: LRANGE mylist 0 -1 => +QUEUED", "A: PING => +QUEUED",
		"A: EXEC => *2 *3 $1 a $1 b $1 c +PONG"}},
	{"TX-02 empty", []string{"A: MULTI => +OK", "A: EXEC => *0"}},
	{"TX-03 discard", []string{"A: DEL mylist", "A: RPUSH mylist a", "A: MULTI", "A: DEL mylist => +QUEUED",
		"A: DISCARD => +OK", "A: LRANGE mylist 0 -1 => *1 $1 a"}},
	{"TX-04 nested multi", []string{"A: MULTI => +OK", "A: MULTI => -ERR MULTI calls can not be nested",
		"A: SET n 1 => +QUEUED", "A: EXEC => *1 +OK"}},
	{"TX-05 spop", []string{"A: DEL myset", "A: SADD myset a => :1", "A: MULTI", "A: SPOP myset => +QUEUED",
		"A: EXEC => *1 $1 a", "A: EXISTS myset => :0"}},
	{"TX-06 exec without multi", []string{"A: EXEC => -ERR EXEC without MULTI"}},
	{"TX-06b discard without multi", []string{"A: DISCARD => -ERR DISCARD without MULTI"}},
	{"TX-10 unknown command", []string{"A: DEL foo1 foo2", "A: MULTI", "A: SET foo1 bar1 => +QUEUED",
		"A: NON-EXISTING-COMMAND", "A: SET foo2 bar2 => +QUEUED",
		"A: EXEC => -EXECABORT Transaction discarded because of previous errors.",
		"A: EXISTS foo1 foo2 => :0", "A: PING => +PONG"}},
	{"TX-11 arity error", []string{"A: MULTI", "A: INCR a b c => -ERR wrong number of arguments for 'incr' command",
		"A: EXEC => -EXECABORT Transaction discarded because of previous errors."}},
	{"TX-15 runtime error", []string{"A: DEL a", "A: MULTI", "A: SET a abc", "A: LPOP a", "A: INCR a",
		"A: EXEC => *3 +OK -WRONGTYPE Operation against a key holding the wrong kind of value -ERR value is not an integer or out of range"}},
	{"TX-26 watch untouched", []string{"A: WATCH x y z => +OK", "A: WATCH k => +OK", "A: MULTI", "A: PING",
		"A: EXEC => *1 +PONG"}},
	{"TX-27 same client modifies", []string{"A: SET x 30", "A: WATCH x", "A: SET x 40", "A: MULTI", "A: PING",
		"A: EXEC => *-1"}},
	{"TX-28 one of several", []string{"A: SET x 30", "A: WATCH a b x k z", "A: SET x 40", "A: MULTI", "A: PING",
		"A: EXEC => *-1"}},
	{"TX-29 other client before multi", []string{"A: SET x 30", "A: WATCH x", "B: SET x 40", "A: MULTI",
		"A: INCR x", "A: EXEC => *-1", "A: GET x => $2 40"}},
	{"TX-30 other client after multi", []string{"A: SET x 30", "A: WATCH x", "A: MULTI", "A: INCR x => +QUEUED",
		"B: SET x 40", "A: EXEC => *-1", "A: GET x => $2 40"}},
	{"TX-31 same value", []string{"A: SET x 30", "A: WATCH x", "B: SET x 30", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
	{"TX-32 read does not touch", []string{"A: SET x 30", "A: WATCH x", "B: GET x", "A: MULTI", "A: PING",
		"A: EXEC => *1 +PONG"}},
	{"TX-33 del missing", []string{"A: DEL nokey", "A: WATCH nokey", "B: DEL nokey => :0", "A: MULTI", "A: PING",
		"A: EXEC => *1 +PONG"}},
	{"TX-33 create missing", []string{"A: DEL nokey", "A: WATCH nokey", "B: SET nokey 1", "A: MULTI", "A: PING",
		"A: EXEC => *-1"}},
	{"TX-34 aba", []string{"A: DEL aba", "A: WATCH aba", "B: SET aba 1", "B: DEL aba", "A: MULTI", "A: PING",
		"A: EXEC => *-1"}},
	{"TX-35 other transaction", []string{"A: SET k 1", "A: WATCH k", "B: MULTI", "B: INCR k", "B: EXEC => *1 :2",
		"A: MULTI", "A: GET k", "A: EXEC => *-1"}},
	{"TX-36 own queued writes", []string{"A: SET k 1", "A: WATCH k", "A: MULTI", "A: SET k 2", "A: EXEC => *1 +OK"}},
	{"TX-40 watch no keys", []string{"A: WATCH => -ERR wrong number of arguments for 'watch' command"}},
	{"TX-41 watch inside multi", []string{"A: MULTI", "A: WATCH x => -ERR WATCH inside MULTI is not allowed",
		"A: EXEC => *0", "A: WATCH x", "A: MULTI", "A: WATCH y => -ERR WATCH inside MULTI is not allowed", "A: EXEC => *0"}},
	{"TX-42 flushall touches", []string{"A: SET x 30", "A: WATCH x", "A: FLUSHALL", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
	{"TX-43 flushall missing", []string{"A: DEL x", "A: WATCH x", "A: FLUSHALL", "A: MULTI", "A: PING",
		"A: EXEC => *1 +PONG"}},
	{"TX-44 flushdb other client", []string{"A: SET x 30", "A: WATCH x", "B: FLUSHDB", "A: MULTI", "A: PING",
		"A: EXEC => *-1"}},
	{"TX-45 flushdb missing", []string{"A: DEL x", "A: WATCH x", "A: FLUSHDB", "A: MULTI", "A: PING",
		"A: EXEC => *1 +PONG"}},
	{"TX-59 nothing watched after exec", []string{"A: SET x 30", "A: WATCH x", "A: MULTI", "A: PING",
		"A: EXEC => *1 +PONG", "A: SET x 40", "A: MULTI", "A: PING", "A: EXEC => *1 +PONG"}},
	{"TX-60 nothing watched after abort", []string{"A: SET x 30", "A: WATCH x", "A: SET x 40", "A: MULTI", "A: PING",
		"A: EXEC => *-1", "A: SET x 40", "A: MULTI", "A: PING", "A: EXEC => *1 +PONG"}},
	{"TX-61 unwatch", []string{"A: SET x 30", "A: WATCH x", "A: SET x 40", "A: UNWATCH => +OK", "A: MULTI",
		"A: PING", "A: EXEC => *1 +PONG"}},
	{"TX-61b unwatch then other write", []string{"A: SET x 30", "A: WATCH x", "A: UNWATCH", "B: SET x 40",
		"A: MULTI", "A: PING", "A: EXEC => *1 +PONG"}},
	{"TX-62 unwatch nothing", []string{"A: UNWATCH => +OK"}},
	{"TX-63 unwatch queued", []string{"A: MULTI", "A: UNWATCH => +QUEUED", "A: EXEC => *1 +OK"}},
	{"TX-64 discard clears dirty", []string{"A: DEL x", "A: WATCH x", "A: SET x 10", "A: MULTI", "A: DISCARD",
		"A: MULTI", "A: INCR x", "A: EXEC => *1 :11"}},
	{"TX-65 discard unwatches", []string{"A: DEL x", "A: WATCH x", "A: SET x 10", "A: MULTI", "A: DISCARD",
		"B: SET x 10", "A: MULTI", "A: INCR x", "A: EXEC => *1 :11"}},
	{"TX-69 reset", []string{"A: MULTI", "A: SET key-a a => +QUEUED", "A: RESET => +RESET",
		"A: EXEC => -ERR EXEC without MULTI", "A: EXISTS key-a => :0"}},
	{"TX-70 blocking inside multi", []string{"A: DEL empty_list el1 el2 empty_zset s", "A: XGROUP CREATE s g $ MKSTREAM",
		"A: MULTI => +OK", "A: BLPOP empty_list 0", "A: BRPOP empty_list 0", "A: BRPOPLPUSH el1 el2 0",
		"A: BLMOVE el1 el2 LEFT LEFT 0", "A: BZPOPMIN empty_zset 0", "A: BZPOPMAX empty_zset 0",
		"A: XREAD BLOCK 0 STREAMS s $", "A: XREADGROUP GROUP g c BLOCK 0 STREAMS s >",
		"A: EXEC => *8 *-1 *-1 $-1 $-1 *-1 *-1 *-1 *-1"}},
	{"TX-80 empty and nil", []string{"A: SET empty \"\"", "A: DEL nil", "A: MULTI", "A: GET empty", "A: GET nil",
		"A: MGET empty nil", "A: EXEC => *3 $0  $-1 *2 $0  $-1"}},
	{"PX-01 watch starts the pin", []string{"A: SET k 1", "A: WATCH k", "B: SET k 2", "A: MULTI", "A: SET k 3",
		"A: EXEC => *-1", "A: GET k => $1 2"}},
	{"DISCARD clears WATCH", []string{"A: SET k 1", "A: WATCH k", "A: MULTI", "A: DISCARD", "B: SET k 2",
		"A: MULTI", "A: SET k 3", "A: EXEC => *1 +OK"}},
}

// runScript runs steps against addr with fresh clients and returns every
// reply.
func runScript(t *testing.T, addr string, steps []string) []string {
	t.Helper()
	clients := map[string]*rawConn{}
	var replies []string
	for _, step := range steps {
		who, rest, _ := strings.Cut(step, ": ")
		cmd, _, _ := strings.Cut(rest, " => ")
		c := clients[who]
		if c == nil {
			c = dialRaw(t, addr)
			clients[who] = c
		}
		args := strings.Fields(cmd)
		for i, a := range args {
			if a == `""` {
				args[i] = ""
			}
		}
		replies = append(replies, c.do(args...))
	}
	return replies
}

// matchRedis runs steps against Redis and through proxy (each from an
// empty database) and fails on any reply that differs, or that differs
// from a step's expected reply.
func matchRedis(t *testing.T, proxy string, steps []string) {
	t.Helper()
	dialRaw(t, redisAddr).do("FLUSHALL")
	direct := runScript(t, redisAddr, steps)
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxied := runScript(t, proxy, steps)
	for i, step := range steps {
		if direct[i] != proxied[i] {
			t.Errorf("step %q: Redis replied %q, proxy %q", step, direct[i], proxied[i])
		}
		if _, want, ok := strings.Cut(step, " => "); ok {
			got := strings.ReplaceAll(proxied[i], "\r\n", " ")
			if strings.TrimSpace(got) != want {
				t.Errorf("step %q: proxy replied %q, want %q", step, got, want)
			}
		}
	}
}

func TestTransactionCasesMatchRedis(t *testing.T) {
	proxy := startProxy(t, nil)
	for _, tc := range txCases {
		t.Run(tc.name, func(t *testing.T) { matchRedis(t, proxy, tc.steps) })
	}
}
