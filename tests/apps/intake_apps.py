"""Handlers for the intake tests (TLS, PROXY protocol, access lists, client timeout),
served by ``engine serve tests.apps.intake_apps:AddressHandler``.

``AddressHandler`` first writes the ``repr`` of the ``client_address`` it was given, on
one line, then echoes every line it reads. When its socket times out (client_timeout)
it writes ``TIMEOUT`` and ends the connection. If ``$INTAKE_APPS_MARKER`` names a file,
each run of the handler appends one line to it: evidence, from outside the engine, of
whether a connection reached the handler at all.
"""

from __future__ import annotations

import os

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
