"""Access lists end to end: ``engine serve --allow-from`` and ``--deny-from`` in a
subprocess (``--client-timeout``: tests/deploy/test_client_timeout.py).

Linux routes all of 127.0.0.0/8 to the loopback interface, so a client socket bound to
127.0.0.2 before it connects is a second, distinct client address.

Shows: --allow-from serves 127.0.0.1 and closes 127.0.0.2 (logged); --deny-from does
the opposite.
"""

from __future__ import annotations

import ast
import socket
from collections.abc import Callable
from typing import Any

from tests.kit import CLI, READY, EngineProcess, wait_until

ADDRESS_HANDLER = "tests.apps.intake_apps:AddressHandler"
ONE_WORKER = ["--workers", "1", "--pool-mode", "static"]

Start = Callable[..., EngineProcess]


def serve(start: Start, *args: str) -> EngineProcess:
    return start(CLI, args=[
        "serve", ADDRESS_HANDLER, "--bind", "127.0.0.1:0", *ONE_WORKER, *args,
    ], env=READY)


def connect_from(source: str, address: Any) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.bind((source, 0))
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def served(source: str, address: Any) -> bool:
    """Whether a client from *source* gets its own address back, and its echo."""
    with connect_from(source, address) as sock, sock.makefile("rb") as replies:
        sock.sendall(b"hi\n")
        try:
            seen = replies.readline()
        except ConnectionResetError:
            return False
        if not seen:
            return False
        assert ast.literal_eval(seen.decode()) == sock.getsockname()
        assert replies.readline() == b"hi\n"
        return True


def test_allow_from(engine_proc: Start) -> None:
    engine = serve(engine_proc, "--allow-from", "127.0.0.1/32")
    assert served("127.0.0.1", engine.address)
    assert not served("127.0.0.2", engine.address)
    wait_until(lambda: "refused 127.0.0.2:" in engine.log(), 10, "the refusal's log line")
    assert "not in allow_from" in engine.log()


def test_deny_from(engine_proc: Start) -> None:
    engine = serve(engine_proc, "--deny-from", "127.0.0.2/32")
    assert not served("127.0.0.2", engine.address)
    assert served("127.0.0.1", engine.address)
    assert served("127.0.0.3", engine.address)
    wait_until(lambda: "in deny_from" in engine.log(), 10, "the refusal's log line")
