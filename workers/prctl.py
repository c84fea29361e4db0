"""libc's ``prctl()`` (Linux), looked up once, at import: in the master, before any fork.

A lookup in each worker would build ctypes objects there (a ``CDLL``, a function-pointer
class, the pointer): about 160 KiB of the worker's private memory
(``loadtests/worker_memory.py``). A call builds nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_MEMORY_MERGE = 67  # Linux 6.4+: KSM may merge any of the process's anonymous pages
PR_GET_MEMORY_MERGE = 68


def _find() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


_PRCTL = _find()


def prctl(option: int, arg: int = 0) -> int:
    """``prctl(option, arg, 0, 0, 0)``; its result, or OSError with the call's errno
    (ENOSYS where there is no prctl: not Linux)."""
    if _PRCTL is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    result = _PRCTL(option, arg, 0, 0, 0)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result
