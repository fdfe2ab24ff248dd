#!/usr/bin/env bash
# Tracking cost: how much more CPU Redis spends per SET on keys nobody
# tracks while a Respite instance holds its tracking connection (CLIENT
# TRACKING ON BCAST with two prefixes: two routes with an in-process tier).
# The coherence issue's target: Redis CPU rises < 10 % under SETs on other
# keys. Rounds alternate: no proxy running (no tracking connection), then
# the proxy running (its tracking connection checked in CLIENT LIST), ...;
# each round is one redis-benchmark run of SET other:__rand_int__ straight
# at Redis, and Redis' CPU (utime+stime of /proc/PID/stat) is read around
# it. A last run SETs keys under a tracked prefix (every SET then pushes an
# invalidation to the tracking connection), for information.
#
#   bash bench/tracking.sh
#
# Env overrides: ROUNDS (pairs, default 3), N (SETs per run, default
# 300000: about 3 s of Redis CPU, 300 ticks), CLIENTS (default 50),
# RESPITE_BIN (a proxy binary to use instead of building ./cmd/proxy).
#
# Never touches the Redis on 6379 or the PostgreSQL on 5432: bench/servers
# (internal/testenv) starts both on free ports in temporary directories.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
N=${N:-300000}
CLIENTS=${CLIENTS:-50}
TARGET=1.10 # Redis CPU per SET with tracking / without

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO"

. "$SCRIPT_DIR/lib.sh"

need_redis
need_postgres
need_go
make_tmp respite-tracking
build_proxy
start_servers
create_bench_tables

# Two routes with an in-process tier: the tracking connection's two
# prefixes, key: and kv2:.
respite_yaml() {
	proxy_head "$1"
	echo "routes:"
	kv_route
	local_tier
	route kv2 kv2: cache-aside bench_kv2
	local_tier
}

CLK_TCK=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# sets LABEL KEY: one redis-benchmark run of SET KEY v at Redis; prints
# LABEL, rps, Redis ticks and Redis µs per SET.
sets() {
	local before after out rps
	before=$(ticks "$REDIS_PID")
	out=$(run redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CLIENTS" -n "$N" -r 100000 --csv SET "$2" v)
	after=$(ticks "$REDIS_PID")
	rps=$(echo "$out" | awk -F'"' 'NR == 2 { print $4 }')
	awk -v l="$1" -v r="$rps" -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$N" \
		'BEGIN { printf "%s\t%.0f\t%d\t%.2f\n", l, r, t, t * 1e6 / hz / n }'
}

tracking_clients() { rcli CLIENT LIST | grep -c 'name=respite-tracking' || true; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS=$TMP/results.tsv
: >"$RESULTS"
for r in $(seq "$ROUNDS"); do
	[ "$(tracking_clients)" = 0 ] || { echo "a tracking connection is open with no proxy running" >&2; exit 1; }
	sets "off" "other:__rand_int__" >>"$RESULTS"
	start_proxy respite PORT PID
	for _ in $(seq 100); do [ "$(tracking_clients)" = 1 ] && break; sleep 0.05; done
	[ "$(tracking_clients)" = 1 ] || { echo "the proxy's tracking connection is not in CLIENT LIST" >&2; cat "$TMP/respite.log" >&2; exit 1; }
	note "round $r: tracking: $(rcli CLIENT LIST | grep 'name=respite-tracking' | tr -d '\r')"
	sets "on" "other:__rand_int__" >>"$RESULTS"
	if [ "$r" = "$ROUNDS" ]; then
		sets "on, SETs under a tracked prefix" "key:__rand_int__" >>"$RESULTS"
	fi
	kill "$PID"
	wait "$PID" 2>/dev/null || true
	for _ in $(seq 100); do [ "$(tracking_clients)" = 0 ] && break; sleep 0.05; done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
OFF=$(awk -F'\t' '$1 == "off" { print $4 }' "$RESULTS" | median)
ON=$(awk -F'\t' '$1 == "on" { print $4 }' "$RESULTS" | median)
RATIO=$(awk -v a="$ON" -v b="$OFF" 'BEGIN { printf "%.3f", a / b }')

report_header "Tracking cost: Redis CPU per SET on untracked keys, with and without a Respite tracking connection"
echo "command: $(quote env ROUNDS="$ROUNDS" N="$N" CLIENTS="$CLIENTS" bash bench/tracking.sh)"
echo
echo "| run | tracking connection | SET rps | Redis ticks | Redis µs per SET |"
echo "|---|---|---:|---:|---:|"
awk -F'\t' '{ printf "| %d | %s | %s | %s | %s |\n", NR, $1, $2, $3, $4 }' "$RESULTS"
echo
echo "median Redis µs per SET: off $OFF, on $ON; on/off $RATIO (target < $TARGET)"
report_commands
awk -v r="$RATIO" -v t="$TARGET" 'BEGIN { exit !(r < t) }' || { echo "FAIL: Redis CPU per SET rose by more than $(awk -v t="$TARGET" 'BEGIN { print (t - 1) * 100 }') %"; exit 1; }
