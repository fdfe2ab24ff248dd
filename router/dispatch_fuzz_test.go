package router

import (
	"strings"
	"testing"

	"github.com/respite/respite/internal/config"
)

// FuzzDispatch runs any command (arguments split at spaces; "\x00" stands
// for an empty one) through what the proxy does with a command before
// anything reaches Redis: Classify against route sets, then Dispatch and
// Next in every session state, and the record's cluster helpers. No input
// may panic (a bare CLIENT once did, in the server). scripts/fuzz.sh runs
// it; its seeds run with every go test.
func FuzzDispatch(f *testing.F) {
	for _, s := range []string{
		"CLIENT", "CLIENT REPLY OFF", "CLIENT KILL ID 1", "CONFIG GET requirepass", "MULTI", "EXEC",
		"SUBSCRIBE a b", "UNSUBSCRIBE", "PUBLISH respite:x m", "SELECT 3", "SWAPDB 0 3",
		"MOVE respite:neg:user:1 0", "COPY a b DB 0 REPLACE", "FLUSHALL ASYNC", "MGET user:1 pv:2 x",
		"MSET user:1 {} pv:2 3", "BLPOP l 0", "XREAD BLOCK 0 STREAMS s $", "EVAL s 2 a b",
		"HELLO 3 AUTH u p", "RESPITE QUEUE", "RESPITE", "SORT a BY b STORE c", "GEORADIUS a 0 0 1 km STORE b",
		"MIGRATE h 1 \x00 0 1 KEYS a b", "OBJECT", "XADD respite:wb:pv * k v", "SET user:01 x EX 10",
	} {
		f.Add(s)
	}
	sets := []*Routes{nil,
		NewRoutes([]Route{{Name: "users", Prefix: "user:", Policy: config.CacheAside, Format: config.FormatJSON}}),
		NewRoutes([]Route{{Name: "pv", Prefix: "pv:", Policy: config.WriteBack, Format: config.FormatValue},
			{Name: "users", Prefix: "user:", Policy: config.WriteThrough, Format: config.FormatHash}}),
	}
	f.Fuzz(func(t *testing.T, s string) {
		var args [][]byte
		for _, a := range strings.Split(s, " ") {
			args = append(args, []byte(strings.ReplaceAll(a, "\x00", "")))
		}
		var slots []int
		for _, rs := range sets {
			var cmd Command
			Classify(&cmd, args, rs)
			cmd.Name()
			cmd.Write()
			cmd.ClusterSpread()
			slots = cmd.SlotArgs(slots[:0])
			cmd.BlockTimeout()
			for _, col := range dispatchStates {
				st := col.st
				st.DefaultDB = "0"
				d := Dispatch(st, &cmd)
				if d.Path == PathRefused && d.Err == "" {
					t.Fatalf("%q in %s: refused without an error", s, col.name)
				}
				Dispatch(st.Next(&cmd), &cmd)
			}
		}
	})
}
