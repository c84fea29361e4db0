"""Health of the worker processes (and of the master): RSS, USS, CPU and open fds.

The master samples its workers with psutil every ``health_interval`` seconds, from
its own single-threaded loop: :meth:`HealthSampler.due` says when, and
:meth:`HealthSampler.sample` reads ``/proc`` for every worker pid it is given. The
sampler keeps one ``psutil.Process`` per pid between samples because
``cpu_percent()`` is measured *since the previous call on the same object*: a fresh
object would always report 0.0.

What a sample costs (Linux, 40 idle Python workers, 2 cores): about 15-20 ms, most of
it the USS, which psutil reads from ``/proc/PID/smaps_rollup`` (``memory_full_info``).
That is why sampling has its own, modest, interval instead of running every tick,
and why one call stops after ``SAMPLE_BUDGET`` (50 ms): a pool of hundreds of workers
is sampled over a few consecutive loop turns instead of stalling the master.

Nothing here raises because a worker went away between the master's reap and the
sample: ``NoSuchProcess``, ``ZombieProcess`` and ``AccessDenied`` are expected and
tolerated (the pid is skipped, or the one field that was denied is ``None``).

Under ``--user`` every process is non-dumpable (:mod:`engine.privileges`): the
unprivileged master still reads its workers' ``statm`` and ``stat`` (RSS, CPU,
threads), which the kernel keeps world-readable, but not their ``smaps_rollup`` or
``fd``, so ``uss`` and ``open_fds`` of workers are ``None`` there. RSS is what
``max_worker_memory`` compares, so recycling is unaffected.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from engine.ksm import merged_bytes

if TYPE_CHECKING:
    from engine.config import Settings

# Fraction of a limit at which warnings() starts reporting a worker.
WARN_FRACTION = 0.8
# Most seconds one sample() call spends reading /proc; a bigger pool is sampled over
# several of the master's loop turns, so the master never stalls for long.
SAMPLE_BUDGET = 0.05


@dataclass(frozen=True)
class WorkerHealth:
    """One psutil sample of one process.

    ``uss`` (memory unique to the process: what would be freed if it exited) and
    ``open_fds`` are ``None`` when the system denied reading them. ``cpu_percent``
    is the CPU used since the previous sample of the same process, in percent of
    one core (a multi-threaded process can exceed 100); it is 0.0 on the first
    sample of a process.
    """

    rss: int
    uss: int | None
    cpu_percent: float
    open_fds: int | None
    num_threads: int
    ksm_merged: int | None = None
    """Bytes of the process's memory the kernel's KSM daemon has merged with identical
    pages (``/proc/PID/ksm_stat``); None unless the ``ksm`` setting is on."""


class HealthSampler:
    """Samples worker processes at most every *interval* seconds.

    *max_worker_memory* is the RSS (bytes) above which :meth:`over_memory` tells the
    master to recycle a worker; 0 turns that check off.
    """

    def __init__(self, interval: float, max_worker_memory: int, ksm: bool = False) -> None:
        self.interval = interval
        self.max_worker_memory = max_worker_memory
        self.ksm = ksm  # also read each process's merged pages (the ksm setting)
        self.latest: dict[int, WorkerHealth] = {}
        """The last sample of every worker known to be alive, by pid."""
        self.master_latest: WorkerHealth | None = None
        """The master's own health, refreshed by every :meth:`sample`."""
        self.next_due = 0.0  # the first sample is due at once
        self._pending: deque[int] = deque()  # pids still to sample in this round
        self._round_start = 0.0
        self._procs: dict[int, psutil.Process] = {}
        self._fd_limits: dict[int, int] = {}  # soft RLIMIT_NOFILE of each worker
        self._warned: dict[int, set[str]] = {}  # warning kinds already returned per pid
        self._self_proc: psutil.Process | None = None

    @classmethod
    def of(cls, settings: Settings) -> HealthSampler:
        """The sampler the settings ask for (``health_interval``, ``max_worker_memory``,
        ``ksm``)."""
        return cls(settings.health_interval, settings.max_worker_memory, settings.ksm)

    @property
    def tracked(self) -> frozenset[int]:
        """Pids the sampler holds a ``psutil.Process`` (a CPU baseline) for."""
        return frozenset(self._procs)

    def due(self, now: float) -> bool:
        """Is a sample due at *now* (a ``time.monotonic()`` value)?"""
        return now >= self.next_due

    def sample(
        self, pids: Iterable[int], now: float, budget: float = SAMPLE_BUDGET
    ) -> dict[int, WorkerHealth]:
        """Sample the workers in *pids*; return the latest health of each one known.

        A round samples every pid once. If reading ``/proc`` takes longer than
        *budget* seconds (some hundreds of workers), the call stops there and the
        round goes on at the next call, which is due at once; otherwise the next round
        is due *interval* after this one started. Workers forked during a round join
        it. Pids not in *pids*, and pids whose process is gone or a zombie, are
        forgotten. :attr:`master_latest` is refreshed at the end of each round.
        """
        wanted = set(pids)
        for pid in self._procs.keys() | self.latest.keys():
            if pid not in wanted:
                self._forget(pid)
        if not self._pending:
            self._round_start = now
            self._pending.extend(sorted(wanted))
        else:
            queued = set(self._pending)
            self._pending.extend(
                sorted(pid for pid in wanted if pid not in queued and pid not in self.latest)
            )
        started = time.perf_counter()
        while self._pending:
            pid = self._pending.popleft()
            if pid not in wanted:
                continue
            health = self._sample_pid(pid)
            if health is None:
                self._forget(pid)
            else:
                self.latest[pid] = health
            if time.perf_counter() - started >= budget:
                break
        if self._pending:
            self.next_due = now  # finish the round on the master's next loop turn
        else:
            self.next_due = self._round_start + self.interval
            self.master_latest = self.master_health()
        return dict(self.latest)

    def count_running(self, pids: Iterable[int], enough: int) -> int:
        """How many of *pids* are running or runnable right now (stops at *enough*)."""
        running = 0
        for pid in pids:
            try:
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                if proc.status() == psutil.STATUS_RUNNING:
                    running += 1
                    if running >= enough:
                        break
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return running

    def master_health(self) -> WorkerHealth:
        """A sample of the calling process (the master) itself.

        Its ``cpu_percent`` covers the time since the previous call.
        """
        if self._self_proc is None or self._self_proc.pid != os.getpid():
            # A new object after a fork: the child must not inherit the parent's.
            self._self_proc = psutil.Process()
        return _read(self._self_proc, self.ksm)

    def over_memory(self, pid: int) -> bool:
        """Is the worker's last sampled RSS above ``max_worker_memory`` (when set)?"""
        health = self.latest.get(pid)
        return bool(
            health is not None and self.max_worker_memory > 0
            and health.rss > self.max_worker_memory
        )

    def warnings(self, pid: int) -> list[str]:
        """Log lines for a worker that approaches a limit (empty when all is well).

        Reported at 80% of ``max_worker_memory`` (RSS), and at 80% of the worker's
        soft ``RLIMIT_NOFILE`` (open fds: at the limit ``accept()`` fails with EMFILE).
        """
        return [text for _, text in self._warnings(pid)]

    def new_warnings(self, pid: int) -> list[str]:
        """Like :meth:`warnings`, but each kind once until the worker recovers.

        Meant for the master's log: a worker that stays at 85% of its memory limit
        is reported once, not every ``health_interval``; if it drops below the
        threshold and climbs back, it is reported again.
        """
        if pid not in self.latest:
            return []  # nothing known (and nothing to remember) about this pid
        current = self._warnings(pid)
        seen = self._warned.get(pid, set())
        # Remember exactly what is current: a kind that cleared is reported again later.
        self._warned[pid] = {kind for kind, _ in current}
        return [text for kind, text in current if kind not in seen]

    # --- internals ---

    def _warnings(self, pid: int) -> list[tuple[str, str]]:
        health = self.latest.get(pid)
        if health is None:
            return []
        found = []
        limit = self.max_worker_memory
        if limit > 0 and health.rss >= WARN_FRACTION * limit:
            found.append((
                "memory",
                f"worker pid {pid} RSS {_mib(health.rss)} is "
                f"{100 * health.rss / limit:.0f}% of max_worker_memory {_mib(limit)}",
            ))
        fd_limit = self._fd_limits.get(pid)
        if health.open_fds is not None and fd_limit and health.open_fds >= (
            WARN_FRACTION * fd_limit
        ):
            found.append((
                "fds",
                f"worker pid {pid} has {health.open_fds} open fds, "
                f"{100 * health.open_fds / fd_limit:.0f}% of its RLIMIT_NOFILE {fd_limit}",
            ))
        return found

    def _sample_pid(self, pid: int) -> WorkerHealth | None:
        proc = self._procs.get(pid)
        try:
            # is_running() compares creation times: a pid reused by another process
            # gets a new object (and a fresh cpu_percent baseline).
            if proc is None or not proc.is_running():
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():  # status() and the reads below share /proc/PID/stat
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None  # exited, not yet reaped: its numbers mean nothing
                health = _read(proc, self.ksm)
            self._fd_limits[pid] = _fd_limit(proc)
            return health
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            # ZombieProcess is a NoSuchProcess. AccessDenied for the whole process
            # (not ours) means there is nothing worth reporting.
            return None

    def _forget(self, pid: int) -> None:
        self.latest.pop(pid, None)
        self._procs.pop(pid, None)
        self._fd_limits.pop(pid, None)
        self._warned.pop(pid, None)


