"""The reliability scenarios: each runs a real engine under load and returns its figures.

Every scenario is a function ``(Context) -> Result``. ``Context.short`` picks the
short parameters (seconds; run by the test suite in ``tests/reliability/``) or the long
ones (the command ``python -m loadtests.reliability``). A :class:`Result` holds the
figures (an ordered dict, printed as one line), the targets with met / not met, and
notes. Engines run as ``python -m engine serve ...`` subprocesses in their own process
group, all load stays on 127.0.0.1, every loop is bounded in count and in time, and
every engine is stopped, killed by process group and checked gone on the way out (its
leftovers are a figure of every scenario, with the target 0).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from engine.status_client import fetch_status
from loadtests.reliability_apps import FAULT_MARKER, NPROC_FIFO, SLOW_BOOT_MARKER
from tests.kit.engines import HOST, EngineError, serve_engine
from tests.kit.engines import EngineProcess as Engine  # the scenarios' name for it
from tests.kit.load import LoadGen, LoadStats, PoolWatcher, Slowloris, classify
from tests.kit.net import exchange, ping, read_to_eof, recv_line
from tests.kit.processes import raise_fd_limit, reap
from tests.kit.procfs import (
    alive,
    caught_signals,
    fd_count,
    group_members,
    is_set_up,
    read_proc,
    rss_bytes,
    settled_fd_count,
    zombie_children,
)
from tests.kit.waiting import DeadlineExceeded as Deadline  # the scenarios' names for them
from tests.kit.waiting import wait_until as wait_for

# --------------------------------------------------------------------------- results


@dataclass
class Target:
    """One target of a scenario: what is required, and whether the run met it."""

    what: str
    met: bool
    detail: str = ""

    def describe(self) -> str:
        mark = "met" if self.met else "NOT MET"
        return f"{self.what}: {mark}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Result:
    """The outcome of one scenario run."""

    scenario: str
    summary: str  # what it does, one sentence
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    skipped: str = ""  # why the scenario could not run here (root needed...): not a failure

    @property
    def met(self) -> bool:
        return not self.error and all(t.met for t in self.targets)

    def target(self, what: str, met: bool, detail: str = "") -> bool:
        self.targets.append(Target(what, bool(met), detail))
        return bool(met)

    def figure(self, name: str, value: Any) -> None:
        self.figures[name] = value

    def line(self) -> str:
        """The one line of figures printed for this scenario."""
        figures = " ".join(f"{k}={_fmt(v)}" for k, v in self.figures.items())
        missed = [t.what for t in self.targets if not t.met]
        verdict = "PASS" if self.met else "FAIL"
        if self.skipped:
            verdict = f"SKIPPED ({self.skipped})"
        elif self.error:
            verdict += f" (error: {self.error})"
        elif missed:
            verdict += f" (not met: {'; '.join(missed)})"
        return f"{self.scenario}: {figures} [{self.seconds:.1f}s] {verdict}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "summary": self.summary,
            "figures": self.figures,
            "targets": [t.__dict__ for t in self.targets],
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
            "met": self.met,
            "error": self.error,
            "skipped": self.skipped,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_fmt(v)}" for k, v in value.items()) + "}" if value else "{}"
    return str(value)


@dataclass
class Context:
    """How a scenario should run."""

    short: bool
    log_dir: Path
    seed: int = 1

    def pick(self, short: Any, long: Any) -> Any:
        return short if self.short else long


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


@contextlib.contextmanager
def engine(
    ctx: Context, result: Result, args: list[str], log_dir: Path | None = None, **kwargs: Any
) -> Iterator[Engine]:
    """An :class:`Engine` whose leftovers are added to *result* on the way out; its log
    goes to *log_dir* (default: the context's)."""
    eng = serve_engine(args, log_dir=log_dir or ctx.log_dir, name=result.scenario, **kwargs)
    try:
        yield eng
    finally:
        leftovers = eng.close()
        result.figures["leftovers"] = result.figures.get("leftovers", 0) + len(leftovers)
        if leftovers:
            result.notes.append(f"left behind: {leftovers}")


def tracebacks(log: str) -> int:
    return log.count("Traceback (most recent call last)")


def load_figures(result: Result, stats: LoadStats, prefix: str = "") -> None:
    result.figure(prefix + "requests", stats.sent)
    result.figure(prefix + "ok", stats.ok)
    result.figure(prefix + "refused", stats.refused)
    result.figure(prefix + "failed", stats.failed)
    if stats.failures:
        result.figure(prefix + "failures", dict(stats.failures))


def finish(result: Result) -> None:
    """Targets every scenario shares: nothing left behind."""
    left = result.figures.pop("leftovers", 0)
    result.figures["leftovers"] = left  # last in the line
    result.target("nothing left behind (process group empty, nothing unreaped)", left == 0,
                  f"{left} processes")


# --------------------------------------------------------------------------- chaos


def worker_chaos(ctx: Context) -> Result:
    """SIGKILL a random worker every 50-200 ms under load."""
    result = Result(
        "worker-chaos",
        "SIGKILL a random worker every 50-200 ms for the whole run, under continuous load "
        "(static pool of 4, one connection per request)",
    )
    seconds = ctx.pick(2.5, 60.0)
    max_kills = ctx.pick(50, 1200)
    size = 4
    rng = random.Random(ctx.seed)
    with engine(ctx, result, ["--workers", str(size), "--pool-mode", "static",
                              "--log-level", "warning"]) as eng:
        wait_for(lambda: len(eng.worker_pids()) == size, 20, "the pool to start")
        kills = 0
        recoveries: list[float] = []
        not_recovered = 0
        with LoadGen(eng.address, clients=4, max_requests=5_000_000,
                     max_seconds=seconds + 30) as load:
            end = time.monotonic() + seconds
            while time.monotonic() < end and kills < max_kills:
                victim = rng.choice(eng.worker_pids())
                killed_at = time.monotonic()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                kills += 1

                def full(victim: int = victim) -> bool:
                    live = eng.worker_pids()
                    return victim not in live and len(live) == size and all(
                        is_set_up(pid) for pid in live
                    )

                try:
                    wait_for(full, 10, "the pool to be full again", interval=0.001)
                    recoveries.append(time.monotonic() - killed_at)
                except Deadline:
                    not_recovered += 1
                pause = killed_at + rng.uniform(0.05, 0.2) - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the chaos loop
            stats = load.stop()
        with contextlib.suppress(Deadline):
            wait_for(lambda: not zombie_children(eng.master), 5, "no zombies")
        zombies = len(zombie_children(eng.master))
        status = eng.stop()
    load_figures(result, stats)
    result.figure("kills", kills)
    result.figure("recovery_max_ms", ms(max(recoveries, default=math.nan)))
    result.figure("recovery_median_ms", ms(sorted(recoveries)[len(recoveries) // 2])
                  if recoveries else math.nan)
    result.figure("not_recovered", not_recovered)
    result.figure("zombies", zombies)
    result.figure("exit_status", status)
    result.target("refused == 0 (the listen socket never goes away)", stats.refused == 0,
                  f"{stats.refused} refused")
    result.target("failures <= kills (only requests inside a killed worker fail)",
                  stats.failed <= kills, f"{stats.failed} failed, {kills} kills")
    result.target("pool back to full size after every kill", not_recovered == 0 and kills > 0,
                  f"max {ms(max(recoveries, default=0.0))} ms")
    result.target("no zombies", zombies == 0, f"{zombies}")
    result.target("exit status 0 after SIGTERM", status == 0, f"{status}")
    result.target("requests were answered", stats.ok > 0, f"{stats.ok} ok")
    finish(result)
    return result


# --------------------------------------------------------------------------- master death


def _all_dead(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def _served_at_least(load: LoadGen, count: int) -> bool:
    return load.progress() >= count


def _only_workers(eng: Engine, allowed: set[int]) -> bool:
    return set(eng.worker_pids()) <= allowed


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
            probe.listen(1)
        except OSError:
            return False
        return True


def master_death(ctx: Context) -> Result:
    """SIGKILL the master under load; the workers follow; the port is free at once."""
    result = Result(
        "master-death",
        "SIGKILL the master under load; every worker must be gone within 1 s and a new "
        "engine must bind the same port at once and answer",
    )
    rounds = ctx.pick(1, 5)
    port = 0
    gone: list[float] = []
    free: list[float] = []
    first_answer: list[float] = []
    rebinds = 0
    restarted_ok = 0
    before = LoadStats()
    for _ in range(rounds):
        with engine(ctx, result, ["--workers", "4", "--pool-mode", "static",
                                  "--log-level", "warning"],
                    bind=f"{HOST}:{port}") as eng:
            port = eng.port
            workers = eng.wait_workers(4)
            with LoadGen(eng.address, clients=2, max_requests=1_000_000,
                         max_seconds=30) as load:
                wait_for(lambda: load.progress() >= 200, 20, "some load to be served")
                killed_at = time.monotonic()
                os.kill(eng.master, signal.SIGKILL)
                try:
                    wait_for(partial(_all_dead, workers), 10,
                             "every worker to die", interval=0.001)
                    gone.append(time.monotonic() - killed_at)
                except Deadline:
                    gone.append(math.inf)
                reap(workers)  # adopted by us (a subreaper): ours to reap
                try:
                    wait_for(partial(_port_free, port), 10, "the port to be free", 0.001)
                    free.append(time.monotonic() - killed_at)
                except Deadline:
                    free.append(math.inf)
                # At once: a new master on the same port, while the load still runs.
                try:
                    with engine(ctx, result, ["--workers", "2", "--pool-mode", "static",
                                              "--log-level", "warning"],
                                bind=f"{HOST}:{port}") as new:
                        rebinds += 1
                        wait_for(lambda: ping(new.address), 20, "the new engine to answer")
                        first_answer.append(time.monotonic() - killed_at)
                        restarted_ok += new.stop() == 0
                except EngineError as exc:
                    result.notes.append(f"new engine failed to start: {exc}"[:300])
                stats = load.stop()
            before.sent += stats.sent
            before.ok += stats.ok
            before.refused += stats.refused
            before.failed += stats.failed
    result.figure("rounds", rounds)
    result.figure("workers_gone_max_ms", ms(max(gone)))
    result.figure("port_free_max_ms", ms(max(free)))
    result.figure("new_master_answers_max_ms", ms(max(first_answer, default=math.inf)))
    result.figure("rebound", f"{rebinds}/{rounds}")
    result.figure("load_ok", before.ok)
    result.figure("load_refused_or_failed_while_down", before.refused + before.failed)
    result.target("every worker gone within 1 s of the master's SIGKILL", max(gone) <= 1.0,
                  f"max {ms(max(gone))} ms")
    result.target("the port is free at once (when the workers are gone)",
                  max(free) <= max(gone) + 0.1, f"max {ms(max(free))} ms after the kill")
    result.target("a new engine binds the same port and answers", rebinds == rounds and
                  len(first_answer) == rounds, f"{rebinds}/{rounds}")
    result.target("the new engine stops with status 0", restarted_ok == rounds,
                  f"{restarted_ok}/{rounds}")
    finish(result)
    return result


# --------------------------------------------------------------------------- restarts


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def restarts(ctx: Context) -> Result:
    """SIGHUP every second, max_requests recycling, TTIN/TTOU storms, a SIGUSR2 upgrade."""
    result = Result(
        "restarts",
        "under continuous load: SIGHUP every second, recycling (--max-requests 300 "
        "--max-requests-jitter 50), SIGTTIN/SIGTTOU storms against max_children 6, and "
        "one SIGUSR2 upgrade",
    )
    seconds = ctx.pick(4.0, 40.0)
    max_children = 6
    pidfile = ctx.log_dir / f"restarts-{os.getpid()}-{time.monotonic_ns()}.pid"
    args = [
        "--workers", "2", "--pool-mode", "static", "--max-children", str(max_children),
        "--max-requests", "300", "--max-requests-jitter", "50", "--graceful-timeout", "20",
        "--pidfile", str(pidfile),
    ]
    counts = {"SIGHUP": 0, "SIGTTIN": 0, "SIGTTOU": 0}
    upgrade: dict[str, Any] = {"state": "not tried"}
    masters: list[int] = []
    with engine(ctx, result, args) as eng, PoolWatcher(eng) as watcher:
        masters.append(eng.master)
        wait_for(lambda: len(eng.worker_pids()) == 2, 20, "the pool to start")
        can_upgrade = signal.SIGUSR2 in caught_signals(eng.master)
        with LoadGen(eng.address, clients=4, max_requests=5_000_000,
                     max_seconds=seconds + 60) as load:
            start = time.monotonic()
            next_hup = start + 1.0
            storms = [(start + seconds * f, sig) for f, sig in (
                (0.2, signal.SIGTTIN), (0.45, signal.SIGTTOU),
                (0.7, signal.SIGTTIN), (0.9, signal.SIGTTOU),
            )]
            upgrade_at = start + seconds * 0.55
            ticks = 0
            while time.monotonic() - start < seconds and ticks < 10_000:
                ticks += 1
                now = time.monotonic()
                if now >= next_hup:
                    eng.signal(signal.SIGHUP)
                    counts["SIGHUP"] += 1
                    next_hup += 1.0
                if storms and now >= storms[0][0]:
                    _, sig = storms.pop(0)
                    for _ in range(max_children + 2):  # past the cap on purpose
                        eng.signal(sig)
                        counts[signal.Signals(sig).name] += 1
                        time.sleep(0.02)  # pacing the storm: signals of a kind coalesce
                if upgrade_at and now >= upgrade_at:
                    upgrade_at = 0.0
                    if can_upgrade:
                        upgrade = _upgrade(eng, pidfile, watcher)
                        masters.append(eng.master)
                        next_hup = time.monotonic() + 1.0
                    else:
                        upgrade = {"state": "skipped: the master does not handle SIGUSR2"}
                time.sleep(0.02)  # pacing the chaos loop
            stats = load.stop()
        watcher.sample()
        with contextlib.suppress(Deadline):
            wait_for(lambda: not zombie_children(eng.master), 5, "no zombies")
        zombies = len(zombie_children(eng.master))
        log = eng.log()
        status = eng.stop()
    load_figures(result, stats)
    result.figure("hups", counts["SIGHUP"])
    result.figure("ttin", counts["SIGTTIN"])
    result.figure("ttou", counts["SIGTTOU"])
    result.figure("recycled", log.count(" recycled: "))
    result.figure("workers_seen", len(watcher.pids))
    result.figure("peak_workers", watcher.peak_children)
    result.figure("max_children", max_children)
    result.figure("upgrade", upgrade.get("state"))
    if "seconds" in upgrade:
        result.figure("upgrade_s", upgrade["seconds"])
    result.figure("zombies", zombies)
    result.figure("exit_status", status)
    result.target("refused == 0", stats.refused == 0, f"{stats.refused}")
    result.target("failed == 0", stats.failed == 0, f"{stats.failed} {dict(stats.failures)}")
    result.target("live workers never above max_children", watcher.peak_children <=
                  max_children, f"peak {watcher.peak_children}")
    result.target("recycling happened (max_requests)", log.count(" recycled: ") > 0)
    if upgrade["state"].startswith("skipped"):
        result.notes.append("SIGUSR2 upgrade left out: " + upgrade["state"])
    else:
        result.target("SIGUSR2 upgrade: new master in the pidfile, old master exited 0",
                      upgrade["state"] == "done", upgrade["state"])
    result.target("no zombies", zombies == 0, f"{zombies}")
    result.target("exit status 0 after SIGTERM", status == 0, f"{status}")
    result.target("no traceback in the log", tracebacks(log) == 0, f"{tracebacks(log)}")
    finish(result)
    return result


def _upgrade(eng: Engine, pidfile: Path, watcher: PoolWatcher) -> dict[str, Any]:
    """SIGUSR2 to the master; wait for the new master to take over; adopt it."""
    old = eng.master
    started = time.monotonic()
    eng.signal(signal.SIGUSR2)
    try:
        new = wait_for(lambda: (pid := _read_pid(pidfile)) not in (None, old) and pid, 30,
                       "the new master's pid in the pidfile")
        wait_for(lambda: eng.proc.poll() is not None, 60, "the old master to exit")
    except Deadline as exc:
        return {"state": f"failed: {exc}"}
    seconds = round(time.monotonic() - started, 2)
    old_status = eng.proc.returncode
    eng.adopt_master(new)
    watcher.sample()
    try:
        wait_for(lambda: signal.SIGHUP in caught_signals(new), 20,
                 "the new master to handle signals")
    except (Deadline, OSError) as exc:
        return {"state": f"failed: new master {new}: {exc}"}
    if old_status != 0:
        return {"state": f"failed: the old master exited {old_status}", "seconds": seconds}
    return {"state": "done", "seconds": seconds}


# --------------------------------------------------------------------------- graceful


def graceful_stop(ctx: Context) -> Result:
    """SIGTERM with long requests in flight: they finish, nothing new is served."""
    sleep = ctx.pick(1, 2)  # seconds each in-flight request lasts
    result = Result(
        "graceful-stop",
        f"SIGTERM under load with `SLEEP {sleep}` requests in flight: every one completes within "
        "graceful_timeout, connections opened after the stop began are never served, "
        "exit status 0",
    )
    rounds = ctx.pick(1, 3)
    workers, threads, inflight = ctx.pick((4, 2, 6), (4, 8, 24))
    graceful_timeout = 10.0
    completed = 0
    worst = 0.0
    probes: dict[str, int] = {}
    statuses: list[int] = []
    stop_seconds: list[float] = []
    refused_after_exit = 0
    total = LoadStats()
    for _ in range(rounds):
        with engine(ctx, result, [
            "--workers", str(workers), "--pool-mode", "static", "--threads", str(threads),
            "--graceful-timeout", str(graceful_timeout),
        ]) as eng:
            wait_for(lambda: len(eng.worker_pids()) == workers, 20, "the pool to start")
            load = LoadGen(eng.address, clients=2, max_requests=1_000_000, max_seconds=60,
                           pace=0.005)
            load.start()
            try:
                wait_for(partial(_served_at_least, load, 100), 30, "the load to be served")
                sleepers = [_sleeper(eng.address) for _ in range(inflight)]
                busy = {pid for _, pid in sleepers}
                for sock, _ in sleepers:
                    sock.sendall(b"SLEEP %d\n" % sleep)
                term_at = time.monotonic()
                eng.signal(signal.SIGTERM)
                wait_for(lambda: "graceful stop" in eng.log(), 20, "the graceful stop")
                # Idle workers exit at once; the busy ones have been told too by now.
                wait_for(partial(_only_workers, eng, busy), 20, "idle workers to exit")
                late = [_late_client(eng.address) for _ in range(8)]
                for sock, _ in sleepers:
                    reply = recv_line(sock, graceful_timeout + 10, tolerate=OSError)
                    if reply == b"SLEPT %d\n" % sleep:
                        completed += 1
                        worst = max(worst, time.monotonic() - term_at)
                    sock.close()
                statuses.append(eng.wait(graceful_timeout + 30))
                stop_seconds.append(time.monotonic() - term_at)
                stats = load.stop()
                for outcome in (_late_outcome(sock) for sock in late):
                    probes[outcome] = probes.get(outcome, 0) + 1
                refused_after_exit += _refused(eng.address)
            finally:
                stats = load.stop()  # (a second stop is harmless)
            total.sent += stats.sent
            total.ok += stats.ok
            total.refused += stats.refused
            total.failed += stats.failed
            total.failures.update(stats.failures)
    expected = rounds * inflight
    served_late = probes.get("served", 0)
    load_figures(result, total, "load_")
    result.figure("inflight", expected)
    result.figure("completed", completed)
    result.figure("slowest_after_term_s", round(worst, 2))
    result.figure("graceful_timeout_s", graceful_timeout)
    result.figure("late_connections", probes)
    result.figure("stop_s", round(max(stop_seconds, default=math.nan), 2))
    result.figure("exit_statuses", statuses)
    result.target("every in-flight request completes", completed == expected,
                  f"{completed}/{expected}")
    result.target("within graceful_timeout", worst <= graceful_timeout, f"{worst:.2f}s")
    result.target("connections opened after the stop began are never served",
                  served_late == 0, f"{probes}")
    result.target("refused once the master has exited", refused_after_exit == rounds,
                  f"{refused_after_exit}/{rounds}")
    result.target("exit status 0", statuses == [0] * rounds, f"{statuses}")
    result.target("load: no wrong reply", total.failures.get("bad-reply", 0) == 0)
    finish(result)
    return result


def _sleeper(address: Any) -> tuple[socket.socket, int]:
    """A connection a worker is serving (it answered STATS): (socket, worker pid)."""
    sock = socket.create_connection(address, timeout=20)
    sock.sendall(b"STATS\n")
    reply = recv_line(sock, 20, tolerate=OSError)
    pid = int(reply.split(b"pid=")[1].split()[0])
    return sock, pid


def _refused(address: Any) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(address)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False


def _late_client(address: Any) -> tuple[socket.socket | None, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(60)
    try:
        sock.connect(address)
        sock.sendall(b"PING\n")
    except OSError as exc:
        sock.close()
        return None, classify(exc)
    return sock, ""


def _late_outcome(late: tuple[socket.socket | None, str]) -> str:
    """After the master exited: was this late connection ever answered?"""
    sock, outcome = late
    if sock is None:
        return outcome
    try:
        data = sock.recv(100)
        return "served" if data else "closed-unanswered"
    except OSError as exc:
        return classify(exc) + "-unanswered"
    finally:
        sock.close()


# --------------------------------------------------------------------------- soak


def soak(ctx: Context) -> Result:
    """Many requests and thousands of worker restarts: the master stays flat."""
    requests = ctx.pick(5_000, 1_000_000)
    result = Result(
        "soak",
        f"{requests} requests (10 per connection) with --max-requests 20 "
        "--max-requests-jitter 10 (a restart every ~25 connections per worker): master RSS "
        "and fds flat, workers within bounds, no zombies",
    )
    max_seconds = ctx.pick(60.0, 240.0)
    workers, max_children = 4, 8
    args = ["--workers", str(workers), "--max-children", str(max_children),
            "--max-requests", "20", "--max-requests-jitter", "10"]
    with engine(ctx, result, args) as eng, PoolWatcher(eng, interval=0.02) as watcher:
        wait_for(lambda: len(eng.worker_pids()) >= workers, 20, "the pool to start")
        with LoadGen(eng.address, clients=4, lines=10, max_requests=requests,
                     max_seconds=max_seconds) as load:
            warm = requests // 10
            wait_for(lambda: load.progress() >= warm or load.done, max_seconds,
                     "the warm-up")
            rss_start, fds_start = rss_bytes(eng.master), settled_fd_count(eng.master)
            restarts_start = eng.log_count(" recycled: ")
            stats = load.join()
        watcher.sample()
        with contextlib.suppress(Deadline):
            wait_for(lambda: not zombie_children(eng.master) and len(eng.worker_pids()) >= workers,
                     10, "a settled pool")
        rss_end, fds_end = rss_bytes(eng.master), settled_fd_count(eng.master)
        zombies = len(zombie_children(eng.master))
        final_workers = len(eng.worker_pids())
        log = eng.log()
        status = eng.stop()
    restarts_total = log.count(" recycled: ")
    load_figures(result, stats)
    result.figure("connections", stats.connections)
    result.figure("seconds", round(stats.seconds, 1))
    result.figure("worker_restarts", restarts_total)
    result.figure("master_rss_kib", f"{rss_start // 1024}->{rss_end // 1024}")
    result.figure("master_fds", f"{fds_start}->{fds_end}")
    result.figure("restarts_measured_between", restarts_total - restarts_start)
    result.figure("live_workers_min_max", f"{watcher.min_live}..{watcher.max_live}")
    result.figure("samples_with_no_worker", f"{watcher.empty_samples}/{watcher.samples}")
    result.figure("peak_children", watcher.peak_children)
    result.figure("max_zombie_age_ms", ms(watcher.max_zombie_age))
    result.figure("zombies", zombies)
    result.figure("exit_status", status)
    if watcher.min_live == 0:
        result.notes.append(
            f"the pool was empty in {watcher.empty_samples} of {watcher.samples} samples: a "
            "worker recycled by max_requests is replaced only once it has exited and been "
            "reaped, so workers that recycle together leave no worker for a moment "
            "(connections wait in the backlog; none failed)"
        )
    growth = rss_end - rss_start
    result.target("every request answered", stats.ok == requests and stats.failed == 0
                  and stats.refused == 0, f"{stats.ok}/{requests}")
    result.target("master RSS flat (growth <= 2 MiB after warm-up)", growth <= 2 * 2**20,
                  f"{growth / 1024:+.0f} KiB")
    result.target("master fd count flat", fds_end <= fds_start, f"{fds_start}->{fds_end}")
    result.target("workers never above max_children", watcher.peak_children <= max_children,
                  f"peak {watcher.peak_children}")
    result.target("pool back to its floor at the end", final_workers >= workers,
                  f"{final_workers}")
    result.target("no zombies", zombies == 0, f"{zombies}")
    result.target("exit status 0", status == 0, f"{status}")
    result.target("no traceback in the log", tracebacks(log) == 0, f"{tracebacks(log)}")
    finish(result)
    return result


# --------------------------------------------------------------------------- exhaustion


def exhaustion(ctx: Context) -> Result:
    """A connection flood against a low RLIMIT_NOFILE: EMFILE, back off, recover."""
    flood = ctx.pick(300, 1500)
    nofile = 48
    workers, threads = 2, 64
    result = Result(
        "exhaustion",
        f"engine started with RLIMIT_NOFILE {nofile} ({workers} workers x {threads} "
        f"threads); {flood} idle connections flood it until accept() fails with EMFILE; "
        "the master survives and service resumes when the flood stops",
    )
    raise_fd_limit(flood + 1024)
    emfile = "accept failed (EMFILE), backing off"
    with engine(ctx, result, [
        "--workers", str(workers), "--pool-mode", "static", "--threads", str(threads),
    ], nofile=nofile) as eng:
        workers_before = set(eng.wait_workers(workers))
        master = eng.master
        master_fds = settled_fd_count(master)
        ok_before = ping(eng.address)
        socks: list[socket.socket] = []
        try:
            for _ in range(flood):
                sock = socket.create_connection(eng.address, timeout=10)
                socks.append(sock)
            try:
                # Short: one line from each worker. Long: a second one too, which a worker
                # writes CAPACITY_REPORT_EVERY (10 s) after its first, with the count since.
                lines = ctx.pick(workers, 2 * workers)
                wait_for(lambda: eng.log_count(emfile) >= lines, 30, "EMFILE in the log")
            except Deadline:
                pass
            served_during = ping(eng.address, timeout=1.0)
            master_alive_during = eng.master_alive()
            master_fds_during = settled_fd_count(master)
            emfile_lines = eng.log_count(emfile)
        finally:
            for sock in socks:
                sock.close()
        released = time.monotonic()
        try:
            wait_for(lambda: ping(eng.address, timeout=2.0), 60, "service to resume", 0.05)
            resumed = time.monotonic() - released
        except Deadline:
            resumed = math.inf
        with LoadGen(eng.address, clients=4, max_requests=ctx.pick(500, 5000),
                     max_seconds=30) as load:
            stats = load.join()
        workers_after = set(eng.worker_pids())
        log = eng.log()
        status = eng.stop()
    result.figure("flood", flood)
    result.figure("emfile_log_lines", emfile_lines)
    result.figure("answered_before", ok_before)
    result.figure("answered_during_flood", served_during)
    result.figure("master_alive", master_alive_during and status is not None)
    result.figure("master_fds", f"{master_fds}->{master_fds_during}")
    result.figure("resumed_after_ms", ms(resumed))
    load_figures(result, stats, "after_")
    result.figure("workers_replaced", len(workers_before - workers_after))
    result.figure("exit_status", status)
    result.target("EMFILE happens and is logged", emfile_lines > 0, f"{emfile_lines} lines")
    result.target("the master survives (alive, same pid, its fds unchanged)",
                  master_alive_during and master_fds_during == master_fds)
    result.target("service resumes when the flood stops", math.isfinite(resumed),
                  f"{ms(resumed)} ms")
    result.target("after the flood: every request answered", stats.failed == 0 and
                  stats.refused == 0 and stats.ok > 0, f"{stats.ok} ok, {stats.failed} failed")
    result.target("exit status 0", status == 0, f"{status}")
    result.target("no traceback in the log", tracebacks(log) == 0, f"{tracebacks(log)}")
    finish(result)
    return result


# --------------------------------------------------------------------------- slowloris


@dataclass(frozen=True)
class Defence:
    """One engine configuration the slowloris scenario compares."""

    name: str
    args: tuple[str, ...]
    handler: str
    slots: int  # connections served at once (workers x threads, or max_children)


DEFAULTS = Defence(
    "defaults", (), "engine.examples.demo:DemoHandler", 40,
)
DEFENDED = Defence(
    "4x64+client_timeout2",
    ("--workers", "4", "--pool-mode", "static", "--threads", "64", "--client-timeout", "2"),
    "loadtests.reliability_apps:UntimedDemoHandler", 256,
)
WIDE = Defence(
    "4x1024+client_timeout2",
    ("--workers", "4", "--pool-mode", "static", "--threads", "1024", "--client-timeout", "2"),
    "loadtests.reliability_apps:UntimedDemoHandler", 4096,
)


def slowloris(ctx: Context) -> Result:
    """Slow clients against the default pool and against the defences."""
    attackers = ctx.pick(200, 2000)
    defences = ctx.pick([DEFAULTS, DEFENDED], [DEFAULTS, DEFENDED, WIDE])
    result = Result(
        "slowloris",
        f"{attackers} connections that send one byte every 3 s and never a whole line; "
        "4 well-behaved clients (PING, 3 s timeout) measured before and during the attack, "
        "against the default pool and against threads + client_timeout",
    )
    raise_fd_limit(attackers + 1024)
    quiet_seconds, attack_seconds = ctx.pick((0.5, 3.0), (3.0, 10.0))
    timeout = 3.0
    for defence in defences:
        with engine(ctx, result, [*defence.args, "--log-level", "warning"],
                    handler=defence.handler) as eng:
            wait_for(lambda: ping(eng.address), 20, "the engine to answer")
            with LoadGen(eng.address, clients=4, max_requests=100_000,
                         max_seconds=quiet_seconds, timeout=timeout) as quiet_load:
                quiet = quiet_load.join()
            with Slowloris(eng.address, attackers, interval=3.0,
                           max_seconds=attack_seconds + 60) as attack:
                attack.connected.wait(60)
                _wait_stable_pool(eng)
                with LoadGen(eng.address, clients=4, max_requests=100_000,
                             max_seconds=attack_seconds, timeout=timeout) as attack_load:
                    attacked = attack_load.join()
                dropped = attack.dropped
                held = attack.open_now
            with contextlib.suppress(Deadline):
                wait_for(lambda: ping(eng.address), 30, "service after the attack")
            status = eng.stop()
        name = defence.name
        p99_quiet = quiet.p(99, include_failures=True, timeout=math.inf)
        p99_attack = attacked.p(99, include_failures=True, timeout=math.inf)
        result.figure(f"{name}:p99_quiet_ms", ms(p99_quiet))
        result.figure(f"{name}:p99_attack_ms", ms(p99_attack))
        result.figure(f"{name}:attack_ok", attacked.ok)
        result.figure(f"{name}:attack_failed", attacked.failed + attacked.refused)
        result.figure(f"{name}:attackers_dropped", dropped)
        result.figure(f"{name}:attackers_open_at_end", held)
        result.target(f"{name}: answers before the attack", quiet.ok > 0 and
                      quiet.failed == 0, f"{quiet.ok} ok, {quiet.failed} failed")
        result.target(f"{name}: exit status 0", status == 0, f"{status}")
        if defence is not DEFAULTS and attackers < defence.slots:
            result.target(f"{name}: well-behaved clients not starved during the attack",
                          attacked.failed + attacked.refused == 0 and attacked.ok > 0,
                          f"{attacked.ok} ok, {attacked.failed} failed")
        if defence is not DEFAULTS:
            result.target(f"{name}: client_timeout sheds idle attackers",
                          dropped > 0, f"{dropped} dropped")
    result.notes.append(
        "the defences hold while attackers < workers x threads; beyond that a slowloris "
        "that reconnects at once keeps every slot (client_timeout only makes each "
        "connection cheaper); the default pool is starved by 40 attackers"
    )
    finish(result)
    return result


def _wait_stable_pool(eng: Engine, quiet: float = 0.5, timeout: float = 15.0) -> None:
    """Wait until the worker count has not changed for *quiet* seconds (or give up)."""
    deadline = time.monotonic() + timeout
    last, since = len(eng.worker_pids()), time.monotonic()
    while time.monotonic() < deadline:
        count = len(eng.worker_pids())
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.02)  # a poll interval


# --------------------------------------------------------------------------- hostile


HOSTILE_KINDS = ("reset", "half-close", "garbage", "overlong", "never-read")
# How many handle_error reports each kind must produce: one per bad connection, none
# for a client that only half-closes (a clean EOF).
EXPECTED_REPORTS = {"reset": 1, "half-close": 0, "garbage": 1, "overlong": 1,
                    "never-read": 1}
# `engine serve`'s handle_error: a client's reset or timeout is one INFO line, any other
# exception the classic report with its traceback.
CLIENT_LINE = re.compile(r"\[worker \d+\] INFO client \S+: (\w+): ")
CLASSIC_REPORT = "Exception occurred during processing of request from"


def handle_error_reports(log: str) -> tuple[int, int]:
    """(one-line client reports, classic reports with a traceback) in an engine log."""
    return len(CLIENT_LINE.findall(log)), log.count(CLASSIC_REPORT)


def hostile_client(
    address: Any, kind: str, rng: random.Random,
    server_gave_up: Callable[[], bool] = lambda: True,
) -> str:
    """Play one hostile client of *kind*; return "" or what went unexpectedly.

    *server_gave_up* tells a never-read client when the server's write has timed out:
    the client cannot see it, since the server's FIN queues behind the replies it
    never reads.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(20)
        if kind == "never-read":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(address)
        if kind == "reset":
            sock.sendall(b"1\n")
            if recv_line(sock, 20, tolerate=OSError) != b"2\n":
                return "reset: no answer before the reset"
            sock.sendall(b"12")  # mid-request...
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # ...then close with SO_LINGER 0: an RST, not a FIN
        elif kind == "half-close":
            sock.sendall(b"5\n")
            sock.shutdown(socket.SHUT_WR)
            data = read_to_eof(sock, tolerate=ConnectionResetError)
            if data != b"6\n":
                return f"half-close: got {data!r}"
        elif kind == "garbage":
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            sock.sendall(b"\xff" + noise.replace(b"\n", b"") + b"\n")
            read_to_eof(sock, tolerate=ConnectionResetError)
        elif kind == "overlong":
            with contextlib.suppress(OSError):  # the server may reset us mid-send
                sock.sendall(b"7" * 100_000)
            with contextlib.suppress(OSError):
                read_to_eof(sock, tolerate=ConnectionResetError)
        elif kind == "never-read":
            sock.sendall(b"FLOOD 16000000\n")
            # Never read: the server's write blocks until its timeout, then it closes
            # (its FIN waits behind the unread data, so this end cannot see that).
            wait_for(server_gave_up, 30, "the server to give up", 0.02)
        return ""
    except Exception as exc:
        return f"{kind}: {exc!r}"
    finally:
        sock.close()


def hostile(ctx: Context) -> Result:
    """Resets, half-closes, garbage, over-long lines and clients that never read."""
    rounds = ctx.pick(3, 40)
    result = Result(
        "hostile-clients",
        f"{rounds} rounds of one client of each kind ({', '.join(HOSTILE_KINDS)}) against "
        "a strict line handler, under load: handle_error once per bad connection, workers "
        "and master untouched, no fd leak",
    )
    rng = random.Random(ctx.seed)
    with engine(ctx, result, [
        "--workers", "2", "--pool-mode", "static", "--threads", "8",
    ], handler="loadtests.reliability_apps:StrictLineHandler") as eng:
        workers = set(eng.wait_workers(2))
        wait_for(lambda: exchange(eng.address, b"1\n") == b"2\n", 20, "an answer")
        fds_before = {pid: settled_fd_count(pid) for pid in workers}
        master_fds = settled_fd_count(eng.master)
        problems: list[str] = []
        with LoadGen(eng.address, clients=2, max_requests=1_000_000, max_seconds=120,
                     request=b"41\n", reply=b"42\n", pace=0.002) as load:
            for index in range(rounds):
                def gave_up(done: int = index + 1) -> bool:
                    return eng.log_count("TimeoutError: timed out") >= done

                threads = []
                for kind in HOSTILE_KINDS:
                    def play(kind: str = kind, seed: int = rng.randrange(1 << 30)) -> None:
                        problem = hostile_client(eng.address, kind, random.Random(seed),
                                                 gave_up)
                        if problem:
                            problems.append(problem)

                    threads.append(threading.Thread(target=play))
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(60)
            stats = load.stop()
        expected = rounds * sum(EXPECTED_REPORTS.values())
        with contextlib.suppress(Deadline):
            wait_for(lambda: sum(handle_error_reports(eng.log())) >= expected, 20,
                     "the error reports")
        fds_settled = True
        try:
            wait_for(lambda: all(fd_count(pid) <= fds_before[pid] for pid in workers), 20,
                     "worker fds back to their baseline")
        except (Deadline, OSError):
            fds_settled = False
        fds_after = {pid: fd_count(pid) for pid in workers if alive(pid)}
        workers_after = set(eng.worker_pids())
        master_fds_after = settled_fd_count(eng.master)
        log = eng.log()
        status = eng.stop()
    client_lines, classic = handle_error_reports(log)
    reported = client_lines + classic
    load_figures(result, stats, "load_")
    result.figure("bad_connections", rounds * (len(HOSTILE_KINDS) - 1))
    result.figure("half_closes", rounds)
    result.figure("handle_error_reports", reported)
    result.figure("as_one_line", client_lines)
    result.figure("with_traceback", classic)
    result.figure("tracebacks", tracebacks(log))
    result.figure("worker_fds", f"{sum(fds_before.values())}->{sum(fds_after.values())}")
    result.figure("master_fds", f"{master_fds}->{master_fds_after}")
    result.figure("workers_replaced", len(workers - workers_after))
    result.figure("client_problems", len(problems))
    result.figure("exit_status", status)
    if problems:
        result.notes.extend(problems[:5])
    result.target("handle_error reports exactly once per bad connection",
                  reported == expected and tracebacks(log) == classic,
                  f"{reported} reports ({classic} with a traceback, {tracebacks(log)} "
                  f"tracebacks), expected {expected}")
    result.target("every client saw the behaviour expected of its kind", not problems,
                  "; ".join(problems[:3]))
    result.target("workers survive (no worker replaced)", workers == workers_after)
    result.target("no fd leak in the workers", fds_settled, f"{fds_before} -> {fds_after}")
    result.target("the master is untouched (same fds)", master_fds_after == master_fds)
    result.target("well-behaved load unaffected", stats.failed == 0 and stats.refused == 0
                  and stats.ok > 0, f"{stats.ok} ok, {stats.failed} failed")
    result.target("exit status 0", status == 0, f"{status}")
    finish(result)
    return result


# --------------------------------------------------------------------------- faults
#
# Faults from outside and from inside handlers (issue #13): the service must stay up.
# The handler and the fault switches are in loadtests/reliability_apps.py.

FAULTS = "loadtests.reliability_apps:FaultHandler"
CANNOT_FORK = "cannot fork a worker"
BOOT_FAILURE_LINES = ("failed to boot", "before it booted", "no worker could boot")
LOUD_BOOT_FAILURES = 5  # a crash loop is logged as an error from this failure in a row on


def _unique(ctx: Context, stem: str) -> Path:
    return ctx.log_dir / f"{stem}-{os.getpid()}-{time.monotonic_ns()}"


def _delays(log: str, words: str) -> list[float]:
    """The backoff delays announced in *log* as ``<words> <seconds>s``."""
    return [float(d) for d in re.findall(re.escape(words) + r" ([\d.]+)s", log)]


def _pace_until(deadline: float) -> None:
    """Let a fault last until *deadline* (its length is the scenario's parameter)."""
    while time.monotonic() < deadline:
        time.sleep(0.05)  # the fault's duration, not synchronisation


def _logged(eng: Engine, text: str, times: int) -> bool:
    return eng.log_count(text) >= times


def _control(fifo: Path, line: str) -> None:
    """One line to the master's NPROC control FIFO (fails at once if nobody reads it)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def fork_failure(ctx: Context) -> Result:
    """fork() fails (RLIMIT_NPROC as nobody) under load, then works again."""
    outage = ctx.pick(0.8, 15.0)  # short: 4 failed forks (0.1, 0.2, 0.4 s apart)
    size, kills = 4, 2
    result = Result(
        "fork-failure",
        f"engine as nobody, static pool of {size}, under load: its RLIMIT_NPROC drops to 1 "
        f"and {kills} workers are SIGKILLed, so every fork fails (EAGAIN) for {outage:g} s; "
        "then the limit is lifted",
    )
    if os.geteuid() != 0:
        result.skipped = "needs root (the engine runs as nobody)"
        return result
    shared = Path(tempfile.mkdtemp(prefix="reliability-nproc-"))  # nobody must reach it
    shared.chmod(0o755)
    fifo = shared / "nproc"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    try:
        with engine(ctx, result, [
            "--workers", str(size), "--pool-mode", "static", "--user", "nobody",
        ], handler=FAULTS, env={NPROC_FIFO: str(fifo)}) as eng:
            eng.wait_workers(size)
            wait_for(lambda: "NPROC control open" in eng.log(), 10, "the control thread")
            with LoadGen(eng.address, clients=4, max_requests=5_000_000,
                         max_seconds=outage + 90) as load:
                wait_for(partial(_served_at_least, load, 100), 20, "some load served")
                _control(fifo, "1\n")
                wait_for(lambda: "NPROC set to 1" in eng.log(), 10, "the limit lowered")
                ok_before, bad_before = load.ok, load.failed + load.refused
                for victim in eng.worker_pids()[:kills]:
                    os.kill(victim, signal.SIGKILL)
                started = time.monotonic()
                wait_for(lambda: eng.log_count(CANNOT_FORK) >= 1, 10, "a fork failure")
                _pace_until(started + outage)
                served = load.ok - ok_before
                failed = load.failed + load.refused - bad_before
                refused = load.refused
                fork_lines = eng.log_count(CANNOT_FORK)
                left = len(eng.worker_pids())
                master_up = eng.master_alive()
                lifted = time.monotonic()
                _control(fifo, "max\n")
                try:
                    eng.wait_workers(size, timeout=40)
                    refill = time.monotonic() - lifted
                except Deadline:
                    refill = math.inf
                stats = load.stop()
            log = eng.log()
            status = eng.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    delays = _delays(log, "next try in")
    # One try (and one line) per backoff step: the steps start 0.1 s apart and double.
    steps = int(math.log2(outage / 0.1 + 1)) + 1
    result.figure("master_up", "yes" if master_up and status is not None else "no")
    result.figure("workers_left", left)
    result.figure("served_during_outage", served)
    result.figure("failed_during_outage", failed)
    result.figure("fork_failure_lines", fork_lines)
    result.figure("last_backoff_s", delays[-1] if delays else math.nan)
    result.figure("refill_s", round(refill, 2))
    load_figures(result, stats)
    result.figure("exit_status", status)
    result.target("the master stays up, listeners kept (nothing refused)",
                  master_up and refused == 0, f"{refused} refused")
    result.target("the workers left serve during the outage", served > 0, f"{served} ok")
    result.target("failed <= kills (only requests inside a killed worker)",
                  stats.failed + stats.refused <= kills, f"{stats.failed} failed")
    result.target("one log line per backoff step", 1 <= fork_lines <= steps + 1 and
                  log.count("next try in 0.10s") == 1,
                  f"{fork_lines} lines, at most {steps + 1} steps")
    result.target("pool refilled within the backoff step after the limit is lifted",
                  refill <= (delays[-1] if delays else 0.0) + 2.0 and
                  "fork works again" in log, f"{refill:.2f}s")
    result.target("no boot failure and no fatal stop",
                  not any(words in log for words in BOOT_FAILURE_LINES))
    result.target("exit status 0", status == 0, f"{status}")
    finish(result)
    return result


EXIT_KINDS = (b"EXIT3", b"SYSEXIT3", b"EXIT0")  # os._exit(3), SystemExit(3), os._exit(0)


def handler_exits(ctx: Context) -> Result:
    """Handlers that os._exit(3), raise SystemExit(3) or os._exit(0), under load."""
    seconds = ctx.pick(2.0, 30.0)
    size = 2
    result = Result(
        "handler-exits",
        f"static pool of {size}, for {seconds:g} s: three clients each send one kind of "
        "exit (os._exit(3), SystemExit(3), os._exit(0)) every 100 ms, while 3 other "
        "clients send PING",
    )
    with engine(ctx, result, ["--workers", str(size), "--pool-mode", "static"],
                handler=FAULTS) as eng:
        eng.wait_workers(size)
        with contextlib.ExitStack() as stack:
            others = stack.enter_context(LoadGen(
                eng.address, clients=3, max_requests=5_000_000, max_seconds=seconds))
            killers = [stack.enter_context(LoadGen(
                eng.address, clients=1, max_requests=100_000, max_seconds=seconds,
                request=kind + b"\n", reply=b"BYE\n", pace=0.1)) for kind in EXIT_KINDS]
            stats = others.join()
            exits = [killer.join() for killer in killers]
        asked = sum(e.ok for e in exits)
        with contextlib.suppress(Deadline):
            wait_for(lambda: eng.log_count(" died: ") >= asked, 10, "every death logged")
        with contextlib.suppress(Deadline):
            eng.wait_workers(size, timeout=10)
        master_up = eng.master_alive()
        after = ping(eng.address)
        log = eng.log()
        status = eng.stop()
    replaced = log.count("spawned worker ") - size  # every fork after the first pool
    boot_lines = sum(log.count(words) for words in BOOT_FAILURE_LINES)
    by_kind = {kind.decode(): e.ok for kind, e in zip(EXIT_KINDS, exits, strict=True)}
    result.figure("master_up", "yes" if master_up else "no")
    result.figure("exits", by_kind)
    result.figure("died_lines", log.count(" died: "))
    result.figure("workers_replaced", replaced)
    result.figure("failed_to_boot_lines", boot_lines)
    result.figure("recycled_lines", log.count(" recycled"))
    load_figures(result, stats, "others_")
    result.figure("exit_status", status)
    result.target("the master stays up and serves", master_up and after)
    result.target("no 'failed to boot' line", boot_lines == 0, f"{boot_lines}")
    result.target("every exit is a death, replaced", asked > 0 and
                  log.count(" died: ") == asked and replaced >= asked,
                  f"{asked} exits, {log.count(' died: ')} died lines, {replaced} replaced")
    result.target("os._exit(0) is not 'recycled'", log.count(" recycled") == 0)
    result.target("the other clients: nothing failed or refused",
                  stats.failed + stats.refused == 0 and stats.ok > 0,
                  f"{stats.ok} ok, {stats.failed} failed {dict(stats.failures)}")
    result.target("exit status 0", status == 0, f"{status}")
    finish(result)
    return result


def crash_loop(ctx: Context) -> Result:
    """Every worker dies at each request and new ones fail to boot, then it ends."""
    fault = ctx.pick(4.0, 22.0)
    size = 1  # one boot failure per backoff step: the steps are 0.1, 0.2, 0.4 ... s
    result = Result(
        "crash-loop",
        f"static pool of {size} under load, after serving: for {fault:g} s (short: until "
        f"the status shows {LOUD_BOOT_FAILURES} failed boots, at most {fault:g} s; a marker "
        "file) every worker exits 3 after each request and every new worker exits before "
        "it boots; then the marker is removed",
    )
    marker = _unique(ctx, "crash-loop.on")
    status_bind = f"unix:{_unique(ctx, 'crash-loop')}.status"
    with engine(ctx, result, [
        "--workers", str(size), "--pool-mode", "static", "--status-bind", status_bind,
    ], handler=FAULTS, env={FAULT_MARKER: str(marker)}) as eng:
        eng.wait_workers(size)
        seen: dict[str, float] = {"boot_failures": 0, "next_spawn_in": 0.0}
        samples = 0
        with LoadGen(eng.address, clients=2, max_requests=5_000_000, timeout=2.0,
                     max_seconds=fault + 90) as load:
            wait_for(partial(_served_at_least, load, 100), 20, "some load served")
            ok_before, failed_before = load.ok, load.failed
            marker.touch()
            end = time.monotonic() + fault
            while time.monotonic() < end:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    crash = json.loads(fetch_status(status_bind, timeout=2.0))[
                        "master"]["crash_loop"]
                    samples += 1
                    for key in seen:
                        seen[key] = max(seen[key], crash[key])
                if ctx.short and seen["boot_failures"] >= LOUD_BOOT_FAILURES:
                    break  # short: the loop has gone loud; how it ends is what is left
                time.sleep(0.1)  # the sampling pace (and the fault's duration)
            master_up = eng.master_alive()
            served_during, failed_during = load.ok - ok_before, load.failed - failed_before
            ok_at_end = load.ok
            marker.unlink()
            ended = time.monotonic()
            try:
                wait_for(lambda: load.ok > ok_at_end, 60, "a request served again", 0.005)
                recovery = time.monotonic() - ended
            except Deadline:
                recovery = math.inf
            with contextlib.suppress(Deadline):
                eng.wait_workers(size, timeout=40)
            load.stop()
        with LoadGen(eng.address, clients=2, max_requests=ctx.pick(300, 3000),
                     max_seconds=30) as after:
            stats = after.join()
        with contextlib.suppress(Deadline):  # the master notices a boot within a tick
            wait_for(lambda: "crash loop over" in eng.log(), 10, "the recovery logged")
        final: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError, KeyError):
            final = json.loads(fetch_status(status_bind))["master"]["crash_loop"]
        log = eng.log()
        status = eng.stop()
    delays = _delays(log, "next spawn in")
    result.figure("master_up", "yes" if master_up else "no")
    result.figure("served_during_fault", served_during)
    result.figure("failed_during_fault", failed_during)
    result.figure("boot_failures", log.count("(before it booted)"))
    result.figure("crash_loop_lines", log.count("crash loop: "))
    result.figure("max_backoff_s", max(delays, default=math.nan))
    result.figure("status_crash_loop_max", {k: seen[k] for k in seen})
    result.figure("status_samples", samples)
    result.figure("recovered_s", round(recovery, 2))
    load_figures(result, stats, "after_")
    result.figure("exit_status", status)
    result.target("the master stays up through the crash loop", master_up)
    result.target("backs off (doubling, capped at 30 s), loud from the 5th failure",
                  log.count("crash loop: ") > 0 and 0.1 < max(delays, default=0) <= 30.0,
                  f"max {max(delays, default=0)}s")
    result.target(f"status shows crash_loop (boot_failures >= {LOUD_BOOT_FAILURES}, "
                  "next_spawn_in > 0)",
                  seen["boot_failures"] >= LOUD_BOOT_FAILURES and seen["next_spawn_in"] > 0,
                  f"{seen}")
    result.target("recovers within the backoff step after the fault ends",
                  recovery <= max(delays, default=0) + 2.0 and "crash loop over" in log,
                  f"{recovery:.2f}s")
    result.target("never fatal", "no worker could boot" not in log)
    result.target("status back to 0 failures", final["boot_failures"] == 0 if final else False,
                  f"{final}")
    result.target("after recovery: every request answered", stats.failed + stats.refused == 0
                  and stats.ok > 0, f"{stats.ok} ok, {stats.failed} failed")
    result.target("exit status 0", status == 0, f"{status}")
    finish(result)
    return result


def upgrade_killed(ctx: Context) -> Result:
    """SIGUSR2, then SIGKILL the new master right after it wrote the pidfile, under load."""
    rounds = ctx.pick(1, 3)
    result = Result(
        "upgrade-killed",
        f"{rounds} round(s) under load: SIGUSR2 with --pidfile; the new release's workers "
        "never finish booting, and the new master is SIGKILLed as soon as its pid is in "
        "the pidfile: the old master keeps serving and puts the pidfile back",
    )
    pidfile = _unique(ctx, "upgrade-killed.pid")
    oldbin = Path(f"{pidfile}.oldbin")
    slow = _unique(ctx, "upgrade-killed.slow")
    restored: list[float] = []
    kill_after: list[float] = []
    with engine(ctx, result, [
        "--workers", "2", "--pool-mode", "static", "--pidfile", str(pidfile),
    ], handler=FAULTS, env={SLOW_BOOT_MARKER: str(slow)}) as eng:
        old = eng.master
        eng.wait_workers(2)
        slow.touch()  # from now on, the code a new master imports is the slow release
        with LoadGen(eng.address, clients=4, max_requests=5_000_000,
                     max_seconds=60 * rounds) as load:
            wait_for(partial(_served_at_least, load, 100), 20, "some load served")
            for done in range(1, rounds + 1):
                sent = time.monotonic()
                eng.signal(signal.SIGUSR2)
                new = wait_for(lambda: (pid := _read_pid(pidfile)) not in (None, old) and pid,
                               30, "the new master's pid in the pidfile", 0.001)
                os.kill(new, signal.SIGKILL)
                killed = time.monotonic()
                kill_after.append(killed - sent)
                eng.seen_pids.add(new)
                try:
                    wait_for(lambda: _read_pid(pidfile) == old and not oldbin.exists(), 10,
                             "the pidfile back to the old master")
                    restored.append(time.monotonic() - killed)
                except Deadline:
                    restored.append(math.inf)
                with contextlib.suppress(Deadline):
                    wait_for(partial(_logged, eng, "upgrade failed: new master", done),
                             10, "the failure logged")
                wait_for(partial(_served_at_least, load, load.ok + 100), 20,
                         "load served after")
            stats = load.stop()
        master_same = eng.master_alive() and eng.master == old
        pid_now = _read_pid(pidfile)
        log = eng.log()
        status = eng.stop()
    removed = not pidfile.exists()
    result.figure("rounds", rounds)
    result.figure("killed_after_sigusr2_ms", ms(max(kill_after, default=math.nan)))
    result.figure("pidfile_restored_ms", ms(max(restored, default=math.inf)))
    result.figure("pidfile_is_old_master", "yes" if pid_now == old else f"no ({pid_now})")
    result.figure("failure_lines", log.count("upgrade failed: new master"))
    load_figures(result, stats)
    result.figure("exit_status", status)
    result.figure("pidfile_removed_at_exit", "yes" if removed else "no")
    result.target("the pidfile back to the old master, no .oldbin",
                  pid_now == old and all(math.isfinite(t) for t in restored),
                  f"{pid_now} (old {old})")
    result.target("the old master keeps serving", master_same)
    result.target("failed == 0, refused == 0", stats.failed + stats.refused == 0 and
                  stats.ok > 0, f"{stats.ok} ok, {stats.failed} failed")
    result.target("each failed upgrade is logged", log.count("upgrade failed: new master")
                  == rounds)
    result.target("exit status 0, pidfile removed", status == 0 and removed, f"{status}")
    finish(result)
    return result


def _fill(path: Path, mode: str = "wb") -> bool:
    """Write to *path* until ENOSPC; True when its filesystem is full then."""
    with open(path, mode, buffering=0) as out:
        for _ in range(64 * 1024):  # bounded well above a 64 KiB tmpfs
            try:
                out.write(b"\0" * (4096 if mode == "wb" else 1))
            except OSError as exc:
                return exc.errno == errno.ENOSPC
    return False


LOST_REPORTS = re.compile(r"(\d+) error reports could not be written")


def full_disk(ctx: Context) -> Result:
    """stderr on a full tmpfs while handlers raise under load."""
    seconds = ctx.pick(1.5, 20.0)
    size = 2
    result = Result(
        "full-disk",
        f"the engine's stderr on a full 64 KiB tmpfs, static pool of {size}: for "
        f"{seconds:g} s two clients send requests whose handler raises (each a traceback "
        "that cannot be written) while two send PING; then room is made again",
    )
    if os.geteuid() != 0:
        result.skipped = "needs root (mounts a tmpfs)"
        return result
    mount = _unique(ctx, "full-disk")
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                             capture_output=True, text=True, timeout=30, check=False)
    if mounted.returncode:
        mount.rmdir()
        result.skipped = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
        return result
    try:
        with engine(ctx, result, ["--workers", str(size), "--pool-mode", "static"],
                    handler=FAULTS, log_dir=mount) as eng:
            first = set(eng.wait_workers(size))
            filler = mount / "filler"
            full = _fill(filler) and _fill(eng.log_path, "ab")
            with LoadGen(eng.address, clients=2, max_requests=5_000_000, max_seconds=seconds,
                         request=b"FAIL\n", reply=b"FAILED\n") as failing, \
                    LoadGen(eng.address, clients=2, max_requests=5_000_000,
                            max_seconds=seconds) as pinging:
                fails, pings = failing.join(), pinging.join()
            same = set(eng.worker_pids()) == first
            filler.unlink()  # room again: the next report says what was lost
            later = [exchange(eng.address, b"FAIL\n") == b"FAILED\n" for _ in range(2)]
            with contextlib.suppress(Deadline):
                wait_for(lambda: LOST_REPORTS.search(eng.log()), 10, "the lost-reports line")
            log = eng.log()
            status = eng.stop()
        (ctx.log_dir / f"full-disk-{time.monotonic_ns()}.log").write_text(log)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30,
                       check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()
    lost = sum(int(n) for n in LOST_REPORTS.findall(log))
    died = log.count(" died: ")
    result.figure("disk_full", "yes" if full else "no")
    result.figure("reports_attempted", fails.ok)
    result.figure("workers_killed", died)
    result.figure("lost_reports_said", lost)
    load_figures(result, fails, "failing_")
    load_figures(result, pings, "ping_")
    result.figure("exit_status", status)
    result.target("the disk was full during the load", full)
    result.target("no worker killed by error reporting (same workers)", died == 0 and same,
                  f"{died} died")
    result.target("every request answered (failing ones too)", fails.failed + pings.failed
                  + fails.refused + pings.refused == 0 and fails.ok > 0 and pings.ok > 0,
                  f"{fails.ok}+{pings.ok} ok, {fails.failed + pings.failed} failed")
    result.target("once there is room, the lost reports are counted in the log",
                  lost > 0 and all(later), f"{lost}")
    result.target("exit status 0", status == 0, f"{status}")
    finish(result)
    return result


# --------------------------------------------------------------------------- registry


SCENARIOS: dict[str, Callable[[Context], Result]] = {
    "worker-chaos": worker_chaos,
    "master-death": master_death,
    "restarts": restarts,
    "graceful-stop": graceful_stop,
    "soak": soak,
    "exhaustion": exhaustion,
    "slowloris": slowloris,
    "hostile-clients": hostile,
    "fork-failure": fork_failure,
    "handler-exits": handler_exits,
    "crash-loop": crash_loop,
    "upgrade-killed": upgrade_killed,
    "full-disk": full_disk,
}


def run(name: str, ctx: Context) -> Result:
    """Run one scenario; an unexpected exception becomes a failed result, not a crash."""
    started = time.monotonic()
    try:
        result = SCENARIOS[name](ctx)
    except Exception as exc:
        result = Result(name, "", error=f"{type(exc).__name__}: {exc}"[:2000])
    result.seconds = time.monotonic() - started
    return result


__all__ = ["SCENARIOS", "Context", "Result", "Target", "group_members", "read_proc", "run"]
