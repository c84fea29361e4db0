"""Load and watchers in background threads: the one load loop, a slowloris, a pool watcher.

* :class:`LoadGen` is bounded client load (threads, any address) that classifies every
  request: answered, refused (``ECONNREFUSED``), or failed (and how);
* :class:`Slowloris` holds many connections open and trickles one byte now and then;
* :class:`PoolWatcher` samples an engine's pool: peak children, live workers, zombies.

Every loop here is bounded in count and in time; the only sleeps pace a load or a
sampler, never synchronise.
"""

from __future__ import annotations

import errno
import math
import socket
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.kit.background import Background
from tests.kit.engines import EngineProcess
from tests.kit.net import family_of
from tests.kit.procfs import children, proc_table


def classify(exc: BaseException) -> str:
    """A short name for why a request failed."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, EOFError):
        return "eof"
    if isinstance(exc, ValueError):
        return "bad-reply"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return type(exc).__name__


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (nearest rank) of *values*; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LoadStats:
    """What a load run saw: every request is answered, refused or failed."""

    sent: int = 0
    ok: int = 0
    refused: int = 0
    failed: int = 0
    connections: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    servers: set[bytes] = field(default_factory=set)
    seconds: float = 0.0

    def p(self, q: float, include_failures: bool = False, timeout: float = math.inf) -> float:
        """Latency percentile in seconds; failures count as *timeout* if asked."""
        values = list(self.latencies)
        if include_failures:
            values += [timeout] * (self.failed + self.refused)
        return percentile(values, q)

    def add(self, other: LoadStats) -> None:
        """Add *other*'s counts, failures, latencies and servers to these."""
        self.sent += other.sent
        self.ok += other.ok
        self.refused += other.refused
        self.failed += other.failed
        self.connections += other.connections
        self.failures.update(other.failures)
        self.latencies.extend(other.latencies)
        self.servers |= other.servers