def _read(proc: psutil.Process, ksm: bool = False) -> WorkerHealth:
    """Read one process in a single psutil ``oneshot`` (shared /proc reads); with
    *ksm*, also its pages merged by the kernel.

    Raises NoSuchProcess/AccessDenied from the calls that must succeed.
    """
    with proc.oneshot():
        uss: int | None
        try:
            full = proc.memory_full_info()
            rss, uss = full.rss, full.uss
        except psutil.AccessDenied:
            # smaps may be unreadable (another user, hardened /proc) while statm is.
            rss, uss = proc.memory_info().rss, None
        cpu = proc.cpu_percent(interval=None)  # never pass an interval: it sleeps
        fds: int | None
        try:
            fds = count_fds(proc)
        except (psutil.AccessDenied, PermissionError):
            fds = None
        threads = proc.num_threads()
    return WorkerHealth(
        rss=rss, uss=uss, cpu_percent=cpu, open_fds=fds, num_threads=threads,
        ksm_merged=merged_bytes(proc.pid) if ksm else None,
    )


def count_fds(proc: psutil.Process) -> int:
    """The open fds of *proc*: ``stat()`` of ``/proc/PID/fd`` (Linux 6.2 and later give
    the count as its size), else psutil's listing of the directory.

    The listing costs about 3.5 µs per fd in the master, on a CPU the workers and their
    clients share: 14 ms every health_interval for a gevent worker with 4,000
    connections, which showed in their p99.
    """
    try:
        size = os.stat(f"/proc/{proc.pid}/fd").st_size
    except FileNotFoundError:
        raise psutil.NoSuchProcess(proc.pid) from None
    return size if size > 0 else proc.num_fds()


