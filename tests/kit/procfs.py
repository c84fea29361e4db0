"""Looking at processes: ``/proc`` read directly (cheap enough to poll every few ms).

Children, process groups, zombies, file descriptors, memory, signal handlers and CPU
time and wake-ups (schedstat) of any process, and :func:`process_tree` (psutil) for a
process and all its descendants.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Proc:
    """One line of ``/proc/PID/stat``: what the kit needs of a process."""

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


def zombie_children(pid: int | None = None, table: dict[int, Proc] | None = None) -> list[int]:
    """Pids of the children of *pid* (default: this process) that are zombies."""
    parent = os.getpid() if pid is None else pid
    return sorted(p.pid for p in children(parent, table) if p.zombie)


def group_members(pgid: int) -> list[Proc]:
    """Every process (zombies included) in process group *pgid*."""
    return [p for p in proc_table().values() if p.pgrp == pgid]


def alive(pid: int) -> bool:
    """Is *pid* a running (not zombie) process?"""
    proc = read_proc(pid)
    return proc is not None and not proc.zombie


def process_tree(pid: int) -> list[psutil.Process]:
    """The process *pid* and all its descendants (empty if it is gone)."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def is_set_up(pid: int) -> bool:
    """Has engine worker *pid* finished its post-fork set-up? (Its title says so: the
    title is set once the master's descriptors are closed.)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().startswith(b"engine: worker")
    except OSError:
        return False


# epoll_wait and epoll_pwait (x86-64), epoll_pwait (arm64), epoll_pwait2: where an engine
# process sleeps (the master's loop, a worker's accept loop). Their fourth argument is
# the timeout in milliseconds.
EPOLL_WAITS = {"232", "281", "22", "441"}


def epoll_wait_timeout(pid: int) -> int | None:
    """The timeout (ms, -1: none) of the epoll wait *pid*'s main thread sleeps in now,
    or None if it is not in one: a master between turns, a worker in its accept loop."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] not in EPOLL_WAITS:
        return None
    value = int(fields[4], 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def open_fds() -> set[int]:
    """File descriptors open in this process now."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def fd_count(pid: int) -> int:
    """How many file descriptors *pid* has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid: int, reads: int = 5) -> int:
    """The fewest fds *pid* had over a few reads (transient /proc reads excluded)."""
    counts = []
    for _ in range(reads):
        counts.append(fd_count(pid))
        time.sleep(0.01)  # spread the reads a little
    return min(counts)


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


def schedstat(pid: int) -> tuple[float, int]:
    """(CPU seconds, times scheduled in) of *pid*, from ``/proc/PID/schedstat`` (its
    third field counts the times the task was scheduled in: every wake-up is one)."""
    with open(f"/proc/{pid}/schedstat") as file:
        run_ns, _wait_ns, slices = file.read().split()
    return int(run_ns) / 1e9, int(slices)


def cpu_and_wakeups(pid: int, seconds: float) -> tuple[float, int]:
    """CPU seconds used and wake-ups of *pid* over a window of *seconds*."""
    cpu_before, woken_before = schedstat(pid)
    time.sleep(seconds)  # the measurement window itself, not a synchronisation
    cpu_after, woken_after = schedstat(pid)
    return cpu_after - cpu_before, woken_after - woken_before
