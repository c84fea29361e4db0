"""A threaded worker never takes more connections than it has threads, however many
listeners have connections waiting.

The worker is driven in this process (no fork): real listening sockets, real client
connections, a real thread pool; only the master is absent.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine import PreforkTCPServer
from engine.classic import BaseRequestHandler
from workers.scoreboard import Scoreboard
from workers.worker import Worker, WorkerSpec

THREADS = 3  # odd: the rotation then meets a full pool half-way through a round


class Gate:
    """Holds every handler until released; records how many ran at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0


GATE = Gate()


class Held(BaseRequestHandler):
    def handle(self) -> None:
        with GATE.lock:
            GATE.running += 1
            GATE.peak = max(GATE.peak, GATE.running)
        GATE.release.wait(10)
        with GATE.lock:
            GATE.running -= 1


class Server(PreforkTCPServer):
    allow_reuse_address = True


@pytest.fixture
def listeners() -> Iterator[tuple[Server, socket.socket]]:
    server = Server(("127.0.0.1", 0), Held)
    extra = socket.create_server(("127.0.0.1", 0))
    for sock in (server.socket, extra):
        sock.setblocking(False)
    yield server, extra
    extra.close()
    server.server_close()


def test_two_listeners_with_waiting_connections_do_not_overfill_the_threads(
    listeners: tuple[Server, socket.socket],
) -> None:
    server, extra = listeners
    spec = WorkerSpec(slot=0, generation=0, master_pid=os.getppid(), title="t",
                      threads=THREADS, extra_listeners=(extra,))
    board = Scoreboard(1)
    worker = Worker(server, board, spec)
    worker._pool = ThreadPoolExecutor(THREADS)
    # As in a pool worker: process_request serves here (outside a pool it forks a child).
    server._prefork_pool_pid = os.getppid()
    clients = [
        socket.create_connection(address)
        for address in (server.server_address, extra.getsockname()) * THREADS
    ]
    try:
        # Both listeners have THREADS connections waiting; take as the worker loop does.
        for _ in range(10):
            if worker._has_capacity():
                worker._take_waiting()
        assert worker.active == THREADS, worker.active
        GATE.release.set()
    finally:
        GATE.release.set()
        worker._pool.shutdown(wait=True)
        for client in clients:
            client.close()
        board.close()
    assert GATE.peak <= THREADS
