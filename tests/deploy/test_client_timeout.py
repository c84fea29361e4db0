"""``client_timeout`` end to end: ``engine serve --client-timeout`` in a subprocess.

Served by ``tests.apps.intake_apps:IdleHandler``, whose first line says how its socket's
timeout is set (``gettimeout() SO_RCVTIMEO SO_SNDTIMEO``) and whose last line says how
its reading ended (``EOF`` or ``TIMEOUT``).

Shows: a sync worker's TCP connections carry client_timeout in the kernel, inherited from
the listener (``0.5 0.5 0.5``: gettimeout() reports it), and an idle client gets
``TimeoutError`` after it, as with a Python timeout, the only worker then free; ``off``
leaves a connection open; Unix sockets and a handler's own ``timeout`` keep a Python
timeout; the gevent worker's idle sweep raises ``TimeoutError`` on TCP; an upgrade that
turns client_timeout off clears it on the listener.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.kit import CLI, READY, EngineProcess, recv_line

IDLE = "tests.apps.intake_apps:IdleHandler"
ONE_WORKER = ["--workers", "1", "--pool-mode", "static"]
TIMEOUT = 0.5

Start = Callable[..., EngineProcess]


def serve(start: Start, *args: str, handler: str = IDLE, bind: str = "127.0.0.1:0",
          env: dict[str, str] | None = None) -> EngineProcess:
    return start(CLI, args=["serve", handler, "--bind", bind, *ONE_WORKER, *args],
                 env={**READY, **(env or {})})


@contextlib.contextmanager
def idle_client(address: Any) -> Iterator[tuple[socket.socket, bytes]]:
    """A client that says nothing, and the handler's first line (its socket's timeouts)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(address)
        yield client, recv_line(client)


def ending(client: socket.socket) -> tuple[bytes, float]:
    """The handler's last line, how long it took, and then the connection's end."""
    started = time.monotonic()
    last = recv_line(client)
    waited = time.monotonic() - started
    with contextlib.suppress(ConnectionResetError):
        assert client.recv(10) == b""  # closed by the server
    return last, waited


def test_sync_tcp_times_out_an_idle_connection_in_the_kernel(engine_proc: Start) -> None:
    engine = serve(engine_proc, "--client-timeout", str(TIMEOUT))
    with idle_client(engine.address) as (client, timeouts):
        # The kernel's timeout, inherited from the listener, which gettimeout() reports.
        assert timeouts == b"0.5 0.5 0.5\n"
        last, waited = ending(client)
    assert last == b"TIMEOUT\n"  # TimeoutError, as with a Python socket timeout
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 5
    with idle_client(engine.address) as (client, timeouts):  # the only worker is free
        client.sendall(b"hi\n")
        assert recv_line(client) == b"hi\n"
    assert "Traceback" not in engine.log()


@pytest.mark.parametrize(("args", "unix", "expected"), [
    pytest.param(["--client-timeout", "5"], False, b"KernelTimedSocket ConnectionReader\n",
                 id="tcp"),
    pytest.param(["--client-timeout", "off"], False, b"Connection ConnectionReader\n",
                 id="tcp-off"),
    pytest.param(["--client-timeout", "5"], True, b"Connection ConnectionReader\n", id="unix"),
    pytest.param(["--client-timeout", "5", "--worker-class", "gevent"], False,
                 b"SweptSocket SocketIO\n", id="gevent"),
])
def test_the_socket_classes_a_handler_gets(
    engine_proc: Start, tmp_path: Path, args: list[str], unix: bool, expected: bytes
) -> None:
    """A sync worker's connections are workers.connection classes (their makefile("rb")
    is the cheap one), built so at accept; the gevent worker keeps its own sockets."""
    if "gevent" in args:
        pytest.importorskip("gevent")
    bind = f"unix:{tmp_path / 'kind.sock'}" if unix else "127.0.0.1:0"
    engine = serve(engine_proc, *args, handler="tests.apps.intake_apps:KindHandler", bind=bind)
    with idle_client(engine.address) as (_, kinds):
        assert kinds == expected
    assert "Traceback" not in engine.log()