class LoadGen:
    """Bounded request/response load on a line protocol, in background threads.

    Each client thread opens a connection, sends *lines* requests one at a time, closes,
    and starts over. A request is ``request``; its answer must be ``reply`` exactly, or,
    with ``reply=None`` (an echo server), one line that ends with ``request``, whose
    first word (a worker's pid, say) is collected in :attr:`servers`. It stops at
    *max_requests* requests in all, at *max_seconds*, or at :meth:`stop`, whichever
    comes first. A request is *refused* when its connection is refused
    (``ECONNREFUSED``: nobody listens), *failed* on any other error (reset, EOF before
    the reply, timeout, wrong reply), else *ok* with its latency recorded (the first
    request of a connection includes the connect).

    The counts (:attr:`ok`, :attr:`refused`, :attr:`failed`, :attr:`total`,
    :attr:`failures`, :attr:`servers`) can be read while the load runs; :meth:`stop`
    and :meth:`join` return the whole :class:`LoadStats`.
    """

    def __init__(
        self,
        address: Any,
        *,
        clients: int = 4,
        max_requests: int = 100_000,
        max_seconds: float = 30.0,
        lines: int = 1,
        timeout: float = 10.0,
        request: bytes = b"PING\n",
        reply: bytes | None = b"PONG\n",
        pace: float = 0.0,
    ) -> None:
        self.address = address
        self.family = family_of(address)
        self.lines = lines
        self.timeout = timeout
        self.request = request
        self.reply = reply
        self.pace = pace
        self.max_seconds = max_seconds
        self.stats = LoadStats()
        self._left = max_requests
        self._deadline = 0.0
        self._started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._parts = [LoadStats() for _ in range(clients)]  # one per thread, its own
        self._threads = [
            threading.Thread(target=self._run, args=(part,), name=f"load-{i}", daemon=True)
            for i, part in enumerate(self._parts)
        ]

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LoadGen:
        self._started = time.monotonic()
        self._deadline = self._started + self.max_seconds
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoadStats:
        """Stop (in-flight requests finish or time out) and return the stats."""
        self._stop.set()
        return self.join()

    def join(self, timeout: float | None = None) -> LoadStats:
        """Wait until the budget is spent (or :meth:`stop`); return the stats."""
        limit = (self.max_seconds + self.timeout + 10.0) if timeout is None else timeout
        for thread in self._threads:
            thread.join(limit)
        stats = LoadStats()
        for part in self._parts:
            stats.add(part)
        stats.seconds = time.monotonic() - self._started
        self.stats = stats
        return stats

    # --- running counts, readable while the load goes on ---

    @property
    def ok(self) -> int:
        """Requests answered so far."""
        return sum(part.ok for part in self._parts)

    def progress(self) -> int:
        """Requests answered so far (:attr:`ok`)."""
        return self.ok

    @property
    def refused(self) -> int:
        return sum(part.refused for part in self._parts)

    @property
    def failed(self) -> int:
        return sum(part.failed for part in self._parts)

    @property
    def total(self) -> int:
        """Requests sent so far (answered, refused or failed)."""
        return sum(part.sent for part in self._parts)

    @property
    def failures(self) -> Counter[str]:
        """Failed requests so far, by kind (see :func:`classify`)."""
        merged: Counter[str] = Counter()
        for part in self._parts:
            merged.update(dict(part.failures))  # dict(): one C-level copy
        return merged

    @property
    def servers(self) -> set[bytes]:
        """First words of the echoed replies so far (``reply=None`` only)."""
        return set().union(*(set(part.servers) for part in self._parts))

    @property
    def done(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    def _take(self, wanted: int) -> int:
        with self._lock:
            if self._stop.is_set() or self._left <= 0 or time.monotonic() > self._deadline:
                return 0
            taken = min(wanted, self._left)
            self._left -= taken
            return taken

    def _run(self, part: LoadStats) -> None:
        while budget := self._take(self.lines):
            self._connection(budget, part)
            if self.pace:
                self._stop.wait(self.pace)  # pacing a load generator

    def _connection(self, budget: int, part: LoadStats) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            started = time.perf_counter()
            part.connections += 1
            try:
                sock.connect(self.address)
            except ConnectionRefusedError:
                part.sent += 1
                part.refused += 1
                return
            except OSError as exc:
                part.sent += 1
                part.failed += 1
                part.failures["connect-" + classify(exc)] += 1
                return
            for _ in range(budget):
                part.sent += 1
                try:
                    sock.sendall(self.request)
                    self._check_reply(sock, part)
                except Exception as exc:
                    part.failed += 1
                    part.failures[classify(exc)] += 1
                    return
                now = time.perf_counter()
                part.latencies.append(now - started)
                part.ok += 1
                started = now
        finally:
            sock.close()

    def _check_reply(self, sock: socket.socket, part: LoadStats) -> None:
        """Read one reply; raise EOFError or ValueError if it is missing or wrong."""
        if self.reply is not None:
            _read_reply(sock, self.reply)
            return
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise EOFError(f"closed after {line!r}")
            line += chunk
        if not line.endswith(self.request):
            raise ValueError(f"reply {line!r} does not echo {self.request!r}")
        part.servers.add(line.split(b" ", 1)[0])


def _read_reply(sock: socket.socket, expected: bytes) -> None:
    """Read one reply of len(expected) bytes; raise EOFError / ValueError if wrong."""
    data = b""
    while len(data) < len(expected):
        chunk = sock.recv(len(expected) - len(data))
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk
    if data != expected:
        raise ValueError(f"reply {data!r}, expected {expected!r}")


# --------------------------------------------------------------------------- attackers


class Slowloris(Background):
    """*count* connections that send one byte every *interval* seconds and never a line.

    A connection the server closes (it times out, or sheds it) is reopened at the next
    tick, as a real slowloris does. Runs in one thread with non-blocking sockets; stops
    at *max_seconds* or :meth:`stop`.
    """

    join_timeout = 30.0

    def __init__(
        self, address: tuple[str, int], count: int, *, interval: float = 3.0,
        max_seconds: float = 60.0,
    ) -> None:
        super().__init__(name="slowloris")
        self.address = address
        self.count = count
        self.interval = interval
        self.max_seconds = max_seconds
        self.socks: list[socket.socket | None] = [None] * count
        self.opened = 0
        self.dropped = 0  # closed by the server
        self.connect_failures = 0
        self.bytes_sent = 0
        self.connected = threading.Event()

    def stop(self) -> None:
        super().stop()
        for i, sock in enumerate(self.socks):
            if sock is not None:
                sock.close()
                self.socks[i] = None

    @property
    def open_now(self) -> int:
        return sum(1 for s in self.socks if s is not None)

    def _open(self, i: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.connect(self.address)
            sock.setblocking(False)
            sock.send(b"S")  # the start of a line that never ends
            self.bytes_sent += 1
        except OSError:
            sock.close()
            self.connect_failures += 1
            return
        self.socks[i] = sock
        self.opened += 1

    def _tick(self, i: int) -> None:
        sock = self.socks[i]
        if sock is None:
            self._open(i)
            return
        try:
            if sock.recv(4096) == b"":
                raise ConnectionResetError  # the server closed it
        except BlockingIOError:
            pass
        except OSError:
            self._drop(i)
            return
        try:
            sock.send(b"s")
            self.bytes_sent += 1
        except BlockingIOError:
            pass
        except OSError:
            self._drop(i)

    def _drop(self, i: int) -> None:
        sock = self.socks[i]
        if sock is not None:
            sock.close()
        self.socks[i] = None
        self.dropped += 1

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.count):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            self._open(i)
        self.connected.set()
        while not self._stop.wait(self.interval) and time.monotonic() < deadline:
            for i in range(self.count):  # pacing: one byte per connection per tick
                self._tick(i)


class PoolWatcher(Background):
    """Sample an engine's pool in a thread: worker counts, zombies, their ages.

    ``peak_children`` counts every child of the master (zombies too: a zombie still
    holds its slot until reaped); ``min_live``/``max_live`` count live workers. It
    follows :attr:`EngineProcess.master` across upgrades, and adds the workers it sees
    to the engine's ``seen_pids``. An *interval* of 0 samples without pause, so that
    no brief peak is missed.
    """

    def __init__(self, engine: EngineProcess, interval: float = 0.01) -> None:
        super().__init__(name="pool-watcher")
        self.engine = engine
        self.interval = interval
        self.samples = 0
        self.peak_children = 0
        self.min_live = math.inf
        self.max_live = 0
        self.max_zombie_age = 0.0
        self.empty_samples = 0  # samples that found no live worker at all
        self.pids: set[int] = set()
        self._zombie_since: dict[int, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)  # sampling pace

    def sample(self) -> None:
        master = self.engine.master
        table = proc_table()
        if master not in table or table[master].zombie:
            return
        kids = children(master, table)
        live = [p.pid for p in kids if not p.zombie]
        now = time.monotonic()
        self.samples += 1
        self.peak_children = max(self.peak_children, len(kids))
        self.min_live = min(self.min_live, len(live))
        self.max_live = max(self.max_live, len(live))
        self.empty_samples += not live
        self.pids.update(live)
        self.engine.seen_pids.update(live)
        zombies = {p.pid for p in kids if p.zombie}
        for pid in zombies:
            since = self._zombie_since.setdefault(pid, now)
            self.max_zombie_age = max(self.max_zombie_age, now - since)
        for pid in list(self._zombie_since):
            if pid not in zombies:
                del self._zombie_since[pid]


