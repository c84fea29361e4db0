"""Switching to an unprivileged user and group once the listening sockets are bound."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass

from engine.errors import ConfigError
from workers.prctl import PR_SET_DUMPABLE, prctl


@dataclass(frozen=True)
class Account:
    """The user and group to switch to."""

    name: str
    uid: int
    gid: int

    def is_current(self) -> bool:
        """This process is the account already: real, effective and saved uid and gid
        all its, and no supplementary group the account is not a member of."""
        return (
            set(os.getresuid()) == {self.uid}
            and set(os.getresgid()) == {self.gid}
            and not self.foreign_groups()
        )

    def foreign_groups(self) -> list[int]:
        """The process's supplementary groups that are not the account's."""
        own = {self.gid} | {
            group.gr_gid for group in grp.getgrall() if self.name in group.gr_mem
        }
        return sorted(set(os.getgroups()) - own)


def resolve(user: str, group: str | None) -> Account:
    """Look *user* (and *group*) up; default group: the user's primary one.

    Raises:
        ConfigError: no such user or group (named by its setting).
    """
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        if not user.isdigit():
            raise ConfigError("user", user, "an existing user name or a uid") from None
        # A bare uid with no passwd entry is fine (containers): its gid must be given.
        if group is None:
            raise ConfigError(
                "user", user, "a user in the passwd database, or give group too"
            ) from None
        return Account(user, int(user), _resolve_group(group))
    gid = entry.pw_gid if group is None else _resolve_group(group)
    return Account(entry.pw_name, entry.pw_uid, gid)


def _resolve_group(group: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except (KeyError, OverflowError):
        if group.isdigit():
            return int(group)
        raise ConfigError("group", group, "an existing group name or a gid") from None


def switch_to(account: Account) -> None:
    """Become *account* for good (real, effective and saved ids; groups reset), and
    keep the process's memory from the account's other processes.

    Raises:
        ConfigError: not root, and not already running as *account* in every id.
    """
    if account.is_current():
        keep_memory_private()
        return
    check_can_switch(account)
    # Supplementary groups first, while still root; then gid before uid (after
    # setuid we could no longer change the group). setres*id sets all three ids, also
    # when only some of them were root's (a process started with a real uid already
    # the account's).
    try:
        os.initgroups(account.name, account.gid)
    except (OSError, KeyError):
        os.setgroups([account.gid])
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    keep_memory_private()


def check_can_switch(account: Account) -> None:
    """Refuse, before anything starts, an *account* this process could not become.

    Raises:
        ConfigError: not root, and not already running as *account* in every id.
    """
    if account.is_current() or os.geteuid() == 0:
        return
    extra = account.foreign_groups()
    why = (
        f"running as uid {os.getuid()}" if set(os.getresuid()) != {account.uid}
        or set(os.getresgid()) != {account.gid}
        else f"running in groups {', '.join(map(str, extra))}, which only root can leave"
    )
    raise ConfigError(
        "user", account.name, f"the current user, or run as root to switch ({why})",
    )


def keep_memory_private() -> None:
    """Make this process non-dumpable: no process of its user may ptrace it or read
    its /proc/PID/mem, environ, smaps or fd (the TLS private key is in its memory);
    forked workers inherit it.

    Changing ids does this already, but ``execve`` undoes it for a process that
    starts as the service user, such as the new master of a SIGUSR2 upgrade: so it is
    set explicitly, before the TLS key is read. The master still reads its workers'
    statm and stat (RSS, CPU), which stay world-readable; USS and open fds, which
    need smaps and fd, are reported as unknown (see engine.health).
    """
    try:
        prctl(PR_SET_DUMPABLE, 0)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:  # not Linux: no /proc to protect
            raise


def give_to(path: str, account: Account) -> None:
    """Make a socket file the master created the account's, so it can remove it.

    The file is opened (``O_PATH``, not following a symlink) and changed through that
    descriptor, only if it is a socket with one link: the service user can write its
    directory, and a hard link put in its place by path would give it that file.
    """
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if stat.S_ISSOCK(info.st_mode) and info.st_nlink == 1:
                os.chown(f"/proc/self/fd/{fd}", account.uid, account.gid)
        finally:
            os.close(fd)
