// Command idleclients measures what idle clients cost a server process in
// resident memory: it opens -n connections to -addr, each sends one PING
// and reads the reply (as a client that connected, checked and went idle),
// then reports the process's RSS (VmRSS of /proc/PID/status) before, right
// after, and after -wait, per client. Used by bench/idle.sh.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

func rssKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}

func main() {
	addr := flag.String("addr", "", "server address")
	pid := flag.Int("pid", 0, "server process id")
	n := flag.Int("n", 10000, "clients")
	wait := flag.Duration("wait", 150*time.Second, "how long to stay idle before the last reading (Go's runtime collects at least every 2 min)")
	flag.Parse()
	before := rssKB(*pid)
	conns := make([]net.Conn, 0, *n)
	for i := 0; i < *n; i++ {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "client %d: %v\n", i, err)
			os.Exit(1)
		}
		c.Write([]byte("*1\r\n$4\r\nPING\r\n"))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "+PONG\r\n" {
			fmt.Fprintf(os.Stderr, "client %d: PING: %q %v\n", i, line, err)
			os.Exit(1)
		}
		conns = append(conns, c)
	}
	time.Sleep(2 * time.Second)
	now := rssKB(*pid)
	time.Sleep(*wait)
	later := rssKB(*pid)
	per := func(kb int) float64 { return float64(kb-before) / float64(len(conns)) }
	fmt.Printf("clients=%d rss_before_kb=%d rss_idle_kb=%d per_client_kb=%.1f rss_after_%s_kb=%d per_client_after_kb=%.1f\n",
		len(conns), before, now, per(now), *wait, later, per(later))
}
