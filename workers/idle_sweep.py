"""client_timeout for the gevent worker's TCP connections, by a periodic sweep.

A socket timeout on a gevent socket costs a timer started and stopped around every wait
(about 20 µs and half a KiB per waiting connection, measured with 4,096 keep-alive
clients). With thousands of mostly idle connections the worker instead leaves its TCP
sockets without a timeout and, every :func:`sweep_interval` (a quarter of the
timeout), looks at each one:

* is a greenlet waiting on it now (its read or write watcher is active)?
* has any wait on it ended since the last look? The worker's sockets add themselves to
  :attr:`IdleSweep.woke` each time a wait ends (data came, or room to send).

A connection seen waiting at consecutive sweeps, in one wait that never ended, for
``client_timeout`` seconds gets ``TimeoutError("timed out")`` raised where it waits,
as a socket timeout would. It fires between ``client_timeout`` and ``client_timeout``
plus one interval after the wait began. A handler that set its own timeout
(``StreamRequestHandler.timeout``) is left to it.

The look makes no system call. (It used to ask the kernel for each socket's byte
counters with ``getsockopt(TCP_INFO)``; about one call in a thousand took 20 ms under
load, long enough to show in the p99 of every other connection.)

:class:`IdleSweep` is the decision alone (plain data and a given clock); the worker
supplies the look and does the raising.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

# A look at a connection: is a greenlet waiting on it, or None when the connection is
# not ours to judge (closed, or the handler set its own timeout).
Look = Callable[[Hashable], "bool | None"]


def sweep_interval(timeout: float) -> float:
    """Seconds between two sweeps for *timeout*: a quarter of it, within [0.05, 10]
    (the 30 s default: every 7.5 s)."""
    return min(max(timeout / 4, 0.05), 10.0)


@dataclass(slots=True)  # one per connection: 10,000 of them in a worker
class _Seen:
    owner: Any  # what the caller acts on when it times out (its greenlet)
    since: float | None = None  # when it was first seen in the wait it is in


class IdleSweep:
    """Which connections have waited on their client for *timeout* in one wait."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: Connections whose wait ended since they were last judged: the worker's
        #: sockets add themselves; judging one removes it.
        self.woke: set[Hashable] = set()
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
        self.woke.discard(conn)

    def sweep(self, now: float, look: Look) -> list[Hashable]:
        """The connections that timed out at *now*, all judged at once."""
        return [conn for conn in self.watched()
                if self.judge(conn, now, look(conn)) is not None]

    def watched(self) -> list[Hashable]:
        """The connections watched now (a copy: a worker judges them a few at a time,
        yielding between, while connections come and go)."""
        return list(self._seen)

    def judge(self, conn: Hashable, now: float, waiting: bool | None) -> Any:
        """The owner of *conn* if it (*waiting* on its client at *now*, or None if not
        ours to judge) timed out, else None. A connection that timed out is no longer
        watched."""
        seen = self._seen.get(conn)
        if seen is None:
            return None  # gone since watched() was taken
        woke = conn in self.woke
        if woke:
            self.woke.discard(conn)
        if not waiting:
            seen.since = None  # not waiting on its client now
            return None
        if seen.since is None or woke:
            seen.since = now  # a wait begins (or one ended and another began)
            return None
        if now - seen.since < self.timeout:
            return None
        del self._seen[conn]
        return seen.owner
