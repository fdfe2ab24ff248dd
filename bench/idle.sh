#!/usr/bin/env bash
# Idle clients: what each costs the proxy in resident memory. Starts a
# throwaway Redis (bench/servers), Respite with its defaults (listen and
# upstream.addr only) and twemproxy, then for each opens N clients that
# send one PING and stay idle (bench/idleclients), and prints the proxy's
# RSS per client right after (2 s) and after WAIT (Go's runtime collects
# at least every 2 minutes, which shrinks the stacks of idle goroutines).
#
#   bash bench/idle.sh          # N=10000 WAIT=150s
#
# The process needs N+100 file descriptors (ulimit -n), as does the proxy.
set -euo pipefail

N=${N:-10000}
WAIT=${WAIT:-150s}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO"
. "$SCRIPT_DIR/lib.sh"

need_go
need_redis
need_nutcracker
make_tmp idle
exec 4>"$TMP/commands.log"
build_proxy
start_servers -postgres=false
run go build -o "$TMP/idleclients" ./bench/idleclients
respite_yaml() { printf 'listen: 127.0.0.1:%s\nupstream:\n  addr: 127.0.0.1:%s\n' "$1" "$REDIS_PORT"; }
start_proxy respite RPORT RPID
start_twemproxy TPORT TPID
echo "idle clients: N=$N WAIT=$WAIT, $(commit_line)"
printf 'respite:   '; "$TMP/idleclients" -addr "127.0.0.1:$RPORT" -pid "$RPID" -n "$N" -wait "$WAIT"
printf 'twemproxy: '; "$TMP/idleclients" -addr "127.0.0.1:$TPORT" -pid "$TPID" -n "$N" -wait "$WAIT"
