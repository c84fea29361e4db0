"""Work that runs in background threads while a test or a scenario goes on."""

from __future__ import annotations

import threading
from typing import TypeVar

_Self = TypeVar("_Self", bound="Background")


class Background:
    """Daemon threads that run :meth:`_run` until :meth:`stop`.

    ``with`` starts them and stops them on the way out. :meth:`_run` loops until
    ``self._stop`` is set (``self._stop.wait(pace)`` both paces and ends the loop), or
    until its own budget runs out. :meth:`stop` sets the event and joins each thread for
    at most :attr:`join_timeout` seconds.
    """

    join_timeout: float = 10.0

    def __init__(self, threads: int = 1, name: str = "background") -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]

    def __enter__(self: _Self) -> _Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self: _Self) -> _Self:
        """Start the threads; return self."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Ask the threads to stop, and wait for them (at most :attr:`join_timeout` each)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_timeout)

    def done(self) -> bool:
        """Have all the threads finished?"""
        return not any(thread.is_alive() for thread in self._threads)

    def _run(self) -> None:
        raise NotImplementedError
