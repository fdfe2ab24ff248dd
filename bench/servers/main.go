// Command servers starts a throwaway redis-server and PostgreSQL for the
// benchmarks (internal/testenv: free loopback ports, temporary directories,
// PostgreSQL with fsync off and pg_stat_statements preloaded and created in
// the database "respite"; run as the "postgres" user when started by root),
// writes their addresses as shell assignments, and stops both on SIGINT or
// SIGTERM.
//
//	go build -o servers ./bench/servers && ./servers -env servers.env
//
// servers.env then holds REDIS_ADDR, REDIS_PORT, PG_DSN, PG_PORT and
// PG_DIR, and is written (atomically) only once both servers answer.
// With -postgres=false only Redis is started (and only its two lines are
// written). With -cluster a 3-primary Redis Cluster is started too, and
// CLUSTER_ADDRS (its primaries, comma-separated) is written.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/respite/respite/internal/testenv"
)

func main() {
	envPath := flag.String("env", "", "write the shell assignments here (default: stdout)")
	withPG := flag.Bool("postgres", true, "start PostgreSQL too")
	withCluster := flag.Bool("cluster", false, "start a 3-primary Redis Cluster too")
	flag.Parse()
	// Catch the signals before starting anything, so an early one still
	// stops what was started.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)

	rdb, err := testenv.StartRedis()
	if err != nil {
		fmt.Fprintln(os.Stderr, "servers:", err)
		os.Exit(1)
	}
	defer rdb.Stop()
	env := fmt.Sprintf("REDIS_ADDR=%s\nREDIS_PORT=%d\n", rdb.Addr, rdb.Port)
	what := "redis " + rdb.Addr
	if *withPG {
		pg, err := testenv.StartPostgres()
		if err != nil {
			fmt.Fprintln(os.Stderr, "servers:", err)
			rdb.Stop()
			os.Exit(1)
		}
		defer pg.Stop()
		env += fmt.Sprintf("PG_DSN='%s'\nPG_PORT=%d\nPG_DIR=%s\n", pg.DSN, pg.Port, pg.Dir)
		what += ", postgres " + pg.DSN
	}
	if *withCluster {
		cl, err := testenv.StartCluster()
		if err != nil {
			fmt.Fprintln(os.Stderr, "servers:", err)
			os.Exit(1)
		}
		defer cl.Stop()
		addrs := strings.Join(cl.Addrs(), ",")
		env += fmt.Sprintf("CLUSTER_ADDRS=%s\n", addrs)
		what += ", cluster " + addrs
	}
	if *envPath == "" {
		fmt.Print(env)
	} else if err := writeAtomic(*envPath, env); err != nil {
		fmt.Fprintln(os.Stderr, "servers:", err)
		return
	}
	fmt.Fprintf(os.Stderr, "servers: %s; stopping on SIGINT/SIGTERM\n", what)
	<-sig
}

func writeAtomic(path, s string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
