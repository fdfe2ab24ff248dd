package config

import (
	"strings"
	"testing"
	"time"
)

// Off by default, with nothing filled in; logical and notify fill their
// defaults.
func TestInvalidationDefaults(t *testing.T) {
	cfg, err := Parse("ok.yaml", []byte(route))
	if err != nil {
		t.Fatal(err)
	}
	if inv := cfg.Postgres.Invalidation; inv.Mode != InvalidationOff || inv.Slot != "" || cfg.Routes[0].TrackChanges {
		t.Fatalf("default: %+v", inv)
	}
	for _, mode := range []string{"logical", "notify"} {
		text := strings.Replace(route, "postgres:\n", "postgres:\n  invalidation:\n    mode: "+mode+"\n", 1) + "    track_changes: true\n"
		cfg, err := Parse("ok.yaml", []byte(text))
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		inv := cfg.Postgres.Invalidation
		if inv.Mode != mode || inv.Slot != "respite" || inv.Publication != "respite" || inv.Channel != "respite_invalidate" ||
			inv.StatusInterval != Duration(time.Second) || inv.MaxLag != Duration(10*time.Second) || inv.Lease != Duration(5*time.Second) {
			t.Fatalf("%s defaults: %+v", mode, inv)
		}
		if !cfg.Routes[0].TrackChanges {
			t.Fatal("track_changes lost")
		}
	}
}

// Every bad invalidation setting is refused with its file, line and field.
func TestInvalidationErrors(t *testing.T) {
	inv := func(lines ...string) string {
		return strings.Replace(route, "postgres:\n", "postgres:\n  invalidation:\n    "+strings.Join(lines, "\n    ")+"\n", 1)
	}
	const track = "    track_changes: true\n"
	for _, tc := range []struct{ yaml, want string }{
		{inv("mode: replication") + track, `bad.yaml:3: postgres.invalidation.mode: "replication" is not a mode (off, logical or notify)`},
		{route + track, "bad.yaml:10: routes[0].track_changes: needs postgres.invalidation.mode logical or notify (it is off)"},
		{inv("mode: logical"), "bad.yaml:3: postgres.invalidation.mode: logical, but no route has track_changes: true (opt routes in, or set mode: off)"},
		{inv("mode: logical", "slot: My-Slot") + track, `bad.yaml:4: postgres.invalidation.slot: "My-Slot" is not accepted (lower-case letters, digits and underscores, not starting with a digit, at most 63)`},
		{inv("mode: logical", "publication: \"pub;drop\"") + track, `bad.yaml:4: postgres.invalidation.publication: "pub;drop" is not accepted (lower-case letters, digits and underscores, not starting with a digit, at most 63)`},
		{inv("mode: notify", "channel: "+strings.Repeat("c", 64)) + track, `bad.yaml:4: postgres.invalidation.channel: "` + strings.Repeat("c", 64) + `" is not accepted (lower-case letters, digits and underscores, not starting with a digit, at most 63)`},
		{inv("mode: logical", "status_interval: 1ms") + track, "bad.yaml:4: postgres.invalidation.status_interval: 1ms is below 10ms (default 1s)"},
		{inv("mode: logical", "status_interval: 1s", "lease: 1s") + track, "bad.yaml:5: postgres.invalidation.lease: 1s is shorter than two status intervals (2s): the leader renews it every status_interval"},
		{inv("mode: logical", "max_lag: 2s") + track, "bad.yaml:4: postgres.invalidation.max_lag: 2s is shorter than the lease (5s): a leader's failover alone would exceed it"},
		{inv("mode: logical", "max_lag: 2") + track, "bad.yaml:4: postgres.invalidation.max_lag: 2 has no unit (add one, e.g. 2s)"},
		{inv("mode: logical", "slott: x") + track, "bad.yaml:4: postgres.invalidation.slott: unknown field; did you mean slot? (accepted: mode, slot, publication, channel, status_interval, max_lag, lease)"},
		{route + "    track_changes: sometimes\n", "bad.yaml:10: routes[0].track_changes: sometimes is not a boolean (true or false)"},
	} {
		_, err := Parse("bad.yaml", []byte(tc.yaml))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s\ngot  %v\nwant %s", tc.yaml, err, tc.want)
		}
	}
}
