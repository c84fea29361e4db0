"""Handlers for the worker tests (sync threads and gevent), imported in subprocesses.

``Commands`` answers one command per line, each answer starting with the serving pid:

* ``SLEEP <s>``: sleep (``time.sleep``: cooperative once gevent has patched), then answer;
* ``SPIN <s>``: burn the CPU without yielding for *s* seconds, then answer;
* ``FAIL``: answer, then raise ValueError (a handler bug: ``handle_error`` reports it);
* ``EXIT <n>``: answer, then raise ``SystemExit(n)``;
* ``INTERRUPT``: answer, then raise KeyboardInterrupt;
* ``PATCHED``: answer whether ``socket.socket`` is gevent's;
* anything else: echoed.
"""

from __future__ import annotations

import os
import socket
import time

from engine.classic import DatagramRequestHandler, StreamRequestHandler


def _answer(line: bytes) -> bytes | None:
    """What to write for *line* (before any raise)."""
    if line.startswith(b"SPIN "):
        end = time.monotonic() + float(line.split()[1])
        while time.monotonic() < end:
            pass
    elif line.startswith(b"SLEEP "):
        time.sleep(float(line.split()[1]))
    elif line.startswith(b"PATCHED"):
        patched = socket.socket.__module__ != "socket"
        return b"%d %s\n" % (os.getpid(), b"yes" if patched else b"no")
    return b"%d %s" % (os.getpid(), line)


def _raise_for(line: bytes) -> None:
    if line.startswith(b"FAIL"):
        raise ValueError("handler failed on purpose")
    if line.startswith(b"EXIT "):
        raise SystemExit(int(line.split()[1]))
    if line.startswith(b"INTERRUPT"):
        raise KeyboardInterrupt


class Commands(StreamRequestHandler):
    """Stream handler for the commands of the module docstring."""

    def handle(self) -> None:
        for line in self.rfile:
            answer = _answer(line)
            if answer is not None:
                self.wfile.write(answer)
            _raise_for(line)


class DatagramCommands(DatagramRequestHandler):
    """The same commands, one per datagram."""

    def handle(self) -> None:
        line = self.rfile.read()
        answer = _answer(line)
        if answer is not None:
            self.wfile.write(answer)
        _raise_for(line)
