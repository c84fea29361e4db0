"""Defaults that resist idle connections (issue 17, point 4).

A sync worker serves one connection at a time: a client that connects and says
nothing holds it. ``client_timeout`` is 30 s by default (as gunicorn's ``timeout``
and Apache's ``Timeout``) and ``off`` turns it off. On TCP the sync worker's
connections carry it in the kernel, inherited from the listener: the handler's socket
reports ``gettimeout()`` None and ``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` 30 s (the
``Timeout`` handler answers ``gettimeout() SO_RCVTIMEO SO_SNDTIMEO``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from engine import PreforkTCPServer
from engine.config import Settings
from tests.kit import CLI, READY, EngineProcess, exchange, recv_line

Start = Callable[..., EngineProcess]

SERVE = ["serve", "tests.apps.security_apps:Timeout", "--bind", "127.0.0.1:0",
         "--workers", "1", "--pool-mode", "static"]


def test_client_timeout_is_30_seconds_by_default(engine_proc: Start) -> None:
    assert Settings().client_timeout == 30.0
    assert PreforkTCPServer.client_timeout == 30.0
    engine = engine_proc(CLI, env=READY, args=SERVE)
    assert exchange(engine.address, b"x\n") == b"30.0 30.0 30.0\n"


def test_client_timeout_off_turns_it_off(engine_proc: Start) -> None:
    engine = engine_proc(CLI, env=READY, args=[*SERVE, "--client-timeout", "off"])
    assert exchange(engine.address, b"x\n") == b"None 0.0 0.0\n"


def test_idle_clients_past_capacity_no_longer_hold_the_pool(engine_proc: Start) -> None:
    """Two workers, three silent clients: the third and a real client are served once
    the silent ones time out (the default does the same after 30 s)."""
    engine = engine_proc(CLI, env=READY, args=[
        "serve", "tests.apps.security_apps:Timeout", "--bind", "127.0.0.1:0",
        "--workers", "2", "--pool-mode", "static", "--client-timeout", "1",
    ])
    idle = [socket.create_connection(engine.address, timeout=10) for _ in range(3)]
    try:
        started = time.monotonic()
        with socket.create_connection(engine.address, timeout=15) as client:
            client.sendall(b"x\n")
            assert recv_line(client, timeout=15) == b"1.0 1.0 1.0\n"
        assert time.monotonic() - started < 10
    finally:
        for sock in idle:
            sock.close()
