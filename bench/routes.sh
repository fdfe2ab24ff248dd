#!/usr/bin/env bash
# Routes benchmark: routed GET hits (Redis tier and in-process tier) against
# direct Redis GET and a direct PostgreSQL primary-key SELECT, and write-back
# INCR/SET throughput with the number of PostgreSQL statements the flusher
# needed, all in one run against throwaway servers, then one table.
#
#   bash bench/routes.sh
#
# Env overrides: CLIENTS (default 50), SECS (target seconds per
# redis-benchmark test, default 8: a short calibration run with CAL_N
# requests, default 20000, sets each test's -n to about SECS x its rps; the
# report flags any measured run shorter than 5 s),
# N (a fixed -n for every test instead of calibrating), PG_SECS (pgbench -T,
# default 10), DRAIN_TIMEOUT (seconds to wait for a write-back queue to
# drain, default 300).
#
# Never touches the Redis on 6379 or the PostgreSQL on 5432: bench/servers
# (internal/testenv) starts a redis-server and a PostgreSQL on free ports in
# temporary directories, the proxies listen on free ports, and everything is
# stopped on exit.
set -euo pipefail

CLIENTS=${CLIENTS:-50}
SECS=${SECS:-8}
CAL_N=${CAL_N:-20000}
N=${N:-}
PG_SECS=${PG_SECS:-10}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300}

# Targets (ratios of requests per second measured in this run).
TARGET_LOCAL_DIRECT=1.0 # in-process tier hit >= 1.0x direct Redis GET
TARGET_REDIS_DIRECT=0.8 # Redis-tier hit >= 0.8x direct Redis GET
TARGET_HIT_PG=10        # routed hit >= 10x the PostgreSQL SELECT

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO"

. "$SCRIPT_DIR/lib.sh"

# --- 1. dependencies -------------------------------------------------------
need_redis
need_postgres
need_go

# --- 2. throwaway servers and proxies --------------------------------------
make_tmp respite-routes

mkdir -p "$TMP/out"
build_proxy
# REDIS_ADDR REDIS_PORT PG_DSN PG_PORT PG_DIR
start_servers

# PostgreSQL client programs of the server's own version (pgbench included).
PG_MAJOR=$(psql "$PG_DSN" -XAtc 'SHOW server_version_num' | cut -c1-2)
PGBENCH=pgbench
if [ -x "/usr/lib/postgresql/$PG_MAJOR/bin/pgbench" ]; then PGBENCH=/usr/lib/postgresql/$PG_MAJOR/bin/pgbench; fi

create_bench_tables

# The main proxy: the cache-aside read route and both write-back routes.
respite_yaml() {
	kv_write_back_yaml "$1"
	route counters counter: write-back bench_counters
	route wb wb: write-back bench_kv2
}
# The second proxy: the same read route with the in-process tier.
respite_local_yaml() { kv_local_yaml "$1"; }

# The same read route, Redis tier and in-process tier, with the proxy as one
# event loop (gomaxprocs: 1, docs/CONFIGURATION.md).
respite_g1_yaml() { proxy_head "$1"; echo "gomaxprocs: 1"; echo "routes:"; kv_route; }
respite_local_g1_yaml() { respite_g1_yaml "$1"; local_tier; }
# The last one again, started with GODEBUG=schedtrace=2147483647 (see
# docs/BENCHMARKS.md: it keeps Go's sysmon thread out of its deep sleep).
respite_local_g1_st_yaml() { respite_local_g1_yaml "$1"; }
SCHEDTRACE_ENV=GODEBUG=schedtrace=2147483647

start_proxy respite RESPITE_PORT RESPITE_PID
start_proxy respite-local LOCAL_PORT LOCAL_PID
start_proxy respite-g1 G1_PORT G1_PID
start_proxy respite-local-g1 LOCAL_G1_PORT LOCAL_G1_PID
start_proxy respite-local-g1-st LOCAL_ST_PORT LOCAL_ST_PID "$SCHEDTRACE_ENV"

rcli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

# Warm-up: one GET through each proxy. The first loads the row from
# PostgreSQL into Redis (key "key:__rand_int__", ttl 1h); the second is a
# Redis hit that fills the in-process tier. Direct Redis GETs read that same
# cached key.
warm "$RESPITE_PORT" xxx
warm "$LOCAL_PORT" xxx
warm "$G1_PORT" xxx
warm "$LOCAL_G1_PORT" xxx
warm "$LOCAL_ST_PORT" xxx
warm "$REDIS_PORT" xxx
run redis-cli -h 127.0.0.1 -p "$RESPITE_PORT" SET plain:__rand_int__ xxx >/dev/null

