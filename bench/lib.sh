# Shared by the benchmark scripts (source it): command logging, background
# processes and their cleanup, readiness checks, package installs, free
# ports.

COMMANDS=()
PIDS=()
# fd 4: the script's own stderr, for progress lines even where a command's
# stderr is redirected to a file. Children do not inherit it.
exec 4>&2
# quote ARGS...: the arguments as one shell-quoted line, plain words unquoted.
quote() {
	local a out=()
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./:,=@%+-]+$ ]]; then out+=("$a"); else out+=("$(printf '%q' "$a")"); fi
	done
	printf '%s' "${out[*]}"
}
# run CMD...: log the exact command, then run it.
run() {
	local q
	q=$(quote "$@")
	COMMANDS+=("$q")
	echo "+ $q" >&4
	"$@" 4>&-
}
# bg CMD...: log the exact command, start it in the background and remember
# its pid for cleanup.
bg() {
	local q
	q=$(quote "$@")
	COMMANDS+=("$q &")
	echo "+ $q &" >&4
	"$@" 4>&- &
	PIDS+=($!)
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi

apt_install() {
	export DEBIAN_FRONTEND=noninteractive
	if ! run "${SUDO[@]}" apt-get install -y -q "$@"; then
		run "${SUDO[@]}" apt-get update -q
		run "${SUDO[@]}" apt-get install -y -q "$@"
	fi
}

# free_port VAR: set VAR to a TCP port on 127.0.0.1 that no socket uses
# (listening or connected) and this script has not handed out yet, below
# the kernel's ephemeral range (outgoing connections of other jobs take
# ports there at any moment); never 6379, 6380 or 5432.
USED_PORTS=" 6379 6380 5432 "
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
	local p _ lo=10000 hi=$EPHEMERAL_LOW
	[ "$hi" -gt $((lo + 1000)) ] || hi=65000
	for _ in $(seq 500); do
		p=$((lo + RANDOM % (hi - lo)))
		[[ $USED_PORTS == *" $p "* ]] && continue
		if [ -n "$(ss -Htan "sport = :$p" 2>/dev/null)" ]; then continue; fi
		if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
		USED_PORTS+="$p "
		printf -v "$1" '%s' "$p"
		return 0
	done
	echo "no free port found" >&2
	return 1
}

# make_tmp NAME: a temporary directory in TMP, removed on exit after every
# background process (newest first, so proxies stop before the servers they
# use) was stopped.
make_tmp() {
	TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}
cleanup() {
	local rc=$? i pid
	trap - EXIT INT TERM
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		pid=${PIDS[i]}
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$TMP"
	exit "$rc"
}

# wait_ready NAME PORT PID LOG: wait until PORT answers PING. Returns 2 if
# the process exited because the port was taken (a caller may retry on
# another); fails the script showing LOG otherwise.
wait_ready() {
	local name=$1 port=$2 pid=$3 log=$4 _
	for _ in $(seq 100); do
		if ! kill -0 "$pid" 2>/dev/null; then
			if grep -q 'address already in use' "$log" 2>/dev/null; then
				echo "$name: port $port was taken before it could listen" >&2
				return 2
			fi
			echo "$name exited during startup; its output:" >&2
			cat "$log" >&2 || true
			exit 1
		fi
		if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
			return 0
		fi
		sleep 0.1
	done
	echo "$name did not answer PING on port $port within 10s; its output:" >&2
	cat "$log" >&2 || true
	exit 1
}

# build_info: BUILD_COMMIT and BUILD_STATUS, what a build just made from the
# working tree holds (HEAD plus any uncommitted changes).
build_info() {
	BUILD_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	BUILD_STATUS=$(git status --porcelain 2>/dev/null | grep -E '^( M|M |MM|A |\?\?|R |D | D)' || true)
}

note() { echo "== $*" >&4; }

# --- dependencies (installed with apt-get where missing) -------------------
need_redis() {
	if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1 ||
		! command -v redis-cli >/dev/null 2>&1; then
		apt_install redis-server redis-tools
	fi
}
need_nutcracker() { command -v nutcracker >/dev/null 2>&1 || apt_install nutcracker; }
need_postgres() {
	if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || ! command -v psql >/dev/null 2>&1 ||
		! command -v pgbench >/dev/null 2>&1; then
		apt_install postgresql postgresql-contrib postgresql-client
	fi
}
need_go() { command -v go >/dev/null 2>&1 || { echo "go not found in PATH" >&2; exit 1; }; }

