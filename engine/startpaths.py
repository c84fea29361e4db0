"""The paths a start opens or creates, looked at without touching them.

``engine serve`` and ``--check-config`` both run :func:`check_paths_usable`, so the
check refuses what the start would, with the same message, and creates nothing.
"""

from __future__ import annotations

import errno
import os
import stat

from engine import listeners, safefiles
from engine.config import Settings
from engine.errors import ConfigError

# Where systemd makes a service's own directories when it starts it (RuntimeDirectory=,
# LogsDirectory=, StateDirectory=, CacheDirectory=): one missing there may not be yet.
MADE_AT_START = ("/run/", "/var/run/", "/var/log/", "/var/lib/", "/var/cache/")


def check_paths_usable(settings: Settings) -> list[str]:
    """Refuse a path the start could not use, as it would, creating nothing; return
    notes on the directories that do not exist yet where systemd makes them.

    ``chdir`` must be a directory the engine can enter; the log files, the pidfile and
    the ``unix:`` sockets (to bind, and the status socket) must be in an existing
    directory it can write (a log
    file that exists must be writable, not a directory). A directory that is missing
    under /run, /var/log, /var/lib or /var/cache is a note, not an error: systemd
    makes it when it starts the service (the start itself then needs it). A pidfile or
    status socket that a running engine holds is not refused here: ``--check-config``
    is run next to the running engine, before a restart or an upgrade.

    Raises:
        ConfigError: with the message the start gives (the paths are absolute here).
    """
    notes: list[str] = []
    why = _cannot_enter(settings.chdir, notes)
    if why:
        raise ConfigError("chdir", settings.chdir, f"a directory the engine can enter ({why})")
    for name in ("log_file", "access_log"):
        path = getattr(settings, name)
        why = _cannot_append(path, notes) if path not in (None, "-") else None
        if why:
            raise ConfigError(name, path, f"a file that can be opened for appending ({why})")
    # The Unix sockets to bind (not those handed in: an upgrade's, systemd's), and the
    # status endpoint's.
    binding = settings.bind if listeners.handed_in_source() is None else ()
    unix = [*(("bind", each) for each in binding), ("status_bind", settings.status_bind)]
    for name, spec in unix:
        if spec and spec.startswith("unix:"):
            problem = _unix_socket_problem(spec[len("unix:"):], notes)
            if problem:
                raise ConfigError(name, spec, problem)
    if settings.pidfile:
        why = _cannot_create_in(settings.pidfile, notes) or (
            os.strerror(errno.EISDIR) if os.path.isdir(settings.pidfile) else None
        )
        if why:
            raise ConfigError("pidfile", settings.pidfile, f"a writable path ({why})")
    return notes


def _may(path: str, mode: int) -> bool:
    """os.access with the ids the engine opens files with (effective, where supported)."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _missing(directory: str, exc: OSError, notes: list[str]) -> str | None:
    """The error for a *directory* that cannot be looked at, or None (and a note) when
    it is only missing where systemd makes directories at start."""
    if isinstance(exc, FileNotFoundError) and directory.startswith(MADE_AT_START):
        notes.append(f"{directory} does not exist yet: the start needs it (systemd's "
                     "RuntimeDirectory=, LogsDirectory=... make it)")
        return None
    return exc.strerror or str(exc)


def _cannot_enter(directory: str, notes: list[str], access: int = os.X_OK) -> str | None:
    """Why *directory* cannot be used: missing, not a directory, or no *access*."""
    try:
        info = os.stat(directory)
    except OSError as exc:
        return _missing(directory, exc, notes)
    if not stat.S_ISDIR(info.st_mode):
        return os.strerror(errno.ENOTDIR)
    return None if _may(directory, access) else os.strerror(errno.EACCES)


def _cannot_create_in(path: str, notes: list[str]) -> str | None:
    """Why no new file can be made at *path*: its directory is missing, not one, or
    not writable."""
    return _cannot_enter(os.path.dirname(path) or ".", notes, os.W_OK | os.X_OK)


def _cannot_append(path: str, notes: list[str]) -> str | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return _cannot_create_in(path, notes)
    except OSError as exc:  # a file on the way: Not a directory
        return exc.strerror or str(exc)
    privileged = safefiles.is_privileged()
    if stat.S_ISLNK(info.st_mode):
        if privileged:  # opened with O_NOFOLLOW (engine.safefiles.open_append)
            return safefiles.SYMLINK_REFUSED
        try:
            info = os.stat(path)
        except FileNotFoundError:  # a dangling link: opening creates its target
            return None
        except OSError as exc:
            return exc.strerror or str(exc)
    if stat.S_ISDIR(info.st_mode):
        return os.strerror(errno.EISDIR)
    if privileged and stat.S_ISREG(info.st_mode) and info.st_nlink != 1:
        return safefiles.OTHER_LINKS
    return None if _may(path, os.W_OK) else os.strerror(errno.EACCES)


def _unix_socket_problem(path: str, notes: list[str]) -> str | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        why = _cannot_create_in(path, notes)
        return f"an address free to listen on ({why})" if why else None
    except OSError as exc:
        return f"an address free to listen on ({exc.strerror or exc})"
    if not stat.S_ISSOCK(info.st_mode):  # as engine.status refuses it
        return "a path that is free or a stale socket (this one exists and is not a socket)"
    return None  # stale, or a running engine's: the start tells them apart
