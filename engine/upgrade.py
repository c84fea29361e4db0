"""The zero-downtime upgrade (SIGUSR2): a master re-executes itself, sockets and all.

The old master forks a child that execs the same command line (``sys.orig_argv``:
new code and new config are read afresh) with the listening descriptors left open
and their numbers in ``ENGINE_LISTEN_FDS``, and its own pid in
``ENGINE_UPGRADE_FROM``. The new master adopts the sockets instead of binding
(:mod:`engine.listeners`), forks its workers and, once they serve, sends SIGTERM to
the old master, which drains its workers and exits. The listening sockets stay open
throughout, in both masters: connections queue in the kernel and no client is refused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence

from engine import unpatched
from engine.listeners import UPGRADE_FDS_VARIABLE

UPGRADE_FROM_VARIABLE = "ENGINE_UPGRADE_FROM"
STATUS_FD_VARIABLE = "ENGINE_STATUS_FD"


def command_line() -> list[str]:
    """How this process was started: the interpreter, its options and arguments."""
    return [sys.executable, *sys.orig_argv[1:]]


def start_new_master(
    listeners: Sequence[socket.socket], status: socket.socket | None = None
) -> int:
    """Fork and exec a new master that inherits *listeners*; return its pid.

    Call with the master's signals blocked (as around a worker's fork): the child
    unblocks them all before exec, so the new master starts with a clean mask.

    Raises:
        OSError: fork failed.
    """
    argv = command_line()
    environment = dict(os.environ)
    environment[UPGRADE_FDS_VARIABLE] = ",".join(str(s.fileno()) for s in listeners)
    environment[UPGRADE_FROM_VARIABLE] = str(os.getpid())
    inherited = list(listeners)
    if status is not None:  # the status endpoint moves over too: its address is taken
        environment[STATUS_FD_VARIABLE] = str(status.fileno())
        inherited.append(status)
    pid = unpatched.fork()  # never gevent's (issue 12)
    if pid:
        return pid
    # The child: nothing here may return into the master's code.
    try:
        for sock in inherited:
            os.set_inheritable(sock.fileno(), True)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.execve(argv[0], argv, environment)
    except BaseException as exc:  # exec failed: report and leave, never run on
        with contextlib.suppress(Exception):
            os.write(2, f"engine: upgrade: cannot exec {argv!r}: {exc}\n".encode())
    os._exit(127)


def handed_in_status_socket() -> socket.socket | None:
    """The status listener the previous master handed over, if any (taken once)."""
    value = os.environ.pop(STATUS_FD_VARIABLE, "")
    if not value.isdigit():
        return None
    try:
        return socket.socket(fileno=int(value))
    except OSError:
        return None


def old_master_pid() -> int | None:
    """The master we are replacing, if we were started by a SIGUSR2 upgrade.

    Only our parent counts: a stale variable (a program started from a handler, say)
    must never make us signal an unrelated process.
    """
    value = os.environ.pop(UPGRADE_FROM_VARIABLE, "")
    if value.isdigit() and int(value) == os.getppid():
        return int(value)
    return None
