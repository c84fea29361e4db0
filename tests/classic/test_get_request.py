"""``TCPServer.get_request`` hands back what ``self.socket.accept()`` would.

It builds the connection's socket object itself (the listener's family, type and
protocol looked up once), so every property a handler may look at is compared with a
real ``accept()`` on the same kind of listener: over IPv4, IPv6 and Unix sockets, with
blocking, non-blocking and timeout listeners, with and without a default timeout, and
with a listener replaced after the first request.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import engine
from tests.classic.test_transports import needs_ipv6, needs_unix


def _server(family: int, address: Any) -> engine.TCPServer:
    server_class = type("Server", (engine.TCPServer,), {"address_family": family})
    return server_class(address, engine.BaseRequestHandler)


@contextlib.contextmanager
def _listening(family: int) -> Iterator[engine.TCPServer]:
    if family == getattr(socket, "AF_UNIX", None):
        directory = tempfile.mkdtemp(prefix="engine-gr-")
        server = _server(family, os.path.join(directory, "s"))
        try:
            yield server
        finally:
            server.server_close()
            os.unlink(os.path.join(directory, "s"))
            os.rmdir(directory)
    else:
        server = _server(family, ("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        try:
            yield server
        finally:
            server.server_close()


def _connect(server: engine.TCPServer) -> socket.socket:
    client = socket.socket(server.address_family, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(server.server_address)
    return client


def _described(conn: socket.socket) -> tuple[Any, ...]:
    return (
        type(conn), conn.family, conn.type, conn.proto, conn.gettimeout(),
        conn.getblocking(), os.get_inheritable(conn.fileno()), conn.getsockname(),
    )


FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(socket.AF_INET6, id="ipv6", marks=needs_ipv6),
    pytest.param(getattr(socket, "AF_UNIX", -1), id="unix", marks=needs_unix),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("listener_timeout", [None, 0.0, 3.0])
@pytest.mark.parametrize("default_timeout", [None, 7.0])
def test_the_connection_is_the_one_accept_would_give(
    family: int, listener_timeout: float | None, default_timeout: float | None
) -> None:
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(default_timeout)
    try:
        with _listening(family) as server:
            server.socket.settimeout(listener_timeout)
            clients = [_connect(server), _connect(server)]
            try:
                ours, our_address = server.get_request()
                theirs, their_address = server.socket.accept()
                with ours, theirs:
                    assert _described(ours) == _described(theirs)
                    assert type(our_address) is type(their_address)
                    if family != getattr(socket, "AF_UNIX", None):
                        assert {our_address, their_address} == {
                            c.getsockname() for c in clients
                        }
                    ours.sendall(b"x")  # a working connection, not just a look-alike
                    assert any(c.recv(1) == b"x" for c in clients if _pending(c))
            finally:
                for client in clients:
                    client.close()
    finally:
        socket.setdefaulttimeout(saved)


def _pending(client: socket.socket) -> bool:
    client.settimeout(0.5)
    try:
        return bool(client.recv(1, socket.MSG_PEEK))
    except (TimeoutError, BlockingIOError):
        return False


def test_a_replaced_listener_is_accepted_from_with_its_own_family() -> None:
    with _listening(socket.AF_INET) as server:
        first = _connect(server)
        conn, _ = server.get_request()
        conn.close()
        first.close()
        if not socket.has_ipv6:
            pytest.skip("no IPv6")
        with _listening(socket.AF_INET6) as other:
            old = server.socket
            server.socket = other.socket
            try:
                client = _connect(other)
                with client:
                    conn, address = server.get_request()
                    with conn:
                        assert conn.family == socket.AF_INET6
                        assert address[:2] == client.getsockname()[:2]
            finally:
                server.socket = old


def test_a_wrapped_listener_uses_its_own_accept() -> None:
    accepted: list[int] = []

    class CountingSocket(socket.socket):
        def accept(self) -> tuple[socket.socket, Any]:
            accepted.append(1)
            return super().accept()

    with _listening(socket.AF_INET) as server:
        wrapped = CountingSocket(fileno=os.dup(server.socket.fileno()))
        original, server.socket = server.socket, wrapped
        try:
            with _connect(server):
                conn, _ = server.get_request()
                conn.close()
            assert accepted == [1]
        finally:
            server.socket = original
            wrapped.close()
