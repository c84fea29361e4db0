"""ForkingMixIn and ThreadingMixIn: children and threads are bounded, reaped and joined.

In-process forking tests drive the server with ``handle_request`` from the test's only
thread (no fork while another thread runs). The ``max_children`` test runs the forking
server in a subprocess, so the test can watch its children with psutil while clients
connect.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

import engine
from tests.kit import EngineProcess, connect, read_to_eof, recv_line, wait_until, zombie_children

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")




class GatedHandler(engine.StreamRequestHandler):
    """Announces itself, then waits for the client's go-ahead line (a cross-process gate)."""

    def handle(self) -> None:
        self.wfile.write(b"started %d\n" % os.getpid())
        self.rfile.readline()
        self.wfile.write(b"done\n")


def started_pid(client: socket.socket) -> int:
    line = recv_line(client)
    assert line.startswith(b"started "), line
    return int(line.split()[1])


@needs_fork
def test_forking_leaves_no_zombie_after_server_close(no_leaks: None) -> None:
    class Echo(engine.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d:" % os.getpid() + self.rfile.readline())

    server = engine.ForkingTCPServer(("127.0.0.1", 0), Echo)
    pids = set()
    try:
        for i in range(3):
            with connect(server, b"req %d\n" % i) as client:
                server.handle_request()
                pid, _, rest = read_to_eof(client).partition(b":")
                assert rest == b"req %d\n" % i
                pids.add(int(pid))
        assert os.getpid() not in pids, "requests were handled in child processes"
        assert len(pids) == 3
    finally:
        server.server_close()
    assert not server.active_children
    assert zombie_children() == []
    assert not [pid for pid in pids if psutil.pid_exists(pid)], "children were reaped"


@needs_fork
@pytest.mark.parametrize("block_on_close", [True, False])
def test_forking_block_on_close(block_on_close: bool, no_leaks: None) -> None:
    class Server(engine.ForkingTCPServer):
        pass

    Server.block_on_close = block_on_close
    server = Server(("127.0.0.1", 0), GatedHandler)
    closer = threading.Thread(target=server.server_close)
    with connect(server) as client:
        server.handle_request()
        pid = started_pid(client)  # the child is running and waits for our line
        # Only now start a thread (no fork happens after this point).
        closer.start()
        if block_on_close:
            closer.join(0.3)
            assert closer.is_alive(), "server_close returned while a child was still running"
        else:
            closer.join(10)
            assert not closer.is_alive(), "server_close waited although block_on_close=False"
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, "child still running"
        client.sendall(b"go\n")
        assert recv_line(client) == b"done\n"
        closer.join(10)
        assert not closer.is_alive()
    if block_on_close:
        assert not psutil.pid_exists(pid), "server_close reaped the child"
        assert not server.active_children
    else:
        # Not waited for by server_close: reap it ourselves so no zombie is left.
        os.waitpid(pid, 0)


MAX_CHILDREN_SERVER = """
import os
import sys

import psutil

import engine


def live_children():
    return sum(
        1 for child in psutil.Process().children() if child.status() != psutil.STATUS_ZOMBIE
    )


class Gated(engine.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"started %d\\n" % os.getpid())
        self.rfile.readline()
        self.wfile.write(b"done\\n")


class Server(engine.ForkingTCPServer):
    max_children = 2
    request_queue_size = 16

    def process_request(self, request, client_address):
        super().process_request(request, client_address)
        # Right after a fork, report how many children are tracked and alive.
        print("ACTIVE", len(self.active_children), live_children(), file=sys.stderr, flush=True)


server = Server(("127.0.0.1", 0), Gated)
print("READY", repr(server.server_address), flush=True)
server.serve_forever(poll_interval=0.05)
"""


@needs_fork
def test_forking_never_exceeds_max_children(engine_proc: Callable[..., EngineProcess]) -> None:
    proc = engine_proc(MAX_CHILDREN_SERVER)
    clients = [socket.create_connection(proc.address, timeout=10) for _ in range(5)]
    peak = 0

    def live() -> int:
        nonlocal peak
        count = len(proc.workers())
        peak = max(peak, count)
        return count

    try:
        # The kernel queues accepts in order: the first two clients get the two slots.
        first_pids = [started_pid(client) for client in clients[:2]]
        wait_until(lambda: live() == 2, what="two live children")
        for index, client in enumerate(clients):
            if index >= 2:
                started_pid(client)  # served only once a slot freed up
            assert live() <= 2
            client.sendall(b"go\n")
            assert recv_line(client) == b"done\n"
            assert live() <= 2
        wait_until(lambda: live() == 0, what="all children to finish")
        # serve_forever reaps finished children each loop: none is left, not even a zombie.
        server = psutil.Process(proc.pid)
        wait_until(lambda: not server.children(), what="the server to reap its children")
    finally:
        for client in clients:
            client.close()
    assert peak == 2
    assert not [pid for pid in first_pids if psutil.pid_exists(pid)], "finished children reaped"
    reports = [line.split() for line in proc.log().splitlines() if line.startswith("ACTIVE")]
    assert len(reports) == 5, proc.log()
    for _, tracked, alive in reports:
        assert int(tracked) <= 2 and int(alive) <= 2, proc.log()


def gated_threading_server(
    daemon_threads: bool, block_on_close: bool = True
) -> tuple[engine.ThreadingTCPServer, threading.Event, list[Any]]:
    """A threading server whose handler blocks until ``release`` is set."""
    release = threading.Event()
    record: list[Any] = []

    class Handler(engine.BaseRequestHandler):
        def handle(self) -> None:
            record.append(threading.current_thread())
            release.wait(30)
            record.append(("finished", time.monotonic()))

    class Server(engine.ThreadingTCPServer):
        pass

    Server.daemon_threads = daemon_threads
    Server.block_on_close = block_on_close
    return Server(("127.0.0.1", 0), Handler), release, record


def test_threading_server_close_joins_handler_threads(no_leaks: None) -> None:
    server, release, record = gated_threading_server(daemon_threads=False)
    closed_at: list[float] = []

    def close() -> None:
        server.server_close()
        closed_at.append(time.monotonic())

    closer = threading.Thread(target=close)
    with connect(server) as client:
        server.handle_request()
        wait_until(lambda: record, what="the handler to start")
        handler_thread = record[0]
        assert not handler_thread.daemon
        closer.start()
        try:
            closer.join(0.3)
            assert closer.is_alive(), "server_close returned while a handler was still running"
        finally:
            release.set()
            closer.join(10)
        assert not closer.is_alive()
        assert read_to_eof(client) == b""
    assert not handler_thread.is_alive()
    (_, finished_at) = record[1]
    assert finished_at <= closed_at[0], "the slow handler finished before server_close returned"


def test_threading_daemon_threads_not_waited_for(no_leaks: None) -> None:
    server, release, record = gated_threading_server(daemon_threads=True)
    try:
        with connect(server) as client:
            server.handle_request()
            wait_until(lambda: record, what="the handler to start")
            handler_thread = record[0]
            assert handler_thread.daemon
            started = time.monotonic()
            server.server_close()
            assert time.monotonic() - started < 5
            assert handler_thread.is_alive(), "server_close did not wait for the daemon thread"
            release.set()
            handler_thread.join(10)
            assert not handler_thread.is_alive()
            assert read_to_eof(client) == b""
    finally:
        release.set()
        server.server_close()


def test_threading_block_on_close_false_not_waited_for(no_leaks: None) -> None:
    server, release, record = gated_threading_server(daemon_threads=False, block_on_close=False)
    try:
        with connect(server) as client:
            server.handle_request()
            wait_until(lambda: record, what="the handler to start")
            handler_thread = record[0]
            server.server_close()
            assert handler_thread.is_alive(), "server_close did not wait (block_on_close=False)"
            release.set()
            handler_thread.join(10)
            assert not handler_thread.is_alive()
            assert read_to_eof(client) == b""
    finally:
        release.set()
        server.server_close()


def test_threading_finished_threads_are_not_kept(no_leaks: None) -> None:
    class Quick(engine.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"x")

    with engine.ThreadingTCPServer(("127.0.0.1", 0), Quick) as server:
        for _ in range(10):
            with connect(server) as client:
                server.handle_request()
                assert read_to_eof(client) == b"x"
        assert len(server._threads) < 10


def test_threading_handler_error_goes_to_handle_error(no_leaks: None) -> None:
    errors: list[type[BaseException] | None] = []
    done = threading.Event()

    class Bad(engine.BaseRequestHandler):
        def handle(self) -> None:
            raise OSError("in a thread")

    class Server(engine.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(sys.exc_info()[0])

        def shutdown_request(self, request: Any) -> None:
            super().shutdown_request(request)
            done.set()

    with Server(("127.0.0.1", 0), Bad) as server, connect(server) as client:
        server.handle_request()
        assert done.wait(10)
        assert read_to_eof(client) == b""
    assert errors == [OSError]
