"""Where the engine's per-connection CPU goes, against the hand-written floor.

``python -m loadtests.conn_overhead [--conns N] [--rounds R] [--proto line|http]``

Each variant serves N queued loopback connections in this one process: every client
has connected, sent one line and half-closed before the timer starts, so the clock
(``time.process_time``) sees only the server side: accept, the handler (the bench's
:class:`~loadtests.bench_servers.LineHandler`, or with ``--proto http`` its
``HelloHandler`` and a ``Connection: close`` request), and whatever the server adds.
Variants:

* ``floor``: ``accept()``, the handler, ``close()`` (what :mod:`loadtests.floor` does);
* ``floor + SHUT_WR``: the same with the stdlib's ``shutdown(SHUT_WR)`` before close;
* ``engine``: the engine's real worker step (``Worker._take_waiting``) on a
  ``PreforkTCPServer``, as its default settings configure it (no per-connection
  TCP_INFO byte count; ``client_timeout`` 30 s, which the worker's boot puts on the
  listener for the kernel to enforce), the same with ``client_timeout`` off, and with
  ``count_bytes`` on;
* ablations of the engine: without the TCP_INFO byte count, then also without the
  half-close, then also without the scoreboard writes.

(Session 2 also timed a prototype of a lean ``threads == 1`` step here; the worker now
works that way, see ``Worker._serve_waiting``.)

It reaches into the engine's internals (``Worker._take_waiting``, ``count_traffic``,
``Worker.count_bytes_on_shutdown``) and may need updating
when they change. Rounds are interleaved; medians and minima are printed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from engine import PreforkTCPServer
from engine.intake import build_intake
from loadtests.bench_servers import HANDLERS
from workers.intake import set_listener_timeout
from workers.scoreboard import Scoreboard
from workers.worker import Worker, WorkerSpec

LINE = b"x" * 64 + b"\n"
HTTP_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
NO_SERVER: Any = None  # the floor hands its handler no server object


class Server(PreforkTCPServer):
    """A PreforkTCPServer that is never started: its worker step is driven directly."""

    allow_reuse_address = True
    request_queue_size = 4096


def queue_clients(port: int, count: int, proto: str = "line") -> list[socket.socket]:
    """Connect *count* clients that each send one request: a line, then half-close, or
    an HTTP request with ``Connection: close``."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        if proto == "line":
            client.sendall(LINE)
            client.shutdown(socket.SHUT_WR)
        else:
            client.sendall(HTTP_CLOSE)
        clients.append(client)
    return clients


def floor_step(server: Server, count: int, half_close: bool) -> float:
    """The floor's loop; CPU µs per connection."""
    sock = server.socket
    sock.setblocking(True)
    set_listener_timeout([sock], None)  # what an engine variant's boot set
    started = time.process_time()
    for _ in range(count):
        conn, address = sock.accept()
        try:
            server.RequestHandlerClass(conn, address, NO_SERVER)
        finally:
            if half_close:
                conn.shutdown(socket.SHUT_WR)
            conn.close()
    return (time.process_time() - started) / count * 1e6


def make_worker(server: Server, traffic: bool, client_timeout: float | None) -> Worker:
    """A Worker object for slot 0, as the master would make it (without forking), with
    the intake the settings build (client_timeout), booted as far as the listener."""
    server.client_timeout = client_timeout
    spec = WorkerSpec(slot=0, generation=0, master_pid=os.getppid(), title="overhead",
                      intake=build_intake(server.prefork_settings(), server))
    # As in a pool worker: process_request serves here (outside a pool it would fork).
    server._prefork_pool_pid = os.getppid()
    server.__dict__.pop("shutdown_request", None)  # an earlier variant's wrapper
    worker = Worker(server, Scoreboard(4), spec)
    if traffic:
        worker.count_bytes_on_shutdown()  # as the worker does with count_bytes on
    worker._inherit_client_timeout()  # as the worker's boot does
    return worker


def engine_step(
    server: Server, count: int, *, traffic: bool = True, half_close: bool = True,
    scoreboard: bool = True, client_timeout: float | None = Server.client_timeout,
) -> float:
    """The engine's worker step, optionally with parts switched off; CPU µs per connection."""
    server.socket.setblocking(False)
    worker = make_worker(server, traffic, client_timeout)
    if not half_close:
        server.shutdown_request = lambda request: request.close()  # type: ignore[method-assign]
    if not scoreboard:
        worker.scoreboard.busy = lambda *a, **k: None  # type: ignore[method-assign]
        worker.scoreboard.idle = lambda *a, **k: None  # type: ignore[method-assign]
    started = time.process_time()
    served = 0
    while served < count:
        if worker._has_capacity() and worker._take_waiting():
            served = worker.requests
    return (time.process_time() - started) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    """Run every variant in interleaved rounds and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=1500, help="connections per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--proto", choices=sorted(HANDLERS), default="line")
    args = parser.parse_args(argv)
    server = Server(("127.0.0.1", 0), HANDLERS[args.proto])
    port = server.server_address[1]
    n = args.conns
    variants: dict[str, Callable[[], float]] = {
        "floor": lambda: floor_step(server, n, half_close=False),
        "floor + SHUT_WR": lambda: floor_step(server, n, half_close=True),
        "engine (default)": lambda: engine_step(server, n, traffic=False),
        "engine, client_timeout off": lambda: engine_step(
            server, n, traffic=False, client_timeout=None
        ),
        "engine + TCP_INFO count": lambda: engine_step(server, n, traffic=True),
        "engine - TCP_INFO - SHUT_WR": lambda: engine_step(
            server, n, traffic=False, half_close=False
        ),
        "engine - TCP_INFO - SHUT_WR - scoreboard": lambda: engine_step(
            server, n, traffic=False, half_close=False, scoreboard=False
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(args.rounds):
            for name, run in variants.items():
                clients = queue_clients(port, n, args.proto)
                time.sleep(0.05)
                results[name].append(run())
                for client in clients:
                    client.close()
    finally:
        server.server_close()
    floor = statistics.median(results["floor"])
    print(f"{args.proto}: server-side CPU per connection, {args.rounds} rounds of {n} "
          "connections")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:42} median {median:6.1f} µs  min {min(values):6.1f} µs  "
              f"{median / floor:5.2f}x floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
