"""Access lists and the client timeout end to end: ``engine serve --allow-from``,
``--deny-from`` and ``--client-timeout`` in a subprocess.

Linux routes all of 127.0.0.0/8 to the loopback interface, so a client socket bound to
127.0.0.2 before it connects is a second, distinct client address.

Shows: --allow-from serves 127.0.0.1 and closes 127.0.0.2 (logged); --deny-from does
the opposite; --client-timeout ends an idle connection in the handler (it answers
TIMEOUT) and the only worker then serves the next client.
"""

from __future__ import annotations

import ast
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

from tests.kit import CLI, READY, EngineProcess, recv_line, wait_until

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


def test_client_timeout_ends_an_idle_connection(engine_proc: Start) -> None:
    timeout = 0.5
    engine = serve(engine_proc, "--client-timeout", str(timeout))
    with socket.create_connection(engine.address, timeout=10) as idle, \
            idle.makefile("rb") as replies:
        assert replies.readline()  # the handler runs: its address line
        started = time.monotonic()
        # The handler's next read waits for a line that never comes, until the timeout.
        assert replies.readline() == b"TIMEOUT\n"
        waited = time.monotonic() - started
        with contextlib.suppress(ConnectionResetError):
            assert replies.read() == b""
    assert timeout * 0.8 <= waited < timeout + 5
    assert served("127.0.0.1", engine.address)  # the only worker is free again


def test_without_client_timeout_an_idle_connection_stays_open(engine_proc: Start) -> None:
    # The control for the test above: the timeout is the setting's doing.
    engine = serve(engine_proc)
    with socket.create_connection(engine.address, timeout=10) as idle:
        assert recv_line(idle)
        idle.settimeout(1.0)
        try:
            idle.recv(10)
        except TimeoutError:
            pass  # still open after twice the timeout above: nothing closed it
        else:
            raise AssertionError("the engine closed an idle connection without client_timeout")
