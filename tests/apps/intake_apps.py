"""Handlers for the intake tests (TLS, PROXY protocol, access lists, client timeout),
served by ``engine serve tests.apps.intake_apps:AddressHandler``.

``AddressHandler`` first writes the ``repr`` of the ``client_address`` it was given, on
one line, then echoes every line it reads. When its socket times out (client_timeout
as a Python timeout) it writes ``TIMEOUT`` and ends the connection. If
``$INTAKE_APPS_MARKER`` names a file, each run of the handler appends one line to it:
evidence, from outside the engine, of whether a connection reached the handler at all.

``IdleHandler`` first writes how its socket's timeout is set (:func:`timeouts`), then
echoes lines until its ``rfile`` ends, and says how it ended: ``EOF`` (the client's end,
or client_timeout enforced by the kernel, which reads as one) or ``TIMEOUT``.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from engine.classic import StreamRequestHandler

MARKER_VARIABLE = "INTAKE_APPS_MARKER"


class AddressHandler(StreamRequestHandler):
    """Tell the client which address the engine gave the handler, then echo lines."""

    def handle(self) -> None:
        marker = os.environ.get(MARKER_VARIABLE)
        if marker:
            with open(marker, "a") as file:
                file.write(f"{self.client_address!r}\n")
        self.wfile.write(f"{self.client_address!r}\n".encode())
        try:
            for line in self.rfile:
                self.wfile.write(line)
        except TimeoutError:
            self.wfile.write(b"TIMEOUT\n")


def timeouts(sock: Any) -> bytes:
    """``gettimeout() SO_RCVTIMEO SO_SNDTIMEO`` of *sock*, in seconds, e.g.
    ``None 30.0 30.0`` (the kernel's timeout) or ``30.0 0.0 0.0`` (a Python timeout)."""
    kernel = [
        sec + usec / 1e6
        for sec, usec in (
            struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO)
        )
    ]
    return b"%r %r %r" % (sock.gettimeout(), *kernel)


class IdleHandler(StreamRequestHandler):
    """Say how the socket's timeout is set, echo lines, then say how the reading ended."""

    def handle(self) -> None:
        self.wfile.write(timeouts(self.connection) + b"\n")
        try:
            for line in self.rfile:
                self.wfile.write(line)
        except TimeoutError:
            self.wfile.write(b"TIMEOUT\n")
        else:
            self.wfile.write(b"EOF\n")


class OwnTimeoutHandler(IdleHandler):
    """An IdleHandler with its own ``timeout`` (0.5 s), set by ``setup()``."""

    timeout = 0.5


class KindHandler(StreamRequestHandler):
    """Write the classes of the handler's socket and of its ``rfile``'s raw stream."""

    def handle(self) -> None:
        raw = type(self.rfile.raw)
        self.wfile.write(b"%s %s\n" % (type(self.connection).__name__.encode(),
                                       raw.__name__.encode()))
