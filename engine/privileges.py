"""Switching to an unprivileged user and group once the listening sockets are bound."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from dataclasses import dataclass

from engine.errors import ConfigError


@dataclass(frozen=True)
class Account:
    """The user and group to switch to."""

    name: str
    uid: int
    gid: int

    def is_current(self) -> bool:
        return os.getuid() == self.uid and os.getgid() == self.gid


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
    """Become *account* for good (real, effective and saved ids; groups reset).

    Raises:
        ConfigError: not root, and not already running as *account*.
    """
    if account.is_current():
        return
    if os.geteuid() != 0:
        raise ConfigError(
            "user", account.name,
            f"the current user, or run as root to switch (running as uid {os.getuid()})",
        )
    # Supplementary groups first, while still root; then gid before uid (after
    # setuid we could no longer change the group).
    try:
        os.initgroups(account.name, account.gid)
    except (OSError, KeyError):
        os.setgroups([account.gid])
    os.setgid(account.gid)
    os.setuid(account.uid)
    # Changing ids has made the process non-dumpable, and it stays so: no process of
    # the service user may ptrace it or read its /proc/PID/mem, environ, smaps or fd
    # (the TLS private key is in its memory). The master still reads its workers'
    # statm and stat (RSS, CPU), which stay world-readable; USS and open fds, which
    # need smaps and fd, are reported as unknown (see engine.health).


def give_to(path: str, account: Account) -> None:
    """Make a file the master created (a Unix socket) the account's, so it can remove it."""
    with contextlib.suppress(OSError):
        os.chown(path, account.uid, account.gid, follow_symlinks=False)
