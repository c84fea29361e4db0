"""Reading a child process's first line (its READY line) with a deadline."""

from __future__ import annotations

import os
import selectors
import time


def read_first_line(fd: int, timeout: float) -> bytes:
    """The first line written to *fd* (a pipe), without its newline.

    Returns what was read if the writer closes the pipe first (``b""`` if nothing).

    Raises:
        TimeoutError: no full line within *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line within {timeout:g}s")
            if selector.select(remaining):
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
    return data.split(b"\n", 1)[0]
