"""A handler module that monkey-patches with gevent at import, as some users' code does.

``engine serve tests.apps.patched_apps:Echo --worker-class gevent`` must serve it; with
the sync worker it must be refused at start with a clear message.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import socket  # noqa: E402

from engine.classic import StreamRequestHandler  # noqa: E402


class Echo(StreamRequestHandler):
    """Echo each line after the pid and whether sockets are gevent's."""

    def handle(self) -> None:
        patched = b"patched" if socket.socket.__module__ != "socket" else b"plain"
        for line in self.rfile:
            self.wfile.write(b"%d %s %s" % (os.getpid(), patched, line))
