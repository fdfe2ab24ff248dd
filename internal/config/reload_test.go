package config

import (
	"reflect"
	"strings"
	"testing"
)

// A reload names each restart-only setting that changed by its path in
// the file; reloadable ones (log_level, limits, transactions, routes) are
// not listed.
func TestRestartChangesNameFields(t *testing.T) {
	old := Default()
	cfg := Default()
	cfg.Upstream.MuxConns = 1
	cfg.TLS.CertFile = "cert.pem"
	cfg.GOMAXPROCS = 1
	cfg.AdminCommands = []string{"slowlog"}
	cfg.LogLevel = "debug"
	cfg.Limits.MaxClients = 5
	cfg.Transactions.TrackedKeys = 7
	cfg.Routes = []Route{{Name: "users"}}
	got := strings.Join(RestartChanges(old, cfg), " ")
	if got != "admin_commands tls.cert_file upstream.mux_conns gomaxprocs" {
		t.Fatalf("restart-only changes: %q", got)
	}
	if got := RestartChanges(old, old); len(got) != 0 {
		t.Fatalf("no change: %q", got)
	}
}

// Reloadable and reloadable name the same settings, and With puts back
// exactly what Reloadable took.
func TestReloadableNamesItsFields(t *testing.T) {
	ct := reflect.TypeOf(Config{})
	rt := reflect.TypeOf(Reloadable{})
	if rt.NumField() != len(reloadable) {
		t.Fatalf("Reloadable has %d fields, reloadable names %d", rt.NumField(), len(reloadable))
	}
	for i := 0; i < rt.NumField(); i++ {
		f, ok := ct.FieldByName(rt.Field(i).Name)
		if !ok || f.Type != rt.Field(i).Type {
			t.Fatalf("Reloadable.%s is not a Config field of the same type", rt.Field(i).Name)
		}
		if name := yamlName(f); name != reloadable[i] {
			t.Fatalf("Reloadable.%s is %q in the file, reloadable says %q", f.Name, name, reloadable[i])
		}
	}
	a, b := Default(), Default()
	b.LogLevel, b.Limits.MaxClients, b.Transactions.TrackedKeys, b.Routes = "debug", 3, 4, []Route{{Name: "x"}}
	if got := a.With(b.Reloadable()); !reflect.DeepEqual(got, b) {
		t.Fatalf("With(Reloadable) does not give the config back: %+v", got)
	}
}
