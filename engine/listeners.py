"""Listening sockets: bound from the ``bind`` setting, or handed in by another process.

Two ways a socket is handed in, both through inherited file descriptors:

* **systemd socket activation**: ``LISTEN_PID`` is our pid and ``LISTEN_FDS=N`` says
  that descriptors 3 .. 3+N-1 are listening sockets (sd_listen_fds(3));
* **a SIGUSR2 upgrade**: the old master puts the numbers of its listening descriptors
  in ``ENGINE_LISTEN_FDS`` (comma-separated) before it re-executes itself.

Either way the variables are removed once read, so neither workers nor programs that
handlers start mistake them for their own, and each descriptor is taken exactly once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Sequence
from typing import Any

from engine.config import Settings
from engine.config.validators import parse_bind
from engine.errors import ConfigError

SYSTEMD_FIRST_FD = 3
UPGRADE_FDS_VARIABLE = "ENGINE_LISTEN_FDS"
_SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# Sockets handed in and not yet taken; None until the environment has been read.
_handed_in: list[socket.socket] | None = None


def handed_in_source() -> str | None:
    """Who is handing sockets in, judged from the environment (without taking them)."""
    if os.environ.get(UPGRADE_FDS_VARIABLE):
        return "the previous master (SIGUSR2 upgrade)"
    if os.environ.get("LISTEN_FDS") and os.environ.get("LISTEN_PID") == str(os.getpid()):
        return "systemd socket activation"
    return None


def _read_environment() -> list[int]:
    upgrade = os.environ.pop(UPGRADE_FDS_VARIABLE, "")
    systemd_pid = os.environ.get("LISTEN_PID", "")
    systemd_count = os.environ.get("LISTEN_FDS", "")
    for name in _SYSTEMD_VARIABLES:
        os.environ.pop(name, None)
    if upgrade:
        try:
            return [int(item) for item in upgrade.split(",")]
        except ValueError:
            raise ConfigError(
                UPGRADE_FDS_VARIABLE, upgrade, "comma-separated descriptor numbers"
            ) from None
    if systemd_count and systemd_pid == str(os.getpid()):
        try:
            count = int(systemd_count)
        except ValueError:
            raise ConfigError("LISTEN_FDS", systemd_count, "a number of sockets") from None
        if count > os.sysconf("SC_OPEN_MAX"):  # no process has that many descriptors
            raise ConfigError("LISTEN_FDS", systemd_count, "at most the open-file limit")
        return list(range(SYSTEMD_FIRST_FD, SYSTEMD_FIRST_FD + count))
    return []


def _adopt(fd: int) -> socket.socket:
    """Wrap one inherited descriptor, after checking it is a bound socket."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConfigError("LISTEN_FDS", fd, "descriptors that are sockets")
    except (OSError, OverflowError):  # OverflowError: beyond any descriptor
        raise ConfigError("LISTEN_FDS", fd, "open descriptors") from None
    sock = socket.socket(fileno=fd)  # family, type and protocol are read from the fd
    sock.set_inheritable(False)  # ours now: not for workers' exec'd children
    return sock


def handed_in() -> list[socket.socket]:
    """The sockets handed in and not yet taken (reads the environment the first time)."""
    global _handed_in
    if _handed_in is None:
        _handed_in = [_adopt(fd) for fd in _read_environment()]
    return _handed_in


def take_all() -> list[socket.socket]:
    """Take every socket handed in (empty when none were)."""
    sockets = handed_in()
    taken, sockets[:] = list(sockets), []
    return taken


def take(family: int, sock_type: int) -> socket.socket | None:
    """Take the first socket handed in of this family and type, if there is one."""
    sockets = handed_in()
    for sock in sockets:
        if sock.family == family and sock.type == sock_type:
            sockets.remove(sock)
            return sock
    return None


def is_listening(sock: socket.socket) -> bool:
    """A stream socket that accepts connections, or a bound datagram socket."""
    if sock.type == socket.SOCK_DGRAM:
        return True
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def open_listener(spec: str, settings: Settings) -> socket.socket:
    """Bind (and listen on) one ``bind`` address, with the deployment settings applied.

    Raises:
        OSError: the address cannot be bound.
    """
    family, address = parse_bind(spec)
    sock_type = socket.SOCK_DGRAM if settings.udp else socket.SOCK_STREAM
    sock = socket.socket(family, sock_type)
    try:
        if family == socket.AF_UNIX:
            remove_stale_socket(address, sock_type)
        else:
            if not settings.udp:
                # Restart without waiting out TIME_WAIT. Not for UDP: there it would let
                # a second server bind the port and silently take datagrams.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if settings.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_UNIX and settings.socket_mode is not None:
            _bind_with_mode(sock, address, settings.socket_mode)
        else:
            sock.bind(address)
        if not settings.udp:
            sock.listen(settings.request_queue_size)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_with_mode(sock: socket.socket, path: str, mode: int) -> None:
    """Bind a Unix socket whose file gets *mode* from its creation.

    bind() gives the file the socket inode's mode minus the umask: set both, rather
    than chmod the path afterwards, which would follow a symlink swapped in meanwhile.
    """
    os.fchmod(sock.fileno(), mode)
    previous = os.umask(0)
    try:
        sock.bind(path)
    finally:
        os.umask(previous)


def remove_stale_socket(path: str, sock_type: int) -> None:
    """Remove a Unix socket file nobody listens on; leave a live one to bind().

    Raises:
        FileExistsError: the path is something else (a file, a directory), which
            bind() would only call "address already in use".
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(
                errno.EEXIST, "exists and is not a socket (only a stale socket file is "
                "replaced)", path,
            )
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, sock_type) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # stale: left behind by a server that is gone
        except OSError:
            pass
        # Connected: a live server owns it; bind() fails with "address in use".


def unix_path(sock: socket.socket) -> str | None:
    """The file of a Unix socket bound to a path (None for others and abstract ones)."""
    if sock.family != socket.AF_UNIX:
        return None
    with contextlib.suppress(OSError):
        name: Any = sock.getsockname()
        if isinstance(name, str) and name and not name.startswith("\0"):
            return name
    return None


def discard(socks: Sequence[socket.socket]) -> None:
    """Close listeners this process has just bound and remove their socket files: a
    start that fails at a later address leaves nothing behind.

    Only for sockets bound here, never for ones handed in (systemd, an upgrade), whose
    files are their owner's.
    """
    for sock in socks:
        path = unix_path(sock)
        sock.close()
        if path:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
