"""The master's pidfile, kept right through a SIGUSR2 upgrade (as nginx does).

The running master's pid is in ``PATH``. During an upgrade the old master renames its
file to ``PATH.oldbin`` and the new master writes ``PATH``; whichever master exits
removes the file that holds its own pid, and an old master whose successor failed
renames ``PATH.oldbin`` back.
"""

from __future__ import annotations

import contextlib
import os

import psutil

from engine.errors import ConfigError

OLD_SUFFIX = ".oldbin"


def read(path: str) -> int | None:
    """The pid in *path*, or None when there is no file or no pid in it."""
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def write(path: str, pid: int) -> None:
    """Write *pid* to *path* atomically; refuse if another live engine holds it.

    Raises:
        ConfigError: the file names another running process, or cannot be written.
    """
    other = read(path)
    if other is not None and other != pid and psutil.pid_exists(other):
        raise ConfigError(
            "pidfile", path, f"a file no running process holds (pid {other} is running: "
            "is another engine using it?)",
        )
    temporary = f"{path}.{pid}.tmp"
    try:
        with open(temporary, "w", encoding="ascii") as file:
            file.write(f"{pid}\n")
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ConfigError("pidfile", path, f"a writable path ({exc.strerror or exc})") from None


def remove_if_ours(path: str, pid: int) -> None:
    """Remove *path* and *path*.oldbin where they hold *pid* (on the way out)."""
    for candidate in (path, path + OLD_SUFFIX):
        if read(candidate) == pid:
            with contextlib.suppress(OSError):
                os.unlink(candidate)


def set_aside(path: str, pid: int) -> bool:
    """Rename our *path* to *path*.oldbin for the new master; True if renamed."""
    if read(path) != pid:
        return False
    try:
        os.replace(path, path + OLD_SUFFIX)
    except OSError:
        return False
    return True


def restore(path: str, pid: int) -> None:
    """Put *path*.oldbin back as *path* (the new master did not take over)."""
    if read(path + OLD_SUFFIX) == pid and read(path) in (None, pid):
        with contextlib.suppress(OSError):
            os.replace(path + OLD_SUFFIX, path)
