"""Capacity: connections waiting in the listeners' accept queues, and a full pool.

PHP-FPM's status page has "listen queue", "max listen queue", "listen queue len" and
"max children reached"; this module gives the engine the same figures, for every
worker class, and the master's warning when clients wait because the pool is full.

Three parts:

* :func:`accept_queue` reads, from the kernel, how many connections wait in a
  listening socket's accept queue and the queue's limit (the backlog). On Linux a
  listening TCP socket reports both through ``getsockopt(TCP_INFO)``
  (``tcpi_unacked`` is the queue length, ``tcpi_sacked`` the backlog); a listening
  Unix stream socket reports them through ``sock_diag`` netlink (``UNIX_DIAG_RQLEN``:
  what ``ss -x -l`` prints as Recv-Q and Send-Q). Where neither works (another OS,
  a datagram socket, ``unix_diag`` not in the kernel) both are ``None``.
* :class:`CapacityMonitor` is pure state: fed plain data (:class:`ListenerSample`,
  :class:`PoolLoad`) and a clock reading, it keeps the counters and decides when a
  warning is due (at most one per ``warn_interval``, with a count of the ones held
  back). Tested without forking.
* :func:`observe_pool` is the glue the master calls once per loop turn with the
  tick's scoreboard records and its listeners: it feeds the monitor and logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.config import Settings, connection_slots
from engine.proctitle import format_address
from workers.protocol import WorkerState

log = logging.getLogger("engine.master")

# Seconds between two "clients wait" warnings; the ones in between are counted.
WARN_INTERVAL = 60.0

# struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked.
_TCP_INFO_SIZE = 104
# sock_diag netlink (linux/sock_diag.h, linux/unix_diag.h).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_TCP_LISTEN = 10
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_RQLEN = 4
_NLMSG_HEADER = struct.Struct("<IHHII")  # len, type, flags, seq, pid
_UNIX_DIAG_REQ = struct.Struct("<BBHIIIII")  # family, protocol, pad, states, ino, show, cookie
_UNIX_DIAG_MSG_SIZE = 16
_NLATTR = struct.Struct("<HH")  # len, type
_RQLEN = struct.Struct("<II")  # rqueue, wqueue
_NO_COOKIE = 0xFFFFFFFF


# --- reading the kernel's accept queue ---


@dataclass(frozen=True)
class QueueReading:
    """A listening socket's accept queue: connections waiting, and its limit.

    Both are ``None`` where the system does not say (see the module docstring).
    """

    queued: int | None
    backlog: int | None


UNKNOWN = QueueReading(None, None)


def accept_queue(sock: socket.socket) -> QueueReading:
    """How many connections wait in *sock*'s accept queue, and its backlog.

    *sock* must be listening. Never raises: an unsupported socket or a refused
    query gives :data:`UNKNOWN`.
    """
    if not sys.platform.startswith("linux"):
        return UNKNOWN
    try:
        family, kind = sock.family, sock.type
    except OSError:
        return UNKNOWN
    if kind != socket.SOCK_STREAM:
        return UNKNOWN
    if family in (socket.AF_INET, socket.AF_INET6):
        return _tcp_queue(sock)
    if family == socket.AF_UNIX:
        return _unix_queue(sock)
    return UNKNOWN


def _tcp_queue(sock: socket.socket) -> QueueReading:
    # For a socket in LISTEN, Linux puts the accept queue's length in tcpi_unacked
    # and its limit (the backlog given to listen(), capped by somaxconn) in
    # tcpi_sacked: offsets 24 and 28 of struct tcp_info.
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return UNKNOWN
    if len(info) < 32 or info[0] != _TCP_LISTEN:  # tcpi_state
        return UNKNOWN
    queued, backlog = struct.unpack_from("<II", info, 24)
    return QueueReading(queued, backlog)


_unix_diag_missing = False  # the kernel said no once: do not ask on every loop turn


def _unix_queue(sock: socket.socket) -> QueueReading:
    # One exact-match sock_diag query by inode: for a listening Unix socket the
    # kernel answers UNIX_DIAG_RQLEN with the accept queue's length and its limit.
    global _unix_diag_missing
    if _unix_diag_missing:
        return UNKNOWN
    try:
        inode = os.fstat(sock.fileno()).st_ino
        request = _UNIX_DIAG_REQ.pack(
            socket.AF_UNIX, 0, 0, 1 << _TCP_LISTEN, inode, _UDIAG_SHOW_RQLEN,
            _NO_COOKIE, _NO_COOKIE,
        )
        header = _NLMSG_HEADER.pack(
            _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0
        )
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(0.1)  # the kernel answers at once; never stall the master
            nl.sendto(header + request, (0, 0))
            reply = nl.recv(8192)
    except OSError:
        _unix_diag_missing = True
        return UNKNOWN
    return _parse_unix_diag(reply)


def _parse_unix_diag(reply: bytes) -> QueueReading:
    if len(reply) < _NLMSG_HEADER.size:
        return UNKNOWN
    length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(reply)
    if kind != _SOCK_DIAG_BY_FAMILY:
        return UNKNOWN  # NLMSG_ERROR: no such socket, or unix_diag not in the kernel
    offset = _NLMSG_HEADER.size + _UNIX_DIAG_MSG_SIZE
    end = min(length, len(reply))
    while offset + _NLATTR.size <= end:
        attr_len, attr_type = _NLATTR.unpack_from(reply, offset)
        if attr_len < _NLATTR.size:
            break
        if attr_type == _UNIX_DIAG_RQLEN and attr_len >= _NLATTR.size + _RQLEN.size:
            queued, backlog = _RQLEN.unpack_from(reply, offset + _NLATTR.size)
            return QueueReading(queued, backlog)
        offset += (attr_len + 3) & ~3  # attributes are 4-byte aligned
    return UNKNOWN


def is_readable(sock: socket.socket) -> bool:
    """Whether a connection (or datagram) is waiting on *sock* right now."""
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


# --- plain data and the pure monitor ---


@dataclass(frozen=True)
class ListenerSample:
    """One listener at one instant: its name and accept queue.

    *waiting* says whether something waits; it is what counts when the queue length
    is unknown (a datagram socket, a system that does not report it).
    """

    name: str
    queued: int | None
    backlog: int | None
    waiting: bool


@dataclass(frozen=True)
class PoolLoad:
    """What the pool can still take: its workers, their limit, and free slots.

    *workers* counts live worker processes, draining ones included (they count
    against ``max_children`` too); *limit* is the most the pool policy runs by itself
    (``workers`` in a static pool, ``max_children`` otherwise); *free_slots* counts
    connections the serving workers could still take (a starting worker counts as
    free: it takes connections in a moment).
    """

    workers: int
    limit: int
    free_slots: int

    @property
    def full(self) -> bool:
        """Every slot of every serving worker is busy and the pool will not grow."""
        return self.workers >= self.limit and self.free_slots <= 0


def pool_load(
    workers: Iterable[tuple[WorkerState, int, bool]], slots_per_worker: int, limit: int
) -> PoolLoad:
    """A :class:`PoolLoad` from ``(state, active connections, draining)`` per worker."""
    live = free = 0
    for state, active, draining in workers:
        if state == WorkerState.EMPTY:
            continue
        live += 1
        if draining or state == WorkerState.DRAINING:
            continue  # finishing its connections: takes no new one
        if state == WorkerState.BUSY:
            free += max(slots_per_worker - active, 0)
        else:  # idle, or starting
            free += slots_per_worker
    return PoolLoad(live, limit, free)


@dataclass
class ListenerCounters:
    """What the monitor keeps per listener (``None``: the system does not say)."""

    name: str
    queued: int | None = None
    max_queued: int | None = None
    backlog: int | None = None


class CapacityMonitor:
    """Counters for the status page and the decision to warn; pure, no I/O.

    Call :meth:`observe` regularly (the master: once per loop turn). It counts
    *max children reached* once each time the pool becomes full (as PHP-FPM does:
    one per episode, not per observation), keeps the current and largest accept
    queue of every listener, and returns a warning when clients wait on a full pool,
    at most once per *warn_interval* seconds; waiting episodes in between are counted
    and reported by the next warning.
    """

    def __init__(self, warn_interval: float = WARN_INTERVAL) -> None:
        self.warn_interval = warn_interval
        self.listeners: dict[str, ListenerCounters] = {}
        self.max_children_reached = 0
        self.pool_full = False
        self.clients_waiting = False
        self.warnings = 0
        self.suppressed = 0  # waiting episodes since the last warning, not warned about
        self._next_warning = float("-inf")

    def observe(
        self, now: float, listeners: Sequence[ListenerSample], load: PoolLoad, advice: str
    ) -> str | None:
        """Record one observation; return the warning to log, if one is due.

        *advice* names the setting to raise (see :func:`advice`).
        """
        for sample in listeners:
            counters = self.listeners.setdefault(sample.name, ListenerCounters(sample.name))
            counters.queued, counters.backlog = sample.queued, sample.backlog
            if sample.queued is not None:
                counters.max_queued = max(counters.max_queued or 0, sample.queued)
        full = load.full
        if full and not self.pool_full:
            self.max_children_reached += 1
        self.pool_full = full
        waiting = full and any(
            (s.queued > 0) if s.queued is not None else s.waiting for s in listeners
        )
        new_episode = waiting and not self.clients_waiting
        self.clients_waiting = waiting
        if not waiting:
            return None
        if now < self._next_warning:
            if new_episode:
                self.suppressed += 1
            return None
        self._next_warning = now + self.warn_interval
        held_back, self.suppressed = self.suppressed, 0
        self.warnings += 1
        return _warning(listeners, load, advice, held_back, self.warn_interval)

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data for the status document."""
        return {
            "max_children_reached": self.max_children_reached,
            "pool_full": self.pool_full,
            "clients_waiting": self.clients_waiting,
            "listeners": [
                {"address": c.name, "queued": c.queued, "max_queued": c.max_queued,
                 "backlog": c.backlog}
                for c in self.listeners.values()
            ],
        }


