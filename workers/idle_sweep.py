"""client_timeout for the gevent worker's TCP connections, by a periodic sweep.

A socket timeout on a gevent socket costs a timer started and stopped around every wait
(about 20 µs and half a KiB per waiting connection, measured with 4,096 keep-alive
clients). With thousands of mostly idle connections the worker instead leaves its TCP
sockets without a timeout and, every :func:`sweep_interval` (a quarter of the
timeout), looks at each one:

* is a greenlet waiting on it (its read or write watcher is active)?
* how many bytes has the kernel received on it, and had acknowledged by the peer
  (``TCP_INFO``'s ``tcpi_bytes_received`` and ``tcpi_bytes_acked``)?

A connection seen waiting at consecutive sweeps with no byte moving either way for
``client_timeout`` seconds gets ``TimeoutError("timed out")`` raised where it waits,
as a socket timeout would. It fires between ``client_timeout`` and ``client_timeout``
plus one interval after the wait began. A handler that set its own timeout
(``StreamRequestHandler.timeout``) is left to it.

:class:`IdleSweep` is the decision alone (plain data and a given clock); the worker
supplies the probe and does the raising.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

# struct tcp_info (linux/tcp.h): the two u64 byte counters, present since Linux 4.2.
TCP_INFO_BYTES_ACKED = 120
TCP_INFO_BYTES_RECEIVED = 128
TCP_INFO_SIZE = 136
_COUNTERS = struct.Struct("=QQ")

Counters = tuple[int, int]
# A probe: (is a greenlet waiting on the connection, its byte counters) or None when
# the connection is not ours to judge (closed, or the handler set its own timeout).
Probe = Callable[[Hashable], "tuple[bool, Counters] | None"]


def sweep_interval(timeout: float) -> float:
    """Seconds between two sweeps for *timeout*: a quarter of it, within [0.05, 10]
    (the 30 s default: every 7.5 s; a probe costs about a quarter of a line's echo)."""
    return min(max(timeout / 4, 0.05), 10.0)


def tcp_counters(sock: socket.socket) -> Counters:
    """(bytes acknowledged by the peer, bytes received) of a TCP socket."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    if len(info) < TCP_INFO_SIZE:  # a kernel older than 4.2: any call moves nothing
        return (0, 0)
    acked, received = _COUNTERS.unpack_from(info, TCP_INFO_BYTES_ACKED)
    return acked, received


@dataclass(slots=True)  # one per connection: 10,000 of them in a worker
class _Seen:
    owner: Any  # what the caller acts on when it times out (its greenlet)
    counters: Counters | None = None  # at the last sweep that saw it waiting
    since: float | None = None  # when it was first seen waiting with these counters


class IdleSweep:
    """Which connections have waited on their client for *timeout* with no byte moving."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._seen: dict[Hashable, _Seen] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, conn: Hashable, owner: Any = None) -> None:
        """Start watching *conn* (a connection the handler is about to get); *owner*
        (default: *conn*) is what :meth:`judge` returns when it times out."""
        self._seen[conn] = _Seen(conn if owner is None else owner)

    def discard(self, conn: Hashable) -> None:
        """Stop watching *conn* (its greenlet ended)."""
        self._seen.pop(conn, None)

    def sweep(self, now: float, probe: Probe) -> list[Hashable]:
        """The connections that timed out at *now*, all judged at once."""
        return [conn for conn in self.watched()
                if self.judge(conn, now, probe(conn)) is not None]

    def watched(self) -> list[Hashable]:
        """The connections watched now (a copy: a worker judges them a few at a time,
        yielding between, while connections come and go)."""
        return list(self._seen)

    def judge(self, conn: Hashable, now: float, state: tuple[bool, Counters] | None) -> Any:
        """The owner of *conn* if it (in *state* at *now*) timed out, else None. A
        connection that timed out is no longer watched."""
        seen = self._seen.get(conn)
        if seen is None:
            return None  # gone since watched() was taken
        if state is None or not state[0]:
            seen.since = seen.counters = None  # not waiting on its client now
            return None
        counters = state[1]
        if seen.since is None or counters != seen.counters:
            seen.since, seen.counters = now, counters  # a wait begins (or data moved)
            return None
        if now - seen.since < self.timeout:
            return None
        del self._seen[conn]
        return seen.owner
