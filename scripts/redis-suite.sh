#!/usr/bin/env bash
# redis-suite.sh: runs Redis' own Tcl test suite (the one of the installed
# redis-server's Debian source package) in external mode, unit by unit,
# first against a throwaway redis-server directly, then through a throwaway
# Respite in front of another throwaway redis-server, and lists every test
# that passes directly but not through Respite.
#
#   bash scripts/redis-suite.sh [--units "type/list multi"] [--direct-only |
#       --respite-only] [--direct-from DIR] [--keep-logs DIR] [--durable]
#       [--report-only] [--retries N] [-- TEST_HELPER_ARGS...]
#
#   --units LIST       run these units (default: the list in UNITS below)
#   --direct-only      only run against Redis (exit 1 if a test fails there)
#   --respite-only     only run through Respite; without --direct-from every
#                      respite failure counts as a difference
#   --direct-from DIR  take the direct side from DIR/direct of an earlier
#                      --keep-logs DIR run instead of running it again
#   --keep-logs DIR    keep the raw logs of every run in DIR/<side>/<unit>/
#                      (test.log: test_helper's output; redis.log, respite.log)
#   --durable          pass --durable to test_helper: an exception fails its
#                      test instead of aborting the rest of the unit (Redis'
#                      own CI does not use it; off by default)
#   --report-only      exit 0 whatever the results
#   --retries N        a unit with a test that passes directly but not
#                      through Respite runs through Respite again, up to N
#                      times (default 1); the last run counts, and tests
#                      that differed only in an earlier run are listed as
#                      flaky (LOGS/flaky.tsv)
#   -- ARGS...         pass ARGS to every test_helper run, e.g.
#                      -- --only '/^PUBLISH/PSUBSCRIBE' (test_helper's --only
#                      takes a test's name, or a regexp after a /)
#
# Environment: RESPITE_BIN (a proxy binary to use instead of building
# ./cmd/proxy), REDIS_SUITE_CACHE (where the suite is kept; default
# ${XDG_CACHE_HOME:-$HOME/.cache}/respite/redis-suite), UNIT_TIMEOUT (seconds
# a unit may take, default 900), TEST_TIMEOUT (test_helper's --timeout: seconds
# without progress before it gives up on a unit, default 120).
#
# The suite comes from `apt-get source --download-only` of the installed
# redis-server's source package (a deb-src entry is added beside
# /etc/apt/sources.list.d/debian.sources when there is none); only tests/ and
# runtest are unpacked, with the Debian patches that touch them applied, into
# the cache, and later runs reuse it without the network. Nothing of it is
# copied into the repository. Every server and proxy started here listens on
# a free port on 127.0.0.1 (never 6379, 6380 or 5432) and is stopped on exit,
# Ctrl-C included.
#
# Exit status: 0 when no test differs (--direct-only: when every test passed),
# 1 otherwise, 2 on a usage or setup error; --report-only always exits 0.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# free_port, wait_ready, bg, make_tmp and the cleanup of every process
# started with bg.
# shellcheck source=../bench/lib.sh
. "$ROOT/bench/lib.sh"
export PATH="/usr/local/go/bin:$PATH"

UNITS="protocol quit info-command multi pubsub pubsubshard tracking
type/string type/incr type/hash type/list type/list-2 type/list-3 type/set
type/zset type/stream type/stream-cgroups keyspace expire scan scripting
functions bitops bitfield geo hyperloglog sort dump auth acl info
introspection-2 latency-monitor slowlog other"
TAGS="-slow -needs:repl -needs:debug -needs:config-maxmemory -needs:save -needs:reset -needs:pfdebug -needs:config-resetstat -needs:latency -needs:local-process"
UNIT_TIMEOUT=${UNIT_TIMEOUT:-900}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
CACHE=${REDIS_SUITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/respite/redis-suite}

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

