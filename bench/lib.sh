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
