"""The SIGUSR2 hand-over between an old and a new master, from each side.

The process part (fork and exec, sockets in the environment) is :mod:`engine.upgrade`;
this module keeps the states and the pidfile right through every outcome:

* old side: ``SERVING`` → (SIGUSR2) ``SUCCESSOR_STARTED``: ``PATH`` is set aside as
  ``PATH.oldbin`` and the child execs the new master. If that child dies, at any
  moment, the old master reaps it, puts the pidfile back to its own pid (removing a
  ``PATH`` the dead successor had written) and goes on serving (``SERVING``).
* new side: ``REPLACING`` (started with ``ENGINE_UPGRADE_FROM``) → once its first
  workers serve, it tells systemd its pid, SIGTERMs the old master and ``SERVING``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import socket
from collections.abc import Sequence

from engine import listeners, pidfile, sdnotify, upgrade
from engine.errors import ConfigError
from engine.exits import describe_exit
from engine.status import StatusServer
from workers.prctl import PR_SET_PDEATHSIG, prctl

log = logging.getLogger("engine.master")


class HandoverState(enum.Enum):
    SERVING = "serving"  # no upgrade under way
    REPLACING = "replacing"  # we are the new master: the old one still runs
    SUCCESSOR_STARTED = "successor started"  # we are the old master: our child takes over


class Handover:
    """One master's side of the upgrade, and its first-boot readiness (sd_notify)."""

    def __init__(
        self, old_master: int | None, pidfile_path: str | None,
        sockets: Sequence[socket.socket] = (),
    ) -> None:
        self.old_master = old_master  # the master we replace (started by SIGUSR2)
        self.new_master: int | None = None  # our successor, during an upgrade
        self.pidfile = pidfile_path
        self.ready = False  # our first workers serve
        self.took_over = False  # we stopped the master we replace
        # The Unix socket files the old master created: ours once we take over.
        self.adopted_files = _socket_files(sockets) if old_master is not None else {}
        if old_master is not None and old_master == os.getppid():
            # Its exit wakes our loop (SIGCHLD re-checks everything): a process limit
            # that kept us from forking may just have eased (see reap).
            with contextlib.suppress(OSError):
                prctl(PR_SET_PDEATHSIG, signal.SIGCHLD)

    @property
    def state(self) -> HandoverState:
        if self.new_master is not None:
            return HandoverState.SUCCESSOR_STARTED
        if self.old_master is not None:
            return HandoverState.REPLACING
        return HandoverState.SERVING

    @property
    def handed_off(self) -> bool:
        """A successor serves on our sockets: they and their files are its."""
        return self.new_master is not None

    def refusal(self) -> str | None:
        """Why a SIGUSR2 must be refused now, or None."""
        if self.new_master is not None:
            return f"upgrade already under way (new master pid {self.new_master})"
        if self.old_master is not None:
            return f"upgrade refused: still replacing the old master {self.old_master}"
        return None

    def start(
        self, listeners: Sequence[socket.socket], status: StatusServer | None,
        blocked: Sequence[int],
    ) -> None:
        """SIGUSR2: fork and exec the new master on our sockets (signals *blocked*).

        Refused (logged) while another upgrade is under way, from either side.
        """
        refusal = self.refusal()
        if refusal is not None:
            log.warning("%s", refusal)
            return
        moved = bool(self.pidfile) and pidfile.set_aside(str(self.pidfile), os.getpid())
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.new_master = upgrade.start_new_master(
                listeners, status.listener if status is not None else None
            )
        except OSError as exc:
            log.error("upgrade failed: cannot fork: %s", exc)
            if moved:
                pidfile.restore(str(self.pidfile), os.getpid())
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("upgrade: started new master pid %d: %s", self.new_master,
                 " ".join(upgrade.command_line()))

    def check_ready(self, booted: int, target: int, status: StatusServer | None = None) -> bool:
        """Once *booted* workers reach *target*: READY=1, and stop the master we replace.

        Returns True when this call stopped an old master; the *status* endpoint's file
        is then claimed (the old master leaves it to us).
        """
        if self.ready or booted < target:
            return False
        self.ready = True
        if self.old_master is None:
            sdnotify.notify("READY=1", f"MAINPID={os.getpid()}")
            return False
        sdnotify.notify(f"MAINPID={os.getpid()}", "READY=1")
        self._stop_old_master(booted)
        self._take_over(status)
        return True

    def reap(self, status: StatusServer | None = None) -> bool:
        """The other master of an upgrade exited: our successor died (we keep serving)
        or our predecessor is gone (we take over). True if either did: the process
        slots it held are free, and a fork that failed for want of them may be retried.
        """
        successor_died = self.reap_successor()
        return self.predecessor_exited(status) or successor_died

    def predecessor_exited(self, status: StatusServer | None = None) -> bool:
        """Has the master we replace exited before our workers were ready (stopped by
        the operator, killed)? Then we take over; True once, at that moment."""
        if self.ready or self.old_master is None or os.getppid() == self.old_master:
            return False
        log.warning("upgrade: the old master %d exited before our workers were ready; "
                    "taking over", self.old_master)
        self._take_over(status)
        return True

    def _take_over(self, status: StatusServer | None) -> None:
        """The old master is gone or going: its socket files and the *status* endpoint's
        are ours now."""
        self.old_master = None
        self.took_over = True
        if status is not None:
            status.claim()

    def _stop_old_master(self, booted: int) -> None:
        """SIGTERM the master we replace, if it is still there: still our parent.

        Its pid alone is not enough: once it has exited (stopped by hand, killed), the
        pid may be another process's, of any user, and a failed kill must not stop us.
        While it is our parent, it is alive or a zombie of ours, and the pid is its.
        """
        assert self.old_master is not None
        if os.getppid() != self.old_master:
            log.warning("upgrade: %d workers serve; the old master %d is gone already",
                        booted, self.old_master)
            return
        log.info("upgrade: %d workers serve; stopping the old master %d", booted,
                 self.old_master)
        try:
            os.kill(self.old_master, signal.SIGTERM)
        except OSError as exc:  # exited meanwhile
            log.warning("upgrade: cannot stop the old master %d: %s", self.old_master, exc)

    def release_files(self) -> None:
        """On the way out: remove the socket files we took over, unless handed on again.

        The master that created them left them to us; a failed new master (never took
        over) leaves them to the old one, which still serves on them.
        """
        if not self.took_over or self.handed_off:
            return
        for path, inode in self.adopted_files.items():
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:  # not replaced by another server since
                    os.unlink(path)

    def reap_successor(self) -> bool:
        """Our successor died (at any moment of its start): keep serving, fix the pidfile.
        True if it did."""
        if self.new_master is None:
            return False
        try:
            pid, status = os.waitpid(self.new_master, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.new_master, 0
        if not pid:
            return False
        dead, self.new_master = self.new_master, None
        log.error("upgrade failed: new master %d %s; still serving", dead, describe_exit(status))
        if self.pidfile:
            restore_pidfile(str(self.pidfile), os.getpid(), dead)
        return True


def _socket_files(sockets: Sequence[socket.socket]) -> dict[str, int]:
    """The filesystem Unix sockets among *sockets*: path -> inode of the file now."""
    files = {}
    for sock in sockets:
        path = listeners.unix_path(sock)
        if path:
            with contextlib.suppress(OSError):
                files[path] = os.stat(path).st_ino
    return files


def restore_pidfile(path: str, pid: int, dead_successor: int) -> None:
    """Make *path* hold *pid* again after the successor *dead_successor* died.

    The successor may have died before writing *path* (then ``PATH.oldbin`` goes back)
    or after (then its stale pid is replaced). A *path* naming anyone else is left alone.
    """
    if pidfile.read(path) == dead_successor:
        with contextlib.suppress(OSError):
            os.unlink(path)
    pidfile.restore(path, pid)
    if pidfile.read(path) == pid:
        return
    try:  # no .oldbin to put back (it was removed, or never set aside): write it anew
        pidfile.write(path, pid)
    except ConfigError as exc:
        log.error("pidfile %s could not be restored to pid %d: %s", path, pid, exc)
