#!/usr/bin/env bash
# Where a hop's CPU goes on an unpipelined GET: system calls per command
# of Respite (default config) and of twemproxy, counted with strace -c -f
# around redis-benchmark -t get -c 50 against each (strace slows the
# process, not the count), then Respite's CPU split between the kernel
# and its own code (perf record -g, perf report --sort dso) under the
# same load without strace, and twemproxy's the same way.
#
#   bash bench/syscalls.sh      # N=100000 GETs counted, PERF_SECS=5
set -euo pipefail

N=${N:-100000}
PERF_SECS=${PERF_SECS:-5}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO"
. "$SCRIPT_DIR/lib.sh"

need_go
need_redis
need_nutcracker
command -v strace >/dev/null 2>&1 || apt_install strace
command -v perf >/dev/null 2>&1 || apt_install linux-perf
make_tmp syscalls
exec 4>"$TMP/commands.log"
build_proxy
start_servers -postgres=false
respite_yaml() { printf 'listen: 127.0.0.1:%s\nupstream:\n  addr: 127.0.0.1:%s\n' "$1" "$REDIS_PORT"; }
start_proxy respite RPORT RPID
start_twemproxy TPORT TPID
echo "syscalls per unpipelined GET (redis-benchmark -t get -c 50 -n $N), $(commit_line)"

count() { # NAME PORT PID
	redis-benchmark -p "$2" -t get -n 20000 -c 50 -q >/dev/null
	strace -c -f -p "$3" -o "$TMP/$1.strace" 2>/dev/null &
	local sp=$!
	sleep 1
	redis-benchmark -p "$2" -t get -n "$N" -c 50 -q >/dev/null
	kill -INT "$sp"
	wait "$sp" || true
	echo "$1:"
	awk -v n="$N" '$1 ~ /^[0-9.]+$/ && $NF != "total" {
		err = (NF == 6) ? $5 : 0; tot += $4
		printf "  %-14s %6.3f per GET (%.3f failed)\n", $NF, $4 / n, err / n
	} END { printf "  %-14s %6.3f per GET\n", "all", tot / n }' "$TMP/$1.strace" | sort -k2 -nr | awk 'NR <= 9'
}
count respite "$RPORT" "$RPID"
count twemproxy "$TPORT" "$TPID"

split() { # NAME PORT PID
	redis-benchmark -p "$2" -t get -n 100000000 -c 50 -q >/dev/null 2>&1 &
	local bp=$!
	sleep 1
	perf record -F 2000 -g -p "$3" -o "$TMP/$1.perf" -- sleep "$PERF_SECS" >/dev/null 2>&1
	kill "$bp" 2>/dev/null || true
	wait "$bp" 2>/dev/null || true
	echo "$1's CPU under the same load (perf, $PERF_SECS s), by where it ran:"
	perf report -i "$TMP/$1.perf" --no-children --sort dso --stdio 2>/dev/null | awk '$1 ~ /%$/ && n++ < 4 { print "  " $0 }'
	echo "  top symbols:"
	perf report -i "$TMP/$1.perf" --no-children -g none --sort sym --stdio 2>/dev/null | awk -v top="${TOP:-10}" '$1 ~ /%$/ && n++ < top { print "  " $0 }'
}
split respite "$RPORT" "$RPID"
split twemproxy "$TPORT" "$TPID"
