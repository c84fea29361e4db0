"""States, exit codes and the server interface shared by the master and its workers."""

from __future__ import annotations

import enum
import socket
from typing import Any, Protocol


def format_address(address: Any) -> str:
    """A socket address as text: ``127.0.0.1:80``, ``[::1]:80``, ``unix:PATH``, ``unix``.

    One format for process titles, logs, the access log and the scoreboard.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = printable(str(address[0])), address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode("utf-8", "replace")
    return f"unix:{printable(str(address))}" if address else "unix"


def printable(text: str) -> str:
    """*text* with each character that is not printable escaped (``\\n``, ``\\x1b``,
    ``\\u202e``, ``\\udcff`` for a byte that was not UTF-8): a string a peer chose
    (a PROXY v2 path, a status endpoint's answer) stays one line in a log or a
    terminal, free of escapes, and encodable."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in text
    )


class WorkerState(enum.IntEnum):
    """What a worker is doing, as written in its scoreboard slot."""

    EMPTY = 0  # no process in this slot
    STARTING = 1  # forked, running worker_init; not yet accepting
    IDLE = 2  # waiting for a connection
    BUSY = 3  # serving at least one connection
    DRAINING = 4  # finishing its connections, then exiting


class ExitCode(enum.IntEnum):
    """Exit statuses a worker uses, so the master can tell why it left."""

    OK = 0  # drained or recycled on request
    ERROR = 1  # unexpected exception in the worker loop
    BOOT_FAILED = 3  # worker_init (or setup before serving) raised
    QUICK = 4  # told to stop at once (SIGINT / SIGQUIT)


class Admitter(Protocol):
    """Per-connection intake run before ``verify_request`` (PROXY header, TLS, access).

    ``admit`` returns the request and client address to serve (possibly replaced: a TLS
    socket, the client address from a PROXY header), or None once it has closed the
    connection itself and logged why.
    """

    def admit(self, request: Any, client_address: Any) -> tuple[Any, Any] | None: ...


class ServerLike(Protocol):
    """What a worker needs from the server object it serves (a socketserver server)."""

    socket: socket.socket

    def get_request(self) -> tuple[Any, Any]: ...

    def verify_request(self, request: Any, client_address: Any) -> bool: ...

    def process_request(self, request: Any, client_address: Any) -> None: ...

    def finish_request(self, request: Any, client_address: Any) -> None: ...

    def shutdown_request(self, request: Any) -> None: ...

    def handle_error(self, request: Any, client_address: Any) -> None: ...

    def fileno(self) -> int: ...
