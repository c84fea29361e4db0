"""Acting on processes: adopt orphans, reap, kill a process group, check nothing is left.

The one group killer is :func:`kill_group`; the one leftover check is
:func:`assert_no_leftovers` (by pid) or what :func:`kill_group` returns (by group).
Processes are always found by pid or process group, never by name.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psutil

from tests.kit.procfs import Proc, children, group_members, open_fds
from tests.kit.waiting import DeadlineExceeded, wait_until

GONE_TIMEOUT = 5.0  # seconds a SIGKILLed process group gets to disappear


def become_subreaper() -> None:
    """Make this process adopt orphaned descendants (Linux), so it can reap them.

    When a master is killed, its workers are re-parented; without this they would go to
    PID 1, which in some sandboxes never reaps them.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def reap(pids: Sequence[int]) -> None:
    """Collect any of *pids* that are exited children of ours (adopted ones included).

    Never pass the pid of a :class:`subprocess.Popen` not yet waited for: its exit
    status would be lost.
    """
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def alive_pids(pids: Sequence[int]) -> list[int]:
    """The pids from *pids* that still exist (zombies included, after reaping ours)."""
    reap(pids)
    return [pid for pid in pids if psutil.pid_exists(pid)]


def assert_no_leftovers(pids: set[int], timeout: float = GONE_TIMEOUT) -> None:
    """Every pid in *pids* is gone (not alive, not a zombie) within *timeout*."""
    wait_until(
        lambda: not alive_pids(sorted(pids)), timeout, f"processes {sorted(pids)} to go away"
    )


def wait_group_empty(
    pgid: int, timeout: float, proc: subprocess.Popen[Any] | None = None
) -> list[Proc]:
    """Wait until process group *pgid* is empty; return what is still in it.

    Zombies of ours are reaped on the way (*proc*, the group's leader as a Popen, through
    Popen so that its exit status is kept). A zombie whose parent is another process
    does not count: it is its parent's to reap (or PID 1's, when this process is not a
    subreaper).
    """
    me = os.getpid()
    left: list[Proc] = []

    def empty() -> bool:
        nonlocal left
        members = group_members(pgid)
        if proc is not None:
            proc.poll()
        reap([p.pid for p in members if p.zombie and p.ppid == me
              and (proc is None or p.pid != proc.pid)])
        left = [p for p in group_members(pgid) if not (p.zombie and p.ppid != me)]
        return not left

    with contextlib.suppress(DeadlineExceeded):
        wait_until(empty, timeout, f"process group {pgid} to empty")
    return left


def kill_group(
    pgid: int,
    proc: subprocess.Popen[Any] | None = None,
    *,
    grace: float = 10.0,
    term_first: bool = True,
    gone_timeout: float = GONE_TIMEOUT,
) -> list[Proc]:
    """Stop process group *pgid*: SIGTERM, *grace* seconds, then SIGKILL; reap it.

    *proc* is the group's leader when this process started it (``start_new_session``):
    it is waited for, so its exit status is kept. Without *term_first*, SIGKILL at
    once. Returns the members still there *gone_timeout* seconds after the SIGKILL
    (empty when the whole group is gone).
    """
    if (proc is None or proc.returncode is not None) and not group_members(pgid):
        return []  # never signal a group that is gone: its id may be reused
    steps = [(signal.SIGTERM, grace)] if term_first else []
    steps.append((signal.SIGKILL, gone_timeout))
    left: list[Proc] = []
    for signum, timeout in steps:
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        left = wait_group_empty(pgid, max(0.0, deadline - time.monotonic()), proc)
        if not left:
            break
    return left


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


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards *wanted* (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@contextlib.contextmanager
def checked_self() -> Iterator[dict[str, Any]]:
    """Record this process's fds before; after, report ``leaked_fds`` and
    ``children_left`` (any child of this process, zombies included)."""
    before = open_fds()
    report: dict[str, Any] = {}
    yield report
    report["leaked_fds"] = sorted(open_fds() - before)
    report["children_left"] = [p.pid for p in children(os.getpid())]


def exec_after(code: str) -> list[str]:
    """A command-line prefix: a Python process that runs *code*, then execs the command
    line that follows the prefix (what *code* changed in the process, a seccomp filter or
    a prctl flag, carries over into it)."""
    return [sys.executable, "-c",
            f"{code}\nimport os, sys\nos.execv(sys.argv[1], sys.argv[1:])"]


def system_command_or_skip(name: str) -> str:
    """The path of the system command *name*; skip the test without it, but fail it
    under CI=true: ``tests/system_packages.sh`` installs it (as root) and CI runs that
    script first, so a missing command there is a broken setup, not a reason to skip."""
    import pytest  # only tests call this; the kit also serves loadtests without pytest

    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (run: bash tests/system_packages.sh as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip")
    pytest.skip(reason)
