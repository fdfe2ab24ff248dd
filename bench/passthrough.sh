#!/usr/bin/env bash
# Passthrough benchmark: redis-benchmark against a throwaway Redis directly,
# through Respite (Go's default GOMAXPROCS, and "respite1" with gomaxprocs: 1)
# and through twemproxy (nutcracker), all in one run, then
# tables of requests per second and ratios, unpipelined and with -P 16.
#
#   bash bench/passthrough.sh
#
# Env overrides: N (requests per test, default 200000), CLIENTS (default 50),
# TESTS (redis-benchmark -t list, default set,get,incr,lpush,lrange_100),
# PIPELINE (pipelined mode depth, default 16).
#
# Never touches the Redis on 6379: every server is started here on a free
# port and stopped on exit.
set -euo pipefail

N=${N:-200000}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-set,get,incr,lpush,lrange_100}
PIPELINE=${PIPELINE:-16}

# Targets: unpipelined respite/direct >= 0.8; respite >= twemproxy in both modes.
TARGET_DIRECT_RATIO=0.8

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO"

. "$SCRIPT_DIR/lib.sh"

# --- 1. dependencies -------------------------------------------------------
need_nutcracker
need_redis
need_go

# --- 2. throwaway servers --------------------------------------------------
make_tmp respite-bench

mkdir -p "$TMP/csv"
build_proxy
start_servers -postgres=false

respite_yaml() {
	cat <<EOF
listen: 127.0.0.1:$1
log_level: warn
upstream:
  addr: 127.0.0.1:$REDIS_PORT
EOF
}
# The same proxy as one event loop (gomaxprocs: 1, docs/CONFIGURATION.md).
respite1_yaml() { respite_yaml "$1"; echo "gomaxprocs: 1"; }
start_proxy respite RESPITE_PORT RESPITE_PID
start_proxy respite1 RESPITE1_PORT RESPITE1_PID
start_twemproxy TWEM_PORT TWEM_PID

# --- 3. benchmarks ---------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
TARGETS=(direct respite respite1 twemproxy)
declare -A PORT=([direct]=$REDIS_PORT [respite]=$RESPITE_PORT [respite1]=$RESPITE1_PORT [twemproxy]=$TWEM_PORT)
MODES=(unpipelined "P$PIPELINE")

