#!/usr/bin/env bash
# CPU per command: redis-benchmark against a throwaway Redis directly,
# through Respite (default config: listen + upstream.addr only) and through
# twemproxy (nutcracker), all in one run, measuring requests per second and
# the CPU each process spent per command: the hop's own, and Redis' behind
# it (the proxy's batching changes how much work Redis does). Then latency
# (p50/p99 of GET at 1 and 50 clients), and routed keys (cache-aside GET
# hits from Redis and from the in-process tier, write-through SET,
# write-back INCR) against the plain commands through the same binary.
#
#   bash bench/cpu.sh              # tables as text
#   bash bench/cpu.sh --markdown   # tables for docs/BENCHMARKS.md
#
# CPU is utime+stime (fields 14 and 15 of /proc/PID/stat, in clock ticks
# of 1/CLK_TCK s) read just before and just after each redis-benchmark run:
#   µs per command = delta ticks x 1e6 / CLK_TCK / requests.
# PostgreSQL counts its postmaster and all its children (exited ones
# through the postmaster's cutime/cstime); redis-benchmark's own CPU is
# the script's children's time (fields 16 and 17 of /proc/$$/stat).
# A tick is 10 ms, so every measured run is sized (-n) from a calibration
# run to about CPU_SECS of CPU of the process it measures (the hop; Redis
# for direct), and the tables print the ticks.
#
# Env overrides: ROUNDS (repeat everything, report the median; default 1),
# CLIENTS (default 50), MANY (the many-clients GET, default 1000),
# PIPELINE (default 16), TESTS (default get,set,incr,lpush,lrange_100,mset),
# CPU_SECS (default 1.4), MIN_TICKS (runs of the measured process below it
# are flagged, default 100), LAT_N (latency runs' -n, default 50000),
# ROUTES (0 skips the routed section and PostgreSQL), RESPITE_BIN (a proxy
# binary to measure instead of building ./cmd/proxy), RESULTS (also keep
# the raw results, one line a run, in this file), DRAIN_TIMEOUT.
#
# Never touches the Redis on 6379 or the PostgreSQL on 5432: bench/servers
# (internal/testenv) starts both on free ports in temporary directories,
# the proxies listen on free ports, and everything is stopped on exit.
set -euo pipefail

MARKDOWN=0
for a in "$@"; do
	case $a in
	--markdown) MARKDOWN=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown argument: $a (only --markdown)" >&2; exit 2 ;;
	esac
done

# The exact command, with the overrides given.
CMDLINE=""
for v in ROUNDS CLIENTS MANY PIPELINE TESTS CPU_SECS MIN_TICKS LAT_N ROUTES RESPITE_BIN RESULTS DRAIN_TIMEOUT; do
	if [ -n "${!v+x}" ]; then CMDLINE+="$v=$(printf '%q' "${!v}") "; fi
done
CMDLINE+="bash bench/cpu.sh${*:+ $*}"

ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-50}
MANY=${MANY:-1000}
PIPELINE=${PIPELINE:-16}
TESTS=${TESTS:-get,set,incr,lpush,lrange_100,mset}
CPU_SECS=${CPU_SECS:-1.4}
MIN_TICKS=${MIN_TICKS:-100}
LAT_N=${LAT_N:-50000}
ROUTES=${ROUTES:-1}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO"

. "$SCRIPT_DIR/lib.sh"

CLK_TCK=$(getconf CLK_TCK)
T_START=$(date +%s)

# --- 1. dependencies -------------------------------------------------------
need_redis
need_nutcracker
[ "$ROUTES" = 0 ] || need_postgres
need_go

# --- 2. throwaway servers and proxies --------------------------------------
make_tmp respite-cpu
mkdir -p "$TMP/out"
build_proxy
if [ "$ROUTES" = 0 ]; then start_servers -postgres=false; else start_servers; fi