def test_without_client_timeout_an_idle_connection_stays_open(engine_proc: Start) -> None:
    # The control for the test above: the timeout is the setting's doing.
    engine = serve(engine_proc, "--client-timeout", "off")
    with idle_client(engine.address) as (client, timeouts):
        assert timeouts == b"None 0.0 0.0\n"
        client.settimeout(1.0)
        with pytest.raises(TimeoutError):  # still open after twice TIMEOUT
            client.recv(10)


def test_unix_socket_keeps_a_python_timeout(engine_proc: Start, tmp_path: Path) -> None:
    path = str(tmp_path / "engine.sock")
    serve(engine_proc, "--client-timeout", str(TIMEOUT), bind=f"unix:{path}")
    with idle_client(path) as (client, timeouts):
        assert timeouts == b"0.5 0.0 0.0\n"  # Unix sockets do not inherit SO_RCVTIMEO
        last, waited = ending(client)
    assert last == b"TIMEOUT\n"
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 5


def test_a_handlers_own_timeout_still_wins(engine_proc: Start) -> None:
    engine = serve(engine_proc, handler="tests.apps.intake_apps:OwnTimeoutHandler")
    with idle_client(engine.address) as (client, timeouts):
        # setup() set 0.5 s in Python: the socket is non-blocking underneath, so the
        # default 30 s it inherited from the listener never fires.
        assert timeouts == b"0.5 30.0 30.0\n"
        last, waited = ending(client)
    assert last == b"TIMEOUT\n"
    assert waited < 5


def test_gevent_worker_times_out_by_its_idle_sweep(engine_proc: Start) -> None:
    pytest.importorskip("gevent")
    engine = serve(engine_proc, "--client-timeout", str(TIMEOUT), "--worker-class", "gevent")
    with idle_client(engine.address) as (client, timeouts):
        # No socket timeout (a timer around every wait) and none in the kernel (gevent's
        # sockets never block): the worker's idle sweep raises TimeoutError.
        assert timeouts == b"None 0.0 0.0\n"
        last, waited = ending(client)
    assert last == b"TIMEOUT\n"
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 5


def test_gevent_idle_sweep_spares_a_client_that_keeps_talking(engine_proc: Start) -> None:
    """Each wait that ends counts: a client sending a line every TIMEOUT/3 for four
    times TIMEOUT is never timed out, and it is once it falls silent."""
    pytest.importorskip("gevent")
    engine = serve(engine_proc, "--client-timeout", str(TIMEOUT), "--worker-class", "gevent")
    with idle_client(engine.address) as (client, _):
        talked_until = time.monotonic() + 4 * TIMEOUT
        while time.monotonic() < talked_until:
            client.sendall(b"still here\n")
            assert recv_line(client) == b"still here\n"
            with pytest.raises(TimeoutError):  # the pace of a slow client (no reply due)
                client.settimeout(TIMEOUT / 3)
                client.recv(10)
            client.settimeout(10)
        last, waited = ending(client)
    assert last == b"TIMEOUT\n"
    assert waited < TIMEOUT + 5


def test_an_upgrade_that_turns_client_timeout_off_clears_it(
    engine_proc: Start, tmp_path: Path
) -> None:
    """The listener (and its SO_RCVTIMEO) outlives the master: a new master's workers
    must clear what the old one's set."""
    config = tmp_path / "engine.toml"
    config.write_text('client_timeout = "1s"\n')
    pidfile = tmp_path / "engine.pid"
    engine = serve(engine_proc, "--config", str(config), "--pidfile", str(pidfile))
    with idle_client(engine.address) as (_, timeouts):
        assert timeouts == b"1.0 1.0 1.0\n"
    config.write_text('client_timeout = "off"\n')
    old = engine.pid
    os.kill(old, signal.SIGUSR2)
    assert engine.wait(timeout=30) == 0  # the old master drained and left
    new = int(pidfile.read_text())
    assert new != old
    engine.seen_pids |= {new, *(c.pid for c in psutil.Process(new).children())}
    engine.adopt_master(new)
    with idle_client(engine.address) as (client, timeouts):
        assert timeouts == b"None 0.0 0.0\n"
        client.settimeout(1.5)
        with pytest.raises(TimeoutError):  # open past the old 1 s
            client.recv(10)
    assert engine.stop() == 0