def _fd_limit(proc: psutil.Process) -> int:
    """The soft RLIMIT_NOFILE of *proc* (0 when unknown or unlimited)."""
    try:
        # prlimit(2): the worker's own limit, which worker_init may have changed.
        soft = proc.rlimit(psutil.RLIMIT_NOFILE)[0]
    except (psutil.Error, AttributeError, OSError):
        # No Process.rlimit off Linux: forked workers inherit the master's limit.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


class IdleMeter:
    """The machine's idle CPU share between two readings of ``/proc/stat`` (psutil).

    The pool policy asks it only when it is about to grow a busy pool: if the CPUs
    had no idle time since the last reading, another worker process could not run
    any sooner than the busy ones, so forking it adds nothing but memory and context
    switches.
    """

    MIN_INTERVAL = 0.05  # shorter intervals are mostly clock-tick noise

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None  # (when, idle, total)
        self._share: float | None = None

    def idle_share(self, now: float) -> float | None:
        """Idle time / all CPU time since the previous call (None on the first one)."""
        if self._last is not None and now - self._last[0] < self.MIN_INTERVAL:
            return self._share
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        total = sum(times)
        if self._last is not None:
            spent = total - self._last[2]
            self._share = (idle - self._last[1]) / spent if spent > 0 else None
        self._last = (now, idle, total)
        return self._share