for mode in "${MODES[@]}"; do
	extra=()
	[ "$mode" = unpipelined ] || extra=(-P "$PIPELINE")
	for t in "${TARGETS[@]}"; do
		echo "== $mode: $t (port ${PORT[$t]})" >&2
		if ! run redis-benchmark -h 127.0.0.1 -p "${PORT[$t]}" -t "$TESTS" -c "$CLIENTS" -n "$N" \
			"${extra[@]}" --csv >"$TMP/csv/$mode.$t.csv" 2>"$TMP/csv/$mode.$t.err"; then
			echo "redis-benchmark against $t failed ($mode)" >>"$TMP/csv/$mode.$t.err"
		fi
		cat "$TMP/csv/$mode.$t.csv" >&2
	done
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 4. report -------------------------------------------------------------
# table MODE: one row per test (in the direct run's order, then any others),
# rps per target and the three ratios; "-" where a target has no number.
table() {
	local mode=$1 ok_ratio
	awk -v mode="$mode" -v target="$TARGET_DIRECT_RATIO" -v unpiped="$([ "$1" = unpipelined ] && echo 1 || echo 0)" '
	function parse(line,   f) {
		gsub(/\r/, "", line)
		if (line !~ /^"/) return ""
		gsub(/"/, "", line)
		n = split(line, f, ",")
		if (f[1] == "test" || n < 2) return ""
		rps_val = f[2] + 0
		return f[1]
	}
	function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
	function num(x) { return (x > 0) ? sprintf("%.0f", x) : "-" }
	FNR == 1 { file++ }
	{
		name = parse($0)
		if (name == "") next
		if (!(name in seen)) { seen[name] = 1; order[++count] = name }
		rps[file, name] = rps_val
	}
	END {
		fmt = "%-36s %9s %9s %9s %9s %8s %8s %8s %8s %8s  %s\n"
		printf fmt, "test", "direct", "respite", "respite1", "twemproxy", "resp/dir", "r1/dir", "resp/twm", "r1/twm", "twm/dir", "targets (respite; respite1)"
		for (i = 1; i <= count; i++) {
			n = order[i]; d = rps[1, n]; r = rps[2, n]; g = rps[3, n]; w = rps[4, n]
			notes = check(r, d, w) "; " check(g, d, w)
			printf fmt, n, num(d), num(r), num(g), num(w), ratio(r, d), ratio(g, d), ratio(r, w), ratio(g, w), ratio(w, d), notes
		}
	}
	# check(R, D, W): the targets for proxy rps R against direct D and twemproxy W.
	function check(r, d, w,   notes) {
		notes = ""
		if (unpiped && d > 0 && r > 0) notes = sprintf("/dir>=%s %s", target, (r / d >= target) ? "ok" : "MISS")
		if (r > 0 && w > 0) notes = notes (notes == "" ? "" : ", ") ">=twem " ((r >= w) ? "ok" : "MISS")
		return notes
	}' "$TMP/csv/$mode.direct.csv" "$TMP/csv/$mode.respite.csv" "$TMP/csv/$mode.respite1.csv" "$TMP/csv/$mode.twemproxy.csv"
}

echo
report_header "Respite passthrough benchmark"
echo "nutcracker: $(nutcracker -V 2>&1 | head -n1)"
echo "params:  N=$N CLIENTS=$CLIENTS TESTS=$TESTS PIPELINE=$PIPELINE"
echo "targets: unpipelined respite/direct >= $TARGET_DIRECT_RATIO; respite >= twemproxy unpipelined and at -P $PIPELINE (checked for both proxies)"
for mode in "${MODES[@]}"; do
	echo
	if [ "$mode" = unpipelined ]; then echo "## unpipelined (-c $CLIENTS -n $N)"; else echo "## pipelined -P $PIPELINE (-c $CLIENTS -n $N)"; fi
	table "$mode"
done

# Anything odd: benchmark stderr, proxy logs, dead processes.
echo
odd=0
for mode in "${MODES[@]}"; do
	for t in "${TARGETS[@]}"; do
		if [ -s "$TMP/csv/$mode.$t.err" ]; then
			odd=1
			echo "redis-benchmark stderr ($mode, $t):"
			sed 's/^/  /' "$TMP/csv/$mode.$t.err" | sort | uniq -c | sort -rn | head -n 20
			if grep -q 'Could not fetch server CONFIG' "$TMP/csv/$mode.$t.err"; then
				echo "  (the CONFIG warning is expected where the target does not serve CONFIG GET, e.g. twemproxy)"
			fi
		fi
	done
done
if ! kill -0 "$RESPITE_PID" 2>/dev/null; then odd=1; echo "respite exited during the run"; fi
if ! kill -0 "$RESPITE1_PID" 2>/dev/null; then odd=1; echo "respite1 exited during the run"; fi
if ! kill -0 "$TWEM_PID" 2>/dev/null; then odd=1; echo "nutcracker exited during the run"; fi
for t in respite respite1; do
	if [ -s "$TMP/$t.log" ]; then
		odd=1
		echo "$t stderr (log_level warn):"
		sed 's/^/  /' "$TMP/$t.log" | head -n 40
	fi
done
if grep -qiE 'error|warn' "$TMP/nutcracker.log" 2>/dev/null; then
	odd=1
	echo "nutcracker log errors/warnings (first 20):"
	grep -iE 'error|warn' "$TMP/nutcracker.log" | head -n 20 | sed 's/^/  /'
fi
[ "$odd" = 1 ] || echo "no errors from redis-benchmark, respite or nutcracker"

echo
report_commands
for t in respite respite1; do
	echo "$TMP/$t.yaml:"
	sed 's/^/  /' "$TMP/$t.yaml"
done
echo "$TMP/nutcracker.yml:"
sed 's/^/  /' "$TMP/nutcracker.yml"
