"""client_timeout for the gevent worker's TCP connections, by a periodic sweep.

A socket timeout on a gevent socket costs a timer started and stopped around every wait
(about 20 µs and half a KiB per waiting connection, measured with 4,096 keep-alive
clients). With thousands of mostly idle connections the worker instead leaves its TCP
sockets without a timeout and, every :func:`sweep_interval` (a quarter of the
timeout), looks at each of its connections: is a greenlet waiting on it (its read or
write watcher is active)? A connection seen waiting is noted in
:attr:`IdleSweep.waiting` with the time it was first seen; its socket removes it from
there when the wait ends (data came, or room to send). A connection found still there
``client_timeout`` seconds later, so in one wait all along, gets
``TimeoutError("timed out")`` raised where it waits, as a socket timeout would. It
fires between ``client_timeout`` and ``client_timeout`` plus one interval after the
wait began. A handler that set its own timeout (``StreamRequestHandler.timeout``) is
left to it.

The look makes no system call, and nothing is kept per connection but the entries of
connections seen waiting since their last wait ended. (The sweep used to ask the
kernel for each socket's byte counters, ``getsockopt(TCP_INFO)``: about one call in a
thousand took 20 ms under load, which showed in every connection's p99; and a record
per connection was 350 bytes of each one's memory.)

:class:`IdleSweep` is the decision alone (plain data and a given clock); the worker
supplies the connections and the look, and does the raising.
"""

from __future__ import annotations

from collections.abc import Hashable


def sweep_interval(timeout: float) -> float:
    """Seconds between two sweeps for *timeout*: a quarter of it, within [0.05, 10]
    (the 30 s default: every 7.5 s)."""
    return min(max(timeout / 4, 0.05), 10.0)


class IdleSweep:
    """Which connections have waited on their client for *timeout* in one wait."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: Connection -> when a sweep first saw it in the wait it is in. The worker's
        #: sockets remove themselves when a wait ends (``waiting.pop(conn, None)``).
        self.waiting: dict[Hashable, float] = {}

    def wait_ended(self, conn: Hashable) -> None:
        """*conn*'s wait ended, or the connection did."""
        self.waiting.pop(conn, None)

    def judge(self, conn: Hashable, now: float, waiting: bool | None) -> bool:
        """Has *conn* (*waiting* on its client at *now*, or None when it is not ours
        to judge) been in one wait for the timeout? If so it is forgotten."""
        if not waiting:
            self.waiting.pop(conn, None)  # busy, or the handler's own timeout rules
            return False
        since = self.waiting.setdefault(conn, now)
        if now - since < self.timeout:
            return False
        del self.waiting[conn]
        return True
