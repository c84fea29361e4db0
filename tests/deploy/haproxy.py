"""A private HAProxy for the deployment tests: config, process, stats socket.

The tests never touch a system haproxy service. Each test writes its own config in its
tmp_path, runs ``haproxy -f CONFIG -db`` in the foreground in a session of its own, on
a loopback port chosen at run time, and kills it by pid (and process group) at the end.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.kit import assert_no_leftovers, free_port, kill_group, process_tree, wait_until
from tests.kit.processes import system_command_or_skip

BACKEND = "engines"


def haproxy_or_skip() -> str:
    """The haproxy executable; skip the test without it, but fail it under CI=true.

    ``tests/system_packages.sh`` installs it (as root); CI runs that script first, so a
    missing haproxy there is a broken setup, not a reason to skip.
    """
    return system_command_or_skip("haproxy")



@dataclass(frozen=True)
class Server:
    """One backend server line: a name and a loopback address."""

    name: str
    host: str
    port: int


def render_config(
    *,
    frontend: tuple[str, int],
    servers: Sequence[Server],
    stats_socket: Path,
    proxy_v2: bool = True,
    check_inter_ms: int = 200,
    fall: int = 2,
    rise: int = 2,
) -> str:
    """A TCP-mode config: one frontend, one round-robin backend of *servers*.

    With *proxy_v2*, every connection to a server (health checks included) starts with
    a PROXY protocol v2 header carrying the client's address.
    """
    proxy = " send-proxy-v2 check-send-proxy" if proxy_v2 else ""
    lines = [
        "global",
        "    nbthread 1",
        "    maxconn 512",
        f"    stats socket {stats_socket} mode 600 level admin",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 1s",
        "    timeout client 10s",
        "    timeout server 10s",
        "    timeout check 1s",
        "    retries 2",
        "    option redispatch 1",
        "",
        "frontend front",
        f"    bind {frontend[0]}:{frontend[1]}",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        f"    default-server check inter {check_inter_ms}ms fall {fall} rise {rise}{proxy}",
    ]
    lines += [f"    server {s.name} {s.host}:{s.port}" for s in servers]
    return "\n".join(lines) + "\n"


class HAProxy:
    """A running ``haproxy -db`` process and its admin socket."""

    def __init__(self, proc: subprocess.Popen[bytes], stats_socket: Path, log_path: Path,
                 address: tuple[str, int]) -> None:
        self.proc = proc
        self.stats_socket = stats_socket
        self.log_path = log_path
        self.address = address

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self, line: str, timeout: float = 5.0) -> str:
        """Send one command to the stats socket and return the whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
            admin.settimeout(timeout)
            admin.connect(str(self.stats_socket))
            admin.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := admin.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self) -> dict[str, tuple[str, str]]:
        """``{server: (status, check_status)}`` for the backend, from ``show stat``."""
        text = self.command("show stat").lstrip("# ")
        states = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", None):
                states[row["svname"]] = (row.get("status", ""), row.get("check_status", ""))
        return states

    def try_server_states(self) -> dict[str, tuple[str, str]]:
        """Like :meth:`server_states`, empty while the socket is not there yet."""
        try:
            return self.server_states()
        except OSError:
            return {}

    def stop(self) -> None:
        """Kill haproxy by pid and process group, and check that nothing is left."""
        seen = {p.pid for p in process_tree(self.pid)} | {self.pid}
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        left = kill_group(self.pid, self.proc, grace=5.0)
        assert not left, f"haproxy's process group is not empty: {left}"
        assert_no_leftovers(seen)


def start_haproxy(
    tmp_path: Path, servers: Sequence[Server], *, proxy_v2: bool = True,
    check_inter_ms: int = 200, fall: int = 2, rise: int = 2, attempts: int = 5,
) -> HAProxy:
    """Start haproxy on a free 127.0.0.1 port; wait until every server is UP and its
    last health check passed (L4OK), so the checks are known to work."""
    binary = haproxy_or_skip()
    config_path = tmp_path / "haproxy.cfg"
    stats_socket = tmp_path / "haproxy.sock"
    log_path = tmp_path / "haproxy.log"
    last_error = ""
    for _ in range(attempts):  # another process may take the free port first: retry
        address = ("127.0.0.1", free_port())
        config_path.write_text(render_config(
            frontend=address, servers=servers, stats_socket=stats_socket, proxy_v2=proxy_v2,
            check_inter_ms=check_inter_ms, fall=fall, rise=rise,
        ))
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(config_path)], capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=30,
        )
        assert check.returncode == 0, f"haproxy rejects the config:\n{check.stderr}"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [binary, "-f", str(config_path), "-db"], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        haproxy = HAProxy(proc, stats_socket, log_path, address)

        def ready(haproxy: HAProxy = haproxy) -> bool:
            if haproxy.proc.poll() is not None:
                return True  # exited: stop waiting, handled below
            states = haproxy.try_server_states()
            return len(states) == len(servers) and all(
                status == "UP" and check.startswith("L4OK") for status, check in states.values()
            )

        try:
            wait_until(ready, 15, "haproxy to listen and see every server UP")
        except BaseException:
            haproxy.stop()
            raise
        if proc.poll() is None:
            return haproxy
        last_error = haproxy.log()
        haproxy.stop()
        if "Address already in use" not in last_error and "cannot bind" not in last_error:
            break
    raise AssertionError(f"haproxy did not start:\n{last_error}")
