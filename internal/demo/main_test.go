package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/testenv"
)

// output is a file the demo writes its output to while the test reads it.
type output string

func (o output) String() string {
	b, _ := os.ReadFile(string(o))
	return string(b)
}

// The demo reloads the file it was given: after an edit, SIGHUP to the
// demo and RESPITE RELOAD both apply it (RESPITE ROUTES shows the new ttl),
// the demo and its throwaway servers keep running, and an edit that does
// not validate is refused naming that file and line.
func TestDemoReloadsTheEditedFile(t *testing.T) {
	dir := t.TempDir()
	demo := filepath.Join(dir, "demo")
	if out, err := exec.Command("go", "build", "-o", demo, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ports := make([]int, 3)
	for i := range ports {
		p, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	orig, err := os.ReadFile("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(orig)
	for _, r := range [][2]string{
		{"listen: 127.0.0.1:6380", "listen: " + listen},
		{"admin: 127.0.0.1:9121", fmt.Sprintf("admin: 127.0.0.1:%d", ports[1])},
		{"addr: 127.0.0.1:6379", fmt.Sprintf("addr: 127.0.0.1:%d", ports[2])}, // nothing there: a throwaway Redis
		{"    ttl: 1h\n", "    ttl: 1h # the users route\n"},
	} {
		if !strings.Contains(text, r[0]) {
			t.Fatalf("config.yaml has no %q", r[0])
		}
		text = strings.Replace(text, r[0], r[1], 1)
	}
	cfgFile := filepath.Join(dir, "config.yaml")
	edit := func(ttl string) {
		t.Helper()
		lines := strings.Split(text, "\n")
		for i, l := range lines {
			if strings.HasSuffix(l, "# the users route") {
				lines[i] = "    ttl: " + ttl + " # the users route"
			}
		}
		if err := os.WriteFile(cfgFile, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	edit("1h")

	out := output(filepath.Join(dir, "demo.log"))
	log, err := os.Create(string(out))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(demo, "-config", cfgFile)
	cmd.Stdout, cmd.Stderr = log, log
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "RESPITE_PG_DSN=") {
			env = append(env, e)
		}
	}
	cmd.Env = env // a throwaway PostgreSQL, and so a throwaway Redis
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when the demo has ended, with waitErr
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) // the throwaway servers stop with it
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})

	c := redis.NewClient(&redis.Options{Addr: listen, Protocol: 2, MaxRetries: -1})
	defer c.Close()
	ctx := context.Background()
	waitFor(t, out, exited, 120*time.Second, "the demo to serve", func() bool { return c.Ping(ctx).Err() == nil })
	if got := usersTTL(t, c); got != "1h0m0s" {
		t.Fatalf("users ttl at start: %q", got)
	}

	edit("7m")
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, out, exited, 10*time.Second, "SIGHUP to apply ttl: 7m", func() bool { return usersTTL(t, c) == "7m0s" })
	if !strings.Contains(out.String(), "SIGHUP: the proxy reloads") {
		t.Errorf("the demo did not log the SIGHUP:\n%s", out)
	}

	edit("9m")
	if got, err := c.Do(ctx, "RESPITE", "RELOAD").Result(); err != nil || got != "OK" {
		t.Fatalf("RESPITE RELOAD: %v %v, want OK (the -set overrides leave nothing that needs a restart)", got, err)
	}
	if got := usersTTL(t, c); got != "9m0s" {
		t.Fatalf("users ttl after RESPITE RELOAD: %q, want 9m0s", got)
	}

	edit("60")
	err = c.Do(ctx, "RESPITE", "RELOAD").Err()
	ttlLine := strings.Count(text[:strings.Index(text, "# the users route")], "\n") + 1
	if want := fmt.Sprintf("%s:%d: routes[0].ttl: 60 has no unit (add one, e.g. 60s)", cfgFile, ttlLine); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("reload of ttl: 60: %v, want it to name %q", err, want)
	}

	// Still running, on the same throwaway servers: a plain key and a
	// routed one (a row of the demo's users table).
	select {
	case <-exited:
		t.Fatalf("the demo ended: %v\n%s", waitErr, out)
	default:
	}
	if err := c.Set(ctx, "demo-test", "x", 0).Err(); err != nil {
		t.Errorf("SET after the reloads: %v", err)
	}
	if v, err := c.Get(ctx, "user:1").Result(); err != nil || !strings.Contains(v, `"id"`) {
		t.Errorf("GET user:1 after the reloads: %q %v", v, err)
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("exit after Ctrl-C: %v\n%s", waitErr, out)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("the demo did not stop after SIGINT")
	}
}

// usersTTL is the ttl RESPITE ROUTES gives for the users route.
func usersTTL(t *testing.T, c *redis.Client) string {
	t.Helper()
	routes, err := c.Do(context.Background(), "RESPITE", "ROUTES").Slice()
	if err != nil {
		t.Fatalf("RESPITE ROUTES: %v", err)
	}
	for _, r := range routes {
		kv, _ := r.([]any)
		m := map[any]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		if m["name"] == "users" {
			s, _ := m["ttl"].(string)
			return s
		}
	}
	t.Fatalf("RESPITE ROUTES has no users route: %v", routes)
	return ""
}

// waitFor polls ok until it holds, the demo exits or within passes.
func waitFor(t *testing.T, out output, exited chan struct{}, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		select {
		case <-exited:
			t.Fatalf("the demo ended waiting for %s:\n%s", what, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s:\n%s", what, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