# --- 3. benchmarks ---------------------------------------------------------
declare -A RPS ELAPSED NREQ P50 P99
ORDER=()

# rb LABEL PORT ARGS...: redis-benchmark -c CLIENTS ARGS against PORT, with
# -n from N or from a short calibration run (about SECS seconds).
rb() {
	local label=$1 port=$2 n t0 t1 cal
	shift 2
	local base=(redis-benchmark -h 127.0.0.1 -p "$port" -c "$CLIENTS")
	n=$N
	if [ -z "$n" ]; then
		note "$label: calibration (-n $CAL_N)"
		run "${base[@]}" -n "$CAL_N" --csv "$@" >"$TMP/out/$label.cal.csv" 2>>"$TMP/out/$label.err"
		cal=$(csv_field "$TMP/out/$label.cal.csv" 2)
		n=$(awk -v r="$cal" -v s="$SECS" -v m="$CAL_N" 'BEGIN { n = int((r * s + 9999) / 10000) * 10000; if (n < m) n = m; print n }')
		NREQ["$label.cal"]=$CAL_N
		[ -z "${AFTER_CAL:-}" ] || "$AFTER_CAL"
	fi
	note "$label (-n $n)"
	t0=$(date +%s.%N)
	run "${base[@]}" -n "$n" --csv "$@" >"$TMP/out/$label.csv" 2>>"$TMP/out/$label.err"
	t1=$(date +%s.%N)
	cat "$TMP/out/$label.csv" >&4
	ORDER+=("$label")
	NREQ[$label]=$n
	RPS[$label]=$(csv_field "$TMP/out/$label.csv" 2)
	P50[$label]=$(csv_field "$TMP/out/$label.csv" 5)
	P99[$label]=$(csv_field "$TMP/out/$label.csv" 7)
	ELAPSED[$label]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
}

