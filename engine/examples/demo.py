"""The demo service ``engine`` runs without a command: a small line protocol.

Every request and every response is one line of bytes ending in ``\\n`` (a final line
without one is answered too). Commands are case-insensitive:

==================  ==============================================================
``STATS``           ``worker=<slot> pid=<pid> requests=<n> uptime=<seconds>``:
                    which worker serves this connection, how many connections
                    that worker has served (this one included), and for how long
                    the worker has been up
``PING``            ``PONG``
``SLEEP <seconds>`` waits (at most 60 s, so a busy worker is easy to watch), then
                    ``SLEPT <seconds>``
``QUIT``            ``BYE``, then the server closes the connection
anything else       echoed back
==================  ==============================================================

A line longer than 64 KiB gets ``ERR line too long`` and the connection is closed; a
connection idle for 30 s (``DemoHandler.timeout``) is closed. Try it with
``nc 127.0.0.1 8000``, then type ``STATS``.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time

from engine.classic import StreamRequestHandler

MAX_LINE = 64 * 1024
MAX_SLEEP = 60.0
_WORKER_TITLE = re.compile(r"engine: worker (\d+)")

# Connections served by this process (reset in each forked child); a lock for threads > 1.
_served = itertools.count(1)
_served_lock = threading.Lock()


def worker_slot() -> str:
    """This worker's slot number, from its process title (``-`` if not a worker)."""
    try:
        import setproctitle

        match = _WORKER_TITLE.search(setproctitle.getproctitle())
    except Exception:  # a missing title only costs the slot number
        match = None
    return match.group(1) if match else "-"


# When this process started serving: workers are forked from a master that imported
# this module, so the at-fork hook gives each worker its own start (exactly; a
# process's create_time is only as precise as the kernel's clock ticks).
_started = time.monotonic()


def _forked() -> None:
    global _started, _served
    _started = time.monotonic()
    _served = itertools.count(1)  # a child counts its own connections


os.register_at_fork(after_in_child=_forked)


def process_uptime() -> float:
    """Seconds since this process was forked (a worker's age, not the master's)."""
    return time.monotonic() - _started


class DemoHandler(StreamRequestHandler):
    """Serve the demo line protocol (see the module docstring)."""

    timeout = 30  # close idle connections: a forgotten nc must not hold a worker forever

    def setup(self) -> None:
        """Count the connection, then set up the streams."""
        with _served_lock:
            self.served = next(_served)
        super().setup()

    def handle(self) -> None:
        """Answer lines until QUIT, EOF, an idle timeout or an over-long line."""
        try:
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    self.wfile.write(b"ERR line too long\n")
                    return
                reply, done = self.respond(line)
                self.wfile.write(reply if reply.endswith(b"\n") else reply + b"\n")
                if done:
                    return
        except (TimeoutError, ConnectionError):
            return  # an idle or vanished client is not a server error

    def respond(self, line: bytes) -> tuple[bytes, bool]:
        """The reply to one line, and whether to close the connection after it."""
        words = line.split()
        command = words[0].upper() if words else b""
        if command == b"STATS" and len(words) == 1:
            return self.stats(), False
        if command == b"PING" and len(words) == 1:
            return b"PONG", False
        if command == b"QUIT" and len(words) == 1:
            return b"BYE", True
        if command == b"SLEEP" and len(words) == 2:
            return self.sleep(words[1]), False
        if command == b"SLEEP":
            return b"ERR usage: SLEEP <seconds, 0 to 60>", False
        return line, False

    def stats(self) -> bytes:
        """``worker=<slot> pid=<pid> requests=<n> uptime=<seconds>``."""
        return (
            f"worker={worker_slot()} pid={os.getpid()} requests={self.served} "
            f"uptime={process_uptime():.1f}"
        ).encode()

    def sleep(self, argument: bytes) -> bytes:
        """Sleep for the requested time (this is the service's job, not a wait)."""
        try:
            seconds = float(argument)
        except ValueError:
            seconds = -1.0
        if not 0.0 <= seconds <= MAX_SLEEP:  # also rejects nan
            return b"ERR usage: SLEEP <seconds, 0 to 60>"
        time.sleep(seconds)
        return b"SLEPT " + argument
