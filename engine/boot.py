"""The master's start-up, before its first fork and before it says it is serving.

Every step here that can fail for a setting raises :class:`~engine.errors.ConfigError`
naming it, before the master's "serving" line: the status endpoint's address, the
pidfile, the switch to an unprivileged account, and ``ksm``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from engine import ksm, listeners, logs, pidfile, privileges, safefiles, sdnotify, upgrade
from engine.config import Settings
from engine.errors import ConfigError
from engine.handover import Handover
from engine.proctitle import format_address
from engine.status import Snapshot, StatusServer

log = logging.getLogger("engine.master")


def open_status(settings: Settings, snapshot: Callable[[], Snapshot]) -> StatusServer | None:
    """Check the files start-up creates, then open the status endpoint (or adopt the one a
    previous master handed over): the first thing a master does.

    A server run from Python gets the engine log its ``log_file`` / ``log_level`` ask
    for here (``engine serve`` has set it up already).

    Raises:
        ConfigError: a pidfile, log or socket path another user could redirect (while
            root); ``log_file`` cannot be opened; ``status_bind`` is malformed or its
            address cannot be listened on.
    """
    account = privileges.resolve(settings.user, settings.group) if settings.user else None
    safefiles.check_paths(settings, *((account.uid, account.gid) if account else (None, None)))
    try:
        logs.set_up_from_settings(settings)  # a server run from Python: its class's
    except OSError as exc:
        raise ConfigError(
            "log_file", settings.log_file,
            f"a file that can be opened for appending ({exc.strerror or exc})",
        ) from None
    handed_in = upgrade.handed_in_status_socket()
    if settings.status_bind is None:
        if handed_in is not None:
            handed_in.close()  # the new config has no status endpoint
        return None
    try:
        status = StatusServer(settings.status_bind, snapshot, handed_in)
    except OSError as exc:
        raise ConfigError(
            "status_bind", settings.status_bind,
            f"an address free to listen on ({exc.strerror or exc})",
        ) from None
    log.info("status on %s", format_address(status.address))
    return status


def settle_in(settings: Settings, sockets: Sequence[Any], status: StatusServer | None) -> None:
    """Mark the memory mergeable if ``ksm`` asks for it (the workers inherit that: see
    :mod:`engine.ksm`), write the pidfile, then give up root (the sockets are bound by now).

    Raises:
        ConfigError: ``ksm`` is on and the kernel cannot do it, the pidfile cannot be
            written, or the account does not exist.
    """
    ksm.apply(settings.ksm)
    if settings.pidfile:
        pidfile.write(settings.pidfile, os.getpid())
    if not settings.user:
        return
    account = privileges.resolve(settings.user, settings.group)
    paths = [listeners.unix_path(sock) for sock in sockets]
    if status is not None and isinstance(status.address, str):
        paths.append(status.address)
    for path in paths:
        if path:
            privileges.give_to(path, account)
    privileges.switch_to(account)
    log.info("running as user %s (uid %d, gid %d)", account.name, account.uid, account.gid)
    safefiles.warn_left_behind(settings.pidfile, paths)  # what this user cannot remove


def release(settings: Settings, status: StatusServer | None, handover: Handover) -> None:
    """On the way out: tell systemd, leave or close the status endpoint, drop the pidfile
    and the socket files taken over in an upgrade."""
    sdnotify.notify("STOPPING=1")
    handover.release_files()
    if status is not None:
        if handover.handed_off:
            status.hand_off()  # its file is the successor's now
        status.close()
    if settings.pidfile:
        pidfile.remove_if_ours(settings.pidfile, os.getpid())
