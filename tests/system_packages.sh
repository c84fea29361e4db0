#!/usr/bin/env bash
# Install the system (Debian) packages some tests need:
#   haproxy                  tests/deploy/test_haproxy.py (a real load balancer in front)
#   systemd-socket-activate  socket-activation tests (package: systemd)
#   openssl                  TLS tests (generates throwaway certificates)
#   strace                   system calls per reply (tests/workers/test_gevent_sendall.py)
#   valgrind                 instructions per connection (tests/load/test_conn_overhead_short.py)
#
# Idempotent: when every command is already there it does nothing and returns at once.
# As root it runs apt-get non-interactively; as another user it only says what is
# missing and exits 0, so the test run goes on and the tests that need a missing
# command report it themselves (they skip locally and fail under CI=true).
# It never starts or enables a service: the tests run their own haproxy in the
# foreground on loopback ports.
set -euo pipefail

# command -> Debian package that provides it
declare -A wanted=(
    [haproxy]=haproxy
    [systemd-socket-activate]=systemd
    [openssl]=openssl
    [strace]=strace
    [valgrind]=valgrind
)

missing_packages=()
for command in haproxy systemd-socket-activate openssl strace valgrind; do
    if ! command -v "$command" >/dev/null 2>&1; then
        missing_packages+=("${wanted[$command]}")
    fi
done

if [ "${#missing_packages[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/system_packages.sh: missing system packages: ${missing_packages[*]}" >&2
    echo "  install them as root (apt-get install ${missing_packages[*]});" \
        "the tests that need them will report it" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/system_packages.sh: no apt-get here; install by hand: ${missing_packages[*]}" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "tests/system_packages.sh: installing ${missing_packages[*]}" >&2
apt-get update -q </dev/null >&2
# policy-rc.d answers 101 ("action forbidden") so the package scripts do not start
# haproxy as a service where invoke-rc.d is used; removed again afterwards.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
status=0
apt-get install -y -q --no-install-recommends "${missing_packages[@]}" </dev/null >&2 || status=$?
if [ "$created_policy" -eq 1 ]; then
    rm -f "$policy"
fi
exit "$status"