# The proxy of the passthrough section: its defaults, nothing but these two.
respite_yaml() {
	cat <<EOF
listen: 127.0.0.1:$1
upstream:
  addr: 127.0.0.1:$REDIS_PORT
EOF
}
start_proxy respite RESPITE_PORT RESPITE_PID
start_twemproxy TWEM_PORT TWEM_PID

if [ "$ROUTES" != 0 ]; then
	create_bench_tables
	run psql "$PG_DSN" -Xq -v ON_ERROR_STOP=1 -c "CREATE TABLE bench_wt (k text PRIMARY KEY, v text)"
	PG_PID=$(head -n1 "$PG_DIR/data/postmaster.pid")
	# The routed proxy: cache-aside GET, write-through SET and write-back
	# INCR routes; unrouted keys pass through it like through respite.
	routed_yaml() {
		kv_write_back_yaml "$1"
		route wt wt: write-through bench_wt
		route counters counter: write-back bench_counters
	}
	# The same cache-aside route with the in-process tier.
	routed_local_yaml() { kv_local_yaml "$1"; }
	start_proxy routed ROUTED_PORT ROUTED_PID
	start_proxy routed-local LOCAL_PORT LOCAL_PID
fi

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
# LRANGE_100 reads the first 100 of mylist (redis-benchmark's own
# lrange_100 test would run an LPUSH test first, in the same CPU window).
run redis-cli -h 127.0.0.1 -p "$REDIS_PORT" EVAL "for i = 1, 100 do redis.call('RPUSH', KEYS[1], 'xxx') end" 1 mylist >/dev/null
run redis-cli -h 127.0.0.1 -p "$REDIS_PORT" SET key:__rand_int__ xxx >/dev/null

