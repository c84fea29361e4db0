"""Child processes of the load tools: their READY line, and stopping their group."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from typing import Any


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


def stop_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the process group led by *proc*, SIGKILL it after *grace* seconds, reap.

    *proc* must have been started in its own session (``start_new_session=True``). The
    group is SIGKILLed once the leader is gone in any case, so no straggler (a worker, a
    forked child) outlives it.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)
