package main

import (
	"os"
	"strings"
	"syscall"
)

// keepSysmonAwake re-executes the proxy with GODEBUG=schedtrace set when
// it runs on one thread, and reports whether it did not need to (false:
// exec failed, the proxy goes on as it is).
//
// Why: with GOMAXPROCS=1, every time the one P goes idle (a client waiting
// for its next request, the common case at low load) the runtime's sysmon
// thread parks on a futex, and the next system call wakes it again
// (runtime/proc.go, sysmon's deep sleep and entersyscallWakeSysmon): two
// extra context switches and a wake-up on the other CPU per request. A
// lone client's GET measured p50 159 µs through the proxy with it, 119 µs
// without (direct Redis 71 µs, twemproxy 103 µs; docs/BENCHMARKS.md).
// sysmon skips that sleep only when schedtrace is on, and the runtime reads
// GODEBUG once, at start; schedtrace=2147483647 prints a scheduler line to
// stderr every 24.8 days. docs/UPSTREAM-BUGS.md has the details.
func keepSysmonAwake() bool {
	if os.Getenv("RESPITE_REEXEC") != "" || strings.Contains(os.Getenv("GODEBUG"), "schedtrace=") {
		return true
	}
	godebug := "schedtrace=2147483647"
	if old := os.Getenv("GODEBUG"); old != "" {
		godebug = old + "," + godebug
	}
	env := append(os.Environ(), "GODEBUG="+godebug, "RESPITE_REEXEC=1")
	err := syscall.Exec("/proc/self/exe", os.Args, env)
	return err == nil // only reached when exec failed
}
