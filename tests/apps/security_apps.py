"""Handlers for the security tests (tests/deploy/test_security*.py)."""

from __future__ import annotations

import os

from engine.classic import StreamRequestHandler
from tests.apps.intake_apps import timeouts

LEAK: list[bytes] = []


class Leaky(StreamRequestHandler):
    """Each ``leak`` line keeps 8 MiB more (touched): a memory leak on purpose.

    Answers ``pid line``; any other line is only echoed after the pid.
    """

    def handle(self) -> None:
        for line in self.rfile:
            if line.strip() == b"leak":
                LEAK.append(b"x" * (8 * 1024 * 1024))
            self.wfile.write(b"%d %s" % (os.getpid(), line))


class Timeout(StreamRequestHandler):
    """Answers each line with the socket timeouts the connection was given:
    ``gettimeout() SO_RCVTIMEO SO_SNDTIMEO`` (see intake_apps.timeouts)."""

    def handle(self) -> None:
        for _ in self.rfile:
            self.wfile.write(timeouts(self.connection) + b"\n")
