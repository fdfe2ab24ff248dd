#!/usr/bin/env bash
# Runs the fuzz targets (go test -json output on stdout, for
# internal/testsum): the request-stream reader (resp, FUZZTIME, default
# 60 s) and the dispatch path (router: Classify, Dispatch; FUZZTIME_DISPATCH,
# default 20 s). It works around golang/go#75804: with a duration
# -fuzztime, Go 1.26's fuzz coordinator can report "context deadline
# exceeded" at the deadline although no input failed (fixed in Go 1.27;
# see docs/UPSTREAM-BUGS.md). Such a run, which writes no failing input,
# is replaced by a count-based run (no deadline to race); any run that
# writes a failing input under testdata/fuzz fails.
set -uo pipefail
cd "$(dirname "$0")/.."

# fuzz PKG TARGET TIME COUNT
fuzz() {
	local pkg=$1 target=$2 fuzztime=$3 count=$4
	local corpus=$pkg/testdata/fuzz/$target
	local before after status out
	before=$(ls "$corpus" 2>/dev/null | wc -l)
	out=$(mktemp)
	go test -json -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" "./$pkg/" >"$out"
	status=$?
	after=$(ls "$corpus" 2>/dev/null | wc -l)
	if [ $status -ne 0 ] && [ "$after" -eq "$before" ] && grep -q 'context deadline exceeded' "$out"; then
		echo "fuzz: $target $fuzztime run hit golang/go#75804 (no failing input written); rerunning with a count budget" >&2
		rm -f "$out"
		go test -json -run '^$' -fuzz "^$target\$" -fuzztime "$count" "./$pkg/"
		return $?
	fi
	cat "$out"
	rm -f "$out"
	return $status
}

status=0
fuzz resp FuzzRequestStream "${FUZZTIME:-60s}" 300000x || status=$?
fuzz router FuzzDispatch "${FUZZTIME_DISPATCH:-20s}" 500000x || status=$?
exit $status
