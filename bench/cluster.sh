#!/usr/bin/env bash
# Cluster passthrough against standalone: redis-benchmark GET and SET
# through Respite in front of one Redis (upstream.mode standalone) and in
# front of a 3-primary Redis Cluster (upstream.mode cluster), unpipelined
# and at -P $PIPELINE, with the requests per second and the proxy's CPU
# per command (utime+stime from /proc/PID/stat, as bench/cpu.sh).
#
#   bash bench/cluster.sh
#
# Env overrides: N (requests per run, default 200000), CLIENTS (default
# 50), PIPELINE (default 16), ROUNDS (default 3; the median is reported).
# Never touches 6379: bench/servers starts everything on free ports.
set -euo pipefail
N=${N:-200000}
CLIENTS=${CLIENTS:-50}
PIPELINE=${PIPELINE:-16}
ROUNDS=${ROUNDS:-3}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO"
. "$SCRIPT_DIR/lib.sh"
CLK_TCK=$(getconf CLK_TCK)
need_redis
need_go
make_tmp respite-cluster
build_proxy
start_servers -postgres=false -cluster

standalone_yaml() { printf 'listen: 127.0.0.1:%s\nupstream:\n  addr: 127.0.0.1:%s\n' "$1" "$REDIS_PORT"; }
cluster_yaml() {
	printf 'listen: 127.0.0.1:%s\nupstream:\n  mode: cluster\n  addrs: [%s]\n' "$1" "$CLUSTER_ADDRS"
}
start_proxy standalone S_PORT S_PID
start_proxy cluster C_PORT C_PID

ticks() {
	local s f
	read -r s <"/proc/$1/stat"
	s=${s##*) }
	read -ra f <<<"$s"
	printf -v "$2" '%s' $((f[11] + f[12]))
}

# bench PORT PID TEST P: prints "rps us_per_cmd"
bench() {
	local port=$1 pid=$2 t=$3 p=$4 t0 t1 out rps
	ticks "$pid" t0
	out=$(redis-benchmark -h 127.0.0.1 -p "$port" -t "$t" -n "$N" -c "$CLIENTS" -P "$p" -r 100000 --csv 2>/dev/null | tail -n1)
	ticks "$pid" t1
	rps=$(echo "$out" | awk -F'"' '{print $4}')
	awk -v a="$t0" -v b="$t1" -v n="$N" -v hz="$CLK_TCK" -v r="$rps" 'BEGIN { printf "%.0f %.2f\n", r, (b - a) * 1e6 / hz / n }'
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

printf '%-6s %-3s %12s %12s %12s %12s %8s\n' test P standalone_rps cluster_rps standalone_us cluster_us cpu_diff
for t in get set; do
	for p in 1 "$PIPELINE"; do
		srps=() crps=() sus=() cus=()
		for _ in $(seq "$ROUNDS"); do
			read -r a b < <(bench "$S_PORT" "$S_PID" "$t" "$p")
			srps+=("$a") sus+=("$b")
			read -r a b < <(bench "$C_PORT" "$C_PID" "$t" "$p")
			crps+=("$a") cus+=("$b")
		done
		sr=$(printf '%s\n' "${srps[@]}" | median)
		cr=$(printf '%s\n' "${crps[@]}" | median)
		su=$(printf '%s\n' "${sus[@]}" | median)
		cu=$(printf '%s\n' "${cus[@]}" | median)
		diff=$(awk -v s="$su" -v c="$cu" 'BEGIN { printf "%+.0f%%", (c - s) * 100 / s }')
		printf '%-6s %-3s %12s %12s %12s %12s %8s\n' "$t" "$p" "$sr" "$cr" "$su" "$cu" "$diff"
	done
done
