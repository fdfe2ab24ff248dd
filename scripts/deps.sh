#!/usr/bin/env bash
# Installs the Debian packages Respite's demo and tests need (redis-server,
# redis-tools, postgresql, make) when they are missing. Used by `make demo`,
# `make test` and .ci/run. It does not start the packaged services: the demo
# and the tests start throwaway servers of their own.
set -euo pipefail

export PATH="/usr/local/go/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

pkgs=()
command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
command -v make >/dev/null 2>&1 || pkgs+=(make)
# Redis' own test suite (scripts/redis-suite.sh): tclsh runs it, patch
# applies Debian's patches to it, ss (iproute2) finds free ports.
command -v tclsh >/dev/null 2>&1 || pkgs+=(tcl)
command -v patch >/dev/null 2>&1 || pkgs+=(patch)
command -v ss >/dev/null 2>&1 || pkgs+=(iproute2)
# busybox: the Dockerfile HEALTHCHECK probe, exercised by deploy tests.
[ -x /bin/busybox ] || command -v busybox >/dev/null 2>&1 || pkgs+=(busybox-static)
# Debian keeps the PostgreSQL server programs in /usr/lib/postgresql/NN/bin.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null 2>&1; then
	pkgs+=(postgresql)
fi
# pg_stat_statements: on Debian 12 the files ship in postgresql-NN itself
# (postgresql-contrib is a metapackage depending on it); install the
# metapackage only when the files are absent.
if ! compgen -G '/usr/share/postgresql/*/extension/pg_stat_statements.control' >/dev/null; then
	pkgs+=(postgresql-contrib)
fi

if ((${#pkgs[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo ".ci/run: missing ${pkgs[*]} and not root: install them first" >&2
		exit 1
	fi
	echo ".ci/run: installing ${pkgs[*]}"
	# Do not let package scripts start the redis-server/postgresql services.
	policy=/usr/sbin/policy-rc.d
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		policy_added=1
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -qq
	apt-get install -y --no-install-recommends "${pkgs[@]}"
	if [ -n "${policy_added:-}" ]; then
		rm -f "$policy"
		trap - EXIT
	fi
fi

