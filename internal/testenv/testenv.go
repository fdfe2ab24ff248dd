// Package testenv starts throwaway Redis and PostgreSQL servers for tests
// and the demo: real servers, no mocks.
//
//   - StartRedis: one redis-server; Kill and Restart it to test outages.
//   - StartPostgres: one PostgreSQL server with a database "respite" and
//     pg_stat_statements; Halt and Resume it.
//   - StartCluster: a Redis Cluster, by default three primaries, with
//     ClusterReplicas one or more replicas each, created by redis-cli
//     --cluster create. Nodes gives the roles and slots, Kill and Restart
//     one node (its replica takes over after ClusterNodeTimeout),
//     MigrateSlot moves a slot and its keys live to another primary (clients
//     see -ASK during the move and -MOVED after it), and KeySlot computes a
//     key's slot with hash tags as Redis does.
//   - StartSentinel: a primary, its replica and one sentinel watching them;
//     PrimaryAddr asks the sentinel, Failover swaps the two servers' roles
//     through the sentinel.
//
// Each start returns once the servers are ready (for Cluster: every node
// reports cluster_state:ok and all agree on the slots; for Sentinel: the
// replica is in sync and the sentinel knows both), within bounded waits
// whose errors say what was still missing.
//
// Every server listens on a free loopback port picked at start (never the
// machine's standard 6379 or 5432), keeps its files in a fresh temporary
// directory, and runs as a child process in a process group of its own, so
// that stopping it also stops anything it forked. On Linux the children also
// get SIGKILL when the test process dies, so a crashed or timed-out test
// binary leaves no servers behind.
//
// Typical use in a package's tests:
//
//	var rdb *testenv.Redis
//
//	func TestMain(m *testing.M) {
//		var err error
//		rdb, err = testenv.StartRedis()
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		code := m.Run()
//		rdb.Stop()
//		os.Exit(code)
//	}
//
// The binaries come from PATH (PostgreSQL's also from the newest
// /usr/lib/postgresql/*/bin; redis-cli, for StartCluster, from the Debian
// package redis-tools; the sentinel is redis-server --sentinel). When one
// is missing the error says which Debian package to install.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// reservedPorts are never handed out by FreePort: the machine's own Redis
// and PostgreSQL, and the proxy's default listener.
var reservedPorts = map[int]bool{6379: true, 6380: true, 5432: true}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago: it
// listens on port 0, reads the port the kernel chose and closes the
// listener. Another process may take the port before the caller binds it,
// which is why StartRedis and StartPostgres retry with a new port when the
// server cannot bind.
func FreePort() (int, error) {
	for i := 0; i < 10; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("testenv: find a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !reservedPorts[port] {
			return port, nil
		}
	}
	return 0, errors.New("testenv: find a free port: kernel kept returning reserved ports")
}

// errBind marks a start that failed because the port was taken.
var errBind = errors.New("port already in use")

// proc is one running server process, the leader of its own process group.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // cmd.Wait's result, valid after done is closed
}

// startProc starts cmd in a new process group, with stdout and stderr
// appended to logPath, and reaps it in the background.
func startProc(cmd *exec.Cmd, logPath string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy once started
	cmd.Stdout = logf
	cmd.Stderr = logf
	setProcAttr(cmd)
	if err := spawn(cmd); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the group leader (SIGKILL goes to the whole group),
// waits up to grace for it to exit, then SIGKILLs the whole group. It
// returns once the leader has been reaped and the rest of the group
// (children it forked, such as redis-server's replication child) is gone
// too, or after groupGoneTimeout. Calling it on a process that already
// died is fine.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	pid := p.cmd.Process.Pid
	if !p.exited() {
		if sig == syscall.SIGKILL {
			syscall.Kill(-pid, syscall.SIGKILL)
		} else {
			syscall.Kill(pid, sig)
		}
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	// Whatever is left of the group (forked children, or the leader after
	// the grace period) goes now.
	syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
	// SIGKILL is delivered asynchronously: a forked child may still be
	// dying, or waiting to be reaped by its new parent, when the leader
	// has been reaped.
	for deadline := time.Now().Add(groupGoneTimeout); syscall.Kill(-pid, 0) == nil && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
}

// groupGoneTimeout bounds stop's wait for the rest of a process group.
const groupGoneTimeout = 5 * time.Second

// logTail returns the last lines of the log file at path, for error
// messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	lines := strings.Split(s, "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// notFound is the error for a missing binary, with the Debian install hint.
func notFound(bin, pkg string) error {
	return fmt.Errorf("%s not found: install it with \"apt-get install -y %s\"", bin, pkg)
}

// spawnCh feeds spawn's dedicated OS thread; see spawn.
var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

type spawnReq struct {
	cmd *exec.Cmd
	res chan error
}

// spawn starts cmd from one goroutine locked to an OS thread that never
// exits. Linux sends the parent-death signal when the thread that forked
// the child exits, not the process; starting every child from a thread that
// lives as long as the process makes Pdeathsig mean "the test process died".
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go spawnLoop(spawnCh)
	})
	res := make(chan error, 1)
	spawnCh <- spawnReq{cmd, res}
	return <-res
}

// ownerFile, in each temporary directory, holds the pid of the process that
// created it.
const ownerFile = "owner.pid"

// makeTempDir creates a directory named prefix* under base, records the
// calling process as its owner, and first removes such directories left
// behind by processes that no longer exist (a test binary killed by
// SIGKILL cannot clean up; on Linux its servers die with it).
func makeTempDir(base, prefix string) (string, error) {
	if base == "" {
		base = os.TempDir()
	}
	stale, _ := filepath.Glob(filepath.Join(base, prefix+"*"))
	for _, d := range stale {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue // not ours, or its owner has not written the file yet
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
	dir, err := os.MkdirTemp(base, prefix)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// runTool runs a short-lived program such as redis-cli to completion, in a
// process group of its own like the servers, and returns its combined
// output. After timeout it SIGKILLs the group and returns an error.
func runTool(cmd *exec.Cmd, timeout time.Duration) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	setProcAttr(cmd)
	if err := spawn(cmd); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.Bytes(), err
	case <-time.After(timeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return out.Bytes(), fmt.Errorf("killed after %v", timeout)
	}
}

// poll calls check until it returns nil, first after 5ms, then at
// doubling intervals up to maxPollInterval, and gives up when ctx is done,
// returning check's last error (so the caller's message says what was
// still wrong).
func poll(ctx context.Context, check func() error) error {
	interval := 5 * time.Millisecond
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(interval):
		}
		interval = min(2*interval, maxPollInterval)
	}
}

// maxPollInterval is the longest pause between two checks of poll.
const maxPollInterval = 100 * time.Millisecond

// pollFor is poll with a deadline of timeout from now; the error says how
// long it waited.
func pollFor(timeout time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := poll(ctx, check); err != nil {
		return fmt.Errorf("not within %v: %w", timeout, err)
	}
	return nil
}
