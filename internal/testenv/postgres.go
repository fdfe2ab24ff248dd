package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Postgres is a throwaway PostgreSQL server started by StartPostgres: trust
// authentication for user "postgres", a database "respite" with the
// pg_stat_statements extension, durability off (fsync, synchronous_commit,
// full_page_writes) for speed. Its methods are safe for concurrent use.
type Postgres struct {
	// DSN is "postgres://postgres@127.0.0.1:Port/respite?sslmode=disable".
	DSN string
	// Port is the TCP port the server listens on; it stays the same across
	// Halt and Resume.
	Port int
	// Host is the address the server listens on, always "127.0.0.1".
	Host string
	// Dir is the temporary directory holding the data directory
	// (Dir/data), the Unix socket directory (Dir/sock) and the server log
	// (Dir/postgres.log). Stop removes it.
	Dir string

	bins pgBins
	args []string            // extra server settings, "-c name=value" each
	cred *syscall.Credential // run the server as this user; nil: as ourselves

	mu      sync.Mutex
	p       *proc // nil while not running
	removed bool  // Stop has run
}

type pgBins struct{ postgres, initdb, psql, isready string }

const (
	pgStartTimeout = 30 * time.Second // one start, until pg_isready says yes
	pgStopTimeout  = 30 * time.Second // fast shutdown, before SIGKILL
)

// pgInstallHint is appended to errors about the pg_stat_statements files.
const pgInstallHint = `pg_stat_statements is missing: on Debian 12 it ships in the ` +
	`postgresql-NN server package itself (postgresql-contrib is a metapackage ` +
	`depending on it): install it with "apt-get install -y postgresql postgresql-contrib"`

// StartPostgres runs initdb in a new temporary directory, starts postgres
// on a free loopback port, creates the database "respite" with the
// pg_stat_statements extension, and returns once that is done (typically
// well under two seconds, most of it initdb).
//
// PostgreSQL refuses to run as root: when the caller is root, initdb and
// postgres run as the system user "postgres" (created by the Debian
// postgresql package) and Dir is owned by that user. Call Stop when done.
//
// settings are server settings given as "name=value" (each passed as
// -c name=value, after the defaults, so they win), e.g. "wal_level=logical"
// for logical replication.
func StartPostgres(settings ...string) (*Postgres, error) {
	bins, err := findPGBins()
	if err != nil {
		return nil, err
	}
	pg := &Postgres{Host: "127.0.0.1", bins: bins}
	for _, s := range settings {
		pg.args = append(pg.args, "-c", s)
	}
	var uid, gid = -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, errors.New(`testenv: running as root, and PostgreSQL refuses to: ` +
				`no "postgres" user to run it as: install it with "apt-get install -y postgresql" (which creates the user)`)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		pg.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	base := os.TempDir()
	if pg.cred != nil && !traversable(base) {
		base = "/tmp"
	}
	pg.Dir, err = makeTempDir(base, "respite-pg-")
	if err != nil {
		return nil, fmt.Errorf("testenv: postgres temp dir: %w", err)
	}
	fail := func(err error) (*Postgres, error) {
		os.RemoveAll(pg.Dir)
		return nil, err
	}
	if err := os.Mkdir(pg.sockDir(), 0o700); err != nil {
		return fail(err)
	}
	if pg.cred != nil {
		for _, d := range []string{pg.Dir, pg.sockDir()} {
			if err := os.Chown(d, uid, gid); err != nil {
				return fail(fmt.Errorf("testenv: chown %s to postgres: %w", d, err))
			}
		}
	}

	initdb := exec.Command(bins.initdb, "-D", pg.dataDir(), "-U", "postgres",
		"-E", "UTF8", "--locale=C", "-A", "trust", "--no-sync")
	initdb.Dir = pg.Dir
	initdb.Env = pgEnv()
	if pg.cred != nil {
		initdb.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred}
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("testenv: initdb: %v\n%s", err, out))
	}

	for attempt := 0; ; attempt++ {
		port, err := FreePort()
		if err != nil {
			return fail(err)
		}
		pg.setPort(port)
		err = pg.start()
		if err == nil {
			break
		}
		if !errors.Is(err, errBind) || attempt >= 4 {
			return fail(err)
		}
	}
	if _, err := pg.psql("postgres", "CREATE DATABASE respite"); err != nil {
		pg.Stop()
		return nil, err
	}
	if err := pg.Exec("CREATE EXTENSION pg_stat_statements"); err != nil {
		pg.Stop()
		if strings.Contains(err.Error(), "control file") {
			return nil, fmt.Errorf("%w\n%s", err, pgInstallHint)
		}
		return nil, err
	}
	return pg, nil
}

func (pg *Postgres) dataDir() string { return filepath.Join(pg.Dir, "data") }
func (pg *Postgres) sockDir() string { return filepath.Join(pg.Dir, "sock") }
func (pg *Postgres) logPath() string { return filepath.Join(pg.Dir, "postgres.log") }

func (pg *Postgres) setPort(port int) {
	pg.Port = port
	pg.DSN = fmt.Sprintf("postgres://postgres@%s:%d/respite?sslmode=disable", pg.Host, port)
}

