"""A short capacity test: a couple of thousand connections held open on one engine, all
answered, twice each (the connections stay open and keep being served), within 15 s.

The thread-pool worker (``--workers 2 --threads 1100``, static) runs today; the gevent
worker class (``worker_class = 'gevent'``) runs once it exists and is skipped before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engine.config import Settings
from tests.apps.prefork_apps import program
from tests.kit import EngineProcess, wait_until

CLIENTS = 2000
TIME_LIMIT = 15.0
ROUNDS = 2


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Room for CLIENTS sockets here and in the engine (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CLIENTS * 2 + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def has_gevent_worker() -> bool:
    names = {f.name for f in dataclasses.fields(Settings)}
    return "worker_class" in names and importlib.util.find_spec("gevent") is not None


@contextlib.contextmanager
def held_connections(address: Any, count: int, deadline: float) -> Iterator[list[socket.socket]]:
    """*count* connected TCP sockets (non-blocking), all closed on the way out."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.settimeout(max(deadline - time.monotonic(), 0.1))
            sock.connect(address)
            sock.setblocking(False)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def echo_round(socks: list[socket.socket], tag: bytes, deadline: float) -> int:
    """Send one line on every socket; return how many got their line back by *deadline*."""
    pending: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as sel:
        for index, sock in enumerate(socks):
            line = b"%s %d\n" % (tag, index)
            sock.send(line)  # a few bytes into an empty buffer: never short
            pending[sock] = b""
            sel.register(sock, selectors.EVENT_READ, line)
        answered = 0
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(min(1.0, max(deadline - time.monotonic(), 0))):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = pending[sock] + sock.recv(4096)
                pending[sock] = data
                if data.endswith(b"\n") or not data:
                    sel.unregister(sock)
                    del pending[sock]
                    # PidEcho answers "<pid> <line>": the line must come back whole.
                    answered += data.endswith(b" " + key.data)
    return answered


def serve_many(engine: EngineProcess) -> None:
    started = time.monotonic()
    deadline = started + TIME_LIMIT
    with held_connections(engine.address, CLIENTS, deadline) as socks:
        for rnd in range(ROUNDS):
            answered = echo_round(socks, b"round%d" % rnd, deadline)
            assert answered == CLIENTS, f"round {rnd}: {answered}/{CLIENTS} answered"
        elapsed = time.monotonic() - started
    assert elapsed < TIME_LIMIT
    # Every connection closed: the workers are idle again, then a graceful stop.
    engine.signal(15)
    assert engine.wait(30) == 0


def test_two_thousand_connections_on_threads(
    engine_proc: Callable[..., EngineProcess], many_fds: None
) -> None:
    attrs = ("workers = 2\npool_mode = 'static'\nthreads = 1100\n"
             "request_queue_size = 2048\ngraceful_timeout = 10")
    engine = engine_proc(program(attrs=attrs))
    wait_until(lambda: len(engine.workers()) == 2, 10, "two workers")
    serve_many(engine)


@pytest.mark.skipif(not has_gevent_worker(), reason="no gevent worker class in this engine yet")
def test_two_thousand_connections_on_gevent(
    engine_proc: Callable[..., EngineProcess], many_fds: None
) -> None:
    attrs = ("workers = 2\npool_mode = 'static'\nworker_class = 'gevent'\n"
             "worker_connections = 1100\nrequest_queue_size = 2048\ngraceful_timeout = 10")
    engine = engine_proc(program(attrs=attrs))
    wait_until(lambda: len(engine.workers()) == 2, 10, "two workers")
    serve_many(engine)
