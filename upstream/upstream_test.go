package upstream

import (
	"runtime"
	"testing"

	"github.com/respite/respite/internal/config"
)

// upstream.mux_conns 0 (the default) opens one multiplexed connection per
// GOMAXPROCS (at most 16) for each RESP version; a positive value is taken as given.
func TestMuxConnsDefaultsToGOMAXPROCS(t *testing.T) {
	for _, tc := range []struct{ set, want int }{
		{0, min(runtime.GOMAXPROCS(0), 16)},
		{3, 3},
	} {
		cfg := config.Default().Upstream
		cfg.MuxConns = tc.set
		u, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for i := range u.mux {
			if got := len(u.mux[i].conns); got != tc.want {
				t.Errorf("mux_conns %d: RESP%d multiplexer has %d connections, want %d", tc.set, i+2, got, tc.want)
			}
		}
		u.Close()
	}
}
