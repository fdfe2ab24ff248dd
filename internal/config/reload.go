package config

import (
	"slices"
	"strings"
)

// Reloadable are the settings a reload applies while the proxy runs
// (SIGHUP, RESPITE RELOAD). Every other setting is read once at start:
// a reload that changes it is told so (RestartChanges) and goes on
// without it.
type Reloadable struct {
	LogLevel     string
	Limits       Limits
	Transactions Transactions
	Routes       []Route
}

// reloadable are Reloadable's settings as the file names them.
var reloadable = []string{"log_level", "limits", "transactions", "routes"}

// Reloadable returns c's reloadable settings.
func (c Config) Reloadable() Reloadable {
	return Reloadable{LogLevel: c.LogLevel, Limits: c.Limits, Transactions: c.Transactions, Routes: c.Routes}
}

// With returns c with r's settings in place of its own.
func (c Config) With(r Reloadable) Config {
	c.LogLevel, c.Limits, c.Transactions, c.Routes = r.LogLevel, r.Limits, r.Transactions, r.Routes
	return c
}

// RestartChanges names the settings that differ between old and next
// and take a restart to apply, as paths of the file
// (upstream.mux_conns, tls.cert_file).
func RestartChanges(old, next Config) []string {
	var out []string
	for _, path := range Changed(old, next) {
		top, _, _ := strings.Cut(path, ".")
		if !slices.Contains(reloadable, top) {
			out = append(out, path)
		}
	}
	return out
}
