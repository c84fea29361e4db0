"""The machinery of the reliability suite: engines as CLI subprocesses, load, watching.

Everything here works on real processes, sockets and signals:

* :class:`Engine` runs ``python -m engine serve HANDLER ...`` in its own session
  (process group), learns its address from the ``READY`` line, and on the way out
  stops it, kills its process group, reaps what it adopted and reports any process of
  that group still present (alive or zombie);
* :class:`LoadGen` is bounded client load (threads, loopback only) that classifies
  every request: answered, refused (``ECONNREFUSED``), or failed (and how);
* :class:`Slowloris` holds many connections open and trickles one byte now and then;
* :func:`proc_table` and friends read ``/proc`` directly (children, process groups,
  zombies, file descriptors), cheaply enough to poll every few milliseconds.

No wait here is a bare ``sleep``: waits are on a condition with a deadline
(:func:`wait_for`); the only sleeps pace a load generator or a chaos loop.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import errno
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from loadtests.background import Background
from loadtests.procio import read_first_line
from loadtests.sockio import exchange

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEMO = "engine.examples.demo:DemoHandler"
T = TypeVar("T")


class Deadline(AssertionError):
    """A condition did not become true in time."""


def wait_for(
    predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.005
) -> T:
    """Poll *predicate* until it returns something truthy; raise :class:`Deadline`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Deadline(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # a poll interval: the predicate decides


def become_subreaper() -> None:
    """Adopt orphaned descendants (workers of a killed master), so they can be reaped."""
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards *wanted* (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class Proc:
    """One line of ``/proc/PID/stat``: what the suite needs of a process."""

    pid: int
    ppid: int
    pgrp: int
    state: str  # R, S, D, Z, ...

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def read_proc(pid: int) -> Proc | None:
    """The process *pid*, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain anything: split after it.
    fields = stat[stat.rindex(b")") + 2:].split()
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0].decode())


def proc_table() -> dict[int, Proc]:
    """Every process on the machine, read from ``/proc`` (about 1 ms for 100)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            proc = read_proc(int(name))
            if proc is not None:
                table[proc.pid] = proc
    return table


def children(pid: int, table: dict[int, Proc] | None = None) -> list[Proc]:
    """The direct children of *pid* (zombies included)."""
    table = proc_table() if table is None else table
    return [p for p in table.values() if p.ppid == pid]


def live_children(pid: int, table: dict[int, Proc] | None = None) -> list[int]:
    """Pids of the children of *pid* that are not zombies."""
    return sorted(p.pid for p in children(pid, table) if not p.zombie)


def zombie_children(pid: int, table: dict[int, Proc] | None = None) -> list[int]:
    """Pids of the children of *pid* that are zombies."""
    return sorted(p.pid for p in children(pid, table) if p.zombie)


def group_members(pgid: int) -> list[Proc]:
    """Every process (zombies included) in process group *pgid*."""
    return [p for p in proc_table().values() if p.pgrp == pgid]


def alive(pid: int) -> bool:
    """Is *pid* a running (not zombie) process?"""
    proc = read_proc(pid)
    return proc is not None and not proc.zombie


def is_set_up(pid: int) -> bool:
    """Has worker *pid* finished its post-fork set-up? (Its title says so: the title is
    set once the master's descriptors are closed.)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().startswith(b"engine: worker")
    except OSError:
        return False


def fd_count(pid: int) -> int:
    """How many file descriptors *pid* has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> dict[int, str]:
    """Every open fd of *pid* and what it points to (``socket:[123]``, a path...)."""
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            targets[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return targets


def rss_bytes(pid: int) -> int:
    """Resident set size of *pid* in bytes."""
    with open(f"/proc/{pid}/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def caught_signals(pid: int) -> set[int]:
    """The signals *pid* has a handler for (``SigCgt`` in ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("SigCgt:"):
                mask = int(line.split()[1], 16)
                return {n for n in range(1, 65) if mask & (1 << (n - 1))}
    return set()


def reap(pids: Sequence[int]) -> None:
    """Collect any of *pids* that are exited children of ours (adopted ones included)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------- engines


class EngineError(RuntimeError):
    """An engine did not start."""


class Engine:
    """``python -m engine serve HANDLER --bind BIND ARGS...`` in its own session.

    The master's process group is the whole engine, across SIGUSR2 upgrades too (the
    new master is exec'ed in the same group). Use as a context manager: on the way
    out everything in the group is stopped, killed and reaped, and :attr:`leftovers`
    lists what could not be made to go away (it should always be empty).
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        log_dir: Path,
        name: str = "engine",
        handler: str = DEMO,
        bind: str = f"{HOST}:0",
        env: dict[str, str] | None = None,
        nofile: int | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.argv = [
            sys.executable, "-m", "engine", "serve", handler, "--bind", bind, *args,
        ]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["ENGINE_READY_LINE"] = "1"
        full_env.update(env or {})
        preexec: Callable[[], None] | None = None
        if nofile is not None:
            limit = nofile

            def preexec() -> None:  # runs in the child between fork and exec
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
                preexec_fn=preexec,
            )
        self.pgid = self.proc.pid
        self.master = self.proc.pid  # changes after a SIGUSR2 upgrade
        self.seen: set[int] = {self.proc.pid}
        self.leftovers: list[Proc] = []
        self.returncodes: dict[int, int] = {}
        try:
            line = self._ready_line(ready_timeout)
            if not line.startswith(b"READY "):
                raise EngineError(f"{name}: no READY line (got {line!r}); log:\n{self.log()}")
            self.address: Any = ast.literal_eval(line[len(b"READY "):].decode())
        except BaseException:
            self.close()
            raise

    def _ready_line(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        try:
            return read_first_line(self.proc.stdout.fileno(), timeout)
        except TimeoutError:
            raise EngineError(
                f"{self.name}: not ready in {timeout:g}s; log:\n{self.log()}"
            ) from None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- looking at it ---

    @property
    def port(self) -> int:
        return int(self.address[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_count(self, text: str) -> int:
        return self.log().count(text)

    def workers(self, table: dict[int, Proc] | None = None) -> list[int]:
        """Live (non-zombie) worker pids of the current master."""
        pids = live_children(self.master, table)
        self.seen.update(pids)
        return pids

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait until the master has exactly *count* live, set-up workers; return them."""
        pids: list[int] = []

        def full() -> bool:
            nonlocal pids
            pids = self.workers()
            return len(pids) == count and all(is_set_up(pid) for pid in pids)

        wait_for(full, timeout, f"{count} live workers")
        return pids

    def snapshot(self) -> None:
        """Remember every pid of the group now (for the leftover check)."""
        self.seen.update(p.pid for p in group_members(self.pgid))

    def master_alive(self) -> bool:
        return alive(self.master)

    # --- acting on it ---

    def signal(self, signum: int) -> None:
        self.snapshot()
        os.kill(self.master, signum)

    def adopt_master(self, pid: int) -> None:
        """After an upgrade: *pid* is the master now (our child, as subreaper)."""
        self.master = pid
        self.seen.add(pid)

    def wait(self, timeout: float) -> int:
        """Wait for the current master to exit; return its exit status."""
        pid = self.master
        if pid == self.proc.pid:
            code = self.proc.wait(timeout=timeout)
        else:  # an adopted master (after SIGUSR2): ours to reap, as subreaper
            code = _wait_adopted(pid, timeout)
        self.returncodes[pid] = code
        return code

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the master (a graceful stop) and return its exit status."""
        self.snapshot()
        self.workers()
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def close(self, grace: float = 15.0) -> list[Proc]:
        """Stop whatever is left of the group, reap it, and record the leftovers."""
        self.snapshot()
        if self.proc.poll() is None or alive(self.master):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.master, signal.SIGTERM)
            with contextlib.suppress(Deadline):
                wait_for(lambda: not self._live_members(), grace, "the engine to stop", 0.01)
        if self._live_members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait(timeout=grace)
        self.returncodes.setdefault(self.proc.pid, self.proc.returncode)
        with contextlib.suppress(Deadline):
            wait_for(self._group_gone, 5.0, "the engine's process group to go away", 0.01)
        self.leftovers = group_members(self.pgid)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.leftovers

    def _live_members(self) -> list[Proc]:
        return [p for p in group_members(self.pgid) if not p.zombie]

    def _group_gone(self) -> bool:
        members = group_members(self.pgid)
        reap([p.pid for p in members if p.pid != self.proc.pid])
        return not group_members(self.pgid)


def _wait_adopted(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours: wait for it to disappear instead
            wait_for(lambda: read_proc(pid) is None, max(0.0, deadline - time.monotonic()),
                     f"pid {pid} to exit")
            return 0
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            raise Deadline(f"pid {pid} did not exit in {timeout:g}s")
        time.sleep(0.01)  # a poll interval


# --------------------------------------------------------------------------- load


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
    seconds: float = 0.0

    def p(self, q: float, include_failures: bool = False, timeout: float = math.inf) -> float:
        """Latency percentile in seconds; failures count as *timeout* if asked."""
        values = list(self.latencies)
        if include_failures:
            values += [timeout] * (self.failed + self.refused)
        return percentile(values, q)


class LoadGen:
    """Bounded request/response load on a line protocol, in background threads.

    Each client thread opens a connection, sends *lines* requests one at a time
    (each ``request``, expecting ``reply``), closes, and starts over. It stops at
    *max_requests* requests in all, at *max_seconds*, or at :meth:`stop`, whichever
    comes first. A request is *refused* when its connection is refused
    (``ECONNREFUSED``: nobody listens), *failed* on any other error (reset, EOF before
    the reply, timeout, wrong reply), else *ok* with its latency recorded (the first
    request of a connection includes the connect).
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
        reply: bytes = b"PONG\n",
        pace: float = 0.0,
    ) -> None:
        self.address = address
        self.family = socket.AF_UNIX if isinstance(address, str) else (
            socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        )
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
        self._live: list[Counter[str]] = []  # each thread's running counts
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(clients)
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
        self.stats.seconds = time.monotonic() - self._started
        return self.stats

    def progress(self) -> int:
        """Requests answered so far (read while the load runs)."""
        return sum(counts["ok"] for counts in list(self._live))

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

    def _run(self) -> None:
        latencies = array("d")
        counts: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        with self._lock:
            self._live.append(counts)
        try:
            while budget := self._take(self.lines):
                self._connection(budget, latencies, counts, failures)
                if self.pace:
                    self._stop.wait(self.pace)  # pacing a load generator
        finally:
            with self._lock:
                stats = self.stats
                stats.latencies.extend(latencies)
                stats.sent += counts["sent"]
                stats.ok += counts["ok"]
                stats.refused += counts["refused"]
                stats.failed += counts["failed"]
                stats.connections += counts["connections"]
                stats.failures.update(failures)

    def _connection(
        self, budget: int, latencies: array[float], counts: Counter[str],
        failures: Counter[str],
    ) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            started = time.perf_counter()
            counts["connections"] += 1
            try:
                sock.connect(self.address)
            except ConnectionRefusedError:
                counts["sent"] += 1
                counts["refused"] += 1
                return
            except OSError as exc:
                counts["sent"] += 1
                counts["failed"] += 1
                failures["connect-" + classify(exc)] += 1
                return
            for _ in range(budget):
                counts["sent"] += 1
                try:
                    sock.sendall(self.request)
                    _read_reply(sock, self.reply)
                except Exception as exc:
                    counts["failed"] += 1
                    failures[classify(exc)] += 1
                    return
                now = time.perf_counter()
                latencies.append(now - started)
                counts["ok"] += 1
                started = now
        finally:
            sock.close()


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


def ping(address: Any, timeout: float = 5.0) -> bool:
    """One PING/PONG exchange on a new connection: did it work?"""
    try:
        return exchange(address, b"PING\n", timeout) == b"PONG\n"
    except OSError:
        return False


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


# --------------------------------------------------------------------------- watching


class PoolWatcher(Background):
    """Sample an engine's pool in a thread: worker counts, zombies, their ages.

    ``peak_children`` counts every child of the master (zombies too: a zombie still
    holds its slot until reaped); ``min_live``/``max_live`` count live workers.
    """

    def __init__(self, engine: Engine, interval: float = 0.01) -> None:
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
        self.engine.seen.update(live)
        zombies = {p.pid for p in kids if p.zombie}
        for pid in zombies:
            since = self._zombie_since.setdefault(pid, now)
            self.max_zombie_age = max(self.max_zombie_age, now - since)
        for pid in list(self._zombie_since):
            if pid not in zombies:
                del self._zombie_since[pid]


def settled_fd_count(pid: int, reads: int = 5) -> int:
    """The fewest fds *pid* had over a few reads (transient /proc reads excluded)."""
    counts = []
    for _ in range(reads):
        counts.append(fd_count(pid))
        time.sleep(0.01)  # spread the reads a little
    return min(counts)


def own_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@contextlib.contextmanager
def checked_self() -> Iterator[dict[str, Any]]:
    """Record this process's fds and children before; report leaks after."""
    before = own_fds()
    report: dict[str, Any] = {}
    yield report
    report["leaked_fds"] = sorted(own_fds() - before)
    report["children_left"] = [p.pid for p in children(os.getpid())]
