"""What a worker does after fork costs private memory: the parts that need not run there.

A worker asks the kernel for SIGKILL when its master dies (``prctl(PR_SET_PDEATHSIG)``
through ctypes). Looking libc's ``prctl`` up builds ctypes objects (a ``CDLL``, a
function-pointer class, the pointer): done in each worker, that was about 160 KiB of
its private memory (``python -m loadtests.worker_memory``). The lookup happens once,
at import, in the master; the worker only makes the call. Checked in a real forked
child, as a worker is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import pytest

from workers import worker

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl: Linux")

_PR_GET_PDEATHSIG = 2


def _in_child(body) -> bytes:  # type: ignore[no-untyped-def]
    """Run *body* in a forked child; return what it wrote to the pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 1
        try:
            os.write(write_end, body())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as reader:
            out = reader.read()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return out


def test_die_with_parent_builds_no_ctypes_objects_after_fork() -> None:
    def body() -> bytes:
        calls: list[str] = []

        def profile(frame, event, arg):  # type: ignore[no-untyped-def]
            if event == "call" and "ctypes" in frame.f_code.co_filename:
                calls.append(frame.f_code.co_name)

        sys.setprofile(profile)
        try:
            worker._die_with_parent()
        finally:
            sys.setprofile(None)
        return ",".join(calls).encode()

    assert _in_child(body) == b""  # no Python code of ctypes ran (CDLL(), __getattr__...)


def test_die_with_parent_still_sets_the_parent_death_signal() -> None:
    def body() -> bytes:
        worker._die_with_parent()
        libc = ctypes.CDLL(None, use_errno=True)
        sig = ctypes.c_int(-1)
        assert libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0) == 0
        return str(sig.value).encode()

    assert _in_child(body) == str(int(signal.SIGKILL)).encode()
