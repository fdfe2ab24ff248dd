package config

import (
	"fmt"
	"regexp"
	"time"
)

// pgName is a name the proxy gives PostgreSQL objects (slot, publication,
// channel): what a replication slot accepts (lower-case letters, digits,
// underscores), at most 63 bytes (NAMEDATALEN - 1).
var pgName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// validateInvalidation fills postgres.invalidation's defaults and checks
// it against the routes that opt in (track_changes).
func (c *Config) validateInvalidation() *fieldError {
	inv := &c.Postgres.Invalidation
	var tracked []int
	for i, r := range c.Routes {
		if r.TrackChanges {
			if r.Policy == WriteBack {
				return bad(fmt.Sprintf("routes[%d].track_changes", i), "not for write-back routes: the cache holds writes PostgreSQL does not have yet, which an external write's invalidation would hide (use cache-aside or write-through)")
			}
			tracked = append(tracked, i)
		}
	}
	switch inv.Mode {
	case "":
		inv.Mode = InvalidationOff
	case InvalidationOff, InvalidationLogical, InvalidationNotify:
	default:
		return bad("postgres.invalidation.mode", "%q is not a mode (off, logical or notify)", inv.Mode)
	}
	if inv.Mode == InvalidationOff {
		if len(tracked) > 0 {
			e := bad(fmt.Sprintf("routes[%d].track_changes", tracked[0]), "needs postgres.invalidation.mode logical or notify (it is off)")
			return e
		}
		return nil
	}
	if len(tracked) == 0 {
		return bad("postgres.invalidation.mode", "%s, but no route has track_changes: true (opt routes in, or set mode: off)", inv.Mode)
	}
	for _, f := range []struct {
		path string
		v    *string
		def  string
	}{
		{"postgres.invalidation.slot", &inv.Slot, "respite"},
		{"postgres.invalidation.publication", &inv.Publication, "respite"},
		{"postgres.invalidation.channel", &inv.Channel, "respite_invalidate"},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
		if !pgName.MatchString(*f.v) {
			return bad(f.path, "%q is not accepted (lower-case letters, digits and underscores, not starting with a digit, at most 63)", *f.v)
		}
	}
	if inv.StatusInterval == 0 {
		inv.StatusInterval = Duration(time.Second)
	}
	if inv.MaxLag == 0 {
		inv.MaxLag = Duration(10 * time.Second)
	}
	if inv.Lease == 0 {
		inv.Lease = Duration(5 * time.Second)
	}
	if inv.StatusInterval < Duration(10*time.Millisecond) {
		return bad("postgres.invalidation.status_interval", "%v is below 10ms (default 1s)", time.Duration(inv.StatusInterval))
	}
	if inv.Lease < 2*inv.StatusInterval {
		return bad("postgres.invalidation.lease", "%v is shorter than two status intervals (%v): the leader renews it every status_interval", time.Duration(inv.Lease), time.Duration(2*inv.StatusInterval))
	}
	if inv.MaxLag < inv.Lease {
		return bad("postgres.invalidation.max_lag", "%v is shorter than the lease (%v): a leader's failover alone would exceed it", time.Duration(inv.MaxLag), time.Duration(inv.Lease))
	}
	return nil
}
