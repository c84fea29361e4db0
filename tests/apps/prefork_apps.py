"""Handlers and server programs used by the prefork tests (imported in subprocesses)."""

from __future__ import annotations

import os
import time

from engine import DatagramRequestHandler, StreamRequestHandler


class PidEcho(StreamRequestHandler):
    """Per line: ``SLEEP <s>`` sleeps then answers; anything else is echoed.

    Every answer starts with the serving process's pid, so tests see who served.
    """

    def handle(self) -> None:
        for line in self.rfile:
            if line.startswith(b"SLEEP "):
                time.sleep(float(line.split()[1]))
            attr = getattr(self.server, "greeting", b"")
            self.wfile.write(b"%d %s%s" % (os.getpid(), attr, line))


class PidDatagram(DatagramRequestHandler):
    """Answers each datagram with the serving pid and the datagram."""

    def handle(self) -> None:
        self.wfile.write(b"%d %s" % (os.getpid(), self.rfile.read()))


def program(
    *,
    server: str = "PreforkTCPServer",
    handler: str = "PidEcho",
    address: str = "('127.0.0.1', 0)",
    attrs: str = "",
    before: str = "",
    after: str = "",
) -> str:
    """The source of a server program that prints ``READY <address>`` then serves."""
    body = "\n".join(f"    {line}" for line in attrs.strip().splitlines()) or "    pass"
    return f"""
import logging, os, sys, signal, socket
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
import engine
from engine import *
from tests.apps.prefork_apps import PidEcho, PidDatagram
{before}
class Server({server}):
    allow_reuse_address = True
{body}

with Server({address}, {handler}) as srv:
    print("READY", repr(srv.server_address), flush=True)
    srv.serve_forever()
{after}
print("SERVED-OUT", file=sys.stderr, flush=True)
"""
