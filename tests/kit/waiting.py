"""Waiting on a condition with a deadline: the kit's one way to wait.

Nothing in the kit sleeps as synchronisation: a wait polls a predicate, which
decides, until a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(AssertionError):
    """A condition did not become true before its deadline."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float | None = None,
) -> T:
    """Poll *predicate* until it returns a truthy value, and return that value.

    Polls every *interval* seconds, or, by default, with a backoff from 1 ms to 50 ms
    (quick for conditions that come fast, cheap for slow ones).

    Raises:
        DeadlineExceeded: not true within *timeout* seconds (the message names *what*).
    """
    deadline = time.monotonic() + timeout
    delay = 0.001 if interval is None else interval
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)  # a poll interval, not synchronisation: the predicate decides
        if interval is None:
            delay = min(delay * 2, 0.05)
