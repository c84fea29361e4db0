"""When a dynamic pool should stop growing: the CPU-bound load check.

The pool policy (:mod:`engine.pool`) grows a busy pool to keep spare workers. Under a
CPU-bound load that only adds context switches and memory: another process cannot run
sooner than the busy ones. :class:`GrowthGate` tells the master when that is the case,
from three measurements over spans of :data:`GATE_SPAN` seconds:

* busy workers finish connections (short ones: a waiting client will get a worker
  soon; busy workers holding keep-alive connections finish none, and the pool must
  grow for the others, CPU or not);
* and either the busy workers were runnable (on a CPU or waiting for one, from
  ``/proc/PID/schedstat``) for at least :data:`RUNNABLE_SHARE` of every CPU's time
  over the span: they alone can keep the CPUs busy, so another process would only
  queue behind them (this holds when a load generator on the same machine leaves the
  CPUs a little idle time between connections);
* or the machine had no idle CPU time (:class:`~engine.health.IdleMeter`) and busy
  workers are running, not asleep in their handlers (an I/O-bound load next to a
  CPU-hungry neighbour still grows the pool).

Once a measurement has found the load CPU-bound, it takes :data:`RELEASE_LOOKS` spans
in a row with CPU to spare before the pool may grow again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from engine.config.settings import usable_cpus as cpu_count  # the one CPU count
from engine.health import HealthSampler, IdleMeter

# Below this share of idle CPU time the machine counts as saturated.
SATURATED_IDLE_SHARE = 0.05
# The span over which idle time and finished connections are counted.
GATE_SPAN = 0.2
# Busy workers runnable this share of all the CPUs' time: the CPUs are theirs already.
RUNNABLE_SHARE = 0.8
# Clear looks in a row that end a measured saturation (see GrowthGate.saturated).
RELEASE_LOOKS = 2

SchedStat = tuple[int, int]  # nanoseconds on a CPU, nanoseconds waiting for one


def read_schedstat(pid: int) -> SchedStat | None:
    """A process's CPU time and run-queue wait so far (None if gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as file:
            on_cpu, waiting, _ = file.read().split()
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return None


def runnable_cpus(
    before: Mapping[int, SchedStat], after: Mapping[int, SchedStat], busy: int, elapsed: float
) -> float | None:
    """How many CPUs' worth of time *busy* workers were runnable over *elapsed* seconds.

    From the workers read at both ends (their average, times *busy*: a worker that
    became busy meanwhile counts like the others); None when no worker was read twice.
    """
    both = before.keys() & after.keys()
    if not both or elapsed <= 0:
        return None
    runnable_ns = sum(
        (after[pid][0] - before[pid][0]) + (after[pid][1] - before[pid][1]) for pid in both
    )
    return runnable_ns / 1e9 / elapsed / len(both) * busy


class GrowthGate:
    """Answers "is the load CPU-bound, with no CPU left for another worker?"."""

    def __init__(
        self,
        health: HealthSampler,
        *,
        cpus: int | None = None,
        idle_meter: IdleMeter | None = None,
        schedstat: Callable[[int], SchedStat | None] = read_schedstat,
    ) -> None:
        self.health = health
        self.cpus = cpus or cpu_count()
        self.idle_meter = idle_meter or IdleMeter()
        self.schedstat = schedstat
        self._checked = 0.0  # when the last measurement was taken
        self._saturated = False
        self._measured_saturated = False  # the verdict came from a measurement, not a baseline
        self._clear_looks = 0  # measurements in a row that found CPU to spare
        self._requests: dict[int, int] = {}  # pid -> request count at that measurement
        self._sched: dict[int, SchedStat] = {}  # busy pid -> its schedstat then

    def saturated(
        self,
        busy: Collection[int],
        requests: Mapping[int, int],
        now: float,
        serving: Collection[int] | None = None,
    ) -> bool:
        """Measure (at most once per span) and return the verdict.

        Args:
            busy: the pids of the busy workers that are not draining.
            requests: pid -> connections served so far, for every live worker.
            serving: every worker that is not draining (default: *busy*). Their CPU
                demand is what counts: with short connections a worker is often idle at
                the instant the scoreboard is read while it is runnable nearly all the
                time.
        """
        if now - self._checked < GATE_SPAN:
            return self._saturated  # counts over shorter spans are mostly noise
        previous = self._checked
        fresh = now - previous < 3 * GATE_SPAN
        self._checked = now
        measured = self._measure(busy, serving if serving is not None else busy, requests, now,
                                 previous)
        if not fresh:
            # A first look only takes the baseline: hold growth for one span rather than
            # fork blind (a CPU-bound burst would otherwise double the pool meanwhile).
            self._saturated, self._measured_saturated, self._clear_looks = True, False, 0
        elif measured:
            self._saturated = self._measured_saturated = True
            self._clear_looks = 0
        else:
            # Leaving saturation takes RELEASE_LOOKS clear looks in a row: a load near
            # the threshold dips below it for a span now and then (the machine's speed,
            # the generator's bursts), and the workers forked then stay for the whole
            # load, since only idle workers retire.
            self._clear_looks += 1
            self._saturated = self._measured_saturated and self._clear_looks < RELEASE_LOOKS
            self._measured_saturated = self._saturated
        return self._saturated

    def _measure(
        self,
        busy: Collection[int],
        serving: Collection[int],
        requests: Mapping[int, int],
        now: float,
        previous: float,
    ) -> bool:
        finished = sum(
            max(0, requests.get(pid, 0) - self._requests.get(pid, 0)) for pid in serving
        )
        self._requests = dict(requests)  # every worker, so the next delta is fresh
        sched = {pid: stat for pid in serving if (stat := self.schedstat(pid)) is not None}
        before, self._sched = self._sched, sched
        if finished * 4 < max(1, len(busy)):  # fewer than one per busy worker per 4 looks
            return False
        runnable = runnable_cpus(before, sched, len(serving), now - previous)
        if runnable is not None and runnable >= RUNNABLE_SHARE * self.cpus:
            return True
        if len(busy) < self.cpus:
            return False  # a CPU may be free for another worker
        idle = self.idle_meter.idle_share(now)
        if idle is None or idle >= SATURATED_IDLE_SHARE:
            return False
        running_needed = (self.cpus + 1) // 2
        return self.health.count_running(busy, running_needed) >= running_needed
