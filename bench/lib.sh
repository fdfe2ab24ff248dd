# Shared by the benchmark scripts (source it): command logging, background
# processes, package installs.

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