# --- 3. measuring ----------------------------------------------------------
# ticks PID VAR [children|all]: utime+stime of PID (fields 14, 15 of
# /proc/PID/stat); "children": cutime+cstime (16, 17: its children waited
# for); "all": the four. Builtins only: a fork here would count as the
# script's own children.
ticks() {
	local s f
	read -r s <"/proc/$1/stat"
	s=${s##*) } # fields from the 3rd on; comm may hold spaces
	read -ra f <<<"$s"
	case ${3:-} in
	children) printf -v "$2" '%s' $((f[13] + f[14])) ;;
	all) printf -v "$2" '%s' $((f[11] + f[12] + f[13] + f[14])) ;;
	*) printf -v "$2" '%s' $((f[11] + f[12])) ;;
	esac
}
# pg_ticks VAR: CPU of the whole PostgreSQL instance (postmaster with its
# reaped children, plus every live child).
pg_ticks() {
	local total s f p
	ticks "$PG_PID" total all
	for p in /proc/[0-9]*/stat; do
		read -r s 2>/dev/null <"$p" || continue
		s=${s##*) }
		read -ra f <<<"$s"
		[ "${f[1]}" = "$PG_PID" ] || continue
		total=$((total + f[11] + f[12] + f[13] + f[14]))
	done
	printf -v "$1" '%s' "$total"
}

# sample PREFIX HOP_PID WITH_PG: PREFIX_hop, PREFIX_redis, PREFIX_pg (ticks)
# and PREFIX_t (seconds since the epoch).
sample() {
	local v
	if [ "$2" = - ]; then v=0; else ticks "$2" v; fi
	printf -v "$1_hop" '%s' "$v"
	ticks "$REDIS_PID" v
	printf -v "$1_redis" '%s' "$v"
	v=0
	[ "$3" = 0 ] || pg_ticks v
	printf -v "$1_pg" '%s' "$v"
	printf -v "$1_t" '%s' "$EPOCHREALTIME"
}

RESULTS_TSV=$TMP/results.tsv
: >"$RESULTS_TSV"
RUN_NO=0
# measure SECTION KEY TARGET ROUND N PORT HOP_PID WITH_PG AFTER ARGS...:
# one redis-benchmark run (-h 127.0.0.1 -p PORT -n N --csv ARGS), CPU
# sampled around it; AFTER (a command, or -) runs before the second
# sample (the write-back drain). ROUND 0 is a calibration, not recorded.
# Sets M_HOP M_REDIS M_PG (ticks of the run).
measure() {
	local section=$1 key=$2 target=$3 round=$4 n=$5 port=$6 hop=$7 withpg=$8 after=$9 out rps p50 p99 drained=- b0 b1
	shift 9
	RUN_NO=$((RUN_NO + 1))
	out=$TMP/out/$RUN_NO.$key.$target.$round
	sample b "$hop" "$withpg"
	ticks $$ b0 children
	run redis-benchmark -h 127.0.0.1 -p "$port" -n "$n" --csv "$@" >"$out.csv" 2>"$out.err" ||
		echo "redis-benchmark failed" >>"$out.err"
	ticks $$ b1 children
	[ "$after" = - ] || drained=$("$after")
	sample a "$hop" "$withpg"
	M_HOP=$((a_hop - b_hop)) M_REDIS=$((a_redis - b_redis)) M_PG=$((a_pg - b_pg))
	[ "$key" != wb_incr ] || WB_SENT=$((WB_SENT + n))
	rps=$(csv_field "$out.csv" 2)
	p50=$(csv_field "$out.csv" 5)
	p99=$(csv_field "$out.csv" 7)
	note "$key $target round $round: n=$n rps=$rps ticks hop $M_HOP, redis $M_REDIS, pg $M_PG, bench $((b1 - b0)); drained $drained s"
	[ "$round" = 0 ] || printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$section" "$key" "$target" "$round" "$n" "$rps" "$p50" "$p99" "$M_HOP" "$M_REDIS" "$M_PG" "$((b1 - b0))" \
		"$(awk -v a="$b_t" -v b="$a_t" 'BEGIN { printf "%.2f", b - a }')" "$drained" >>"$RESULTS_TSV"
}

# sized SECTION KEY TARGET ROUND CAL_N PORT HOP_PID WITH_PG AFTER ARGS...:
# measure with -n sized to about CPU_SECS of CPU of the measured process
# (the hop; Redis when HOP_PID is -). In the first round calibration runs
# (from CAL_N, 4x larger until one gives 15 ticks) set the -n, kept in
# SIZE[KEY.TARGET] for the later rounds.
declare -A SIZE
sized() {
	local key=$2 target=$3 n=$5 hop=$7 got
	if [ -z "${SIZE[$key.$target]:-}" ]; then
		while :; do
			measure "$1" "$key" "$target" 0 "$n" "${@:6}"
			if [ "$hop" = - ]; then got=$M_REDIS; else got=$M_HOP; fi
			[ "$got" -lt 15 ] && [ "$n" -lt 20000000 ] || break
			n=$((n * 4))
		done
		SIZE[$key.$target]=$(awk -v n="$n" -v t="$got" -v want="$CPU_SECS" -v hz="$CLK_TCK" \
			'BEGIN { if (t < 1) t = 1; m = n * want * hz / t; m = int((m + 999) / 1000) * 1000; print m }')
	fi
	measure "$1" "$key" "$target" "$4" "${SIZE[$key.$target]}" "${@:6}"
}

# Section 1: passthrough. Each test and mode, targets interleaved.
declare -A PORT=([direct]=$REDIS_PORT [respite]=$RESPITE_PORT [twemproxy]=$TWEM_PORT)
declare -A HOPPID=([direct]=- [respite]=$RESPITE_PID [twemproxy]=$TWEM_PID)
TARGETS=(direct respite twemproxy)
test_args() { # TEST: redis-benchmark arguments
	case $1 in
	lrange_100) echo "LRANGE mylist 0 99" ;;
	*) echo "-t $1" ;;
	esac
}
CASES=()
IFS=, read -ra TEST_LIST <<<"$TESTS"
for t in "${TEST_LIST[@]}"; do CASES+=("$t:u" "$t:p"); done
CASES+=("get:m")
passthrough_round() {
	local c t mode r=$1 args extra cal target
	for c in "${CASES[@]}"; do
		t=${c%:*} mode=${c#*:}
		read -ra args <<<"$(test_args "$t")"
		case $mode in
		u) extra=(-c "$CLIENTS") cal=20000 ;;
		p) extra=(-c "$CLIENTS" -P "$PIPELINE") cal=300000 ;;
		m) extra=(-c "$MANY") cal=20000 ;;
		esac
		for target in "${TARGETS[@]}"; do
			sized pass "$c" "$target" "$r" "$cal" "${PORT[$target]}" "${HOPPID[$target]}" 0 - "${extra[@]}" "${args[@]}"
		done
	done
}
latency_round() {
	local c target
	for c in 1 "$CLIENTS"; do
		for target in "${TARGETS[@]}"; do
			measure lat "get:c$c" "$target" "$1" "$LAT_N" "${PORT[$target]}" "${HOPPID[$target]}" 0 - -c "$c" -t get
		done
	done
}

