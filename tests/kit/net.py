"""Client-side sockets: connect, read a line or to EOF, one exchange, a free port."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

_Errors = type[BaseException] | tuple[type[BaseException], ...]


def family_of(address: Any) -> socket.AddressFamily:
    """The socket family of *address*: a Unix path (str), or an IPv6 or IPv4 pair."""
    if isinstance(address, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listened on at *host* a moment ago (the caller handles a race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def connect(server: Any, payload: bytes = b"", timeout: float = 10.0) -> socket.socket:
    """A TCP client connected to *server* (anything with ``server_address``)."""
    client = socket.create_connection(server.server_address, timeout=timeout)
    if payload:
        client.sendall(payload)
    return client


@contextlib.contextmanager
def open_clients(
    address: Any, count: int, timeout: float = 30.0
) -> Iterator[list[socket.socket]]:
    """*count* TCP clients connected to *address*, all closed on the way out."""
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection(address, timeout=timeout))
        yield clients
    finally:
        for client in clients:
            client.close()


def recv_line(sock: socket.socket, timeout: float = 10.0, *, tolerate: _Errors = ()) -> bytes:
    """Read bytes up to and including a newline (or EOF), with a deadline.

    An error of a *tolerate* type ends the read: what came before it is returned.
    """
    sock.settimeout(timeout)
    data = bytearray()
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except tolerate:
        pass
    return bytes(data)


def read_to_eof(sock: socket.socket, *, tolerate: _Errors = ()) -> bytes:
    """Everything the peer sends until it closes (the socket's timeout applies).

    An error of a *tolerate* type ends the read: what came before it is returned.
    """
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except tolerate:
        pass
    return b"".join(chunks)


def exchange(address: Any, payload: bytes, timeout: float = 10.0) -> bytes:
    """Connect, send *payload*, half-close, and return everything the server sent.

    *address* is a Unix socket path or a ``(host, port)`` pair (IPv4 or IPv6).
    """
    with socket.socket(family_of(address), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(payload)
        with contextlib.suppress(OSError):  # the server may have closed already
            sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock)


def ping(address: Any, timeout: float = 5.0) -> bool:
    """One ``PING``/``PONG`` exchange (the demo protocol) on a new connection: did it work?"""
    try:
        return exchange(address, b"PING\n", timeout) == b"PONG\n"
    except OSError:
        return False
