"""Handlers for the load-balancer tests, served by ``engine serve tests.apps.haproxy_apps:...``.

``WhoHandler`` answers every line it reads with one line, ``<instance> <host>:<port>``:
which engine instance served it (``$HAPROXY_APPS_INSTANCE``, else the server's
``proc_name``) and the ``client_address`` the handler was given. Behind a load balancer
that sends a PROXY header, that address is the original client's, not the balancer's.
A connection that closes without a line (a health check) gets no answer.
"""

from __future__ import annotations

import os

from engine.classic import StreamRequestHandler

INSTANCE_VARIABLE = "HAPROXY_APPS_INSTANCE"


def format_peer(address: object) -> str:
    """``host:port`` for an (IPv4 or IPv6) address tuple, the repr of anything else."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return repr(address)


class WhoHandler(StreamRequestHandler):
    """Answer each line with this instance's name and the client address seen."""

    def handle(self) -> None:
        name = os.environ.get(INSTANCE_VARIABLE) or getattr(self.server, "proc_name", None)
        answer = f"{name or '?'} {format_peer(self.client_address)}\n".encode()
        for _line in self.rfile:
            self.wfile.write(answer)
