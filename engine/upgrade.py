"""The zero-downtime upgrade (SIGUSR2): a master re-executes itself, sockets and all.

The old master forks a child that execs the same command (:func:`command_line`: new
code and new config are read afresh, and nothing from the working directory) with the
listening descriptors left open and their numbers in ``ENGINE_LISTEN_FDS``, and its
own pid in ``ENGINE_UPGRADE_FROM``. The new master adopts the sockets instead of binding
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
from dataclasses import dataclass

from engine import unpatched
from engine.listeners import UPGRADE_FDS_VARIABLE
from engine.workdir import BASE_VARIABLE, absolute

UPGRADE_FROM_VARIABLE = "ENGINE_UPGRADE_FROM"
STATUS_FD_VARIABLE = "ENGINE_STATUS_FD"


# Interpreter options that take a value (``-W error``), when splitting sys.orig_argv.
_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")


@dataclass(frozen=True)
class Entry:
    """How the ``engine`` command re-executes itself (set by the CLI at start)."""

    arguments: tuple[str, ...]  # the command's arguments, as given (sys.argv[1:])
    base: str  # the directory relative paths are resolved from (engine.workdir)
    handler_directory: str | None  # where the handler module was found, if in base


_entry: Entry | None = None


def remember_entry(entry: Entry | None) -> None:
    """Record the ``engine`` command's arguments for a later SIGUSR2 re-exec."""
    global _entry
    _entry = entry


def interpreter_options(argv: Sequence[str]) -> list[str]:
    """The interpreter's own options in *argv* (``sys.orig_argv``): ``-X dev``, ``-O``...

    Everything from ``-m``, ``-c``, ``-`` or the script name on is left out.
    """
    options: list[str] = []
    items = iter(argv[1:])
    for item in items:
        if item in ("-m", "-c", "-") or not item.startswith("-"):
            break
        if item.startswith(("-m", "-c")):  # -mengine, -cCODE
            break
        options.append(item)
        if item in _OPTIONS_WITH_VALUE:
            options.append(next(items, ""))
    return options


def _bootstrap(entry: Entry) -> str:
    """The ``-c`` program of a re-executed ``engine`` master.

    It empties the current directory out of ``sys.path`` before anything is imported
    (``-c`` puts ``''`` first on every Python; ``-P`` exists only from 3.11), makes
    any relative entry absolute against the base directory, appends the
    directory the handler came from (after the installed packages, so a module
    planted there cannot stand in for engine or a library), then runs the command.
    """
    extra = [entry.handler_directory] if entry.handler_directory else []
    return (  # one line: it shows in the log and in ps
        "import os, sys; "
        f"sys.path[:] = [os.path.join({entry.base!r}, p) for p in sys.path if p] + {extra!r}; "
        "from engine.cli import main; sys.exit(main())"
    )


def command_line() -> list[str]:
    """The command line of a new master.

    For the ``engine`` command: the same interpreter and options, running the CLI
    through a ``-c`` bootstrap that keeps the working directory off ``sys.path``
    (whether it was started as ``python -m engine`` or as the console script). For
    other programs (a library server): how this process was started.
    """
    if _entry is None:
        return [sys.executable, *sys.orig_argv[1:]]
    return [
        sys.executable, *interpreter_options(sys.orig_argv), "-c", _bootstrap(_entry),
        *_entry.arguments,
    ]


def new_master_environment() -> dict[str, str]:
    """The environment of a new master: ours, plus the base directory for the CLI."""
    environment = dict(os.environ)
    if _entry is not None:
        environment[BASE_VARIABLE] = _entry.base
        # Python makes PYTHONPATH entries absolute against the current directory, which
        # is chdir now: resolve relative ones against the base, and drop empty ones.
        if environment.get("PYTHONPATH"):
            environment["PYTHONPATH"] = os.pathsep.join(
                absolute(item, _entry.base)
                for item in environment["PYTHONPATH"].split(os.pathsep) if item
            )
    return environment


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
    environment = new_master_environment()
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
    if not (value.isascii() and value.isdigit()):  # "²" is a digit, not a number
        return None
    try:
        return socket.socket(fileno=int(value))
    except (OSError, OverflowError):
        return None


def old_master_pid() -> int | None:
    """The master we are replacing, if we were started by a SIGUSR2 upgrade.

    Only our parent counts: a stale variable (a program started from a handler, say)
    must never make us signal an unrelated process.
    """
    value = os.environ.pop(UPGRADE_FROM_VARIABLE, "")
    if value.isascii() and value.isdigit() and int(value) == os.getppid():
        return int(value)
    return None