def _warning(
    listeners: Sequence[ListenerSample], load: PoolLoad, advice: str, held_back: int,
    interval: float,
) -> str:
    waits = []
    for sample in listeners:
        if sample.queued:
            backlog = f" (backlog {sample.backlog})" if sample.backlog is not None else ""
            waits.append(f"{sample.queued} waiting on {sample.name}{backlog}")
        elif sample.queued is None and sample.waiting:
            waits.append(f"clients waiting on {sample.name}")
    text = (
        f"pool full: {load.workers} worker{'s' if load.workers != 1 else ''} (the limit) "
        "and no free connection slot; "
        f"{', '.join(waits)}; clients wait until a slot frees up. {advice}"
    )
    if held_back:
        text += f" ({held_back} more such episodes in the last {interval:g}s not logged)"
    return text


def advice(
    pool_mode: str, workers: int, max_children: int, threads: int,
    worker_class: str = "sync", worker_connections: int | None = None,
) -> str:
    """The sentence naming the setting to raise for this configuration."""
    if pool_mode == "static":
        processes = f"raise workers (now {workers}, static pool)"
    else:
        processes = f"raise max_children (now {max_children})"
    if worker_class == "gevent":
        return (f"To serve more at once: raise worker_connections (now "
                f"{worker_connections}) or {processes}.")
    if threads > 1:
        return (f"To serve more at once: raise threads (now {threads}) or {processes}; "
                "for many mostly idle connections, --worker-class gevent.")
    return (f"To serve more at once: {processes}, or set threads for handlers that wait "
            "on I/O; for many mostly idle connections, --worker-class gevent.")