# build_proxy: RESPITE, the proxy binary: RESPITE_BIN if set, otherwise
# $TMP/respite built from ./cmd/proxy of this checkout; then build_info.
build_proxy() {
	if [ -n "${RESPITE_BIN:-}" ]; then
		[ -x "$RESPITE_BIN" ] || { echo "RESPITE_BIN=$RESPITE_BIN is not an executable" >&2; exit 1; }
		RESPITE=$RESPITE_BIN
	else
		RESPITE=$TMP/respite
		run go build -o "$RESPITE" ./cmd/proxy
	fi
	build_info
}

# commit_line: what the commit line of a report says about the proxy binary.
commit_line() {
	local dirty=""
	[ -z "$BUILD_STATUS" ] || dirty=" + uncommitted working-tree changes at build time (listed below)"
	if [ -n "${RESPITE_BIN:-}" ]; then
		echo "proxy binary RESPITE_BIN=$RESPITE_BIN (not built here); checkout at $BUILD_COMMIT$dirty"
	else
		echo "$BUILD_COMMIT (HEAD at build time)$dirty"
	fi
}

# report_header TITLE: the lines every report starts with (LOAD_BEFORE and
# LOAD_AFTER set by the caller).
report_header() {
	echo "$1"
	echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "commit:  $(commit_line)"
	echo "nproc:   $(nproc)"
	echo "load:    $LOAD_BEFORE before, $LOAD_AFTER after (1/5/15-min load average; other work on the machine shows here)"
	echo "cpu:     $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown)"
	echo "redis:   $(redis-server --version | awk '{print $3}')"
	echo "go:      $(go version | awk '{print $3}')"
}

# report_commands: the exact commands run, and the working tree at build time.
report_commands() {
	echo "commands run (from $REPO):"
	for c in "${COMMANDS[@]}"; do echo "  $c"; done
	if [ -n "$BUILD_STATUS" ]; then
		echo "working tree at build time (git status --porcelain):"
		echo "$BUILD_STATUS" | sed 's/^/  /'
	fi
}

# --- throwaway servers -----------------------------------------------------
# start_servers [FLAGS]: bench/servers (internal/testenv) starts a
# redis-server and a PostgreSQL on free ports (FLAGS: -postgres=false for
# Redis only); sources their addresses (REDIS_ADDR REDIS_PORT, and PG_DSN
# PG_PORT PG_DIR with PostgreSQL) and sets SERVERS_PID and REDIS_PID.
start_servers() {
	local _
	run go build -o "$TMP/servers" ./bench/servers
	bg "$TMP/servers" -env "$TMP/servers.env" "$@" >"$TMP/servers.log" 2>&1
	SERVERS_PID=${PIDS[-1]}
	for _ in $(seq 600); do
		[ -f "$TMP/servers.env" ] && break
		if ! kill -0 "$SERVERS_PID" 2>/dev/null; then
			echo "bench/servers exited during startup; its output:" >&2
			cat "$TMP/servers.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	[ -f "$TMP/servers.env" ] || { echo "bench/servers not ready within 60s" >&2; cat "$TMP/servers.log" >&2; exit 1; }
	. "$TMP/servers.env"
	REDIS_PID=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
	note "redis 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)${PG_DSN:+, postgres $PG_DSN}"
}

# start_twemproxy PORTVAR PIDVAR: nutcracker (twemproxy) in front of the
# Redis on REDIS_PORT, one pool with that one server, on a free port;
# config in $TMP/nutcracker.yml.
start_twemproxy() {
	local port stats
	free_port port
	free_port stats
	cat >"$TMP/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:$port
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:$REDIS_PORT:1
YML
	run nutcracker -t -c "$TMP/nutcracker.yml"
	bg nutcracker -c "$TMP/nutcracker.yml" -s "$stats" -a 127.0.0.1 \
		-p "$TMP/nutcracker.pid" -o "$TMP/nutcracker.log"
	wait_ready twemproxy "$port" "${PIDS[-1]}" "$TMP/nutcracker.log"
	printf -v "$1" '%s' "$port"
	printf -v "$2" '%s' "${PIDS[-1]}"
}

