#!/usr/bin/env bash
# Install the system (Debian) packages the benchmarks need:
#   wrk       python -m loadtests.bench, its HTTP scenarios (http-keepalive, http-close)
#   valgrind  python -m loadtests.conn_overhead --instructions (instructions per connection)
#
# Idempotent: when every command is already there it does nothing and exits 0 at once.
# As root it runs apt-get non-interactively. As another user, or without apt-get, it says
# what is missing and how to install it, and exits 1: the caller (loadtests/bench.py)
# then stops with that message instead of leaving scenarios out.
set -euo pipefail

# command -> Debian package that provides it
declare -A wanted=(
    [wrk]=wrk
    [valgrind]=valgrind
)

missing_packages=()
for command in wrk valgrind; do
    if ! command -v "$command" >/dev/null 2>&1; then
        missing_packages+=("${wanted[$command]}")
    fi
done

if [ "${#missing_packages[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "loadtests/system_packages.sh: missing system packages: ${missing_packages[*]}" >&2
    echo "  install them as root: apt-get install ${missing_packages[*]}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "loadtests/system_packages.sh: no apt-get here; install by hand: ${missing_packages[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "loadtests/system_packages.sh: installing ${missing_packages[*]}" >&2
apt-get update -q </dev/null >&2
apt-get install -y -q --no-install-recommends "${missing_packages[@]}" </dev/null >&2
