"""How long a burst of keep-alive clients waits for its first reply, server by server.

``python -m loadtests.keepalive_ramp [--clients N] [--servers engine,forking]``

Each server (from :mod:`loadtests.bench_servers`, line protocol, 2 workers where that
applies) is started, answers one request, idles for a second, then N clients connect
at once, each sends one line and keeps its connection open. A keep-alive client holds
a prefork worker for as long as it stays, so a pool that starts with 2 workers must
fork about N more before the last client is answered: this measures how fast the pool
grows under a burst (ForkingTCPServer forks one process per connection at once).
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.kit.net import free_port
from tests.kit.processes import kill_group

REPO = Path(__file__).resolve().parent.parent
SERVERS = {
    "engine": ["engine", "--pool-mode", "dynamic"],
    "engine-static": ["engine", "--pool-mode", "static"],
    "floor": ["floor"],
    "forking": ["forking"],
    "threading": ["threading"],
}


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Return once the server answers one line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited at start-up")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock,
        ):
            sock.sendall(b"ready?\n")
            if sock.recv(64):
                return
        time.sleep(0.05)
    raise RuntimeError("the server did not answer")


def first_replies(port: int, clients: int, limit: float) -> list[float]:
    """Seconds until each client's first reply (clients unanswered within *limit* left out)."""
    selector = selectors.DefaultSelector()
    socks = []
    started = time.monotonic()
    try:
        for index in range(clients):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"x" * 64 + b"\n")
            selector.register(sock, selectors.EVENT_READ, index)
            socks.append(sock)
        first: dict[int, float] = {}
        while len(first) < clients and time.monotonic() - started < limit:
            for key, _ in selector.select(0.1):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                selector.unregister(ready)
                if ready.recv(4096):
                    first[key.data] = time.monotonic() - started
        return sorted(first.values())
    finally:
        selector.close()
        for sock in socks:
            sock.close()


def measure(kind: str, clients: int, limit: float) -> list[float]:
    """Start server *kind*, measure one burst, stop it (its whole process group)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtests.bench_servers", *SERVERS[kind], "--port", str(port)],
        cwd=REPO, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, proc)
        time.sleep(1.0)
        return first_replies(port, clients, limit)
    finally:
        kill_group(proc.pid, proc, grace=5.0)


def main(argv: list[str] | None = None) -> int:
    """Measure each server and print the median and slowest time to a first reply."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--servers", default="engine,forking")
    parser.add_argument("--limit", type=float, default=10.0, help="seconds to wait at most")
    args = parser.parse_args(argv)
    for kind in args.servers.split(","):
        times = measure(kind, args.clients, args.limit)
        if not times:
            print(f"{kind:14} served 0/{args.clients} within {args.limit:g} s")
            continue
        print(
            f"{kind:14} served {len(times)}/{args.clients} within {args.limit:g} s; first "
            f"reply after: median {times[len(times) // 2] * 1000:.0f} ms, slowest "
            f"{times[-1] * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