# start_proxy NAME PORTVAR PIDVAR [VAR=VALUE]: write $TMP/NAME.yaml (from
# NAME_yaml PORT, dashes as underscores) with a free port and start the
# proxy RESPITE, with VAR=VALUE in its environment if given; if another
# process took the port meanwhile, try another (noted in STARTUP_RETRIES).
STARTUP_RETRIES=()
start_proxy() {
	local name=$1 port rc _ envset=()
	[ -z "${4:-}" ] || envset=(env "$4")
	for _ in 1 2 3 4 5; do
		free_port port
		"${name//-/_}_yaml" "$port" >"$TMP/$name.yaml"
		bg "${envset[@]}" "$RESPITE" -config "$TMP/$name.yaml" >"$TMP/$name.log" 2>&1
		rc=0
		wait_ready "$name" "$port" "${PIDS[-1]}" "$TMP/$name.log" || rc=$?
		if [ "$rc" = 0 ]; then
			printf -v "$2" '%s' "$port"
			printf -v "$3" '%s' "${PIDS[-1]}"
			return 0
		fi
		echo "$name: retrying on another port" >&2
		STARTUP_RETRIES+=("$name: port $port taken: $(tr '\n' ' ' <"$TMP/$name.log")")
	done
	echo "$name: no port could be bound in 5 attempts" >&2
	exit 1
}

# --- routed proxies (PostgreSQL from start_servers) ------------------------
psql_q() { psql "$PG_DSN" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

# create_bench_tables: bench_kv (one row, '__rand_int__' = 'xxx', what
# redis-benchmark's GET without -r asks for), bench_counters, bench_kv2.
create_bench_tables() {
	run psql "$PG_DSN" -Xq -v ON_ERROR_STOP=1 -c "
CREATE TABLE bench_kv (k text PRIMARY KEY, v text NOT NULL);
INSERT INTO bench_kv VALUES ('__rand_int__', 'xxx');
CREATE TABLE bench_counters (k text PRIMARY KEY, v bigint NOT NULL DEFAULT 0);
CREATE TABLE bench_kv2 (k text PRIMARY KEY, v text);
ANALYZE bench_kv;"
}

# proxy_head PORT: the settings every routed proxy shares.
proxy_head() {
	cat <<YML
listen: 127.0.0.1:$1
log_level: warn
upstream:
  addr: 127.0.0.1:$REDIS_PORT
postgres:
  dsn: "$PG_DSN"
YML
}
# route NAME PREFIX POLICY TABLE: a format: value route over TABLE(k, v).
route() {
	cat <<YML
  - name: $1
    prefix: "$2"
    policy: $3
    table: $4
    key_column: k
    format: value
    value_column: v
YML
}
kv_route() { route kv key: cache-aside bench_kv; }
local_tier() { echo "    local_cache: {size: 100000, ttl: 10s}"; }
# kv_write_back_yaml PORT: a proxy with the kv route and the write-back
# settings; the caller adds its write routes.
kv_write_back_yaml() { proxy_head "$1"; printf 'write_back:\n  consumer: bench\nroutes:\n'; kv_route; }
# kv_local_yaml PORT: a proxy with the kv route and its in-process tier.
kv_local_yaml() { proxy_head "$1"; echo "routes:"; kv_route; local_tier; }

# warm PORT WANT: GET key:__rand_int__ on PORT (logged) must return WANT.
warm() {
	run redis-cli -h 127.0.0.1 -p "$1" GET key:__rand_int__ >"$TMP/warm.out"
	local got
	got=$(cat "$TMP/warm.out")
	[ "$got" = "$2" ] || { echo "GET key:__rand_int__ on port $1 returned '$got', want '$2'" >&2; cat "$TMP"/*.log >&2; exit 1; }
}

# drain ROUTE: wait until the write-back queue respite:wb:ROUTE on
# REDIS_PORT is empty (at most DRAIN_TIMEOUT seconds, default 300); prints
# the seconds waited, or "timeout".
drain() {
	local route=$1 t0 t1 len
	t0=$(date +%s.%N)
	while :; do
		len=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" XLEN "respite:wb:$route")
		[ "$len" = 0 ] && break
		t1=$(date +%s.%N)
		if awk -v a="$t0" -v b="$t1" -v m="${DRAIN_TIMEOUT:-300}" 'BEGIN { exit !(b - a > m) }'; then
			echo "write-back queue respite:wb:$route still holds $len entries after ${DRAIN_TIMEOUT:-300}s" >&2
			echo timeout
			return 0
		fi
		sleep 0.05
	done
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }'
}

# csv_field FILE COL: column COL (2 rps, 5 p50, 7 p99; redis-benchmark 7)
# of the last data row of redis-benchmark --csv output.
csv_field() {
	awk -F'","' -v col="$2" '{ gsub(/^"|"\r?$/, "") } $1 != "test" && NF >= col { v = $col } END { if (col == 2) printf "%.0f\n", v; else print v + 0 }' "$1"
}