// start launches postgres on pg.Port and waits until it accepts
// connections; pg.mu must be held or pg not yet shared. The error wraps
// errBind when the port was taken.
func (pg *Postgres) start() error {
	cmd := exec.Command(pg.bins.postgres,
		"-D", pg.dataDir(),
		"-p", strconv.Itoa(pg.Port),
		"-k", pg.sockDir(),
		"-c", "listen_addresses="+pg.Host,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "shared_preload_libraries=pg_stat_statements",
		"-c", "pg_stat_statements.track=all",
	)
	cmd.Args = append(cmd.Args, pg.args...)
	cmd.Dir = pg.Dir
	cmd.Env = pgEnv()
	if pg.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred}
	}
	p, err := startProc(cmd, pg.logPath())
	if err != nil {
		return fmt.Errorf("testenv: start postgres: %w", err)
	}
	deadline := time.Now().Add(pgStartTimeout)
	for {
		if p.exited() {
			tail := logTail(pg.logPath())
			switch {
			case strings.Contains(tail, "could not bind") || strings.Contains(tail, "already in use"):
				return fmt.Errorf("testenv: postgres on port %d: %w", pg.Port, errBind)
			case strings.Contains(tail, `"pg_stat_statements"`):
				return fmt.Errorf("testenv: postgres exited at start (%v); log:\n%s\n%s", p.err, tail, pgInstallHint)
			}
			return fmt.Errorf("testenv: postgres exited at start (%v); log:\n%s", p.err, tail)
		}
		// pg_isready exits 0 once connections are accepted, 1 while the
		// server is starting up, 2 when nothing answers yet.
		ready := exec.Command(pg.bins.isready, "-q", "-h", pg.Host, "-p", strconv.Itoa(pg.Port), "-t", "1")
		ready.Env = pgEnv()
		if ready.Run() == nil {
			pg.p = p
			return nil
		}
		if time.Now().After(deadline) {
			p.stop(syscall.SIGKILL, 0)
			return fmt.Errorf("testenv: postgres on port %d not ready within %v; log:\n%s",
				pg.Port, pgStartTimeout, logTail(pg.logPath()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// halt does a fast shutdown (SIGINT: abort sessions, checkpoint, exit),
// SIGKILLing the process group after pgStopTimeout. pg.mu must be held.
func (pg *Postgres) halt() {
	if pg.p != nil {
		pg.p.stop(syscall.SIGINT, pgStopTimeout)
		pg.p = nil
	}
}

// Halt stops the server (fast shutdown: open sessions are cut off) and
// keeps its data; Resume starts it again. Halting a server that is not
// running does nothing.
func (pg *Postgres) Halt() {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	pg.halt()
}

// Resume starts a halted server again on the same Port with the same data
// and returns once it accepts connections. If another process grabbed the
// port in between, it keeps trying for up to 5 seconds. Resuming a running
// server does nothing.
func (pg *Postgres) Resume() error {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	if pg.removed {
		return errors.New("testenv: Resume after Stop")
	}
	if pg.p != nil && !pg.p.exited() {
		return nil
	}
	pg.p = nil
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := pg.start()
		if err == nil || !errors.Is(err, errBind) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop shuts the server down (fast shutdown) and removes Dir. It is
// idempotent and fine to call after Halt or after the server died.
func (pg *Postgres) Stop() {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	pg.halt()
	if !pg.removed {
		os.RemoveAll(pg.Dir)
		pg.removed = true
	}
}

// Exec runs sql (one or more statements separated by semicolons) in the
// respite database with psql, stopping at the first error, whose message
// the returned error carries.
func (pg *Postgres) Exec(sql string) error {
	_, err := pg.psql("respite", sql)
	return err
}

// Query runs sql in the respite database with psql in unaligned,
// tuples-only mode and returns its output without the trailing newline:
// one line per row, columns separated by "|", NULL as an empty string.
// Query("select 1") returns "1".
func (pg *Postgres) Query(sql string) (string, error) {
	return pg.psql("respite", sql)
}

// psql runs one -c command against database db over TCP.
func (pg *Postgres) psql(db, sql string) (string, error) {
	cmd := exec.Command(pg.bins.psql, "-XAtq", "-v", "ON_ERROR_STOP=1",
		"-h", pg.Host, "-p", strconv.Itoa(pg.Port), "-U", "postgres", "-d", db, "-c", sql)
	cmd.Env = pgEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return "", fmt.Errorf("testenv: psql %q: %s", sql, msg)
	}
	return strings.TrimSuffix(stdout.String(), "\n"), nil
}

// pgEnv is the environment for PostgreSQL programs: ours without PG*
// variables (PGHOST, PGDATABASE, ... would override the flags) and with C
// messages, so that log checks match.
func pgEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// findPGBins looks for the server programs on PATH, then in the newest
// /usr/lib/postgresql/*/bin (Debian keeps them off PATH). Client programs
// come from the server's directory first, so versions match.
func findPGBins() (pgBins, error) {
	var b pgBins
	var dirs []string
	if p, err := exec.LookPath("postgres"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	versioned, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(versioned, func(i, j int) bool { return pgVersion(versioned[i]) > pgVersion(versioned[j]) })
	dirs = append(dirs, versioned...)
	find := func(name string) string {
		for _, d := range dirs {
			p := filepath.Join(d, name)
			if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return p
			}
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		return ""
	}
	b.postgres, b.initdb, b.psql, b.isready = find("postgres"), find("initdb"), find("psql"), find("pg_isready")
	for _, x := range []struct{ path, name string }{
		{b.postgres, "postgres"}, {b.initdb, "initdb"}, {b.psql, "psql"}, {b.isready, "pg_isready"},
	} {
		if x.path == "" {
			return b, notFound("PostgreSQL ("+x.name+")", "postgresql")
		}
	}
	return b, nil
}

// pgVersion extracts NN from /usr/lib/postgresql/NN/bin; 0 if not a number.
func pgVersion(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// traversable reports whether every directory from / down to dir lets
// other users through (o+x), so the postgres user can reach a
// subdirectory of dir.
func traversable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		st, err := os.Stat(dir)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}
