"""Where the engine's per-connection CPU goes, against the hand-written floor.

``python -m loadtests.conn_overhead [--conns N] [--rounds R] [--proto line|http]``
``python -m loadtests.conn_overhead --instructions [--variants A,B] [...]``

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

Timing on a shared machine moves by 10% between minutes. ``--instructions`` counts
instead, with valgrind's callgrind: each variant runs in a child that serves n, then
one that serves 2n queued connections; the difference over n is the user-space
instructions per connection (start-up and imports cancel out; ``PYTHONHASHSEED=0``).
The count repeats to a few instructions, but leaves out the kernel's side (accept,
the TCP stack, close), which is the same for every variant but for the half-close's
one ``shutdown`` call. A child runs some 50 times slower under valgrind; the children
run side by side, one per CPU (a count does not mind).

It reaches into the engine's internals (``Worker._take_waiting``, ``count_traffic``,
``Worker.count_bytes_on_shutdown``) and may need updating
when they change. Rounds are interleaved; medians and minima are printed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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
    worker._set_up_connections()  # as the worker's boot does
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


def variants(server: Any, n: int) -> dict[str, Callable[[], float]]:
    """Every variant, by name: a step that serves *n* queued connections on *server*."""
    return {
        "floor": lambda: floor_step(server, n, half_close=False),
        "floor + SHUT_WR": lambda: floor_step(server, n, half_close=True),
        "engine (default)": lambda: engine_step(server, n, traffic=False),
        "engine without client_timeout": lambda: engine_step(
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


# --- instructions: a count that does not depend on the machine's speed ---

# The variants whose instructions are counted (the ablations add little to these).
COUNTED = ("floor", "floor + SHUT_WR", "engine (default)", "engine - TCP_INFO - SHUT_WR",
           "engine - TCP_INFO - SHUT_WR - scoreboard")


def serve_once(name: str, n: int, proto: str) -> int:
    """The child's side of :func:`count_instructions`: print the port, wait for "go"
    on stdin (the parent has queued *n* clients), serve them with variant *name*."""
    server = Server(("127.0.0.1", 0), HANDLERS[proto])
    try:
        print(server.server_address[1], flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        variants(server, n)[name]()
    finally:
        server.server_close()
    return 0


def instructions_of(name: str, n: int, proto: str, valgrind: str) -> int:
    """User-space instructions of one child that serves *n* connections with variant
    *name*, counted by valgrind's callgrind (start-up and imports included)."""
    argv = [
        valgrind, "--tool=callgrind", "--cache-sim=no", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "loadtests.conn_overhead", "--serve", name,
        "--conns", str(n), "--proto", proto,
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts every run
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    assert child.stdin is not None and child.stdout is not None
    clients: list[socket.socket] = []
    try:
        port = int(child.stdout.readline())
        clients = queue_clients(port, n, proto)
        _, errors = child.communicate("go\n", timeout=600)
        unanswered = sum(1 for client in clients if not _answered(client))
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        for client in clients:
            client.close()
    found = re.search(r"Collected : (\d+)", errors)
    if child.returncode != 0 or found is None:
        raise RuntimeError(f"{name}: callgrind gave no count (rc {child.returncode}): "
                           f"{errors[-500:]}")
    if unanswered:  # a count of less work than asked for would mislead
        raise RuntimeError(f"{name}: {unanswered} of {n} clients got no reply")
    return int(found.group(1))


def _answered(client: socket.socket) -> bool:
    """Did *client* get a reply (the child has exited: all of it is there)?"""
    client.settimeout(5.0)
    try:
        return bool(client.recv(16))
    except OSError:
        return False


class ValgrindMissing(RuntimeError):
    """valgrind is not installed: nothing can be counted."""

    def __init__(self) -> None:
        super().__init__("valgrind is not installed (loadtests/system_packages.sh installs "
                         "it, as root)")


def count_instructions(
    n: int, rounds: int, proto: str, names: Sequence[str] = COUNTED
) -> dict[str, list[float]]:
    """Per variant in *names*, user-space instructions per connection in each round: a
    child that serves 2n connections less one that serves n, over n (start-up cancels).

    Raises:
        ValgrindMissing: no valgrind here.
        RuntimeError: a child gave no count, or not every client got its reply.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise ValgrindMissing
    runs = [(name, count) for _ in range(rounds) for name in names for count in (n, 2 * n)]
    # A count does not depend on what else runs: the children run side by side.
    with concurrent.futures.ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        counts = list(pool.map(lambda run: instructions_of(*run, proto, valgrind), runs))
    results: dict[str, list[float]] = {name: [] for name in names}
    for (name, count), small, large in zip(runs[::2], counts[::2], counts[1::2], strict=True):
        results[name].append((large - small) / count)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run every variant in interleaved rounds and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int,
                        help="connections per round (default 1500; --instructions 300)")
    parser.add_argument("--rounds", type=int, help="rounds (default 7; --instructions 2)")
    parser.add_argument("--proto", choices=sorted(HANDLERS), default="line")
    parser.add_argument("--instructions", action="store_true",
                        help="count user-space instructions per connection with valgrind "
                        "instead of timing")
    parser.add_argument("--variants", help="with --instructions: comma-separated names "
                        f"(default: {', '.join(COUNTED)})")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # one child of --instructions
    args = parser.parse_args(argv)
    if args.serve:
        return serve_once(args.serve, args.conns or 1, args.proto)
    if args.instructions:
        names = args.variants.split(",") if args.variants else list(COUNTED)
        known = variants(None, 0)  # the names only
        unknown = [name for name in names if name not in known]
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; known: {', '.join(known)}")
        return print_instructions(args.conns or 300, args.rounds or 2, args.proto, names)
    return print_times(args.conns or 1500, args.rounds or 7, args.proto)


def print_instructions(n: int, rounds: int, proto: str, names: Sequence[str]) -> int:
    """Count and print instructions per connection, against the first variant."""
    from loadtests.bench import spread  # here, not at the top: the children skip it

    try:
        counted = count_instructions(n, rounds, proto, names)
    except RuntimeError as exc:
        print(f"conn_overhead: {exc}", file=sys.stderr)
        return 1
    base = statistics.median(counted[names[0]])
    print(f"{proto}: user-space instructions per connection (valgrind's callgrind), "
          f"{rounds} rounds of {n} and {2 * n} connections")
    for name, values in counted.items():
        median = statistics.median(values)
        print(f"  {name:42} median {median:9,.0f}  spread {spread(values):.2%}  "
              f"{median / base:5.3f}x {names[0]}")
    return 0


def print_times(n: int, rounds: int, proto: str) -> int:
    """Time every variant in interleaved rounds and print the medians."""
    server = Server(("127.0.0.1", 0), HANDLERS[proto])
    port = server.server_address[1]
    steps = variants(server, n)
    results: dict[str, list[float]] = {name: [] for name in steps}
    try:
        for _ in range(rounds):
            for name, run in steps.items():
                clients = queue_clients(port, n, proto)
                time.sleep(0.05)
                results[name].append(run())
                for client in clients:
                    client.close()
    finally:
        server.server_close()
    floor = statistics.median(results["floor"])
    print(f"{proto}: server-side CPU per connection, {rounds} rounds of {n} connections")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:42} median {median:6.1f} µs  min {min(values):6.1f} µs  "
              f"{median / floor:5.2f}x floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