redis_gets() { rcli "$REDIS_PORT" INFO commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_get:/ { v = $3 } END { print v + 0 }'; }
kv_selects() { psql_q "SELECT coalesce(sum(calls),0) FROM pg_stat_statements WHERE query ILIKE '%bench_kv%' AND query NOT ILIKE '%bench_kv2%'"; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
run psql "$PG_DSN" -XAtq -c "SELECT pg_stat_statements_reset()" >/dev/null
SELECTS_BEFORE=$(kv_selects)

# 3a. reads: direct GET before and after the proxied ones (the drift shows).
declare -A REDIS_GETS
reads() {
	local label=$1 port=$2 g0
	shift 2
	g0=$(redis_gets)
	rb "$label" "$port" "$@"
	REDIS_GETS[$label]=$(($(redis_gets) - g0))
}
reads direct_get "$REDIS_PORT" -t get
reads redis_tier "$RESPITE_PORT" -t get
reads local_tier "$LOCAL_PORT" -t get
reads redis_tier_g1 "$G1_PORT" -t get
reads local_tier_g1 "$LOCAL_G1_PORT" -t get
reads local_tier_st "$LOCAL_ST_PORT" -t get
reads passthrough "$RESPITE_PORT" GET plain:__rand_int__
reads direct_get2 "$REDIS_PORT" -t get
SELECTS_DURING_READS=$(($(kv_selects) - SELECTS_BEFORE))

# 3b. PostgreSQL primary-key SELECT.
echo "SELECT v FROM bench_kv WHERE k = '__rand_int__';" >"$TMP/select.sql"
note "pgbench (-T $PG_SECS)"
run "$PGBENCH" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -c "$CLIENTS" -j 2 -T "$PG_SECS" -f "$TMP/select.sql" respite \
	>"$TMP/out/pgbench.out" 2>"$TMP/out/pgbench.err" || echo "pgbench failed" >>"$TMP/out/pgbench.err"
cat "$TMP/out/pgbench.out" >&4
PG_TPS=$(awk '/^tps = / { printf "%.0f\n", $3; exit }' "$TMP/out/pgbench.out")
PG_TPS=${PG_TPS:-0}
PG_LAT=$(awk '/^latency average/ { print $4; exit }' "$TMP/out/pgbench.out")

# 3c. write-back.
# flush_stmts TABLE: flush statements (INSERT, UPDATE, DELETE, WITH)
# touching TABLE since the last pg_stat_statements_reset.
flush_stmts() {
	psql_q "SELECT coalesce(sum(calls),0) FROM pg_stat_statements
	        WHERE query ILIKE '%$1%' AND query ~* '^\\s*(insert|update|delete|with)'"
}
declare -A DRAIN STMTS
writeback() {
	local label=$1 route=$2 table=$3
	shift 3
	AFTER_CAL=after_cal
	after_cal() {
		local d
		d=$(drain "$route")
		note "$label: calibration writes drained in ${d}s"
		psql_q "SELECT pg_stat_statements_reset()" >/dev/null
	}
	psql_q "SELECT pg_stat_statements_reset()" >/dev/null
	rb "$label" "$RESPITE_PORT" "$@"
	AFTER_CAL=
	DRAIN[$label]=$(drain "$route")
	note "$label: drained ${DRAIN[$label]}s after the benchmark ended"
	STMTS[$label]=$(flush_stmts "$table")
	DLQ[$label]=$(rcli "$REDIS_PORT" XLEN "respite:dlq:$route")
}
declare -A DLQ
writeback wb_incr counters bench_counters -r 1000 -t incr
INCRS=$((NREQ[wb_incr] + ${NREQ[wb_incr.cal]:-0}))
PG_SUM=$(psql_q "SELECT coalesce(sum(v),0) FROM bench_counters")
PG_COUNTER_ROWS=$(psql_q "SELECT count(*) FROM bench_counters")
REDIS_SUM=$(rcli "$REDIS_PORT" --scan --pattern 'counter:*' | xargs -r redis-cli -h 127.0.0.1 -p "$REDIS_PORT" MGET |
	awk '{ s += $1 } END { print s + 0 }')

writeback wb_set wb bench_kv2 -r 1000 SET wb:__rand_int__ xxx
SETS=$((NREQ[wb_set] + ${NREQ[wb_set.cal]:-0}))
PG_WB_ROWS=$(psql_q "SELECT count(*) FROM bench_kv2")
PG_WB_BAD=$(psql_q "SELECT count(*) FROM bench_kv2 WHERE v IS DISTINCT FROM 'xxx'")
REDIS_WB_KEYS=$(rcli "$REDIS_PORT" --scan --pattern 'wb:*' | wc -l)

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 4. report -------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "-" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "-" && a + 0 >= b + 0) }'; }
check() { if ge "$1" "$2"; then echo "ok"; else echo "MISS"; fi; }
DIRECT=$(awk -v a="${RPS[direct_get]}" -v b="${RPS[direct_get2]}" 'BEGIN { printf "%.0f", (a + b) / 2 }')