SIDES="direct respite" KEEP="" DIRECT_FROM="" DURABLE=() REPORT_ONLY=0 EXTRA=() RETRIES=1
while (($#)); do
	case $1 in
	--units) UNITS=${2:?--units needs a list}; shift ;;
	--direct-only) SIDES=direct ;;
	--respite-only) SIDES=respite ;;
	--direct-from) DIRECT_FROM=${2:?--direct-from needs a directory}; shift ;;
	--keep-logs) KEEP=${2:?--keep-logs needs a directory}; shift ;;
	--durable) DURABLE=(--durable) ;;
	--report-only) REPORT_ONLY=1 ;;
	--retries) RETRIES=${2:?--retries needs a number}; shift ;;
	--) shift; EXTRA=("$@"); break ;;
	-h | --help) usage ;;
	*) echo "redis-suite: unknown option $1" >&2; usage ;;
	esac
	shift
done
if [ -n "$DIRECT_FROM" ]; then
	[ -d "$DIRECT_FROM/direct" ] || { echo "redis-suite: $DIRECT_FROM/direct does not exist" >&2; exit 2; }
	DIRECT_FROM=$(cd "$DIRECT_FROM" && pwd)
	SIDES=respite
fi
for tool in redis-server redis-cli tclsh timeout tar patch dpkg-query ss; do
	command -v "$tool" >/dev/null || { echo "redis-suite: $tool not found" >&2; exit 2; }
done

make_tmp redis-suite
LOGS=$TMP/logs
if [ -n "$KEEP" ]; then
	mkdir -p "$KEEP"
	LOGS=$(cd "$KEEP" && pwd)
fi
mkdir -p "$LOGS"
# The commands bg runs are logged to a file, not the terminal.
exec 4>>"$LOGS/commands.log"
# test_helper's own test server takes a port in 21079-21110 and checks that
# port + 10000 is free too: keep our servers out of both ranges.
for p in $(seq 21079 21110); do USED_PORTS+="$p $((p + 10000)) "; done

T_START=$EPOCHREALTIME
# elapsed SINCE: seconds since the $EPOCHREALTIME value SINCE, 0.1 s precision.
elapsed() {
	local now=${EPOCHREALTIME//[.,]/} then=${1//[.,]/}
	local d=$(((now - then) / 100000))
	printf '%d.%d' $((d / 10)) $((d % 10))
}

# ---------------------------------------------------------------- the suite

# has_deb_src: some source list apt reads has a deb-src entry.
has_deb_src() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		grep -qsE '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' "$f" && return 0
	done
	return 1
}

# add_deb_src: a deb-src twin of the Debian package source, in a file of its
# own (the existing files are not changed).
add_deb_src() {
	local src=/etc/apt/sources.list.d/debian.sources
	if [ -f "$src" ]; then
		echo "redis-suite: adding /etc/apt/sources.list.d/debian-src.sources (deb-src of $src)"
		sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' "$src" |
			"${SUDO[@]}" tee /etc/apt/sources.list.d/debian-src.sources >/dev/null
	elif grep -qsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list; then
		echo "redis-suite: adding /etc/apt/sources.list.d/debian-src.list (deb-src of /etc/apt/sources.list)"
		sed -nE 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list |
			"${SUDO[@]}" tee /etc/apt/sources.list.d/debian-src.list >/dev/null
	else
		echo "redis-suite: no Debian package source found to add a deb-src entry for" >&2
		exit 2
	fi
}