# --- the master's side ---


def sample_listener(sock: socket.socket) -> ListenerSample:
    """Read one listener of the master (its accept queue, and readability if unknown)."""
    reading = accept_queue(sock)
    name = "?"
    with contextlib.suppress(OSError):
        name = format_address(sock.getsockname())
    waiting = bool(reading.queued) if reading.queued is not None else is_readable(sock)
    return ListenerSample(name, reading.queued, reading.backlog, waiting)


def observe_pool(
    monitor: CapacityMonitor,
    settings: Settings,
    target: int,
    workers: Iterable[tuple[WorkerState, int, bool]],
    listeners: Iterable[socket.socket],
    now: float,
) -> None:
    """Feed one tick's workers and listeners to *monitor*; log its warning, if one is due.

    *workers* is ``(state, active connections, draining)`` per live worker, from the
    tick's one scoreboard read. Costs one ``getsockopt`` (or one netlink query for a
    Unix socket) per listener.
    """
    limit = target if settings.pool_mode == "static" else settings.max_children
    warning = monitor.observe(
        now, [sample_listener(sock) for sock in listeners],
        pool_load(workers, connection_slots(settings), limit),
        advice(settings.pool_mode, target, settings.max_children, settings.threads,
               settings.worker_class, settings.worker_connections),
    )
    if warning is not None:
        log.warning("%s", warning)