# Section 2: routed keys through the routed proxies, against the same
# commands on unrouted keys through the same binary.
# The write-back run's CPU window lasts until its queue is drained (the
# flusher's work and PostgreSQL's are part of the cost); so does its
# calibration's, which so leaves an empty queue behind.
WB_SENT=0
drain_counters() { drain counters; }
routes_round() {
	local r=$1
	sized routes direct_get direct "$r" 20000 "$REDIS_PORT" - 1 - -c "$CLIENTS" GET key:__rand_int__
	sized routes plain_get routed "$r" 20000 "$ROUTED_PORT" "$ROUTED_PID" 1 - -c "$CLIENTS" GET plain:__rand_int__
	sized routes aside_get routed "$r" 20000 "$ROUTED_PORT" "$ROUTED_PID" 1 - -c "$CLIENTS" GET key:__rand_int__
	sized routes local_get routed-local "$r" 20000 "$LOCAL_PORT" "$LOCAL_PID" 1 - -c "$CLIENTS" GET key:__rand_int__
	sized routes plain_set routed "$r" 20000 "$ROUTED_PORT" "$ROUTED_PID" 1 - -c "$CLIENTS" -r 1000 SET plain:__rand_int__ xxx
	sized routes wt_set routed "$r" 5000 "$ROUTED_PORT" "$ROUTED_PID" 1 - -c "$CLIENTS" -r 1000 SET wt:__rand_int__ xxx
	sized routes plain_incr routed "$r" 20000 "$ROUTED_PORT" "$ROUTED_PID" 1 - -c "$CLIENTS" -r 1000 INCR plainctr:__rand_int__
	sized routes wb_incr routed "$r" 20000 "$ROUTED_PORT" "$ROUTED_PID" 1 drain_counters -c "$CLIENTS" -r 1000 INCR counter:__rand_int__
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$ROUTES" != 0 ]; then
	# Cache-aside warm-up: the first GET loads the row from PostgreSQL into
	# Redis (ttl 1h), the second fills the in-process tier from Redis.
	run redis-cli -h 127.0.0.1 -p "$REDIS_PORT" DEL key:__rand_int__ >/dev/null
	warm "$ROUTED_PORT" xxx
	warm "$LOCAL_PORT" xxx
	run redis-cli -h 127.0.0.1 -p "$ROUTED_PORT" SET plain:__rand_int__ xxx >/dev/null
	run psql "$PG_DSN" -XAtq -c "SELECT pg_stat_statements_reset()" >/dev/null
fi
for ((r = 1; r <= ROUNDS; r++)); do
	passthrough_round "$r"
	latency_round "$r"
	[ "$ROUTES" = 0 ] || routes_round "$r"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
WALL=$(($(date +%s) - T_START))

# Write-back check: every INCR sent (calibrations included) is in PostgreSQL.
if [ "$ROUTES" != 0 ]; then
	WB_PG=$(psql_q "SELECT coalesce(sum(v),0) FROM bench_counters")
	WT_ROWS=$(psql_q "SELECT count(*) FROM bench_wt WHERE v = 'xxx'")
	KV_SELECTS=$(psql_q "SELECT coalesce(sum(calls),0) FROM pg_stat_statements WHERE query ILIKE '%bench_kv%'")
	WB_DLQ=$(rcli XLEN respite:dlq:counters)
fi
[ -z "${RESULTS:-}" ] || cp "$RESULTS_TSV" "$RESULTS"

# --- 4. report -------------------------------------------------------------
commit=$BUILD_COMMIT
[ -z "$BUILD_STATUS" ] || commit+="-dirty"
PG_VERSION=""
[ "$ROUTES" = 0 ] || PG_VERSION=$(psql_q 'SHOW server_version')

# report: the tables (text, or Markdown with --markdown) from RESULTS_TSV:
# medians over the rounds of rps, p50, p99 and µs per command; ticks are
# the smallest of the rounds (the coarsest resolution).
report() {
	awk -F'\t' -v md="$MARKDOWN" -v hz="$CLK_TCK" -v minticks="$MIN_TICKS" -v clients="$CLIENTS" \
		-v many="$MANY" -v pipeline="$PIPELINE" -v rounds="$ROUNDS" '
	function med(list,   a, n, i, j, t) {
		n = split(list, a, " ")
		for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
		if (n == 0) return ""
		return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function add(k, f, v) { L[k, f] = (L[k, f] == "") ? v : L[k, f] " " v }
	function lo(k, f, v) { if (!((k, f) in LO) || v < LO[k, f]) LO[k, f] = v }
	function us(t, n) { return t * 1e6 / hz / n }
	function f1(x) { return (x == "" || x == "-") ? "-" : sprintf("%.1f", x) }
	function f2(x) { return (x == "" || x == "-") ? "-" : sprintf("%.2f", x) }
	function f0(x) { return (x == "" || x == "-") ? "-" : sprintf("%.0f", x) }
	function rat(a, b) { return (a != "" && b != "" && a != "-" && b != "-" && b > 0) ? sprintf("%.2f", a / b) : "-" }
	function hdr(title, cols,   n, c, i, s) {
		n = split(cols, c, "|")
		print ""
		if (md) {
			print "#### " title; print ""
			s = "|"; for (i = 1; i <= n; i++) s = s " " c[i] " |"; print s
			s = "|"; for (i = 1; i <= n; i++) s = s (i <= 2 ? "---" : "---:") "|"; print s
		} else {
			print "## " title
			for (i = 1; i <= n; i++) W[i] = 9
			W[1] = FIRSTW; W[2] = 12
			row(cols)
		}
	}
	function row(cols,   n, c, i, s) {
		n = split(cols, c, "|")
		if (md) { s = "|"; for (i = 1; i <= n; i++) s = s " " c[i] " |"; print s; return }
		s = sprintf("%-" W[1] "s", c[1]); for (i = 2; i <= n; i++) s = s sprintf(" %" W[i] "s", c[i]); print s
	}
	{
		k = $1 SUBSEP $2 SUBSEP $3
		if (!(k in seen)) { seen[k] = 1; order[$1, ++cnt[$1]] = $2 SUBSEP $3 }
		add(k, "n", $5); add(k, "rps", $6); add(k, "p50", $7); add(k, "p99", $8)
		add(k, "hop", us($9, $5)); add(k, "redis", us($10, $5)); add(k, "pg", us($11, $5)); add(k, "bench", us($12, $5))
		add(k, "tot", us($9 + $10 + $11, $5)); add(k, "secs", $13)
		lo(k, "thop", $9); lo(k, "tredis", $10); lo(k, "tpg", $11)
		if ($14 != "-" && $14 != "") add(k, "drain", $14)
		mticks = ($9 > 0 || $3 != "direct") ? $9 : $10
		if ($1 != "lat" && mticks < minticks) short = short sprintf(" %s/%s/round %s: %d ticks;", $2, $3, $4, mticks)
	}
	function V(s, key, target, f) { return med(L[s SUBSEP key SUBSEP target, f]) }
	function T(s, key, target, f) { return LO[s SUBSEP key SUBSEP target, f] }
	function modename(m) { return m == "u" ? "-c " clients : m == "p" ? "-c " clients " -P " pipeline : "-c " many }
	function testname(t) { return t == "mset" ? "MSET (10 keys)" : toupper(t) }
	END {
		# passthrough
		if (cnt["pass"]) {
			FIRSTW = 26
			hdr("CPU per command, passthrough (µs of CPU per command; hop = the proxy, Redis = the Redis behind it)",
				"test|target|n|rps|/direct|hop µs|Redis µs|hop+Redis|vs direct|bench µs|hop ticks|Redis ticks")
			for (i = 1; i <= cnt["pass"]; i++) {
				split(order["pass", i], kk, SUBSEP); key = kk[1]; tg = kk[2]
				split(key, km, ":")
				d = V("pass", key, "direct", "tot")
				h = V("pass", key, tg, "hop"); rd = V("pass", key, tg, "redis"); tt = V("pass", key, tg, "tot")
				row(testname(km[1]) " " modename(km[2]) "|" tg "|" V("pass", key, tg, "n") "|" f0(V("pass", key, tg, "rps")) "|" \
					rat(V("pass", key, tg, "rps"), V("pass", key, "direct", "rps")) "|" (tg == "direct" ? "-" : f1(h)) "|" f1(rd) "|" f1(tt) "|" \
					(tg == "direct" ? "-" : sprintf("%+.1f", tt - d)) "|" f1(V("pass", key, tg, "bench")) "|" \
					(tg == "direct" ? "-" : T("pass", key, tg, "thop")) "|" T("pass", key, tg, "tredis"))
				if (tg != "direct") {
					m = km[2]
					if (tg == "respite") { rh[m] = h; } else { th[m] = h }
					if (tg == "twemproxy" && rh[m] > 0 && h > 0) { lg[m] += log(rh[m] / h); ng[m]++ }
					if (km[1] == "get") { gh[m, tg] = h; gr[m, tg] = rd }
				} else if (km[1] == "get") gr[km[2], "direct"] = rd
				rr = rat(V("pass", key, tg, "rps"), V("pass", key, "direct", "rps"))
				if (tg == "respite" && rr != "-") { lr[km[2]] += log(rr); nr[km[2]]++ }
			}
		}
		if (cnt["lat"]) {
			FIRSTW = 26
			hdr("latency, redis-benchmark -t get -n " LATN " (ms)", "clients|target|rps|p50 ms|p99 ms|hop µs|Redis µs")
			for (i = 1; i <= cnt["lat"]; i++) {
				split(order["lat", i], kk, SUBSEP); key = kk[1]; tg = kk[2]
				row("-c " substr(key, 6) "|" tg "|" f0(V("lat", key, tg, "rps")) "|" sprintf("%.3f", V("lat", key, tg, "p50")) "|" \
					sprintf("%.3f", V("lat", key, tg, "p99")) "|" (tg == "direct" ? "-" : f1(V("lat", key, tg, "hop"))) "|" f1(V("lat", key, tg, "redis")))
				if (key == "get:c1") { l1[tg] = V("lat", key, tg, "p50") }
			}
		}
		if (cnt["routes"]) {
			FIRSTW = 40
			name["direct_get"] = "GET, direct Redis"
			name["plain_get"] = "GET plain key (no route)"
			name["aside_get"] = "GET hit, cache-aside, Redis tier"
			name["local_get"] = "GET hit, cache-aside, in-process tier"
			name["plain_set"] = "SET plain key -r 1000 (no route)"
			name["wt_set"] = "SET write-through -r 1000"
			name["plain_incr"] = "INCR plain key -r 1000 (no route)"
			name["wb_incr"] = "INCR write-back -r 1000 (to drained)"
			base["aside_get"] = base["local_get"] = base["plain_get"] = "plain_get"
			base["wt_set"] = base["plain_set"] = "plain_set"; base["wb_incr"] = base["plain_incr"] = "plain_incr"
			hdr("routed keys (-c " clients "; hop = the routed proxy; PostgreSQL = the whole instance)",
				"test|proxy|n|rps|rps/plain GET|hop µs|hop/plain GET|hop/plain cmd|Redis µs|PG µs|total µs|bench µs|hop ticks|Redis ticks|PG ticks")
			pg_hop = V("routes", "plain_get", "routed", "hop"); pg_rps = V("routes", "plain_get", "routed", "rps")
			for (i = 1; i <= cnt["routes"]; i++) {
				split(order["routes", i], kk, SUBSEP); key = kk[1]; tg = kk[2]
				h = V("routes", key, tg, "hop")
				bh = (key in base) ? V("routes", base[key], "routed", "hop") : ""
				row(name[key] "|" tg "|" V("routes", key, tg, "n") "|" f0(V("routes", key, tg, "rps")) "|" rat(V("routes", key, tg, "rps"), pg_rps) "|" \
					(tg == "direct" ? "-" : f1(h)) "|" (tg == "direct" ? "-" : rat(h, pg_hop)) "|" (tg == "direct" ? "-" : rat(h, bh)) "|" \
					f1(V("routes", key, tg, "redis")) "|" f1(V("routes", key, tg, "pg")) "|" f1(V("routes", key, tg, "tot")) "|" \
					f1(V("routes", key, tg, "bench")) "|" (tg == "direct" ? "-" : T("routes", key, tg, "thop")) "|" \
					T("routes", key, tg, "tredis") "|" T("routes", key, tg, "tpg"))
				rs[key] = rat(h, bh)
			}
			dr = V("routes", "wb_incr", "routed", "drain")
			if (dr != "") { print ""; print "write-back INCR: its CPU window ends when the queue is empty, " dr " s after redis-benchmark ended (median)" }
		}
		print ""
		s = "summary:"
		if (ng["u"]) s = s sprintf(" hop CPU per command respite/twemproxy (geometric mean of %d tests) %s unpipelined, %s -P %s, %s GET -c %s;", \
			ng["u"], gm("u"), gm("p"), pipeline, gm("m"), many)
		if (ng["u"]) s = s sprintf(" GET -c %s µs/cmd: respite %.1f + Redis %.1f, twemproxy %.1f + Redis %.1f, direct Redis %.1f;", \
			clients, gh["u", "respite"], gr["u", "respite"], gh["u", "twemproxy"], gr["u", "twemproxy"], gr["u", "direct"])
		if (nr["u"] && nr["p"]) s = s sprintf(" respite rps/direct (geometric mean) %.2f unpipelined, %.2f -P %s;", exp(lr["u"] / nr["u"]), exp(lr["p"] / nr["p"]), pipeline)
		if (cnt["routes"]) s = s sprintf(" routed hop CPU vs the plain command: cache-aside hit %sx (in-process tier %sx of plain GET), write-through SET %sx, write-back INCR %sx", \
			rs["aside_get"], rat(V("routes", "local_get", "routed-local", "hop"), pg_hop), rs["wt_set"], rs["wb_incr"])
		sub(/;$/, "", s)
		print s
		if (short != "") { print ""; print "runs under " minticks " ticks of the measured process (coarse):" short }
	}
	function gm(m) { return ng[m] ? sprintf("%.2fx", exp(lg[m] / ng[m])) : "-" }' LATN="$LAT_N" "$RESULTS_TSV"
}

odd_lines() {
	local f odd=0
	for f in "$TMP"/out/*.err; do
		[ -s "$f" ] || continue
		# redis-benchmark asks the target for CONFIG GET save/appendonly;
		# twemproxy does not serve CONFIG.
		if grep -qv 'Could not fetch server CONFIG' "$f"; then
			odd=1
			echo "redis-benchmark stderr ($(basename "$f" .err)):"
			sed 's/^/  /' "$f" | sort | uniq -c | sort -rn | head -n 10
		fi
	done
	for p in "respite:$RESPITE_PID" "twemproxy:$TWEM_PID" "servers:$SERVERS_PID" ${ROUTED_PID:+"routed:$ROUTED_PID"} ${LOCAL_PID:+"routed-local:$LOCAL_PID"}; do
		if ! kill -0 "${p#*:}" 2>/dev/null; then odd=1; echo "${p%%:*} exited during the run"; fi
	done
	for f in respite routed routed-local; do
		[ -s "$TMP/$f.log" ] || continue
		if grep -v 'respite listening' "$TMP/$f.log" | grep -q .; then
			odd=1
			echo "$f log (first 20 lines):"
			grep -v 'respite listening' "$TMP/$f.log" | head -n 20 | sed 's/^/  /'
		fi
	done
	if grep -qiE 'error|warn' "$TMP/nutcracker.log" 2>/dev/null; then
		odd=1
		echo "nutcracker log errors/warnings (first 10):"
		grep -iE 'error|warn' "$TMP/nutcracker.log" | head -n 10 | sed 's/^/  /'
	fi
	if [ "$ROUTES" != 0 ]; then
		if [ "$WB_PG" != "$WB_SENT" ] || [ "$WB_DLQ" != 0 ]; then
			odd=1
			echo "write-back check FAILED: $WB_SENT INCRs sent, PostgreSQL sum(v) = $WB_PG, dead letters $WB_DLQ"
		fi
	fi
	[ ${#STARTUP_RETRIES[@]} = 0 ] || { odd=1; printf 'start-up retry: %s\n' "${STARTUP_RETRIES[@]}"; }
	[ "$odd" = 1 ] || echo "no errors from redis-benchmark, the proxies or nutcracker"
}

machine="nproc $(nproc), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown); load $LOAD_BEFORE before, $LOAD_AFTER after"
versions="redis $(redis-server --version | awk '{print $3}'), $(nutcracker -V 2>&1 | head -n1 | sed 's/^This is //'), $(go version | awk '{print $3}')${PG_VERSION:+, PostgreSQL $PG_VERSION}"
params="ROUNDS=$ROUNDS CLIENTS=$CLIENTS MANY=$MANY PIPELINE=$PIPELINE TESTS=$TESTS CPU_SECS=$CPU_SECS LAT_N=$LAT_N CLK_TCK=$CLK_TCK; wall ${WALL}s"
checks=""
if [ "$ROUTES" != 0 ]; then
	checks="write-back: $WB_SENT INCRs sent (calibrations included), PostgreSQL sum(v) $WB_PG, dead letters $WB_DLQ; write-through rows $WT_ROWS; bench_kv statements during the run $KV_SELECTS (the warm-up's load only: every routed GET was a hit)"
fi
echo
if [ "$MARKDOWN" = 1 ]; then
	echo "### CPU per command, $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`"
	echo
	echo "Command: \`$CMDLINE\`"
	echo
	echo "- proxy: $(commit_line)"
	echo "- machine: $machine"
	echo "- versions: $versions"
	echo "- params: $params"
	[ -z "$checks" ] || echo "- checks: $checks"
	report
	echo
	echo '```'
	odd_lines
	if [ -n "$BUILD_STATUS" ]; then
		echo "working tree at build time (git status --porcelain):"
		echo "$BUILD_STATUS" | sed 's/^/  /'
	fi
	echo '```'
else
	report_header "Respite CPU per command"
	echo "command: $CMDLINE"
	echo "versions: $versions"
	echo "params:  $params"
	[ -z "$checks" ] || echo "checks:  $checks"
	report
	echo
	odd_lines
	echo
	report_commands
	for f in respite ${ROUTED_PID:+routed routed-local}; do
		echo "$TMP/$f.yaml:"
		sed 's/^/  /' "$TMP/$f.yaml"
	done
	echo "$TMP/nutcracker.yml:"
	sed 's/^/  /' "$TMP/nutcracker.yml"
fi
