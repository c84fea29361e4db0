"""Client-side socket helpers: read one line or everything until EOF; one exchange."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

_Errors = type[BaseException] | tuple[type[BaseException], ...]


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
    family = socket.AF_UNIX if isinstance(address, str) else (
        socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    )
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(payload)
        with contextlib.suppress(OSError):  # the server may have closed already
            sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock)
