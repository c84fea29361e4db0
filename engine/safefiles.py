"""Files a privileged master creates or opens: never through a link another user planted.

engine starts as root to bind low ports, and while it is root it writes the pidfile,
opens the log files and creates Unix socket files. Anyone who can write a directory
on the way to one of those paths could swap in a symlink (or a hard link) and make
root write, truncate or chmod a file of their choosing. So:

* :func:`check_paths` refuses, when the process is privileged, any such path in a
  directory that users other than root and the service user (``user``/``group``) can
  write, unless that directory is sticky (as ``/tmp``) and the entry in it is owned by
  root or the service user, or does not exist yet; every directory above that one must
  exist and be writable by root alone (the service user could swap a directory of its
  own for a symlink between the check and the open). Symlinks on the way are checked
  too.
* :func:`open_append` opens a file with ``O_NOFOLLOW`` and refuses anything but a
  regular file with one link; :func:`replace_contents` writes through a temporary file
  made by ``mkstemp`` (``O_EXCL``, an unpredictable name) in the same directory, then
  renames it into place (a rename replaces a symlink, never follows it).

Unprivileged processes are not checked: they can only write what their own user may.
ACLs are not read; the mode bits and owners are.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from engine.errors import ConfigError

log = logging.getLogger("engine.master")

# Most symlinks followed while walking one path (the kernel's own limit is 40).
MAX_LINKS = 40
# Why a privileged open refuses a path (engine.startpaths says the same ahead).
SYMLINK_REFUSED = ("is a symbolic link, which root does not follow (for stderr, leave it "
                   "unset or give '-')")
OTHER_LINKS = "has other hard links, not written"
_OPEN_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


@dataclass(frozen=True)
class Trusted:
    """Who may write the directories of a privileged process's files."""

    uids: frozenset[int]
    gids: frozenset[int]

    @classmethod
    def for_service(cls, uid: int | None, gid: int | None) -> Trusted:
        """Root, plus the service user and group (when engine switches to one)."""
        return cls(
            frozenset({0} | ({uid} if uid is not None else set())),
            frozenset({0} | ({gid} if gid is not None else set())),
        )


def is_privileged() -> bool:
    """Running as root: a file opened now may be anybody's."""
    return os.geteuid() == 0


ROOT_ONLY = Trusted(frozenset({0}), frozenset({0}))


def unsafe_reason(path: str, trusted: Trusted) -> str | None:
    """Why another user could redirect *path*, or None when nobody untrusted can.

    Walks every directory from ``/`` to *path*'s parent, following symlinks as the
    kernel would. The file's own directory must be owned by a *trusted* user (root or
    the service user) and not writable by an untrusted group or by everyone, except
    that a sticky directory may be, when the file is owned by a trusted user or
    missing. Every directory above it must be root's alone in the same way (in a
    sticky one, an existing entry of root's): whoever can write a directory can swap
    any entry in it for a symlink between this check and the open, and only the file
    itself is opened without following one.
    """
    pending = [part for part in os.path.abspath(path).split("/") if part]
    directory = "/"
    links = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            directory = os.path.dirname(directory)
            continue
        if name == ".":
            continue
        last = not pending
        entry = os.path.join(directory, name)
        try:
            dir_stat = os.stat(directory)
            entry_stat: os.stat_result | None = os.lstat(entry)
        except FileNotFoundError:
            entry_stat = None
        except OSError as exc:
            return f"{directory} cannot be checked ({exc.strerror or exc})"
        problem = _directory_problem(
            directory, dir_stat, entry_stat, trusted if last else ROOT_ONLY, last
        )
        if problem is not None:
            return problem if last else (
                f"{problem}; {entry} is on the way, and a directory on the way must be "
                "root's alone"
            )
        if entry_stat is None:
            return None  # opening fails, or creates it where only trusted users write
        # A symlink on the way is followed (its target is walked too); one at the end
        # is not: opening refuses it (O_NOFOLLOW) and a rename replaces it.
        if stat.S_ISLNK(entry_stat.st_mode) and not last:
            links += 1
            if links > MAX_LINKS:
                return f"{entry}: too many levels of symbolic links"
            target = os.readlink(entry)
            pending[:0] = [part for part in target.split("/") if part]
            if target.startswith("/"):
                directory = "/"
            continue
        directory = entry
    return None


def _directory_problem(
    directory: str, dir_stat: os.stat_result, entry: os.stat_result | None,
    trusted: Trusted, last: bool,
) -> str | None:
    mode = dir_stat.st_mode
    if dir_stat.st_uid not in trusted.uids:
        return f"{directory} is owned by uid {dir_stat.st_uid}"
    others = ""
    if mode & stat.S_IWOTH:
        others = "every user"
    elif mode & stat.S_IWGRP and dir_stat.st_gid not in trusted.gids:
        others = f"group {dir_stat.st_gid}"
    if not others:
        return None
    # Sticky: nobody else may remove or rename a trusted entry. A missing one anybody
    # may create: as the file, it is then refused (O_NOFOLLOW, the rename, bind);
    # as a directory on the way, a symlink would be followed.
    if mode & stat.S_ISVTX and (
        entry.st_uid in trusted.uids if entry is not None else last
    ):
        return None
    what = "" if mode & stat.S_ISVTX else " (and it is not sticky)"
    return f"{directory} is writable by {others}{what}"


