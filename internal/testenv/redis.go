package testenv

import (
	"bufio"
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

// Redis is a throwaway redis-server started by StartRedis. It has no
// password, no persistence (--save "" --appendonly no) and listens on
// 127.0.0.1 only. Its methods are safe for concurrent use.
type Redis struct {
	// Addr is "127.0.0.1:Port", ready for a Redis client.
	Addr string
	// Port is the TCP port the server listens on; it stays the same across
	// Restart.
	Port int
	// Dir is the server's temporary working directory (--dir); its log is
	// Dir/redis.log. Stop removes it.
	Dir string

	bin   string
	conf  string   // config file given before the flags; "" for none
	extra []string // flags after the standard ones, kept for Restart

	mu      sync.Mutex
	p       *proc // nil while not running
	removed bool  // Stop has run
}

// redisStartTimeout bounds how long one start waits for PING to answer.
const redisStartTimeout = 10 * time.Second

// StartRedis starts redis-server (found on PATH) on a free loopback port
// and returns once it answers PING (typically within a few tens of
// milliseconds). extraArgs are appended to the command line, for example
// "--requirepass", "secret" or "--maxmemory", "10mb"; they are used again
// by Restart. Call Stop when done.
func StartRedis(extraArgs ...string) (*Redis, error) {
	extra := append([]string(nil), extraArgs...)
	return startRedisServer("respite-redis-", func(r *Redis) error {
		r.extra = extra
		return nil
	})
}

// startRedisServer is StartRedis for every kind of redis-server this
// package runs: it makes a temporary directory named prefix*, and before
// each attempt on a new free port it calls setup, which sets r.extra and
// r.conf for that port (and may write files into r.Dir). What setup sets is
// used again by Restart.
func startRedisServer(prefix string, setup func(r *Redis) error) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, notFound("redis-server", "redis-server")
	}
	dir, err := makeTempDir("", prefix)
	if err != nil {
		return nil, fmt.Errorf("testenv: redis temp dir: %w", err)
	}
	r := &Redis{Dir: dir, bin: bin}
	for attempt := 0; ; attempt++ {
		port, err := FreePort()
		if err == nil {
			r.Port = port
			r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			err = setup(r)
		}
		if err == nil {
			err = r.start()
		}
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, errBind) || attempt >= 4 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

// start launches redis-server on r.Port and waits for PING; r.mu must be
// held or r not yet shared. The error wraps errBind when the port was taken.
func (r *Redis) start() error {
	var args []string
	if r.conf != "" {
		args = append(args, r.conf)
	}
	args = append(args,
		"--port", strconv.Itoa(r.Port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.Dir,
		"--daemonize", "no",
		"--logfile", "",
	)
	args = append(args, r.extra...)
	cmd := exec.Command(r.bin, args...)
	cmd.Dir = r.Dir
	logPath := filepath.Join(r.Dir, "redis.log")
	p, err := startProc(cmd, logPath)
	if err != nil {
		return fmt.Errorf("testenv: start redis-server: %w", err)
	}
	deadline := time.Now().Add(redisStartTimeout)
	for {
		if p.exited() {
			tail := logTail(logPath)
			if strings.Contains(tail, "Address already in use") {
				return fmt.Errorf("testenv: redis-server on port %d: %w", r.Port, errBind)
			}
			return fmt.Errorf("testenv: redis-server exited at start (%v); log:\n%s", p.err, tail)
		}
		if pingRedis(r.Addr) == nil {
			r.p = p
			return nil
		}
		if time.Now().After(deadline) {
			p.stop(syscall.SIGKILL, 0)
			return fmt.Errorf("testenv: redis-server on %s did not answer PING within %v; log:\n%s",
				r.Addr, redisStartTimeout, logTail(logPath))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pingRedis sends an inline PING and wants +PONG (or -NOAUTH, which proves
// a password-protected server is up).
func pingRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimSpace(line)
	if line == "+PONG" || strings.HasPrefix(line, "-NOAUTH") {
		return nil
	}
	return fmt.Errorf("PING answered %q", line)
}

// Kill stops the server abruptly (SIGKILL to its process group), as if it
// crashed, and keeps Dir. Restart brings it back on the same port. Killing
// a server that is not running does nothing.
func (r *Redis) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kill()
}

func (r *Redis) kill() {
	if r.p != nil {
		r.p.stop(syscall.SIGKILL, 0)
		r.p = nil
	}
}

// Restart stops the server if it is running (as Kill does) and starts it
// again on the same Port with the same arguments, returning once it answers
// PING. The data set starts empty. If another process grabbed the port in
// between, it keeps trying for up to 5 seconds.
func (r *Redis) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.removed {
		return errors.New("testenv: Restart after Stop")
	}
	r.kill()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := r.start()
		if err == nil || !errors.Is(err, errBind) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop kills the server and removes Dir. It is idempotent and fine to call
// after Kill or after the server died on its own.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kill()
	if !r.removed {
		os.RemoveAll(r.Dir)
		r.removed = true
	}
}

// Freeze stops the server's process (SIGSTOP) without closing its
// connections, as a server stalled by its host would be: it reads, writes
// and acknowledges nothing until the returned thaw (SIGCONT) runs. Freezing
// a server that is not running does nothing.
func (r *Redis) Freeze() (thaw func()) {
	pid := r.pid()
	if pid == 0 {
		return func() {}
	}
	syscall.Kill(pid, syscall.SIGSTOP)
	return func() { syscall.Kill(pid, syscall.SIGCONT) }
}

// pid is the process id of the running server, 0 while it is not running.
func (r *Redis) pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p == nil || r.p.exited() {
		return 0
	}
	return r.p.cmd.Process.Pid
}