echo
report_header "Respite routes benchmark"
echo "postgres: $(psql_q 'SHOW server_version') (fsync, synchronous_commit, full_page_writes off; pg_stat_statements)"
echo "params:  CLIENTS=$CLIENTS SECS=$SECS CAL_N=$CAL_N N=${N:-calibrated} PG_SECS=$PG_SECS"
echo "targets: in-process hit >= ${TARGET_LOCAL_DIRECT}x direct GET; Redis-tier hit >= ${TARGET_REDIS_DIRECT}x direct GET; routed hit >= ${TARGET_HIT_PG}x PostgreSQL SELECT"
echo
echo "## reads (redis-benchmark -c $CLIENTS; pgbench -c $CLIENTS -j 2 -T $PG_SECS)"
fmt="%-42s %10s %9s %6s %7s %7s %8s %8s  %s\n"
printf "$fmt" "test" "rps" "n" "secs" "p50ms" "p99ms" "/direct" "/pg" "targets"
row() { # label name target_note
	local l=$1 r=${RPS[$1]}
	printf "$fmt" "$2" "$r" "${NREQ[$l]}" "${ELAPSED[$l]}" "${P50[$l]}" "${P99[$l]}" "$(ratio "$r" "$DIRECT")" "$(ratio "$r" "$PG_TPS")" "$3"
}
row direct_get "direct Redis GET (1st)" ""
row direct_get2 "direct Redis GET (2nd)" ""
printf "$fmt" "direct Redis GET (mean: the /direct base)" "$DIRECT" "" "" "" "" "1.00" "$(ratio "$DIRECT" "$PG_TPS")" ""
r=$(ratio "${RPS[redis_tier]}" "$DIRECT"); p=$(ratio "${RPS[redis_tier]}" "$PG_TPS")
row redis_tier "routed GET hit, Redis tier" "/direct>=$TARGET_REDIS_DIRECT $(check "$r" "$TARGET_REDIS_DIRECT"), /pg>=$TARGET_HIT_PG $(check "$p" "$TARGET_HIT_PG")"
r=$(ratio "${RPS[local_tier]}" "$DIRECT"); p=$(ratio "${RPS[local_tier]}" "$PG_TPS")
row local_tier "routed GET hit, in-process tier" "/direct>=$TARGET_LOCAL_DIRECT $(check "$r" "$TARGET_LOCAL_DIRECT"), /pg>=$TARGET_HIT_PG $(check "$p" "$TARGET_HIT_PG")"
r=$(ratio "${RPS[redis_tier_g1]}" "$DIRECT"); p=$(ratio "${RPS[redis_tier_g1]}" "$PG_TPS")
row redis_tier_g1 "routed GET hit, Redis tier, gomaxprocs 1" "/direct>=$TARGET_REDIS_DIRECT $(check "$r" "$TARGET_REDIS_DIRECT"), /pg>=$TARGET_HIT_PG $(check "$p" "$TARGET_HIT_PG")"
r=$(ratio "${RPS[local_tier_g1]}" "$DIRECT"); p=$(ratio "${RPS[local_tier_g1]}" "$PG_TPS")
row local_tier_g1 "routed GET hit, in-process, gomaxprocs 1" "/direct>=$TARGET_LOCAL_DIRECT $(check "$r" "$TARGET_LOCAL_DIRECT"), /pg>=$TARGET_HIT_PG $(check "$p" "$TARGET_HIT_PG")"
r=$(ratio "${RPS[local_tier_st]}" "$DIRECT"); p=$(ratio "${RPS[local_tier_st]}" "$PG_TPS")
row local_tier_st "routed GET hit, in-process, g1+schedtrace" "/direct>=$TARGET_LOCAL_DIRECT $(check "$r" "$TARGET_LOCAL_DIRECT"), /pg>=$TARGET_HIT_PG $(check "$p" "$TARGET_HIT_PG")"
row passthrough "passthrough GET (unrouted key)" "(reference)"
printf "$fmt" "PostgreSQL PK SELECT (pgbench tps)" "$PG_TPS" "" "$PG_SECS" "" "" "$(ratio "$PG_TPS" "$DIRECT")" "1.00" "(latency avg ${PG_LAT:-?} ms)"
echo
echo "Redis GETs seen by Redis during each read test (INFO commandstats): direct ${REDIS_GETS[direct_get]}+${REDIS_GETS[direct_get2]}," \
	"Redis tier ${REDIS_GETS[redis_tier]}, in-process tier ${REDIS_GETS[local_tier]}," \
	"gomaxprocs 1: Redis tier ${REDIS_GETS[redis_tier_g1]}, in-process tier ${REDIS_GETS[local_tier_g1]}," \
	"g1+schedtrace ${REDIS_GETS[local_tier_st]}, passthrough ${REDIS_GETS[passthrough]}" \
	"(calibration runs included)"
