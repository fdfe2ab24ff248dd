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