# fetch_suite: SUITE, a folder with tests/ and runtest of the installed
# redis-server's source package (Debian patches applied), from the cache or
# downloaded into it.
fetch_suite() {
	local pkgver srcpkg srvver dl dsc top orig debtar p out bad=0
	pkgver=$(dpkg-query -W -f='${Version}' redis-server)
	srcpkg=$(dpkg-query -W -f='${source:Package}' redis-server)
	srvver=$(redis-server --version | sed -nE 's/.* v=([^ ]+).*/\1/p')
	SUITE=$CACHE/${srcpkg}_${pkgver#*:}
	if [ ! -f "$SUITE/.complete" ]; then
		dl=$CACHE/download/${srcpkg}_${pkgver#*:}
		mkdir -p "$dl"
		if ! compgen -G "$dl/*.dsc" >/dev/null; then
			if ! has_deb_src; then
				add_deb_src
				"${SUDO[@]}" apt-get update -q >&2
			fi
			if ! (cd "$dl" && apt-get source --download-only "$srcpkg=$pkgver" >&2); then
				"${SUDO[@]}" apt-get update -q >&2
				(cd "$dl" && apt-get source --download-only "$srcpkg=$pkgver" >&2) ||
					(cd "$dl" && apt-get source --download-only "$srcpkg" >&2)
			fi
		fi
		dsc=$(compgen -G "$dl/*.dsc" | sed -n 1p)
		orig=$(compgen -G "$dl/*.orig.tar.*" | sed -n 1p)
		debtar=$(compgen -G "$dl/*.debian.tar.*" | sed -n 1p)
		[ -n "$dsc" ] && [ -n "$orig" ] || { echo "redis-suite: no source package in $dl" >&2; exit 2; }
		rm -rf "$SUITE.new"
		mkdir -p "$SUITE.new"
		top=$(tar tf "$orig" | sed -n 1p)
		top=${top%%/*}
		tar xf "$orig" -C "$SUITE.new" --strip-components=1 "$top/tests" "$top/runtest"
		sed -nE 's/^Version:[[:space:]]*//p' "$dsc" >"$SUITE.new/.debian-version"
		echo "${top#*-}" >"$SUITE.new/.upstream-version"
		if [ -n "$debtar" ]; then
			# Apply, in series order, the hunks of the Debian patches that touch
			# tests/ or runtest; hunks of files not unpacked are skipped.
			mkdir -p "$SUITE.new/.debian"
			tar xf "$debtar" -C "$SUITE.new/.debian" debian/patches
			while read -r p _; do
				[ -n "$p" ] && [ "${p:0:1}" != "#" ] || continue
				out=$(cd "$SUITE.new" && patch -p1 -t -N --no-backup-if-mismatch -r - -i ".debian/debian/patches/$p" 2>&1) || true
				if grep -qE '^Hunk #[0-9]+ FAILED|^Reversed \(or previously applied\)|malformed patch|saving rejects' <<<"$out"; then
					echo "redis-suite: Debian patch $p does not apply to tests/:" >&2
					grep -E '^patching file (tests|runtest)|^Hunk #[0-9]+ FAILED|^Reversed|malformed patch' <<<"$out" >&2
					bad=1
				fi
			done <"$SUITE.new/.debian/debian/patches/series"
			rm -rf "$SUITE.new/.debian"
		fi
		((bad == 0)) || exit 2
		rm -rf "$SUITE"
		mv "$SUITE.new" "$SUITE"
		touch "$SUITE/.complete"
	fi
	SUITE_VERSION=$(cat "$SUITE/.upstream-version")
	echo "redis-suite: test suite of redis $SUITE_VERSION (Debian $(cat "$SUITE/.debian-version")) from $SUITE"
	echo "redis-suite: redis-server $srvver (Debian package $pkgver)"
	if [ "$SUITE_VERSION" != "$srvver" ] || [ "$(cat "$SUITE/.debian-version")" != "$pkgver" ]; then
		echo "redis-suite: WARNING: the suite's version does not match the installed redis-server"
	fi
}

# ---------------------------------------------------------------- processes

# stop PID: stop a process started with bg (TERM, KILL after 10 s) and
# forget it.
stop() {
	local pid=$1 i
	kill "$pid" 2>/dev/null || true
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
	wait "$pid" 2>/dev/null || true
	forget "$pid"
}

# forget PID: take PID off the list cleanup stops (it has been waited for).
forget() {
	local pid=$1 i
	for i in "${!PIDS[@]}"; do
		[ "${PIDS[i]}" != "$pid" ] || unset 'PIDS[i]'
	done
	PIDS=("${PIDS[@]}")
}

# start_redis DIR: a throwaway redis-server with its files in DIR; sets
# RPORT and RPID.
start_redis() {
	local dir=$1 rc
	mkdir -p "$dir/data"
	while :; do
		free_port RPORT
		bg redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
			--enable-debug-command yes --enable-protected-configs yes \
			--enable-module-command yes --dir "$dir/data" >"$dir/redis.log" 2>&1
		RPID=$!
		rc=0
		wait_ready redis-server "$RPORT" "$RPID" "$dir/redis.log" || rc=$?
		((rc == 0)) && return 0
		stop "$RPID"
	done
}

# start_respite DIR UPSTREAM_PORT: a throwaway Respite in front of it; sets
# PPORT and PXPID.
start_respite() {
	local dir=$1 up=$2 rc
	while :; do
		free_port PPORT
		printf 'listen: 127.0.0.1:%s\nupstream: {addr: 127.0.0.1:%s}\n' "$PPORT" "$up" >"$dir/respite.yaml"
		bg "$RESPITE_BIN" -config "$dir/respite.yaml" >"$dir/respite.log" 2>&1
		PXPID=$!
		rc=0
		wait_ready respite "$PPORT" "$PXPID" "$dir/respite.log" || rc=$?
		((rc == 0)) && return 0
		stop "$PXPID"
	done
}

# ---------------------------------------------------------------- parsing

# parse LOG: test_helper's output as lines KIND<TAB>NAME<TAB>DETAIL, KIND one
# of ok, err, skip, ignore, exception, timeout, done, allpassed, failed.
parse() {
	sed 's/\x1b\[[0-9;]*m//g' "$1" | awk -F'\t' '
	function emit(k, n, d) { gsub(/\t/, " ", n); gsub(/\t/, " ", d); print k "\t" n "\t" d }
	function flush() { if (want != "") { emit(want, name, detail) }; want = "" }
	want != "" && !/^\[/ {
		if (detail == "" && $0 != "") detail = $0
		if (want == "timeout" && name == "" && match($0, /=> \([A-Z ]+\) /)) name = substr($0, RSTART + RLENGTH)
		if (detail != "" && want != "timeout") flush()
		next
	}
	{ flush() }
	/^\[ok\]: / { n = substr($0, 7); sub(/ \([0-9]+ ms\)$/, "", n); emit("ok", n, ""); next }
	/^\[err\]: / { want = "err"; name = substr($0, 8); sub(/ in tests\/[^ ]*\.tcl$/, "", name); detail = ""; next }
	/^\[skip\]: / { emit("skip", substr($0, 9), ""); next }
	/^\[ignore\]: / { emit("ignore", substr($0, 11), ""); next }
	/^\[exception\]: / { emit("exception", "", substr($0, 14)); next }
	/^\[TIMEOUT\]: / { want = "timeout"; name = ""; detail = "x"; next }
	/^\[[0-9]+\/[0-9]+ done\]: / { emit("done", "", ""); next }
	/All tests passed without errors/ { emit("allpassed", "", ""); next }
	/WARNING.*The following tests failed/ { emit("failed", "", ""); next }
	END { flush() }'
}

# locate FILE: reads UNIT<TAB>NAME<TAB>WHAT lines, appends <TAB>FILE:LINE of
# the `test` in FILE whose name (a {literal} or a "string" whose $vars and
# [commands] match anything) matches NAME with the most literal characters
# (the first of those), or <TAB>FILE when none matches.
locate() {
	awk -F'\t' -v file="$1" -v path="$SUITE/$1" '
	function esc(c) { return index("\\^$.[]|()*+?{}/", c) ? "\\" c : c }
	# pattern S: a regexp for the test name S as written in the file.
	function pattern(s, quoted, out, i, c, depth) {
		out = ""; lit = 0
		for (i = 1; i <= length(s); i++) {
			c = substr(s, i, 1)
			if (quoted && c == "\\") { i++; out = out esc(substr(s, i, 1)) }
			else if (quoted && c == "$") {
				if (substr(s, i + 1, 1) == "{") { while (i <= length(s) && substr(s, i, 1) != "}") i++ }
				else { while (substr(s, i + 1, 1) ~ /[A-Za-z0-9_:]/) i++
					if (substr(s, i + 1, 1) == "(") { while (i <= length(s) && substr(s, i, 1) != ")") i++ } }
				out = out ".*"
			} else if (quoted && c == "[") {
				depth = 1
				while (depth > 0 && i < length(s)) { i++; c = substr(s, i, 1); if (c == "[") depth++; if (c == "]") depth-- }
				out = out ".*"
			} else { out = out esc(c); lit++ }
		}
		return "^" out "$"
	}
	FILENAME == path {
		if (!match($0, /^[ \t]*test[ \t]+[{"]/)) next
		rest = substr($0, RLENGTH)
		open = substr(rest, 1, 1)
		if (open == "{") { end = index(substr(rest, 2), "}"); if (end) pats[++n] = pattern(substr(rest, 2, end - 1), 0) }
		else {
			for (i = 2; i <= length(rest); i++) { c = substr(rest, i, 1); if (c == "\\") { i++; continue }; if (c == "\"") break }
			pats[++n] = pattern(substr(rest, 2, i - 2), 1)
		}
		if (pats[n] != "") { lines[n] = FNR; lits[n] = lit }
		next
	}
	{
		where = file; best = -1
		for (i = 1; i <= n; i++) if (lines[i] && lits[i] > best && $2 ~ pats[i]) { where = file ":" lines[i]; best = lits[i] }
		print $0 "\t" where
	}' "$SUITE/$1" -
}

# ---------------------------------------------------------------- one unit

# run_unit SIDE UNIT: run UNIT against SIDE (direct | respite); leaves in
# LOGS/SIDE/UNIT: test.log, results.tsv and status (STATUS<TAB>SECONDS<TAB>
# REASON, STATUS ok or aborted).
run_unit() {
	local side=$1 unit=$2 dir target rc=0 t0 secs status=ok reason="" results
	dir=$LOGS/$side/${unit//\//_}
	rm -rf "$dir"
	mkdir -p "$dir"
	t0=$EPOCHREALTIME
	start_redis "$dir"
	target=$RPORT
	PXPID=""
	if [ "$side" = respite ]; then
		start_respite "$dir" "$RPORT"
		target=$PPORT
	fi
	(cd "$WORK" && TERM=dumb exec timeout -k 10 "$UNIT_TIMEOUT" tclsh tests/test_helper.tcl \
		--host 127.0.0.1 --port "$target" --single "unit/$unit" --ignore-encoding \
		--tags "$TAGS" --timeout "$TEST_TIMEOUT" "${DURABLE[@]}" "${EXTRA[@]}") >"$dir/test.log" 2>&1 </dev/null &
	PIDS+=($!)
	wait "${PIDS[-1]}" || rc=$?
	forget "${PIDS[-1]}"
	results=$dir/results.tsv
	parse "$dir/test.log" >"$results"
	if ((rc == 124 || rc == 137)); then
		status=aborted reason="killed after UNIT_TIMEOUT=${UNIT_TIMEOUT}s"
	elif grep -q '^exception' "$results"; then
		status=aborted reason="exception: $(grep -m1 '^exception' "$results" | cut -f3)"
	elif grep -q '^timeout' "$results"; then
		status=aborted reason="no progress for ${TEST_TIMEOUT}s in: $(grep -m1 '^timeout' "$results" | cut -f2)"
	elif ! grep -q '^done' "$results"; then
		status=aborted reason="test_helper exited $rc without finishing: $(grep -v '^[[:space:]]*$' "$dir/test.log" | tail -1)"
	fi
	if ! kill -0 "$RPID" 2>/dev/null || grep -q 'REDIS BUG REPORT' "$dir/redis.log"; then
		status=aborted reason="redis-server exited or crashed (redis.log); $reason"
	fi
	if [ -n "$PXPID" ] && { ! kill -0 "$PXPID" 2>/dev/null || grep -q '^panic:' "$dir/respite.log"; }; then
		status=aborted reason="respite exited or panicked (respite.log); $reason"
	fi
	[ -z "$PXPID" ] || stop "$PXPID"
	stop "$RPID"
	secs=$(elapsed "$t0")
	printf '%s\t%s\t%s\n' "$status" "$secs" "$reason" >"$dir/status"
	printf '  %-20s %-7s %4d passed %4d failed  %-7s %6ss%s\n' "$unit" "$side" \
		"$(grep -c '^ok' "$results" || true)" "$(grep -c '^err' "$results" || true)" \
		"$status" "$secs" "${reason:+  $reason}"
}

# ---------------------------------------------------------------- main

fetch_suite
for u in $UNITS; do
	[ -f "$SUITE/tests/unit/$u.tcl" ] || { echo "redis-suite: no unit $u in $SUITE/tests/unit" >&2; exit 2; }
done
# A work folder per run: tests/tmp is the run's own, the rest links to the
# cache.
WORK=$TMP/suite
mkdir -p "$WORK/tests/tmp"
for e in "$SUITE"/tests/*; do
	[ "${e##*/}" = tmp ] || ln -s "$e" "$WORK/tests/"
done
ln -s "$SUITE/runtest" "$WORK/runtest"

if [[ " $SIDES " == *" respite "* ]]; then
	if [ -z "${RESPITE_BIN:-}" ]; then
		echo "redis-suite: go build -o \$TMP/respite ./cmd/proxy (in $ROOT)"
		(cd "$ROOT" && go build -o "$TMP/respite" ./cmd/proxy)
		RESPITE_BIN=$TMP/respite
	fi
	RESPITE_BIN=$(cd "$(dirname "$RESPITE_BIN")" && pwd)/$(basename "$RESPITE_BIN")
	[ -x "$RESPITE_BIN" ] || { echo "redis-suite: $RESPITE_BIN is not executable" >&2; exit 2; }
	echo "redis-suite: proxy $RESPITE_BIN: $("$RESPITE_BIN" -version 2>&1 | sed -n 1p)"
fi
kept=""
[ -n "$KEEP" ] || kept=" (removed at exit; keep them with --keep-logs DIR)"
echo "redis-suite: tags $TAGS; UNIT_TIMEOUT=${UNIT_TIMEOUT}s TEST_TIMEOUT=${TEST_TIMEOUT}s${DURABLE:+ --durable}${EXTRA:+ ${EXTRA[*]}}; logs in $LOGS$kept"
T_SETUP=$(elapsed "$T_START")

DDIR=$LOGS/direct
[ -z "$DIRECT_FROM" ] || DDIR=$DIRECT_FROM/direct
RDIR=$LOGS/respite
HAVE_D=0 HAVE_R=0
[[ " $SIDES " == *" direct "* || -n $DIRECT_FROM ]] && HAVE_D=1
[[ " $SIDES " == *" respite "* ]] && HAVE_R=1

# counts DIR: PASSED FAILED IGNORED STATUS SECONDS of one unit's run.
counts() {
	local d=$1
	if [ ! -f "$d/status" ]; then
		echo "- - - - -"
		return
	fi
	echo "$(grep -c '^ok' "$d/results.tsv" || true) $(grep -c '^err' "$d/results.tsv" || true)" \
		"$(grep -cE '^(skip|ignore)' "$d/results.tsv" || true) $(cut -f1,2 --output-delimiter=' ' "$d/status")"
}

# differ D R: the tests that pass in D's run but not in R's, as
# NAME<TAB>WHAT (WHAT: the respite error line, or why it did not run).
differ() {
	local d=$1 r=$2 rstatus=ok rreason=""
	if [ -f "$r/status" ]; then
		IFS=$'\t' read -r rstatus _ rreason <"$r/status"
	fi
	awk -F'\t' -v rstatus="$rstatus" -v rreason="$rreason" '
	FILENAME == ARGV[1] { k = $2 SUBSEP (++seenr[$2]); res[k] = $1; det[k] = $3; next }
	$1 == "ok" {
		k = $2 SUBSEP (++seend[$2])
		if (res[k] == "ok") next
		if (res[k] == "err") what = "failed: " det[k]
		else if (res[k] == "skip" || res[k] == "ignore") what = "skipped through respite"
		else if (rstatus == "aborted" && !first++) what = "unit aborted here: " rreason
		else if (rstatus == "aborted") what = "never ran (unit aborted)"
		else what = "never ran"
		print $2 "\t" what
	}' "$r/results.tsv" "$d/results.tsv"
}

# unit_differs UNIT: the tests of UNIT that pass directly, not through
# Respite (nothing without both runs).
unit_differs() {
	local ud=$DDIR/${1//\//_} ur=$RDIR/${1//\//_}
	((HAVE_D && HAVE_R)) && [ -f "$ud/status" ] || return 0
	differ "$ud" "$ur"
}

: >"$LOGS/flaky.tsv"
for u in $UNITS; do
	for side in $SIDES; do
		run_unit "$side" "$u"
	done
	try=0
	while ((try < RETRIES)) && [ -n "$(unit_differs "$u")" ]; do
		try=$((try + 1))
		unit_differs "$u" | sed "s|^|$u\t|" | locate "tests/unit/$u.tcl" >>"$LOGS/flaky.tsv"
		echo "  $u: $(unit_differs "$u" | wc -l) test(s) differ; through Respite again ($try of $RETRIES)"
		run_unit respite "$u"
	done
done

# ---------------------------------------------------------------- report

echo
printf '%-20s | %-36s | %-36s | %s\n' "" "direct" "respite" ""
printf '%-20s | %5s %5s %5s %-8s %8s | %5s %5s %5s %-8s %8s | %s\n' unit pass fail ign status secs pass fail ign status secs differ
TD=(0 0 0) TR=(0 0 0) TDIFF=0 DSECS=0 RSECS=0
: >"$LOGS/differ.tsv"
: >"$LOGS/direct-failures.tsv"
for u in $UNITS; do
	ud=$DDIR/${u//\//_} ur=$RDIR/${u//\//_}
	read -r dp df di ds dt <<<"$( ((HAVE_D)) && counts "$ud" || echo "- - - - -")"
	read -r rp rf ri rs rt <<<"$( ((HAVE_R)) && counts "$ur" || echo "- - - - -")"
	nd=-
	if ((HAVE_D && HAVE_R)) && [ "$ds" != - ]; then
		differ "$ud" "$ur" | sed "s|^|$u\t|" | locate "tests/unit/$u.tcl" >"$ur/differ.tsv"
	elif ((HAVE_R)); then
		# No direct run to compare with: every failure, and an abort, differs.
		{
			awk -F'\t' '$1 == "err" { print $2 "\tfailed: " $3 }' "$ur/results.tsv"
			[ "$rs" != aborted ] || printf '(rest of unit)\tunit aborted here: %s\n' "$(cut -f3 "$ur/status")"
		} | sed "s|^|$u\t|" | locate "tests/unit/$u.tcl" >"$ur/differ.tsv"
	fi
	if ((HAVE_R)); then
		nd=$(wc -l <"$ur/differ.tsv")
		cat "$ur/differ.tsv" >>"$LOGS/differ.tsv"
		TDIFF=$((TDIFF + nd))
	fi
	if ((HAVE_D)) && [ "$ds" != - ]; then
		TD[0]=$((TD[0] + dp)) TD[1]=$((TD[1] + df))
		[ "$ds" = ok ] || TD[2]=$((TD[2] + 1))
		{
			awk -F'\t' -v u="$u" '$1 == "err" { print u "\t" $2 "\t" $3 }' "$ud/results.tsv"
			[ "$ds" = ok ] || printf '%s\t(rest of unit)\taborted: %s\n' "$u" "$(cut -f3 "$ud/status")"
		} | locate "tests/unit/$u.tcl" >>"$LOGS/direct-failures.tsv"
		[ -n "$DIRECT_FROM" ] || DSECS=$(awk -v a="$DSECS" -v b="$dt" 'BEGIN { print a + b }')
	fi
	if ((HAVE_R)); then
		TR[0]=$((TR[0] + rp)) TR[1]=$((TR[1] + rf))
		[ "$rs" = ok ] || TR[2]=$((TR[2] + 1))
		RSECS=$(awk -v a="$RSECS" -v b="$rt" 'BEGIN { print a + b }')
	fi
	printf '%-20s | %5s %5s %5s %-8s %8s | %5s %5s %5s %-8s %8s | %s\n' "$u" "$dp" "$df" "$di" "$ds" "$dt" "$rp" "$rf" "$ri" "$rs" "$rt" "$nd"
done

if [ -s "$LOGS/direct-failures.tsv" ]; then
	echo
	echo "Fails even directly against Redis (a harness problem to fix first):"
	awk -F'\t' '{ printf "  %s: %s (%s)\n      %s\n", $1, $2, $4, $3 }' "$LOGS/direct-failures.tsv"
fi
if [ -s "$LOGS/differ.tsv" ]; then
	echo
	if ((HAVE_D)); then
		echo "Passes directly, not through Respite:"
	else
		echo "Fails through Respite (no direct run to compare with):"
	fi
	awk -F'\t' '{ printf "  %s: %s (%s)\n      %s\n", $1, $2, $4, $3 }' "$LOGS/differ.tsv"
fi

# Flaky: differed in an earlier run of its unit, not in the last one.
FLAKY=0
if [ -s "$LOGS/flaky.tsv" ]; then
	awk -F'\t' 'FILENAME == ARGV[1] { last[$1 SUBSEP $2] = 1; next }
		!(($1 SUBSEP $2) in last) && !seen[$1 SUBSEP $2]++' "$LOGS/differ.tsv" "$LOGS/flaky.tsv" >"$LOGS/flaky-passed.tsv"
	FLAKY=$(wc -l <"$LOGS/flaky-passed.tsv")
	if ((FLAKY > 0)); then
		echo
		echo "Differed through Respite, then passed when its unit ran again (flaky):"
		awk -F'\t' '{ printf "  %s: %s (%s)\n      %s\n", $1, $2, $4, $3 }' "$LOGS/flaky-passed.tsv"
	fi
fi

echo
T_TOTAL=$(elapsed "$T_START")
echo "redis-suite: wall time ${T_TOTAL}s (setup ${T_SETUP}s, direct ${DSECS}s, respite ${RSECS}s)"
line="redis-suite:"
((HAVE_D)) && line+=" direct ${TD[0]} passed, ${TD[1]} failed, ${TD[2]} units aborted${DIRECT_FROM:+ (from $DIRECT_FROM)};"
((HAVE_R)) && line+=" respite ${TR[0]} passed, ${TR[1]} failed, ${TR[2]} units aborted; $TDIFF differ ($FLAKY flaky)"
echo "${line%;}"

((REPORT_ONLY)) && exit 0
if ((HAVE_R)); then
	((TDIFF == 0)) || exit 1
else
	((TD[1] == 0 && TD[2] == 0)) || exit 1
fi
exit 0
