"""What the master sleeps on: its wakeup fd, the status endpoint, and (sometimes) the listeners.

:class:`MasterEvents` owns the master's one selector. :meth:`MasterEvents.wait` sleeps
until a signal, a wake-up from another thread, a status client or (while watched) a
new connection, or until the timeout, and returns the commands read (signal numbers,
:data:`~engine.wakeup.WAKE`). Status clients are answered here, within the call.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
from collections.abc import Iterator, Sequence
from typing import Any

from engine import unpatched
from engine.status import StatusServer
from engine.wakeup import WakeupFd, captured_signals

# The signals the master handles (the master maps each to a command).
HANDLED_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD,
)
# Blocked across fork: ours, plus those a worker ignores but whose default would kill it.
FORK_BLOCKED_SIGNALS = (*HANDLED_SIGNALS, signal.SIGWINCH)


class MasterEvents:
    """The master's selector and what is registered in it."""

    def __init__(self, listeners: Sequence[Any]) -> None:
        self.wakeup = WakeupFd()
        self.selector = unpatched.default_selector()  # never gevent's (issue 12)
        self.selector.register(self.wakeup, selectors.EVENT_READ)
        self.listener_socks = list(listeners)
        self.listener_fds = [listener.fileno() for listener in listeners]
        self.listeners_watched = False
        self.status: StatusServer | None = None
        self.signals = False  # signals reach the wakeup fd (serve_forever in the main thread)
        self.quick_interrupt = False  # SIGINT had Python's default handler before ours

    @contextlib.contextmanager
    def signals_captured(self) -> Iterator[None]:
        """Route the handled signals to the wakeup fd while the block runs (main thread)."""
        with captured_signals(self.wakeup, HANDLED_SIGNALS) as previous:
            self.signals = bool(previous)
            self.quick_interrupt = previous.get(signal.SIGINT) is signal.default_int_handler
            yield

    @property
    def fds(self) -> tuple[int, ...]:
        """The master's own descriptors, which a worker closes after fork."""
        status = (self.status.fileno(),) if self.status is not None else ()
        return (*self.wakeup.fds, self.selector.fileno(), *status)

    def add_status(self, status: StatusServer | None) -> None:
        """Answer status clients from the master's loop (None: no status endpoint)."""
        self.status = status
        if status is not None:
            self.selector.register(status, selectors.EVENT_READ)

    def watch_listeners(self, wanted: bool) -> None:
        """Wake on new connections (or stop doing so)."""
        if wanted == self.listeners_watched:
            return
        for fd in self.listener_fds:
            if wanted:
                self.selector.register(fd, selectors.EVENT_READ)
            else:
                self.selector.unregister(fd)
        self.listeners_watched = wanted

    def wait(self, timeout: float) -> list[int]:
        """Sleep up to *timeout* seconds; return the command bytes that arrived."""
        commands: list[int] = []
        for key, _ in self.selector.select(timeout):
            if key.fileobj is self.wakeup:
                commands.extend(self.wakeup.drain())
            elif key.fileobj is self.status and self.status is not None:
                self.status.handle_ready()
        return commands

    def close(self) -> None:
        """Release the selector and the wakeup fd (the status server is closed by its owner)."""
        self.selector.close()
        self.wakeup.close()