echo "PostgreSQL statements on bench_kv during the read tests: $SELECTS_DURING_READS (0: every routed GET was a hit)"
echo
echo "## write-back (redis-benchmark -c $CLIENTS -r 1000 through respite; batch_size 100, flush_interval 1s)"
fmt2="%-36s %9s %9s %6s %7s %7s %9s %8s %10s\n"
printf "$fmt2" "test" "rps" "n" "secs" "p50ms" "p99ms" "drain_s" "stmts" "stmts/1k"
wrow() {
	local l=$1
	printf "$fmt2" "$2" "${RPS[$l]}" "${NREQ[$l]}" "${ELAPSED[$l]}" "${P50[$l]}" "${P99[$l]}" "${DRAIN[$l]}" "${STMTS[$l]}" \
		"$(awk -v s="${STMTS[$l]}" -v n="${NREQ[$l]}" 'BEGIN { printf "%.1f", s * 1000 / n }')"
}
wrow wb_incr "INCR counter:<1000 keys>"
wrow wb_set "SET wb:<1000 keys> xxx"
echo
echo "stmts: INSERT/UPDATE/DELETE/WITH statements on the table (pg_stat_statements) flushing the measured run's writes"
echo "       (counted from just before it, after the calibration writes had drained, until the queue was empty);"
echo "       stmts/1k: per 1,000 writes of the measured run."
echo "drain_s: seconds from the benchmark's end until XLEN respite:wb:<route> = 0."
if [ "$PG_SUM" = "$INCRS" ]; then c=ok; else c=MISMATCH; fi
echo "counter check: $INCRS INCRs sent (calibration included); PostgreSQL sum(v) = $PG_SUM over $PG_COUNTER_ROWS rows; Redis sum = $REDIS_SUM: $c"
if [ "$PG_WB_ROWS" = "$REDIS_WB_KEYS" ] && [ "$PG_WB_BAD" = 0 ]; then c=ok; else c=MISMATCH; fi
echo "SET check: $SETS SETs sent; $REDIS_WB_KEYS wb: keys in Redis, $PG_WB_ROWS rows in bench_kv2, $PG_WB_BAD with v <> 'xxx': $c"
echo "dead-letter queues: counters ${DLQ[wb_incr]}, wb ${DLQ[wb_set]} entries"

# Anything odd: short runs, benchmark stderr, proxy logs, dead processes.
echo
odd=0
short=()
for l in "${ORDER[@]}"; do
	if awk -v e="${ELAPSED[$l]}" 'BEGIN { exit !(e < 5) }'; then short+=("$l ${ELAPSED[$l]}s"); fi
done
for l in wb_incr wb_set; do
	if [ "${DRAIN[$l]}" = timeout ]; then odd=1; echo "$l: the write-back queue did not drain within ${DRAIN_TIMEOUT}s"; fi
done
if [ ${#short[@]} -gt 0 ]; then
	odd=1
	echo "measured runs shorter than 5 s (calibration underestimated their rps): ${short[*]}"
fi
for l in "${ORDER[@]}"; do
	if [ -s "$TMP/out/$l.err" ]; then
		odd=1
		echo "redis-benchmark stderr ($l):"
		sed 's/^/  /' "$TMP/out/$l.err" | sort | uniq -c | sort -rn | head -n 20
	fi
done
if [ -s "$TMP/out/pgbench.err" ]; then
	odd=1
	echo "pgbench stderr:"
	sed 's/^/  /' "$TMP/out/pgbench.err" | head -n 20
fi
for p in "respite:$RESPITE_PID:$TMP/respite.log" "respite-local:$LOCAL_PID:$TMP/respite-local.log" \
	"respite-g1:$G1_PID:$TMP/respite-g1.log" "respite-local-g1:$LOCAL_G1_PID:$TMP/respite-local-g1.log" \
	"respite-local-g1-st:$LOCAL_ST_PID:$TMP/respite-local-g1-st.log"; do
	IFS=: read -r name pid log <<<"$p"
	if ! kill -0 "$pid" 2>/dev/null; then odd=1; echo "$name exited during the run"; fi
	if [ -s "$log" ]; then
		odd=1
		echo "$name stderr (log_level warn):"
		sed 's/^/  /' "$log" | head -n 40
	fi
done
if ! kill -0 "$SERVERS_PID" 2>/dev/null; then odd=1; echo "bench/servers exited during the run"; fi
if [ ${#STARTUP_RETRIES[@]} -gt 0 ]; then
	odd=1
	echo "proxy start-up retries (port taken between the check and the bind):"
	printf '  %s\n' "${STARTUP_RETRIES[@]}"
fi
[ "$odd" = 1 ] || echo "no errors from redis-benchmark, pgbench or the proxies"

echo
report_commands
echo "$TMP/servers.env (bench/servers):"
sed 's/^/  /' "$TMP/servers.env"
echo "$TMP/select.sql:"
sed 's/^/  /' "$TMP/select.sql"
echo "$TMP/respite.yaml:"
sed 's/^/  /' "$TMP/respite.yaml"
for f in respite-local respite-g1 respite-local-g1 respite-local-g1-st; do
	echo "$TMP/$f.yaml:"
	sed 's/^/  /' "$TMP/$f.yaml"
done
