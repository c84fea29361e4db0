"""The master's pidfile, kept right through a SIGUSR2 upgrade (as nginx does).

The running master's pid is in ``PATH``. During an upgrade the old master renames its
file to ``PATH.oldbin`` and the new master writes ``PATH``; whichever master exits
removes the file that holds its own pid, and an old master whose successor failed
renames ``PATH.oldbin`` back.

The file is written while the master may still be root: through a ``mkstemp`` file
in the same directory, renamed into place, and read without following symlinks
(:mod:`engine.safefiles`). Every operation that fails is logged: after ``--user`` the
master may no longer be able to rename or remove the file (see docs/security.md).
"""

from __future__ import annotations

import logging
import os

import psutil

from engine import safefiles
from engine.errors import ConfigError

OLD_SUFFIX = ".oldbin"

log = logging.getLogger("engine.master")


# The largest pid_t: a number above it names no process (and os.kill() of it would
# raise OverflowError), as 0 and negative numbers name none.
PID_MAX = 2**31 - 1


def read(path: str) -> int | None:
    """The pid in *path*, or None when there is no file or no pid in it (garbage, 0,
    a negative number or one beyond pid_t: a stale file, written by no engine)."""
    text = safefiles.read_small(path, 64)
    try:
        pid = int(text.strip()) if text is not None else None
    except ValueError:
        return None
    return pid if pid is not None and 0 < pid <= PID_MAX else None


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
    try:
        safefiles.replace_contents(path, f"{pid}\n")
    except OSError as exc:
        raise ConfigError("pidfile", path, f"a writable path ({exc.strerror or exc})") from None


def remove_if_ours(path: str, pid: int) -> None:
    """Remove *path* and *path*.oldbin where they hold *pid* (on the way out)."""
    for candidate in (path, path + OLD_SUFFIX):
        if read(candidate) == pid:
            try:
                os.unlink(candidate)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the pidfile %s: %s; it stays behind",
                            candidate, exc.strerror or exc)


def set_aside(path: str, pid: int) -> bool:
    """Rename our *path* to *path*.oldbin for the new master; True if renamed."""
    if read(path) != pid:
        log.warning("upgrade: the pidfile %s does not hold this master's pid %d; "
                    "not renaming it to %s", path, pid, OLD_SUFFIX)
        return False
    try:
        os.replace(path, path + OLD_SUFFIX)
    except OSError as exc:
        log.warning("upgrade: cannot rename the pidfile %s to %s: %s", path,
                    path + OLD_SUFFIX, exc.strerror or exc)
        return False
    return True


def restore(path: str, pid: int) -> None:
    """Put *path*.oldbin back as *path* (the new master did not take over)."""
    if read(path + OLD_SUFFIX) == pid and read(path) in (None, pid):
        try:
            os.replace(path + OLD_SUFFIX, path)
        except OSError as exc:
            log.warning("cannot rename %s back to the pidfile %s: %s", path + OLD_SUFFIX,
                        path, exc.strerror or exc)