def check_path(setting: str, path: str, trusted: Trusted) -> None:
    """Refuse *path* (a ConfigError naming *setting*) if the process is privileged and
    another user could redirect it (see :func:`unsafe_reason`)."""
    if not is_privileged():
        return
    reason = unsafe_reason(path, trusted)
    if reason is not None:
        raise ConfigError(
            setting, path, f"a path other users cannot redirect: {reason}; put it in a "
            "directory only root and the service user can write, such as /run/engine or "
            "/var/log/engine (see docs/security.md)",
        )


def privileged_paths(settings: object) -> Iterator[tuple[str, str]]:
    """(setting, path) of every file a master opens or creates while privileged."""
    for name in ("pidfile", "log_file", "access_log"):
        value = getattr(settings, name, None)
        if value and value != "-":
            yield name, str(value)
    for name in ("bind", "status_bind"):
        value = getattr(settings, name, None)
        specs = [value] if isinstance(value, str) else list(value or ())
        for spec in specs:
            if isinstance(spec, str) and spec.startswith("unix:"):
                yield name, spec[len("unix:"):]


def check_paths(settings: object, uid: int | None, gid: int | None) -> None:
    """Refuse every privileged path of *settings* another user could redirect.

    *uid* and *gid* are the service account's (``user``/``group``), None without one.

    Raises:
        ConfigError: the first unsafe path, named by its setting.
    """
    trusted = Trusted.for_service(uid, gid)
    for setting, path in privileged_paths(settings):
        check_path(setting, path, trusted)


def open_append(path: str, mode: int = 0o640) -> int:
    """Open *path* for appending, creating it (*mode*) if needed; return the fd
    (blocking). A pipe with no reader is an error, not a wait.

    While privileged, a symlink at *path* is refused (``O_NOFOLLOW``), and so is a
    regular file with more than one link (a hard link to another file would make root
    write there) and anything but a file, a pipe or a character device. An
    unprivileged process may write only what its user may anyway, so ``/dev/stdout``
    and the like keep working there.

    Raises:
        OSError: cannot be opened, or (privileged) is not a plain file.
    """
    privileged = is_privileged()
    flags = _OPEN_APPEND if privileged else _OPEN_APPEND & ~os.O_NOFOLLOW
    try:
        # O_NONBLOCK: opening a pipe nobody reads would otherwise wait for a reader,
        # for ever, before the "serving" line (a FIFO planted at the path does that).
        fd = os.open(path, flags | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, SYMLINK_REFUSED, path) from None
        if exc.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "is a pipe that no process reads", path) from None
        raise
    os.set_blocking(fd, True)  # a log write waits for the reader rather than fail
    if not privileged:
        return fd
    try:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISCHR(info.st_mode)
                or stat.S_ISFIFO(info.st_mode)):  # /dev/null and pipes are fine
            raise OSError(errno.EINVAL, "not a regular file, a pipe or /dev/null", path)
        if stat.S_ISREG(info.st_mode) and info.st_nlink != 1:
            raise OSError(errno.EMLINK, OTHER_LINKS, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: str, limit: int = 4096) -> str | None:
    """The start of *path* as text, not following a symlink; None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def replace_contents(path: str, data: str, mode: int = 0o644) -> None:
    """Write *data* to *path* atomically: a fresh ``mkstemp`` file, renamed over it;
    its mode is *mode* less the umask, as for a file created by ``open``.

    The temporary file has an unpredictable name in *path*'s directory and is created
    with ``O_EXCL``, so nothing planted there is followed or overwritten.

    Raises:
        OSError: the file cannot be written.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            os.fchmod(file.fileno(), mode & ~_current_umask())
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would set it, for a
    moment, for every thread); 022 where /proc does not say."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def cannot_remove(path: str) -> str | None:
    """Why this (now unprivileged) process could not remove or rename *path* later.

    None when it can: it may write and search the directory, and, in a sticky one,
    owns the file or the directory. Call it after switching users.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable by uid {os.geteuid()}"
    with contextlib.suppress(OSError):
        dir_stat = os.stat(directory)
        if dir_stat.st_mode & stat.S_ISVTX and dir_stat.st_uid != os.geteuid():
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_uid != os.geteuid():
                    return f"{directory} is sticky and {path} is not owned by uid {os.geteuid()}"
    return None


def warn_left_behind(pidfile: str | None, socket_paths: list[str | None]) -> None:
    """Log, once at start, each file this (unprivileged) master cannot remove at exit.

    The pidfile's directory must also be writable for a SIGUSR2 upgrade to rename it
    to ``.oldbin``.
    """
    if pidfile:
        reason = cannot_remove(pidfile)
        if reason is not None:
            log.warning("the pidfile %s will stay behind at exit, and a SIGUSR2 upgrade "
                        "cannot rename it: %s (see docs/deployment.md)", pidfile, reason)
    for path in socket_paths:
        reason = cannot_remove(path) if path else None
        if reason is not None:
            log.warning("the socket file %s will stay behind at exit: %s "
                        "(see docs/deployment.md)", path, reason)
