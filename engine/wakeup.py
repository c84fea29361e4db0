"""The master's wakeup fd: signals and other threads wake its one select() call.

Signal handlers do nothing but let ``signal.set_wakeup_fd`` write the signal number
into the pipe; the master's loop reads the bytes back and turns them into commands.
:meth:`WakeupFd.wake` writes a 0 byte (no signal has number 0) from any thread, which
the loop reads as "re-check your state" (``shutdown()`` uses it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

from engine import unpatched

WAKE = 0  # the byte written by wake(): not a signal number

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class WakeupFd:
    """A non-blocking, close-on-exec pipe for waking the master's selector."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self.read_fd

    def wake(self, byte: int = WAKE) -> None:
        """Wake the loop from any thread (a full pipe is already a wake-up)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.write_fd, bytes([byte]))

    def drain(self) -> list[int]:
        """Read every pending byte: signal numbers, and WAKE for plain wake-ups."""
        received = bytearray()
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := os.read(self.read_fd, 4096):
                received += chunk
        return list(received)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def fds(self) -> tuple[int, int]:
        return self.read_fd, self.write_fd


def _ignore(signum: int, frame: FrameType | None) -> None:
    """No-op handler: the wakeup fd carries the signal number to the loop."""


@contextlib.contextmanager
def captured_signals(wakeup: WakeupFd, signums: Iterable[int]) -> Iterator[dict[int, _Handler]]:
    """Route *signums* to *wakeup* while the block runs, then restore what was there.

    Only possible in the main thread; elsewhere it does nothing and yields an empty
    dict (the program keeps its signals, and the master falls back to a short tick).
    Yields the previous handlers, keyed by signal number.
    """
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    previous: dict[int, _Handler] = {}
    old_wakeup = signal.set_wakeup_fd(wakeup.write_fd, warn_on_full_buffer=False)
    if old_wakeup not in (-1, wakeup.write_fd):
        warnings.warn(
            "engine's master replaces another wakeup fd while serve_forever() runs "
            "(it is restored afterwards)",
            RuntimeWarning,
            stacklevel=3,
        )
    try:
        for signum in signums:
            previous[signum] = unpatched.set_signal(signum, _ignore)
        yield previous
    finally:
        for signum, handler in previous.items():
            unpatched.set_signal(signum, handler if handler is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(old_wakeup)
