"""A static-file HTTP server: ``http.server.SimpleHTTPRequestHandler`` under engine.

Serves the directory named by the ``ENGINE_HTTP_DIR`` environment variable (read per
request, default: the current directory) over HTTP/1.0, and sends its request log to
the ``engine.examples.httpdir`` logger (so the engine's log settings apply) instead
of printing to stderr::

    ENGINE_HTTP_DIR=/srv/www engine serve engine.examples.httpdir:HttpDirHandler \\
        --bind 127.0.0.1:8080
"""

from __future__ import annotations

import http.server
import logging
import os
from typing import Any

log = logging.getLogger("engine.examples.httpdir")

DIR_VARIABLE = "ENGINE_HTTP_DIR"


def served_directory() -> str:
    """The directory to serve: ``$ENGINE_HTTP_DIR``, or the current directory."""
    return os.environ.get(DIR_VARIABLE) or os.getcwd()


class HttpDirHandler(http.server.SimpleHTTPRequestHandler):
    """Serve files from :func:`served_directory`; one request per connection."""

    # HTTP/1.0: the connection closes after each response, so a worker is never tied
    # up by an idle keep-alive client (set HTTP/1.1 in a subclass to keep them).
    protocol_version = "HTTP/1.0"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("directory", served_directory())
        super().__init__(*args, **kwargs)

    def address_string(self) -> str:
        """The client's host, or ``unix`` on a Unix socket (whose peer has no host)."""
        if isinstance(self.client_address, tuple) and self.client_address:
            return str(self.client_address[0])
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        """Log through :mod:`logging` (``engine.examples.httpdir``) instead of stderr."""
        log.info("%s %s", self.address_string(), format % args)
